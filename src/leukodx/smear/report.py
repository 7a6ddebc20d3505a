"""Running the smear pipeline over a batch of fields and writing its outputs, each atomically:
``<field>.json`` and ``<field>.overlay.jpg`` per field, ``cells.csv`` (one row per cell) and
``summary.json`` (the case: counts, differential, flags, unreadable files, model provenance).
"""

from __future__ import annotations

import datetime as _dt
import io
import os
from pathlib import Path

from leukodx._batch import run_batch
from leukodx import _atomic
from leukodx._versions import versions
from leukodx.data.images import collect_images, read_image
from leukodx.errors import Interrupted

CELL_COLUMNS = ["field", "kind", "x0", "y0", "x1", "y1", "score", "cell_type", "probability", "unsure",
                "nucleus_fraction", "blast_probability", "blast_review"]


#: the batch's own files; a field's outputs never take these names
BATCH_FILES = ("summary.json", "cells.csv")


def cells_csv(fields: list[dict]) -> str:
    from leukodx._csv import csv_text_dicts

    return csv_text_dicts(CELL_COLUMNS, ({"field": f["field"], "x0": c["box"][0], "y0": c["box"][1], "x1": c["box"][2],
                                          "y1": c["box"][3], **c} for f in fields for c in f["cells"]))


def analyze_fields(inputs: list[str | os.PathLike], out_dir: str | os.PathLike, detector="bccd-frcnn",
                   model=None, pixel_scale: float | None = None, um_per_px: float | None = None,
                   overlay: bool = True, log=print) -> dict:
    """Analyse every readable field in ``inputs``; unreadable ones are listed and skipped.

    Per-field files are written as each field finishes. The batch files of an earlier run in the same
    folder are removed first, so a summary never describes other fields than those beside it; if the
    run is interrupted, the summary of the fields finished so far is written (``complete`` false)."""
    from leukodx.inference.classifier import DEFAULT_CELL_MODEL, Classifier, load_model
    from leukodx.smear.detector import CellDetector, load_detector
    from leukodx.smear.pipeline import SmearAnalyzer, render_overlay

    out_dir = Path(out_dir)
    analyzer = SmearAnalyzer(detector if isinstance(detector, CellDetector) else load_detector(detector),
                             model if isinstance(model, Classifier) else load_model(model or DEFAULT_CELL_MODEL),
                             pixel_scale=pixel_scale, um_per_px=um_per_px)
    paths, errors = collect_images(inputs)
    for e in errors:
        log(f"error: {e['error']}")
    for name in BATCH_FILES:
        (out_dir / name).unlink(missing_ok=True)
    names = _atomic.OutputNames(reserved=tuple(Path(n).stem for n in BATCH_FILES))

    def one(path) -> dict:
        rgb = read_image(path)
        result = analyzer.analyze(rgb, name=str(path))
        stem = names.stem_for(path)
        result["outputs"] = {"json": f"{stem}.json", "overlay": f"{stem}.overlay.jpg" if overlay else None}
        _atomic.write_json(out_dir / f"{stem}.json", result)
        if overlay:
            buf = io.BytesIO()
            render_overlay(rgb, result).save(buf, format="JPEG", quality=85)
            _atomic.write_bytes(out_dir / f"{stem}.overlay.jpg", buf.getvalue())
        scale = result["scale"]
        if result["counted"]:
            log(f"{path}: WBC {result['counts']['WBC']}, RBC {result['counts']['RBC']}, platelets "
                f"{result['counts']['Platelets']} (scale {scale['um_per_px']:.3f} um/px, {scale['source']})")
        else:
            log(f"{path}: not counted, scale uncertain: {scale['detail']}")
        return result

    try:
        fields, failed = run_batch(paths, one, "fields", key="input", on_error=lambda _, m: log(f"error: {m}"))
    except Interrupted as stop:
        fields, failed = stop.partial
        _write_batch(out_dir, _summary(inputs, fields, errors + failed, analyzer, pixel_scale, um_per_px,
                                       complete=False), fields)
        stop.written_to = str(out_dir)
        raise
    errors += failed
    summary = _summary(inputs, fields, errors, analyzer, pixel_scale, um_per_px, complete=True)
    _write_batch(out_dir, summary, fields)
    return summary


def _summary(inputs, fields: list[dict], errors: list[dict], analyzer, pixel_scale, um_per_px, complete: bool) -> dict:
    from leukodx.smear.pipeline import summarize_fields

    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": [str(i) for i in inputs], "complete": complete, "n_fields": len(fields),
        "scale_given": {"pixel_scale": pixel_scale, "um_per_px": um_per_px},
        "summary": summarize_fields(fields) if fields else {"counts": None, "flags": ["no readable field"]},
        "errors": errors,
        "detector": {"name": analyzer.detector.name, "sha256": analyzer.detector.card.get("sha256"),
                     "count_thresholds": analyzer.thresholds},
        "classifier": {"name": analyzer.classifier.name, "sha256": analyzer.classifier.card.get("sha256"),
                       "abstain_below": analyzer.classifier.abstain_below},
        "versions": versions(),
    }


def _write_batch(out_dir: Path, summary: dict, fields: list[dict]) -> None:
    if any(f["counted"] for f in fields):
        _atomic.write_text(out_dir / "cells.csv", cells_csv(fields))
    _atomic.write_json(out_dir / "summary.json", summary)
