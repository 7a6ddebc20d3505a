"""Robustness: every verb run as a careless user or an attacker would, each case as a separate
``leukodx`` process, plus a long run of the fuzz suite (tests/fuzz) and a replay of what it found.

A case is *handled cleanly* when the process answers as a user needs: exit 0 with the expected
outputs, or a non-zero exit whose stderr says why in ``error:`` lines (one per bad item), never a
traceback, never the last-resort "internal error" (exit 70), never a hang (300 s), and, for a
batch, the good items' results written. Peak memory is the child's maximum resident set.

Inputs are real files from the data root (FCS files, smear images, the Golub matrix, shipped
bundles) and mutations of them built in a temporary folder.

Run: ``python benchmarks/robustness.py [--examples N]`` (N fuzz examples per target, default 150;
~25 min on 2 cores). Writes ``results/robustness.json`` and ``results/robustness.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from _common import write_result

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from fcs_mutate import FCSParts  # noqa: E402

from leukodx.data.registry import load_dataset  # noqa: E402
from leukodx.data.root import resolve_data_root  # noqa: E402
from leukodx.models.bundle import resolve_bundle  # noqa: E402

HANG_SECONDS = 300


@dataclass
class Case:
    category: str
    name: str
    argv: list[str]
    expect: str  # "ok" | "error" | "partial" (a batch with bad items: exit 0 or 2, good results written)
    check: Callable[[], bool] | None = None  # the outputs a user relies on are there
    interrupt_after: Callable[[str], bool] | None = None  # send SIGINT once this holds of the stderr so far
    env: dict = field(default_factory=dict)


def run_case(case: Case) -> dict:
    env = {**os.environ, **case.env}
    started = time.perf_counter()
    # Ctrl-C as a user gives it: SIGINT at its default in the child even when this script runs in the
    # background (a shell starts background jobs with SIGINT ignored, and exec keeps ignored signals)
    proc = subprocess.Popen([sys.executable, "-m", "leukodx", *case.argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    out_chunks, err_chunks = [], []

    def pump(stream, sink):
        for line in stream:
            sink.append(line)

    readers = [threading.Thread(target=pump, args=(proc.stdout, out_chunks)),
               threading.Thread(target=pump, args=(proc.stderr, err_chunks))]
    for t in readers:
        t.start()
    interrupted, peak_kb = False, 0
    while True:
        peak_kb = max(peak_kb, _high_water_kb(proc.pid))
        pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() - started > HANG_SECONDS:
            proc.kill()
        elif case.interrupt_after is not None and not interrupted and case.interrupt_after("".join(err_chunks)):
            proc.send_signal(signal.SIGINT)
            interrupted = True
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    for t in readers:
        t.join()
    seconds = time.perf_counter() - started
    hang = seconds >= HANG_SECONDS
    err = "".join(err_chunks)
    code = proc.returncode
    traceback = "Traceback (most recent call last)" in err
    internal = code == 70 or "internal error" in err
    said_why = any(line.startswith(("error:", "Usage:", "skipped:")) or "Error" in line or "error" in line
                   for line in err.splitlines())
    if case.expect == "ok":
        answered = code == 0
    elif case.expect == "error":
        answered = code != 0 and said_why
    else:  # partial: the bad items named, the good ones written
        answered = code in (0, 2) and said_why
    try:
        outputs = case.check() if case.check is not None else True
    except (OSError, ValueError, KeyError, TypeError):  # the output a user relies on is missing or not as promised
        outputs = False
    clean = answered and outputs and not traceback and not internal and not hang and code != -9
    last = [line for line in err.strip().splitlines() if line.startswith("error:")]
    return {"category": case.category, "case": case.name, "argv": " ".join(case.argv), "expect": case.expect,
            "exit": code, "clean": bool(clean), "traceback": traceback, "internal_error": internal, "hang": hang,
            "outputs_ok": bool(outputs), "seconds": round(seconds, 2), "peak_mb": round(peak_kb / 1024, 1),
            "said": (last[-1] if last else err.strip().splitlines()[-1] if err.strip() else "")[:240]}


def _high_water_kb(pid: int) -> int:
    """The child's own peak resident set so far (VmHWM; a fork's rusage would count this process's too)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# --- building the cases ------------------------------------------------------------------------------

def fcs_cases(tmp: Path, data: Path) -> list[Case]:
    upn = data / "flow/tidytof/ddpr/UPN1_Basal.fcs"
    healthy = data / "flow/tidytof/ddpr/Healthy1_Basal.fcs"
    cases = []

    def mutant(name, edit):
        parts = FCSParts.read(upn)
        edit(parts)
        return str(parts.write(tmp / f"{name}.fcs"))

    mutations = {
        "negative $TOT": lambda p: p.set("$TOT", "-5"),
        "$TOT 10x smaller than the data": lambda p: p.set("$TOT", "10"),
        "$TOT larger than the data": lambda p: p.set("$TOT", "1000"),
        "$TOT not a number": lambda p: p.set("$TOT", "many"),
        "$DATATYPE A": lambda p: p.set("$DATATYPE", "A"),
        "$DATATYPE unknown": lambda p: p.set("$DATATYPE", "Q"),
        "negative $NEXTDATA": lambda p: p.set("$NEXTDATA", "-100"),
        "$BEGINANALYSIS -1": lambda p: p.set("$BEGINANALYSIS", "-1"),
        "$PnR 1e400": lambda p: p.set("$P3R", "1e400"),
        "$PnR NaN": lambda p: p.set("$P3R", "nan"),
        "$PnB '16,'": lambda p: p.set("$P3B", "16,"),
        "$PnE one value": lambda p: p.set("$P3E", "4"),
        "$PnG not a number": lambda p: p.set("$P3G", "abc"),
        "no $BYTEORD": lambda p: p.drop("$BYTEORD"),
        "mixed $BYTEORD": lambda p: p.set("$BYTEORD", "3,1,2,4"),
        "negative $PAR": lambda p: p.set("$PAR", "-3"),
        "$PAR disagrees with channels": lambda p: p.set("$PAR", "7"),
        "$MODE histogram": lambda p: p.set("$MODE", "C"),
        "$P3N missing": lambda p: p.drop("$P3N"),
    }
    for name, edit in mutations.items():
        cases.append(Case("FCS", f"readout: {name}", ["flow", "readout", mutant(name.replace(" ", "_").replace("$", ""),
                                                                                edit),
                                                       "-o", str(tmp / "r.json"), "--no-refit-missing"], "error"))
    for name, spill in (("NaN spillover", "2,CD45_In115,CD19_Nd142,1,nan,0,1"),
                        ("singular spillover", "2,CD45_In115,CD19_Nd142,1,1,1,1")):
        path = mutant(name.replace(" ", "_"), lambda p, s=spill: p.set("$SPILLOVER", s))
        cases.append(Case("FCS", f"readout: {name} (skipped with a warning)",
                          ["flow", "readout", path, "-o", str(tmp / f"{name[:3]}.json"), "--no-refit-missing"], "ok"))
    bad = mutant("batch_bad", lambda p: p.set("$DATATYPE", "A"))
    batch_out = tmp / "batch.json"
    cases.append(Case("FCS", "readout batch good, corrupted, good: good results written",
                      ["flow", "readout", str(upn), bad, str(healthy), "-o", str(batch_out), "--no-refit-missing"],
                      "partial", check=lambda: len(json.loads(batch_out.read_text())["results"]) == 2))
    feats = tmp / "features.csv"
    cases.append(Case("FCS", "features batch good, corrupted, good: good rows written",
                      ["flow", "features", str(upn), bad, str(healthy), "-o", str(feats)], "partial",
                      check=lambda: len(feats.read_text().splitlines()) == 3))
    for name, path in (("10-byte file", data / "flow/formats/corrupted/corrupted.fcs"),
                       ("HEADER only (truncated)", data / "flow/formats/cytek-nl-2000/sample_header.fcs"),
                       ("values over $PnR bit mask", data / "flow/formats/fake_bitmask_error/fcs1_cleaned.lmd")):
        cases.append(Case("FCS", f"info: {name}", ["flow", "info", str(path)], "error"))
    (tmp / "text.fcs").write_text("this is a text file\n" * 10)
    (tmp / "empty.fcs").write_bytes(b"")
    trunc = tmp / "truncated.fcs"
    trunc.write_bytes(upn.read_bytes()[:15000])
    for name, path in (("text renamed .fcs", tmp / "text.fcs"), ("empty file", tmp / "empty.fcs"),
                       ("cut mid-DATA", trunc), ("a folder", tmp), ("missing file", tmp / "none.fcs")):
        cases.append(Case("FCS", f"readout: {name}", ["flow", "readout", str(path), "-o", str(tmp / "x.json"),
                                                       "--no-refit-missing"], "error"))
    zero = mutant("zero_events", lambda p: (p.set("$TOT", "0"), setattr(p, "data", b"")))
    cases.append(Case("FCS", "features: zero events", ["flow", "features", zero, "-o", str(tmp / "z.csv")], "error"))
    nan = FCSParts.read(upn)
    nan.data = np.full(len(nan.data) // 4, np.nan, dtype=">f4").tobytes()
    nan_path = str(nan.write(tmp / "all_nan.fcs"))
    cases.append(Case("FCS", "features: every event NaN", ["flow", "features", nan_path, "-o", str(tmp / "n.csv")],
                      "error"))
    return cases


def image_cases(tmp: Path, data: Path) -> list[Case]:
    pbc = load_dataset("pbc")
    cell = pbc.abspath(0)
    rgb = np.asarray(Image.open(cell).convert("RGB"))
    folder = tmp / "cells"
    folder.mkdir()
    shutil.copy(cell, folder / "good.jpg")
    made = {
        "truncated JPEG": lambda p: p.write_bytes(cell.read_bytes()[:2000]),
        "zero bytes": lambda p: p.write_bytes(b""),
        "text renamed .jpg": lambda p: p.write_text("not an image"),
        "16-bit PNG": lambda p: Image.fromarray((rgb[:, :, 0].astype(np.uint16) * 257)).save(p),
        "CMYK JPEG": lambda p: Image.fromarray(rgb).convert("CMYK").save(p),
        "RGBA PNG": lambda p: Image.fromarray(rgb).convert("RGBA").save(p),
        "4x4 px": lambda p: Image.fromarray(rgb[:4, :4]).save(p),
        "EXIF-rotated": lambda p: _exif_rotated(rgb, p),
    }
    ext = {"16-bit PNG": ".png", "RGBA PNG": ".png", "4x4 px": ".png"}
    cases = []
    for name, make in made.items():
        path = tmp / f"{name.replace(' ', '_')}{ext.get(name, '.jpg')}"
        make(path)
        expect = "ok" if name in ("16-bit PNG", "CMYK JPEG", "RGBA PNG", "EXIF-rotated") else "error"
        cases.append(Case("images", f"predict: {name}", ["predict", str(path), "-o", str(tmp / "p.csv")], expect))
    bomb = tmp / "bomb.png"
    _png_header_only(bomb, 100_000, 100_000)
    cases.append(Case("images", "predict: decompression bomb (10^10 px header)",
                      ["predict", str(bomb), "-o", str(tmp / "b.csv")], "error"))
    for name in ("=SUM(1+1).jpg", "<img src=x onerror=alert(1)>.jpg", "weird name ü.jpg"):
        shutil.copy(cell, folder / name)
    (folder / "notes.txt").write_text("lab notes")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    os.symlink(folder, folder / "loop")
    pred = tmp / "folder.csv"
    cases.append(Case("images", "predict folder: bad file, symlink loop, formula / script names, a .txt",
                      ["predict", str(folder), "-o", str(pred)], "partial",
                      check=lambda: len(pred.read_text().splitlines()) == 5 and "=SUM(1+1).jpg" in pred.read_text()))
    case_out = tmp / "case"
    cases.append(Case("images", "diagnose: one file missing from the case",
                      ["diagnose", str(folder / "good.jpg"), str(tmp / "missing.jpg"), "-o", str(case_out)], "partial",
                      check=lambda: (case_out / "summary.json").exists()))
    seg_in = tmp / "seg"
    seg_in.mkdir()
    for e in ("jpg", "bmp", "webp"):
        Image.fromarray(rgb).save(seg_in / f"good.{e}")
    seg_out = tmp / "seg_out"
    cases.append(Case("images", "segment: good.jpg, good.bmp, good.webp (one mask each)",
                      ["segment", str(seg_in), "-o", str(seg_out)], "ok",
                      check=lambda: len(list(seg_out.glob("*.mask.png"))) == 3))
    (tmp / "empty_dir").mkdir()
    cases.append(Case("images", "segment: empty folder", ["segment", str(tmp / "empty_dir"), "-o", str(tmp / "so")],
                      "error"))
    bccd = load_dataset("bccd")
    fields = tmp / "fields"
    fields.mkdir()
    shutil.copy(bccd.root / bccd.records[bccd.splits["test"][0]]["path"], fields / "summary.jpg")
    det_out = tmp / "det"
    cases.append(Case("images", "detect: a field named summary.jpg",
                      ["detect", str(fields), "-o", str(det_out), "--no-overlay"], "ok",
                      check=lambda: json.loads((det_out / "summary.json").read_text()).get("n_fields") == 1))
    cases.append(Case("images", "detect: a smear-field model as the cell typer",
                      ["detect", str(fields), "--model", "all-stage", "-o", str(tmp / "det2")], "error"))
    return cases


def _exif_rotated(rgb, path):
    im = Image.fromarray(rgb[:, : rgb.shape[1] // 2])
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(path, exif=exif)


def _png_header_only(path: Path, width: int, height: int) -> None:
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b""))


def expression_cases(tmp: Path, data: Path) -> list[Case]:
    import pandas as pd

    from leukodx.omics.bundle import ExpressionModel

    raw = pd.read_csv(data / "golub/data_set_ALL_AML_independent.csv")
    cols = [c for c in raw.columns if not c.startswith("call") and c != "Gene Description"]
    m = raw[cols].set_index("Gene Accession Number").astype(float)
    genes = ExpressionModel.load().genes
    tables = {
        "log2 values": np.log2(m.clip(lower=1)),
        "values x1000": m * 1000,
        "an inf value": m.mask((m.index == m.index[3])[:, None] & (np.arange(m.shape[1]) == 2)[None, :], np.inf),
        "no sample columns": m.iloc[:, :0],
        "30 of the model's 50 genes": m.drop(index=genes[:20]),
        "1 of the model's 50 genes": m.loc[[g for g in m.index if g not in genes[1:]]],
        "duplicate gene ids": pd.concat([m, m.iloc[:2]]),
        "a text value": m.astype(object).mask((m.index == m.index[5])[:, None] & (np.arange(m.shape[1]) == 1)[None, :],
                                              "high"),
    }
    cases = []
    for name, table in tables.items():
        path = tmp / f"{name.replace(' ', '_')}.csv"
        table.to_csv(path)
        cases.append(Case("expression", f"predict: {name}", ["expression", "predict", str(path), "-o",
                                                              str(tmp / "p.csv")], "error"))
    ok = {"Golub's own independent-set CSV": data / "golub/data_set_ALL_AML_independent.csv"}
    m.T.to_csv(tmp / "transposed.csv")
    ok["samples x genes (transposed)"] = tmp / "transposed.csv"
    m.drop(index=genes[:3]).to_csv(tmp / "47genes.csv")
    ok["47 of the model's 50 genes (filled, said)"] = tmp / "47genes.csv"
    for name, path in ok.items():
        out = tmp / f"ok_{len(cases)}.csv"
        cases.append(Case("expression", f"predict: {name}", ["expression", "predict", str(path), "-o", str(out)], "ok",
                          check=lambda o=out: len(o.read_text().splitlines()) == 35))
    (tmp / "empty.csv").write_text("")
    cases.append(Case("expression", "predict: empty file", ["expression", "predict", str(tmp / "empty.csv"), "-o",
                                                             str(tmp / "e.csv")], "error"))
    (tmp / "bin.csv").write_bytes(os.urandom(4000))
    cases.append(Case("expression", "predict: binary garbage", ["expression", "predict", str(tmp / "bin.csv"), "-o",
                                                                 str(tmp / "e.csv")], "error"))
    for n in ("0", "-3"):
        cases.append(Case("expression", f"evaluate --n-genes {n}", ["expression", "evaluate", "--n-genes", n, "-o",
                                                                     str(tmp / "e.json")], "error"))
    return cases


def bundle_cases(tmp: Path, data: Path) -> list[Case]:
    cell = str(load_dataset("pbc").abspath(0))
    fcs = str(data / "flow/tidytof/ddpr/UPN1_Basal.fcs")

    def copy(name, edit=None, weights_edit=None, match_sha=False):
        folder = tmp / f"b{len(list(tmp.glob('b*')))}-{name}"
        shutil.copytree(resolve_bundle(name), folder)
        card_path = folder / "card.json"
        card = json.loads(card_path.read_text())
        if weights_edit:
            w = folder / card.get("weights", "model.safetensors")
            raw = weights_edit(w.read_bytes())
            w.write_bytes(raw)
            if match_sha:
                card["sha256"], card["size_bytes"] = hashlib.sha256(raw).hexdigest(), len(raw)
        if edit:
            edit(card)
        card_path.write_text(json.dumps(card) if not isinstance(card, str) else card)
        return str(folder)

    def garbage(raw):
        return raw[:8] + os.urandom(len(raw) - 8)

    cases = [
        Case("bundles", "classifier: card not JSON", ["predict", cell, "-m", _bad_json(copy("all-stage")),
                                                      "-o", str(tmp / "p.csv")], "error"),
        Case("bundles", "classifier: card without arch",
             ["predict", cell, "-m", copy("all-stage", lambda c: c.pop("arch")), "-o", str(tmp / "p.csv")], "error"),
        Case("bundles", "classifier: abstain_below null",
             ["predict", cell, "-m", copy("all-stage", lambda c: c.update(abstain_below=None)),
              "-o", str(tmp / "p.csv")], "error"),
        Case("bundles", "classifier: classes do not match the network",
             ["predict", cell, "-m", copy("all-stage", lambda c: c.update(classes=["a", "b"])),
              "-o", str(tmp / "p.csv")], "error"),
        Case("bundles", "classifier: weights replaced (checksum mismatch)",
             ["predict", cell, "-m", copy("all-stage", weights_edit=garbage), "-o", str(tmp / "p.csv")], "error"),
        Case("bundles", "classifier: garbage weights with a matching sha256",
             ["predict", cell, "-m", copy("all-stage", weights_edit=garbage, match_sha=True),
              "-o", str(tmp / "p.csv")], "error"),
        Case("bundles", "classifier: weights truncated with a matching sha256",
             ["predict", cell, "-m", copy("all-stage", weights_edit=lambda r: r[:len(r) // 2], match_sha=True),
              "-o", str(tmp / "p.csv")], "error"),
        Case("bundles", "flow: card without layers",
             ["flow", "readout", fcs, "--model", copy("ddpr-leukemic-cell", lambda c: c.pop("layers")),
              "-o", str(tmp / "r.json")], "error"),
        Case("bundles", "flow: card not JSON",
             ["flow", "readout", fcs, "--model", _bad_json(copy("ddpr-leukemic-cell")), "-o", str(tmp / "r.json")],
             "error"),
        Case("bundles", "flow: task given as a list",
             ["flow", "readout", fcs, "--model", copy("ddpr-leukemic-cell", lambda c: c.update(task=[])),
              "-o", str(tmp / "r.json")], "error"),
        Case("bundles", "expression: tensor renamed, sha256 matching",
             ["expression", "predict", str(data / "golub/data_set_ALL_AML_independent.csv"), "-m",
              copy("golub-all-aml", weights_edit=lambda r: r.replace(b"layer1.weight", b"layer9.weight"),
                   match_sha=True), "-o", str(tmp / "e.csv")], "error"),
        Case("bundles", "no such model", ["predict", cell, "-m", "no-such-model", "-o", str(tmp / "p.csv")], "error"),
        Case("bundles", "a detector given as the classifier", ["predict", cell, "-m", "bccd-frcnn",
                                                               "-o", str(tmp / "p.csv")], "error"),
    ]
    return cases


def _bad_json(folder: str) -> str:
    (Path(folder) / "card.json").write_text('{"name": "x", "task": ')
    return folder


def option_cases(tmp: Path, data: Path) -> list[Case]:
    cell = str(load_dataset("pbc").abspath(0))
    fcs = str(data / "flow/tidytof/ddpr/UPN1_Basal.fcs")
    field_img = str(load_dataset("bccd").root / load_dataset("bccd").records[0]["path"])
    o = str(tmp / "o.csv")
    runs = [
        (["evaluate", "--dataset", "all-aria", "--n-boot", "0", "-o", str(tmp / "e.json")], "--n-boot 0"),
        (["evaluate", "--dataset", "all-aria", "--n-boot", "-5", "-o", str(tmp / "e.json")], "--n-boot -5"),
        (["evaluate", "--dataset", "all-aria", "--n-boot", "2043528", "-o", str(tmp / "e.json")], "--n-boot 2043528"),
        (["evaluate", "--images", str(tmp), "--dataset", "pbc", "-o", str(tmp / "e.json")], "--images and --dataset"),
        (["predict", cell, "--coverage", "1.5", "-o", o], "--coverage 1.5"),
        (["predict", cell, "--coverage", "nan", "-o", o], "--coverage nan"),
        (["predict", cell, "--backend", "gpu", "-o", o], "--backend gpu"),
        (["diagnose", cell, "--kind", "smear", "-o", str(tmp / "c")], "--kind smear"),
        (["flow", "features", fcs, "--cofactor", "nan", "-o", o], "--cofactor nan"),
        (["flow", "features", fcs, "--cofactor", "0", "-o", o], "--cofactor 0"),
        (["flow", "features", fcs, "--markers", "", "-o", o], "--markers ''"),
        (["flow", "info", fcs, "--dataset", "0"], "--dataset 0"),
        (["flow", "info", fcs, "--dataset", "5"], "--dataset 5 (file has 1)"),
        (["expression", "predict", str(data / "golub/data_set_ALL_AML_independent.csv"), "--orientation", "sideways",
          "-o", o], "--orientation sideways"),
        (["expression", "predict", str(data / "golub/data_set_ALL_AML_independent.csv"), "--min-genes-present", "2",
          "-o", o], "--min-genes-present 2"),
        (["detect", field_img, "--um-per-px", "-1", "-o", str(tmp / "d")], "--um-per-px -1"),
        (["detect", field_img, "--um-per-px", "nan", "-o", str(tmp / "d")], "--um-per-px nan"),
        (["detect", field_img, "--pixel-scale", "0", "-o", str(tmp / "d")], "--pixel-scale 0"),
        (["evaluate-detection", "--bootstrap", "-1", "-o", str(tmp / "e.json")], "--bootstrap -1"),
        (["train", "-d", "pbc", "--epochs", "0", "-o", str(tmp / "m")], "train --epochs 0"),
        (["train", "-d", "pbc", "--size", "-8", "-o", str(tmp / "m")], "train --size -8"),
        (["train", "-d", "nope", "-o", str(tmp / "m")], "train -d nope"),
        (["datasets", "audit", "pbc", "--split", str(tmp / "split.json")], "audit --split malformed JSON"),
        (["nosuchverb"], "unknown verb"),
    ]
    (tmp / "split.json").write_text('{"train": 5')
    return [Case("options", name, argv, "error") for argv, name in runs]


def output_cases(tmp: Path, data: Path) -> list[Case]:
    cell = str(load_dataset("pbc").abspath(0))
    (tmp / "afolder").mkdir()
    (tmp / "afile").write_text("x")
    blocked = tmp / "afile" / "sub"
    cases = [
        Case("outputs", "predict -o an existing folder", ["predict", cell, "-o", str(tmp / "afolder")], "error"),
        Case("outputs", "export onnx -o an existing folder", ["export", "onnx", "-m", "all-stage", "-o", str(tmp / "afolder")],
             "error"),
        Case("outputs", "diagnose -o an existing file", ["diagnose", cell, "-o", str(tmp / "afile")], "error"),
        Case("outputs", "detect -o an existing file", ["detect", cell, "-o", str(tmp / "afile")], "error"),
        Case("outputs", "predict -o below a file (cannot be created)", ["predict", cell, "-o", str(blocked / "p.csv")],
             "error"),
        Case("outputs", "segment -o below a file", ["segment", cell, "-o", str(blocked)], "error"),
        Case("outputs", "flow readout -o below a file",
             ["flow", "readout", str(data / "flow/tidytof/ddpr/UPN1_Basal.fcs"), "-o", str(blocked / "r.json")], "error"),
        Case("outputs", "cache folder cannot be written (ONNX backend)",
             ["predict", cell, "--backend", "onnx", "-o", str(tmp / "c.csv")], "ok",
             env={"LEUKODX_CACHE": str(tmp / "afile" / "cache")}, check=lambda: (tmp / "c.csv").exists()),
    ]
    return cases


def memory_cases(tmp: Path, data: Path) -> list[Case]:
    aria = load_dataset("all-aria")
    fields = tmp / "big_fields"
    fields.mkdir()
    # made in a child process: this one stays small, so nothing it holds is mistaken for a case's memory
    subprocess.run([sys.executable, "-c", "import sys; from PIL import Image; Image.MAX_IMAGE_PIXELS = None; "
                    "Image.open(sys.argv[1]).convert('RGB').resize((10900, 10900)).save(sys.argv[2], quality=85)",
                    str(aria.abspath(0)), str(fields / "f0.jpg")], check=True)
    for i in range(1, 8):
        os.link(fields / "f0.jpg", fields / f"f{i}.jpg")
    seg_out = tmp / "seg_big"
    return [
        Case("memory", "diagnose --kind fields, 8 fields of 10,900^2 px", ["diagnose", str(fields), "--kind", "fields",
                                                                          "--no-smear", "-o", str(tmp / "case_big")],
             "ok"),
        Case("memory", "segment one 10,900^2 px image", ["segment", str(fields / "f0.jpg"), "-o", str(seg_out)], "ok",
             check=lambda: (seg_out / "f0.mask.png").exists()),
    ]


def interrupt_cases(tmp: Path, data: Path) -> list[Case]:
    bccd = load_dataset("bccd")
    fields = tmp / "int_fields"
    fields.mkdir()
    for i in bccd.splits["test"][:12]:
        shutil.copy(bccd.root / bccd.records[i]["path"], fields / Path(bccd.records[i]["path"]).name)
    out = tmp / "int_out"
    upn = str(data / "flow/tidytof/ddpr/UPN1_Basal.fcs")
    r = tmp / "int_r.json"

    def fields_done(err: str) -> bool:
        return err.count("WBC ") + err.count("not counted") >= 2

    def files_done(err: str) -> bool:
        return err.count(": leukemic-like population") + err.count(": no leukemic-like") >= 20

    def kept_readout() -> bool:
        result = json.loads(r.read_text())
        return result.get("interrupted") is True and 20 <= len(result["results"]) < 5000

    return [
        Case("interrupts", "Ctrl-C during detect (12 fields) after two",
             ["detect", str(fields), "-o", str(out), "--no-overlay"], "error", interrupt_after=fields_done,
             check=lambda: json.loads((out / "summary.json").read_text())["complete"] is False),
        Case("interrupts", "Ctrl-C during flow readout (5,000 files) after 20",
             ["flow", "readout", *([upn] * 5000), "-o", str(r), "--no-refit-missing"], "error",
             interrupt_after=files_done, check=kept_readout),
    ]


def fuzz_campaign(examples: int) -> dict:
    """The fuzz suite under its long profile; its ledger per target."""
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Path(tmp) / "ledger.json"
        env = {**os.environ, "LEUKODX_FUZZ_PROFILE": "long", "LEUKODX_FUZZ_EXAMPLES": str(examples),
               "LEUKODX_FUZZ_LEDGER": str(ledger)}
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(REPO / "tests/fuzz")],
                              capture_output=True, text=True, env=env, cwd=REPO)
        seconds = time.perf_counter() - started
        entries = json.loads(ledger.read_text()) if ledger.exists() else {}
    entries.pop("found", None)
    return {"examples_per_target": examples, "seconds": round(seconds, 1), "pytest_exit": proc.returncode,
            "pytest_tail": proc.stdout.strip().splitlines()[-1:] if proc.stdout.strip() else [], "targets": entries}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=150, help="fuzz examples per target (long profile)")
    parser.add_argument("--skip-fuzz", action="store_true", help="only the hand-made cases")
    parser.add_argument("--only", help="some categories' cases, comma-separated (a trial run: nothing is written)")
    args = parser.parse_args()
    data = resolve_data_root()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_root:
        builders = [fcs_cases, image_cases, expression_cases, bundle_cases, option_cases, output_cases, memory_cases,
                    interrupt_cases]
        for build in builders:
            if args.only and not any(build.__name__.startswith(o) for o in args.only.split(",")):
                continue
            tmp = Path(tmp_root) / build.__name__
            tmp.mkdir()
            for case in build(tmp, data):
                row = run_case(case)
                rows.append(row)
                print(f"{'ok ' if row['clean'] else 'BAD'} {row['category']}: {row['case']} -> exit {row['exit']} "
                      f"({row['seconds']} s, {row['peak_mb']} MB) {row['said'][:100]}", flush=True)
    if args.only:
        return
    categories = {}
    for row in rows:
        c = categories.setdefault(row["category"], {"cases": 0, "clean": 0, "tracebacks": 0, "internal_errors": 0,
                                                    "hangs": 0, "outputs_missing": 0, "max_peak_mb": 0.0,
                                                    "max_seconds": 0.0})
        c["cases"] += 1
        c["clean"] += row["clean"]
        c["tracebacks"] += row["traceback"]
        c["internal_errors"] += row["internal_error"]
        c["hangs"] += row["hang"]
        c["outputs_missing"] += not row["outputs_ok"]
        c["max_peak_mb"] = max(c["max_peak_mb"], row["peak_mb"])
        c["max_seconds"] = max(c["max_seconds"], row["seconds"])
    fuzz = None if args.skip_fuzz else fuzz_campaign(args.examples)
    from found_cases import FOUND  # noqa: E402 - tests/fuzz, on the path below

    total = sum(c["cases"] for c in categories.values())
    clean = sum(c["clean"] for c in categories.values())
    header = ["category", "cases", "handled cleanly", "tracebacks", "internal errors", "hangs", "results lost",
              "max peak RSS (MB)", "slowest (s)"]
    table = [[k, c["cases"], f"{c['clean']} ({c['clean'] / c['cases']:.0%})", c["tracebacks"], c["internal_errors"],
              c["hangs"], c["outputs_missing"], c["max_peak_mb"], round(c["max_seconds"], 1)]
             for k, c in categories.items()]
    table.append(["**all**", total, f"**{clean} ({clean / total:.0%})**",
                  sum(c["tracebacks"] for c in categories.values()),
                  sum(c["internal_errors"] for c in categories.values()), sum(c["hangs"] for c in categories.values()),
                  sum(c["outputs_missing"] for c in categories.values()), "", ""])
    notes = [f"Hand-made cases: each a separate `leukodx` process on real files or mutations of them; clean = the "
             f"expected exit, `error:` lines saying why, the good results of a batch written, no traceback, no "
             f"internal error, no hang ({HANG_SECONDS} s). Peak RSS is the child's maximum resident set (torch and "
             f"the model included: ~0.4-0.6 GB is the floor)."]
    if fuzz is not None:
        notes.append(f"Fuzz suite (`LEUKODX_FUZZ_PROFILE=long LEUKODX_FUZZ_EXAMPLES={args.examples} pytest tests/fuzz`, "
                     f"{fuzz['seconds']} s, pytest exit {fuzz['pytest_exit']}):")
        for target, e in sorted(fuzz["targets"].items()):
            notes.append(f"  {target}: {e['cases']} examples, {e['results']} results, {e['clean_errors']} clean errors, "
                         f"{len(e['violations'])} contract violations, slowest {e['max_seconds']} s, "
                         f"peak traced {e['peak_mb']} MB")
    notes.append(f"Found by fuzzing and fixed ({len(FOUND)}; each replayed by tests/fuzz/test_found.py):")
    notes += [f"  {t}: {what}: was {was}; now {fix}" for t, what, was, fix in FOUND]
    failures = [r for r in rows if not r["clean"]]
    if failures:
        notes.append("Not handled cleanly:")
        notes += [f"  {r['category']}: {r['case']}: exit {r['exit']}, {r['said']}" for r in failures]
    write_result("robustness", {"cases": rows, "categories": categories, "fuzz": fuzz,
                                "found_by_fuzzing": [dict(zip(("target", "input", "was", "fix"), f)) for f in FOUND],
                                "handled_cleanly": clean, "total": total}, header, table, notes)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "tests" / "fuzz"))
    main()
