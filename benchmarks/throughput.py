"""Throughput of ``leukodx predict`` with the bundled cell classifier, end to end (decode +
preprocess + infer + write), beside a plain eager-PyTorch loop over the same files in the same run
(the timm network of the same bundle, PIL decode and resize, batch 64); the accuracy of each path on
those held-back images; start-up (predict on one image); peak RSS for 1,000 / 10,000 / 100,000 inputs
(copies, as symlinks, of the real cells); ``leukodx detect`` on 640x480 smear fields.

Inputs: 1,000 images of the pbc test side of the model's split (seeded sample; never trained on).
Each leukodx figure is a separate process, as a user runs it; 2 CPU cores.

Run: ``python benchmarks/throughput.py [--sizes 1000,10000,100000] [--precisions fp32]``.
Writes results/throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import write_result

from leukodx.data.registry import load_dataset
from leukodx.data.splits import apply_split, bundled_split_path, load_split
from leukodx.data.vocabulary import normalize_label

MODEL = "wbc-multisite"
CONFIGS = {"default (ONNX Runtime, int8)": [],
           "ONNX Runtime fp32": ["--backend", "onnx", "--precision", "fp32"],
           "PyTorch fp32": ["--backend", "torch", "--precision", "fp32"]}
N = 1000
SEED = 0


def held_back(n: int = N) -> tuple[list[Path], list[str]]:
    pbc = load_dataset("pbc")
    test = apply_split(pbc, load_split(bundled_split_path("pbc")))["test"]
    pick = np.sort(np.random.default_rng(SEED).choice(len(test.labels), size=n, replace=False))
    return [test.abspath(int(i)) for i in pick], [normalize_label(test.classes[test.labels[int(i)]]) for i in pick]


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (the decode workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo += [int(c) for c in fh.read().split()]
        except OSError:
            pass
    return out


def _rss_kb(pid: int, field: str, source: str = "status") -> int:
    try:
        with open(f"/proc/{pid}/{source}") as fh:
            return next((int(line.split()[1]) for line in fh if line.startswith(field)), 0)
    except OSError:
        return 0


def run(argv: list[str], tree: bool = False) -> dict:
    """A leukodx process: wall seconds, its own peak RSS (VmHWM) and the peak of the summed
    proportional set sizes of it and its worker processes (polled every 20 ms)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "leukodx", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    peak, tree_peak, polls = 0, 0, 0
    worker_hwm: dict[int, int] = {}
    while proc.poll() is None:
        peak = max(peak, _rss_kb(proc.pid, "VmHWM:"))
        if tree and polls % 10 == 0:  # reading smaps costs CPU: every 0.2 s, and only in the memory runs
            pids = _tree(proc.pid)
            # proportional set size: pages a forked worker shares with its parent are counted once
            tree_peak = max(tree_peak, sum(_rss_kb(p, "Pss:", "smaps_rollup") for p in pids))
            # a worker's own high-water mark (shared pages counted in full): never missed between polls
            for p in pids[1:]:
                worker_hwm[p] = max(worker_hwm.get(p, 0), _rss_kb(p, "VmHWM:"))
        polls += 1
        time.sleep(0.02)
    err = proc.stderr.read()
    if proc.returncode != 0:
        raise RuntimeError(f"leukodx {' '.join(argv)} failed: {err[-800:]}")
    return {"seconds": time.perf_counter() - t0, "peak_mb": round(peak / 1024, 1),
            "tree_peak_mb": round(tree_peak / 1024, 1), "worker_peak_mb": round(max(worker_hwm.values(), default=0) / 1024, 1),
            "hwm_sum_mb": round((peak + sum(worker_hwm.values())) / 1024, 1), "workers": len(worker_hwm), "stderr": err}


def accuracy(csv_path: Path, names: dict[str, str]) -> float:
    rows = list(csv.DictReader(csv_path.open()))
    return float(np.mean([r["top_class"] == names[r["input"]] for r in rows]))


def eager_torch(paths: list[Path], labels: list[str], own_preprocessing: bool) -> dict:
    """The plain loop: PIL decode, resize to the input size (or the model's own preprocessing, e.g. its
    cell crop where its card names one), normalize, the timm network, batch 64, one process."""
    import torch
    from PIL import Image

    from leukodx.models.architectures import network_from_card
    from leukodx.models.bundle import load_network
    from leukodx.preprocessing.transforms import Preprocess

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    net, card, _ = load_network(MODEL, "image-classification", network_from_card)
    net.eval()
    size, pre = card["input_size"], card["preprocess"]
    preprocess = Preprocess.from_dict(pre)
    mean = np.asarray(pre["mean"], np.float32)[:, None, None]
    std = np.asarray(pre["std"], np.float32)[:, None, None]
    ready = time.perf_counter()
    preds = []
    with torch.inference_mode():
        for s in range(0, len(paths), 64):
            rgb = [np.asarray(Image.open(p).convert("RGB")) for p in paths[s:s + 64]]
            square = [preprocess(x) if own_preprocessing else np.asarray(Image.fromarray(x).resize((size, size)))
                      for x in rgb]
            batch = np.stack(square).astype(np.float32).transpose(0, 3, 1, 2) / 255
            preds += net(torch.from_numpy((batch - mean) / std)).argmax(1).tolist()
    done = time.perf_counter()
    acc = float(np.mean([card["classes"][p] == y for p, y in zip(preds, labels)]))
    return {"cells_per_s": len(paths) / (done - ready), "cells_per_s_with_startup": len(paths) / (done - t0),
            "accuracy": acc}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,100000", help="input counts for the peak-RSS test")
    args = ap.parse_args()
    paths, labels = held_back()
    out: dict = {"model": MODEL, "n": N, "inputs": "pbc test side, seeded sample"}
    with tempfile.TemporaryDirectory(prefix="leukodx-throughput-") as tmp:
        tmp = Path(tmp)
        cells = tmp / "cells"
        cells.mkdir()
        names = {}
        for i, (p, y) in enumerate(zip(paths, labels)):
            link = cells / f"{i:06d}{p.suffix}"
            os.symlink(p, link)
            names[str(link)] = y
        one = tmp / "one"
        one.mkdir()
        os.symlink(paths[0], one / f"cell{paths[0].suffix}")

        run(["predict", str(one), "-o", str(tmp / "warm.csv"), "-m", MODEL])  # the ONNX export is cached once
        starts = [run(["predict", str(one), "-o", str(tmp / "one.csv"), "-m", MODEL])["seconds"] for _ in range(3)]
        out["startup_s"] = round(statistics.median(starts), 2)

        out["predict"] = {}
        for backend, options in CONFIGS.items():
            r = run(["predict", str(cells), "-o", str(tmp / f"{backend}.csv"), "-m", MODEL, *options])
            out["predict"][backend] = {
                "seconds": round(r["seconds"], 2), "cells_per_s": round(N / r["seconds"], 1),
                "cells_per_s_after_startup": round(N / max(1e-9, r["seconds"] - out["startup_s"]), 1),
                "accuracy": round(accuracy(tmp / f"{backend}.csv", names), 4), "peak_mb": r["peak_mb"]}
        out["eager_torch"] = {name: {k: round(v, 4) for k, v in eager_torch(paths, labels, crop).items()}
                              for name, crop in (("plain resize", False), ("the model's own preprocessing", True))}

        out["peak_rss"] = {}
        for n in [int(s) for s in args.sizes.split(",")]:
            folder = tmp / f"many-{n}"
            folder.mkdir()
            for i in range(n):
                os.symlink(paths[i % N], folder / f"{i:07d}.jpg")
            r = run(["predict", str(folder), "-o", str(tmp / f"many-{n}.csv"), "-m", MODEL], tree=True)
            out["peak_rss"][n] = {"peak_mb": r["peak_mb"], "tree_peak_mb": r["tree_peak_mb"],
                                  "worker_peak_mb": r["worker_peak_mb"], "hwm_sum_mb": r["hwm_sum_mb"],
                                  "workers": r["workers"],
                                  "seconds": round(r["seconds"], 1),
                                  "cells_per_s": round(n / r["seconds"], 1)}

        bccd = load_dataset("bccd")
        fields = tmp / "fields"
        fields.mkdir()
        for i in bccd.splits["test"][:60]:
            src = bccd.root / bccd.records[i]["path"]
            os.symlink(src, fields / src.name)
        first = str(fields / sorted(os.listdir(fields))[0])
        # an empty cache: the first run exports the detector to ONNX (once per machine and bundle), the
        # runs measured after it load the stamped export as a user's every later run does
        saved_cache = os.environ.get("LEUKODX_CACHE")
        os.environ["LEUKODX_CACHE"] = str(tmp / "cache")
        try:
            first_run = run(["detect", first, "-o", str(tmp / "warm-detect")])["seconds"]
            one_field = statistics.median(run(["detect", first, "-o", str(tmp / f"one-{k}")])["seconds"]
                                          for k in range(3))
            r = run(["detect", str(fields), "-o", str(tmp / "detect")])
        finally:
            if saved_cache is None:
                os.environ.pop("LEUKODX_CACHE")
            else:
                os.environ["LEUKODX_CACHE"] = saved_cache
        backend = json.loads((tmp / "detect" / "summary.json").read_text())["detector"]["backend"]
        out["detect"] = {"fields": 60, "seconds": round(r["seconds"], 2), "fields_per_s": round(60 / r["seconds"], 2),
                         "one_field_s": round(one_field, 2), "first_run_one_field_s": round(first_run, 2),
                         "backend": backend,
                         "fields_per_s_after_startup": round(59 / max(1e-9, r["seconds"] - one_field), 2),
                         "peak_mb": r["peak_mb"], "field_size": "640x480"}

    fast = out["predict"]["default (ONNX Runtime, int8)"]
    eager = out["eager_torch"]["plain resize"]
    crop_loop = out["eager_torch"]["the model's own preprocessing"]
    rss = out["peak_rss"]
    def spread(key: str) -> float | None:
        values = [v[key] for v in rss.values() if v[key]]
        return round(max(values) / min(values) - 1, 3) if values else None

    out["peak_rss_spread"] = {"process": spread("peak_mb"), "worker": spread("worker_peak_mb"),
                              "process_and_workers": spread("hwm_sum_mb"),
                              "process_and_workers_pss": spread("tree_peak_mb")}
    rows = [[f"predict {N} cells, {b}", v["cells_per_s"], v["cells_per_s_after_startup"], f"{v['accuracy']:.4f}",
             v["peak_mb"]] for b, v in out["predict"].items()]
    rows += [[f"plain eager PyTorch loop, PIL decode, {name}, batch 64", round(v["cells_per_s_with_startup"], 1),
              round(v["cells_per_s"], 1), f"{v['accuracy']:.4f}", "-"] for name, v in out["eager_torch"].items()]
    rows += [[f"predict {n:,} inputs (default)", v["cells_per_s"], "-", "-",
              f"{v['peak_mb']} / {v['worker_peak_mb']} / {v['hwm_sum_mb']} / {v['tree_peak_mb']}"]
             for n, v in rss.items()]
    rows.append([f"detect {out['detect']['fields']} fields {out['detect']['field_size']} (fields/s)",
                 out["detect"]["fields_per_s"], out["detect"]["fields_per_s_after_startup"], "-", out["detect"]["peak_mb"]])
    notes = [f"start-up (predict on one image, wall, median of 3): {out['startup_s']} s (target <= 2 s); detect on one "
             f"field: {out['detect']['one_field_s']} s (after start-up = 59 more fields over the extra wall time; "
             f"target >= 5 fields/s); detector backend {out['detect']['backend']}; the first detect on a machine "
             f"(empty cache: the ONNX export made and checked against PyTorch) took {out['detect']['first_run_one_field_s']} s "
             "for one field",
             f"default path / plain eager loop, end to end: {fast['cells_per_s'] / eager['cells_per_s_with_startup']:.2f}x "
             f"against its plain resize (PIL's resize, not the model's own preprocessing: lower accuracy), "
             f"{fast['cells_per_s'] / crop_loop['cells_per_s_with_startup']:.2f}x "
             "against the same loop with the model's own preprocessing (target >= 1,000 cells/s end to end)",
             (f"peak RSS spread over {', '.join(f'{n:,}' for n in rss)} inputs (target flat within 10%): the leukodx "
              f"process {100 * out['peak_rss_spread']['process']:.1f}%, a decode worker "
              f"{100 * out['peak_rss_spread']['worker']:.1f}%, process and workers (high-water marks summed) "
              f"{100 * out['peak_rss_spread']['process_and_workers']:.1f}%, process and workers (polled PSS) "
              f"{100 * out['peak_rss_spread']['process_and_workers_pss']:.1f}%") if rss else "peak RSS not measured"]
    notes.append("peak RSS: the leukodx process (VmHWM); for the 1,000 / 10,000 / 100,000 runs: process / the largest "
                 "decode worker / process and workers, their high-water marks (VmHWM) summed (pages a forked worker "
                 "shares with its parent counted in each: an upper bound) / process and workers, the largest sum of "
                 "proportional set sizes seen (shared pages counted once; polled every 0.2 s: a longer run has more "
                 "chances to catch a momentary peak, and forked pages the parent rewrites become private to both)")
    write_result("throughput", out, ["run", "cells/s end to end", "cells/s after start-up", "accuracy",
                                     "peak RSS (MB)"], rows, notes)


if __name__ == "__main__":
    main()
