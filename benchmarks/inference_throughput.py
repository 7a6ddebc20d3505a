"""Cells per second of each bundled model: PyTorch eager vs ONNX Runtime, batch 1 and 64, same run.

Inputs are preprocessed uint8 arrays of real test images (decoding JPEGs is excluded; it is the
same for both backends). Two threads, as on the reference 2-core machine.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from _common import write_result
from leukodx.data.cache import cached_arrays
from leukodx.data.registry import load_dataset
from leukodx.data.splits import apply_split, bundled_split_path, load_split
from leukodx.inference.classifier import load_model
from leukodx.models.bundle import bundled_models

THREADS = 2
SECONDS = 8.0


def throughput(clf, arrays: np.ndarray, batch: int) -> float:
    n_done, t0 = 0, time.perf_counter()
    clf.logits(arrays[:batch])  # warm-up
    t0 = time.perf_counter()
    i = 0
    while time.perf_counter() - t0 < SECONDS:
        start = (i * batch) % (len(arrays) - batch)
        clf.logits(arrays[start:start + batch])
        n_done += batch
        i += 1
    return n_done / (time.perf_counter() - t0)


def main() -> None:
    torch.set_num_threads(THREADS)
    out, rows = {}, []
    for name in bundled_models("image-classification"):
        torch_clf = load_model(name, backend="torch")
        onnx_clf = load_model(name, backend="onnx")
        dataset = torch_clf.card["data"]["dataset"]
        test = apply_split(load_dataset(dataset), load_split(bundled_split_path(dataset)))["test"]
        arrays = cached_arrays(test, torch_clf.preprocess)[:512]
        res = {}
        for batch in (1, 64):
            t = throughput(torch_clf, arrays, batch)
            o = throughput(onnx_clf, arrays, batch)
            res[f"batch{batch}"] = {"torch_cells_per_s": round(t, 1), "onnx_cells_per_s": round(o, 1),
                                    "onnx_over_torch": round(o / t, 2)}
            rows.append([name, torch_clf.preprocess.size, batch, f"{t:.0f}", f"{o:.0f}", f"{o / t:.2f}"])
        out[name] = res
    write_result("inference_throughput", {"threads": THREADS, "seconds_per_measure": SECONDS, "models": out},
                 ["model", "input px", "batch", "PyTorch eager cells/s", "ONNX Runtime cells/s", "ONNX / PyTorch"],
                 rows, [f"{THREADS} threads; preprocessed arrays in memory (JPEG decoding excluded)."])


if __name__ == "__main__":
    main()
