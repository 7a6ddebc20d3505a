"""``leukodx predict --ray``: the same 10,000-cell job (copies, as symlinks, of 1,000 held-back pbc
cells) run in one process and on a local Ray of 2 model-holding actors started by the command;
the outputs must be identical, and the overhead of Ray on this 2-core machine is reported (a
cluster spreads the same job over its nodes; here both runs share the same 2 cores).

Run: ``python benchmarks/ray_overhead.py [--n 10000]``. Writes results/ray_overhead.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import write_result
from throughput import MODEL, held_back


def timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "leukodx", *argv], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"leukodx {' '.join(argv)} failed: {r.stderr[-800:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    paths, _ = held_back()
    with tempfile.TemporaryDirectory(prefix="leukodx-ray-") as tmp:
        tmp = Path(tmp)
        folder = tmp / "cells"
        folder.mkdir()
        for i in range(args.n):
            os.symlink(paths[i % len(paths)], folder / f"{i:07d}.jpg")
        single, on_ray = tmp / "single.csv", tmp / "ray.csv"
        t_single = timed(["predict", str(folder), "-m", MODEL, "-o", str(single)])
        t_ray = timed(["predict", str(folder), "-m", MODEL, "-o", str(on_ray), "--ray", "local",
                       "--ray-workers", str(args.workers)])
        identical = single.read_bytes() == on_ray.read_bytes()
        rows = single.read_text().count("\n") - 1
    result = {"n": args.n, "workers": args.workers, "rows": rows, "identical": identical,
              "single_process_s": round(t_single, 1), "ray_s": round(t_ray, 1),
              "single_cells_per_s": round(args.n / t_single, 1), "ray_cells_per_s": round(args.n / t_ray, 1),
              "overhead": round(t_ray / t_single - 1, 3)}
    write_result("ray_overhead", result, ["run", "seconds", "cells/s", "output"],
                 [[f"predict {args.n:,} cells, one process", result["single_process_s"], result["single_cells_per_s"],
                   f"{rows:,} rows"],
                  [f"predict {args.n:,} cells, --ray local, {args.workers} actors", result["ray_s"],
                   result["ray_cells_per_s"], "identical to the single-process output" if identical else "**differs**"]],
                 [f"Ray overhead on this 2-core machine (Ray start-up, its object store, actors that each load the model): "
                  f"{100 * result['overhead']:+.0f}% wall time; both runs use the same 2 cores"])


if __name__ == "__main__":
    main()
