"""Peak memory and speed of ``leukodx diagnose`` on one case of 1,000 / 10,000 / 30,000 cell images
(copies, as symlinks, of 1,000 held-back pbc test cells): the case is streamed 256 images at a time,
so its peak RSS should stay flat as the case grows. Also the same case interrupted after half of it
and finished with ``--resume``: the outputs must equal the uninterrupted run's.

Each figure is a separate process, as a user runs it; 2 CPU cores.

Run: ``python benchmarks/case_memory.py [--sizes 1000,10000,30000]``. Writes results/case_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import write_result
from throughput import held_back, run

TARGET_SPREAD = 0.10


def interrupted_then_resumed(folder: Path, out: Path, whole: Path, n: int) -> dict:
    """SIGINT once the partial file holds rows (a few hundred of the case's ``n``), then ``--resume``; compared
    with ``whole``."""
    partial = out / "predictions.csv.partial.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "leukodx", "diagnose", str(folder), "--kind", "cells", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            # a shell's background job starts with SIGINT ignored, and a child would inherit that
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    sent = 0
    while proc.poll() is None:  # once rows are in, SIGINT every 0.5 s until it stops (the count is reported)
        if sent or (partial.exists() and any(line.startswith('{"row"') for line in partial.open())):
            proc.send_signal(signal.SIGINT)
            sent += 1
            time.sleep(0.5)
            continue
        time.sleep(0.05)
    err = proc.communicate()[1]
    if not partial.exists():
        raise SystemExit(f"case_memory: no partial file after the interrupted {n}-image run ({sent} SIGINT sent; "
                         f"exit status "
                         f"{proc.returncode}: {err.strip().splitlines()[-1] if err.strip() else 'no message'})")
    kept = sum(1 for line in partial.open() if line.startswith('{"row"'))
    r = run(["diagnose", str(folder), "--kind", "cells", "-o", str(out), "--resume"])
    same_rows = (out / "predictions.csv").read_bytes() == (whole / "predictions.csv").read_bytes()
    a, b = (json.loads((d / "summary.json").read_text()) for d in (out, whole))
    drop = ("created", "provenance")
    same_summary = {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}
    return {"exit_status_interrupted": proc.returncode, "interrupts_sent": sent,
            "message": err.strip().splitlines()[-1] if err.strip() else "",
            "rows_kept": kept, "resume_seconds": round(r["seconds"], 1), "same_predictions_csv": same_rows,
            "same_summary": same_summary}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,30000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    paths, _ = held_back()
    out: dict = {"model": "wbc-multisite (default)", "cpu_count": os.cpu_count(), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for n in sizes:
            folder = tmp / f"case-{n}"
            folder.mkdir()
            for i in range(n):
                os.symlink(paths[i % len(paths)], folder / f"{i:07d}.jpg")
            r = run(["diagnose", str(folder), "--kind", "cells", "-o", str(tmp / f"out-{n}")])
            out["runs"][n] = {"seconds": round(r["seconds"], 1), "images_per_s": round(n / r["seconds"], 1),
                              "peak_mb": r["peak_mb"],
                              "report_mb": round((tmp / f"out-{n}" / "report.html").stat().st_size / 2 ** 20, 1)}
        n = sizes[min(1, len(sizes) - 1)]  # a case long enough to be caught part done (1,000 cells take ~1 s)
        out["resume"] = {"images": n, **interrupted_then_resumed(tmp / f"case-{n}", tmp / "resumed", tmp / f"out-{n}", n)}
    peaks = [v["peak_mb"] for v in out["runs"].values()]
    out["peak_spread"] = round(max(peaks) / min(peaks) - 1, 4)
    rows = [[f"{n:,}", v["images_per_s"], v["peak_mb"], v["report_mb"]] for n, v in out["runs"].items()]
    res = out["resume"]
    notes = [f"peak RSS spread over {', '.join(f'{n:,}' for n in sizes)} images: {100 * out['peak_spread']:.1f}% "
             f"(issue 15: peak memory does not grow with the number of inputs; predict's target: flat within "
             f"{TARGET_SPREAD:.0%})",
             f"interrupted (SIGINT, sent {res['interrupts_sent']} time(s)) after {res['rows_kept']} of {res['images']} "
             f"images, exit status "
             f"{res['exit_status_interrupted']} ({res['message']!r}); --resume finished in {res['resume_seconds']} s: "
             f"predictions.csv identical to the uninterrupted run's: {res['same_predictions_csv']}, summary identical "
             f"(less dates and command line): {res['same_summary']}",
             "peak RSS: the leukodx process's high-water mark (VmHWM); diagnose runs in one process"]
    write_result("case_memory", out, ["case (cell images)", "images/s end to end", "peak RSS (MB)", "report.html (MB)"],
                 rows, notes)


if __name__ == "__main__":
    main()
