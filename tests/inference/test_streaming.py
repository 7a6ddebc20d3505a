"""Streaming prediction: chunks decoded in threads give the same rows as the all-at-once path; the
row file (rows as they come, resumable, finished atomically) and ``predict --resume`` from the CLI:
an interrupted run leaves no output that looks complete, a resumed run redoes nothing and
duplicates nothing, and a partial file from another model or input list is refused."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from leukodx._rowfile import RowFile, inputs_digest
from leukodx.cli.app import main
from leukodx.data.registry import load_dataset
from leukodx.errors import InvalidInputError
from leukodx.inference.classifier import expand_inputs, load_model


@pytest.fixture(scope="module")
def clf(tiny_pbc_model):
    return load_model(tiny_pbc_model, backend="onnx")


def test_streamed_chunks_equal_the_all_at_once_rows(clf, pbc_folder, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    inputs = [pbc_folder, tmp_path / "broken.jpg"]
    names, arrays, errors = clf.load_inputs(inputs)
    whole = clf.rows_for(names, clf.score_arrays(arrays))
    items, list_errors = expand_inputs(inputs)
    parts = list(clf.stream(items, chunk=5, workers=2))  # worker processes, chunks back in order
    assert len(parts) == -(-len(items) // 5) and not list_errors
    rows = [r for p in parts for r in p.rows]
    assert [r["input"] for r in rows] == names  # input order kept across chunks and threads
    for a, b in zip(rows, whole):
        assert a["top_class"] == b["top_class"] and a["probability"] == pytest.approx(b["probability"], abs=1e-5)
    assert [e["input"] for p in parts for e in p.errors] == [str(tmp_path / "broken.jpg")] == [e["input"] for e in errors]
    ood = np.concatenate([p.ood_scores for p in parts])
    assert clf.shift_from(ood) == clf.shift_of(clf.score_arrays(arrays))


def test_row_file_resumes_without_redoing_or_duplicating(tmp_path):
    out = tmp_path / "rows.csv"
    manifest = {"model": "m", "model_sha256": "a" * 64, "inputs_sha256": inputs_digest(["x", "y", "z"]), "n_inputs": 3}
    first = RowFile(out, manifest)
    assert first.start() == set()
    first.append([{"input": "x", "v": 1}], [{"input": "y", "error": "y: unreadable"}])
    first.close()
    with open(first.partial, "a") as fh:
        fh.write('{"row": {"input": "z", "v"')  # killed mid-line
    assert not out.exists()
    again = RowFile(out, manifest, resume=True)
    assert again.start() == {"x"} and again.resumed == 1  # y failed: tried again; the torn z line is gone
    again.append([{"input": "y", "v": 2}, {"input": "z", "v": 3}])
    again.finish({}, ["input", "v"], lambda r: [r["input"], r["v"]])
    assert list(csv.reader(out.open())) == [["input", "v"], ["x", "1"], ["y", "2"], ["z", "3"]]
    assert not again.partial.exists()
    with pytest.raises(InvalidInputError, match="already complete"):
        RowFile(out, manifest, resume=True).start()


@pytest.mark.parametrize("change, words", [({"model_sha256": "b" * 64}, "another model"),
                                            ({"inputs_sha256": inputs_digest(["x", "y"])}, "another input list"),
                                            ({"coverage": 0.8}, "written with coverage")])
def test_row_file_refuses_a_partial_file_of_another_run(tmp_path, change, words):
    manifest = {"model": "m", "model_sha256": "a" * 64, "inputs_sha256": inputs_digest(["x"]), "n_inputs": 1,
                "coverage": 0.9}
    RowFile(tmp_path / "r.jsonl", manifest).start()
    with pytest.raises(InvalidInputError, match=words):
        RowFile(tmp_path / "r.jsonl", {**manifest, **change}, resume=True).start()


def test_predict_writes_every_format_with_the_same_rows(tiny_pbc_model, pbc_folder, tmp_path):
    import pyarrow.parquet as pq

    for ext in ("csv", "jsonl", "json", "parquet"):
        assert main(["predict", "-m", str(tiny_pbc_model), str(pbc_folder), "-o", str(tmp_path / f"p.{ext}")]) == 0
    from_csv = list(csv.DictReader((tmp_path / "p.csv").open()))
    from_jsonl = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    from_json = json.loads((tmp_path / "p.json").read_text())
    table = pq.read_table(tmp_path / "p.parquet")
    assert len(from_csv) == len(from_jsonl) == len(from_json["rows"]) == table.num_rows == 32
    assert [r["input"] for r in from_csv] == [r["input"] for r in from_jsonl] == table.column("input").to_pylist()
    assert table.schema.field("probability").type == "double" and table.schema.field("unsure").type == "bool"
    assert json.loads(table.schema.metadata[b"leukodx"])["model"] == from_json["model"]
    assert [float(r["probability"]) for r in from_csv] == pytest.approx(table.column("probability").to_pylist(), abs=1e-4)
    assert not list(tmp_path.glob("*.partial.jsonl"))


@pytest.mark.slow
def test_an_interrupted_predict_resumes_to_the_uninterrupted_result(tiny_pbc_model, tmp_path):
    pbc = load_dataset("pbc")
    folder = tmp_path / "cells"
    folder.mkdir()
    for i in range(0, 1500, 2):  # 750 real cells: three chunks
        os.symlink(pbc.abspath(i), folder / f"{i:05d}.jpg")
    whole = tmp_path / "whole.csv"
    assert main(["predict", "-m", str(tiny_pbc_model), str(folder), "-o", str(whole)]) == 0

    out = tmp_path / "run.csv"
    partial = tmp_path / "run.csv.partial.jsonl"
    # Ctrl-C at its default in the child even when the suite runs in the background (SIGINT ignored there)
    proc = subprocess.Popen([sys.executable, "-m", "leukodx", "predict", "-m", str(tiny_pbc_model), str(folder),
                             "-o", str(out)], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not (partial.exists() and partial.read_text().count("\n") > 1):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130 and "rerun with --resume" in err, err
    assert not out.exists() and partial.exists()
    done_before = sum('"row"' in line for line in partial.read_text().splitlines())
    assert 0 < done_before < 750

    other = subprocess.run([sys.executable, "-m", "leukodx", "predict", "-m", "pbc-celltype", str(folder), "-o",
                            str(out), "--resume"], capture_output=True, text=True)
    assert other.returncode == 2 and "another model" in other.stderr and len(other.stderr.strip().splitlines()) == 1

    resumed = subprocess.run([sys.executable, "-m", "leukodx", "predict", "-m", str(tiny_pbc_model), str(folder),
                              "-o", str(out), "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0 and f"({done_before} from the interrupted run)" in resumed.stderr
    assert out.read_text() == whole.read_text() and not partial.exists()


def test_input_list_keeps_order_names_and_mixed_arrays_compactly(tmp_path):
    """Folders, files and in-memory images keep their input order and names; a path whose name is not
    UTF-8 comes back byte for byte; ``without`` drops exactly the finished names; 10^5 paths are held
    in a few MB, not as 10^5 string objects."""
    import sys as _sys

    from leukodx.data.images import PathList

    odd = os.fsdecode(b"cell-\xff.jpg")  # a Latin-1 name on a UTF-8 system
    (tmp_path / "a").mkdir()
    for name in ("b.png", "a.jpg", odd):
        (tmp_path / "a" / name).write_bytes(b"x")
    arrays = np.zeros((2, 8, 8, 3), np.uint8)
    items, errors = expand_inputs([tmp_path / "a", arrays, tmp_path / "a" / "a.jpg"])
    assert errors == []
    names = [n for n, _ in items]
    assert names == [str(tmp_path / "a" / n) for n in ("a.jpg", "b.png", odd)] + ["array[3]", "array[4]",
                                                                                  str(tmp_path / "a" / "a.jpg")]
    assert items[-1] == (names[-1], names[-1]) and items[3][1] is not None and items[-3][0] == "array[3]"
    assert os.fsencode(items[2][0]).endswith(b"cell-\xff.jpg")
    assert [n for n, _ in items[1:5]] == names[1:5]
    left = items.without({names[0], "array[4]"})  # a.jpg, given twice, is done both times
    assert [n for n, _ in left] == [names[1], names[2], "array[3]"]
    with pytest.raises(IndexError):
        items[len(items)]

    many = PathList(f"/data/archive/site-{i % 7}/cell-{i:07d}.jpg" for i in range(100_000))
    assert len(many) == 100_000 and many[-1] == "/data/archive/site-4/cell-0099999.jpg"
    held = _sys.getsizeof(many._buf) + _sys.getsizeof(many._ends)
    assert held < 5_000_000  # a list of str would take ~12 MB for these


def test_row_file_sorted_entries_match_a_stable_sort_of_the_rows(tmp_path):
    rng = np.random.default_rng(0)
    rows = [{"input": f"i{k}", "unsure": bool(rng.integers(2)), "probability": float(rng.choice([0.5, 0.75, 0.9]))}
            for k in range(200)]
    rf = RowFile(tmp_path / "p.csv", {"model_sha256": "m", "inputs_sha256": "x"})
    rf.start()
    rf.append(rows[:120], [{"input": "bad", "error": "unreadable"}], [{"k": k} for k in range(120)])
    rf.append(rows[120:], [], [{"k": k} for k in range(120, 200)])
    rf.close()
    key = (lambda r: (not r["unsure"], r["probability"]))
    got = list(rf.sorted_entries(lambda e: key(e["row"])))
    assert [e["row"] for e in got] == sorted(rows, key=key)  # ties (many) keep the file's order
    assert all(e["k"] == rows.index(e["row"]) for e in got)  # what is kept beside a row comes with it
