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


def analyze_fields(inputs: list[str | os.PathLike], out_dir: str | os.PathLike, detector="bccd-frcnn",
                   model=None, pixel_scale: float | None = None, um_per_px: float | None = None,
                   overlay: bool = True, log=print, resume: bool = False, device: str = "auto",
                   backend: str = "auto") -> dict:
    """Analyse every readable field in ``inputs``; unreadable ones are listed and skipped.

    Streamed: per-field files are written as each field finishes and each field's result is appended
    to ``cells.csv.partial.jsonl`` (``leukodx._rowfile.RowFile``), from which ``cells.csv`` and the
    summary are made at the end, so memory does not grow with the number of fields. The batch files of
    an earlier run in the same folder are removed first, so a summary never describes other fields
    than those beside it; if the run is interrupted, the summary of the fields finished so far is
    written (``complete`` false) and ``resume`` continues it without redoing finished fields (the same
    detector, classifier, options and input list, else refused with one line)."""
    from leukodx._rowfile import RowFile, inputs_digest
    from leukodx.inference.classifier import DEFAULT_CELL_MODEL, Classifier, load_model
    from leukodx.smear.detector import CellDetector, load_detector
    from leukodx.smear.pipeline import SmearAnalyzer, render_overlay

    out_dir = Path(out_dir)
    paths, errors = collect_images(inputs)
    analyzer = SmearAnalyzer(detector if isinstance(detector, CellDetector) else load_detector(detector, device, backend),
                             model if isinstance(model, Classifier) else load_model(model or DEFAULT_CELL_MODEL),
                             pixel_scale=pixel_scale, um_per_px=um_per_px)
    for e in errors:
        log(f"error: {e['error']}")
    rows = RowFile(out_dir / "cells.csv", {
        "model": f"{analyzer.detector.name} + {analyzer.classifier.name}",
        "model_sha256": f"{analyzer.detector.card.get('sha256')}+{analyzer.classifier.card.get('sha256')}",
        "inputs_sha256": inputs_digest(str(p) for p in paths), "n_inputs": len(paths),
        "pixel_scale": pixel_scale, "um_per_px": um_per_px, "overlay": overlay,
        "detector_backend": analyzer.detector.backend}, resume=resume)
    done = rows.start()  # before anything is removed: a refused --resume leaves the folder as it was
    for name in BATCH_FILES:
        (out_dir / name).unlink(missing_ok=True)
    names = _atomic.OutputNames(reserved=tuple(Path(n).stem for n in BATCH_FILES))
    stems = {str(p): names.stem_for(p) for p in paths}  # fixed by the input order: a resumed run names alike
    if done:
        log(f"resuming: {len(done)} of {len(paths)} field(s) already done")

    def one(path) -> None:
        rgb = read_image(path)
        result = analyzer.analyze(rgb, name=str(path))
        stem = stems[str(path)]
        result["outputs"] = {"json": f"{stem}.json", "overlay": f"{stem}.overlay.jpg" if overlay else None}
        _atomic.write_json(out_dir / f"{stem}.json", result)
        if overlay:
            buf = io.BytesIO()
            render_overlay(rgb, result).save(buf, format="JPEG", quality=85)
            _atomic.write_bytes(out_dir / f"{stem}.overlay.jpg", buf.getvalue())
        rows.append([{"input": str(path), **result}])
        scale = result["scale"]
        if result["counted"]:
            log(f"{path}: WBC {result['counts']['WBC']}, RBC {result['counts']['RBC']}, platelets "
                f"{result['counts']['Platelets']} (scale {scale['um_per_px']:.3f} um/px, {scale['source']})")
        else:
            log(f"{path}: not counted, scale uncertain: {scale['detail']}")

    def failed(name: str, message: str) -> None:
        rows.append([], [{"input": name, "error": message}])
        log(f"error: {message}")

    todo = [p for p in paths if str(p) not in done]
    try:
        run_batch(todo, one, "fields", key="input", on_error=failed)
    except Interrupted as stop:
        stop.done, stop.total = stop.done + len(done), len(paths)  # counted over the whole batch, resumed ones too
        rows.close()
        _atomic.write_json(out_dir / "summary.json", _summary(inputs, rows, errors, analyzer, pixel_scale, um_per_px,
                                                             complete=False))
        stop.written_to = f"{out_dir} (rerun with --resume to finish)"
        raise
    summary = _summary(inputs, rows, errors, analyzer, pixel_scale, um_per_px, complete=True)
    if summary["summary"].get("fields_counted"):
        rows.finish({}, CELL_COLUMNS, lambda c: ["" if c.get(k) is None else str(c[k]) for k in CELL_COLUMNS],
                    explode=_cell_rows)
    else:  # nothing counted: no cells.csv, as before
        rows.close()
        rows.partial.unlink(missing_ok=True)
    _atomic.write_json(out_dir / "summary.json", summary)
    return summary


def _cell_rows(field: dict) -> list[dict]:
    """A field's cells as cells.csv rows."""
    return [{"field": field["field"], "x0": c["box"][0], "y0": c["box"][1], "x1": c["box"][2], "y1": c["box"][3], **c}
            for c in field["cells"]]


def _summary(inputs, rows, listing_errors: list[dict], analyzer, pixel_scale, um_per_px, complete: bool) -> dict:
    """The batch's summary, from the fields in the row file (read back one at a time)."""
    totals = analyzer.totals()
    n = 0
    for field in rows.entries("row"):
        totals.add(field)
        n += 1
    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": [str(i) for i in inputs], "complete": complete, "n_fields": n,
        "scale_given": {"pixel_scale": pixel_scale, "um_per_px": um_per_px},
        "summary": totals.summary() if n else {"counts": None, "flags": ["no readable field"]},
        "errors": listing_errors + list(rows.entries("error")),
        "detector": {"name": analyzer.detector.name, "sha256": analyzer.detector.card.get("sha256"),
                     "backend": analyzer.detector.backend, "onnx_sha256": analyzer.detector.onnx_sha256,
                     "count_thresholds": analyzer.thresholds},
        "classifier": {"name": analyzer.classifier.name, "sha256": analyzer.classifier.card.get("sha256"),
                       "abstain_below": analyzer.classifier.abstain_below},
        "versions": versions(),
    }
