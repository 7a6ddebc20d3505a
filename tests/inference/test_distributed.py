"""``predict --ray``: the same rows as the single-process run, in the same order, with bad inputs
reported, on a local Ray of 2 actors started by the test; one line when Ray is missing or its
address cannot be reached, and no output then."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from leukodx.data.registry import load_dataset
from leukodx.errors import InvalidInputError


def test_without_ray_installed_the_message_names_the_extra(monkeypatch):
    from leukodx.inference.distributed import connect

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(InvalidInputError, match=r"pip install 'leukodx\[distributed\]'"):
        connect(None, 2)


@pytest.mark.slow
def test_predict_on_a_local_ray_equals_the_single_process_run(tiny_pbc_model, tmp_path):
    pbc = load_dataset("pbc")
    folder = tmp_path / "cells"
    folder.mkdir()
    for i in range(0, 1200, 2):  # 600 real cells
        os.symlink(pbc.abspath(i), folder / f"{i:05d}.jpg")
    (folder / "00003.jpg").write_bytes(b"not a jpeg")  # a bad input among them
    single, on_ray = tmp_path / "single.csv", tmp_path / "ray.csv"
    run = [sys.executable, "-m", "leukodx", "predict", "-m", str(tiny_pbc_model), str(folder)]
    assert subprocess.run([*run, "-o", str(single)], capture_output=True).returncode == 0
    r = subprocess.run([*run, "-o", str(on_ray), "--ray", "local", "--ray-workers", "2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert on_ray.read_text() == single.read_text() and on_ray.read_text().count("\n") == 601
    assert "00003.jpg" in r.stderr and "skipped" in r.stderr


@pytest.mark.slow
def test_an_unreachable_ray_address_is_one_line_and_no_output(tiny_pbc_model, pbc_folder, tmp_path):
    # Ray's client retries 3 times, waiting 5, 10 and 20 s by default; 1, 2 and 4 s here (suite time)
    env = {**os.environ, "RAY_CLIENT_INITIAL_CONNECTION_TIMEOUT_S": "1"}
    r = subprocess.run([sys.executable, "-m", "leukodx", "predict", "-m", str(tiny_pbc_model), str(pbc_folder),
                        "-o", str(tmp_path / "p.csv"), "--ray", "ray://127.0.0.1:9"], capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: --ray ray://127.0.0.1:9: cannot reach")
    assert list(tmp_path.iterdir()) == []
