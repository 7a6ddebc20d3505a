"""Case diagnosis: a folder of cell images or smear fields -> per-image results, a case summary
(differential count or ALL stage probabilities, with flags) and a report a hematologist can read.
"""

from __future__ import annotations

import base64
import datetime as _dt
import os
from typing import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from leukodx._progress import track
from leukodx import _atomic
from leukodx._versions import provenance, versions
from leukodx.data.images import PathList, collect_image_paths, jpeg_bytes, read_image, thumbnail_jpeg
from leukodx.data.vocabulary import is_leukocyte, leukocyte_classes, normalize_label
from leukodx.errors import InvalidInputError, Interrupted, LeukodxError
from leukodx.inference.classifier import (DEFAULT_CELL_MODEL, Classifier, InputList, Scored, check_normalization,
                                          load_model, row_cells, row_columns, rows_to_csv)
from leukodx.models.reliability import DEFAULT_COVERAGE, check_coverage
from leukodx.preprocessing.transforms import TTA

KINDS = ("auto", "cells", "fields")
DEFAULT_MODELS = {"cells": DEFAULT_CELL_MODEL, "fields": "all-stage"}
#: an image with this many nucleus-sized blobs, or this many cell-sized objects, is a field
FIELD_NUCLEI = 3
FIELD_OBJECTS = 22
#: fields disagreeing this much on the stage get a flag
FIELD_AGREEMENT = 0.7
IG_FLAG_PERCENT = 2.0
#: blasts at or above this share of leukocytes: the WHO threshold for acute leukemia (blood or marrow)
BLAST_FLAG_PERCENT = 20.0
#: a patient with an APL probability at or above this gets the APL flag
APL_FLAG_PROBABILITY = 0.5
#: images larger than this (px, longer side) are decoded reduced where only the image models look at
#: them: far above any model input, so every image of the shipped data sets is read as before
CASE_READ_SIDE = 4096
#: images decoded, scored and appended to the row file together (a multiple of the models' batch of 64)
CASE_CHUNK = 256



def image_looks_like_field(rgb: np.ndarray) -> bool:
    """True for a low-magnification smear field, False for a single-cell image.

    At 112 px a field shows several nuclei (blue-purple blobs) or many small red cells; a
    single-cell image shows one or two nuclei and a dozen large red cells. Measured on pbc,
    all-aria and wbc-seg in benchmarks/results/kind_recognition.json.
    """
    im = np.asarray(Image.fromarray(rgb).resize((112, 112)), dtype=np.float32)
    nuclei = (im[..., 2] - im[..., 1] > 40) & (im[..., 1] < 140)
    if _blobs(nuclei, 30) >= FIELD_NUCLEI:
        return True
    gray = im.mean(axis=2)
    objects = ndimage.binary_opening(gray < np.percentile(gray, 90) * 0.93)
    return _blobs(objects, 6) >= FIELD_OBJECTS


def _blobs(mask: np.ndarray, min_size: int) -> int:
    labels, n = ndimage.label(mask)
    if n == 0:
        return 0
    return int((ndimage.sum(mask, labels, range(1, n + 1)) >= min_size).sum())


def recognise_kind(images: Iterable[np.ndarray]) -> tuple[str, str]:
    """'cells' or 'fields' for a whole case by majority of per-image votes, and the evidence.
    ``images`` may be a generator: one image is held at a time."""
    votes = n = 0
    for rgb in images:
        votes += image_looks_like_field(rgb)
        n += 1
    kind = "fields" if votes * 2 > n else "cells"
    return kind, f"{votes} of {n} images look like smear fields"


def model_kind(clf: Classifier) -> str:
    """What a model classifies: its card's ``input_kind``, else guessed from its classes."""
    kind = clf.card.get("input_kind")
    if kind in ("cells", "fields"):
        return kind
    return "cells" if any(is_leukocyte(c) for c in clf.classes) else "fields"


def _stream_case(paths: Sequence[str | Path], errors: list[dict], what: str,
                 max_side: int | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """(name, RGB) of each readable image, one decoded image in memory at a time (a case of whole-slide
    sized fields would not fit otherwise); an unreadable file becomes an error entry, not an abort.
    ``max_side``: images larger than this are decoded reduced (``read_image``)."""
    for p in track(paths, what):
        try:
            rgb = read_image(p, max_side=max_side)
        except LeukodxError as exc:
            errors.append({"input": str(p), "error": str(exc)})
            continue
        yield str(p), rgb
        del rgb


def _cell_summary(rows: Iterable[dict], classes: list[str]) -> tuple[dict, list[str]]:
    """Counts, differential and flags from the rows (one pass: ``rows`` may be read from a file)."""
    from leukodx.stats import wilson_interval

    counts = dict.fromkeys(classes, 0)
    n = unsure = 0
    blast_sum = 0.0
    for r in rows:
        n += 1
        if r["unsure"]:
            unsure += 1
        else:
            counts[r["top_class"]] += 1
        if "blast" in classes:
            blast_sum += r["probabilities"]["blast"]
    wbc_classes = leukocyte_classes(classes)
    n_wbc = sum(counts[c] for c in wbc_classes)
    differential = {c: round(100.0 * counts[c] / n_wbc, 1) if n_wbc else 0.0 for c in wbc_classes}
    summary = {
        "counts": counts,
        "unsure": unsure,
        "leukocytes_counted": n_wbc,
        "differential_percent": differential,
    }
    flags = []
    if "blast" in classes:
        blasts = counts["blast"]
        lo, hi = wilson_interval(blasts, n_wbc)
        summary["blast_fraction"] = round(blasts / n_wbc, 4) if n_wbc else None
        summary["blast_fraction_ci95"] = [round(lo, 4), round(hi, 4)] if n_wbc else None
        summary["mean_blast_probability"] = round(blast_sum / n, 4)
        if n_wbc and differential["blast"] >= BLAST_FLAG_PERCENT:
            flags.append(f"blasts {differential['blast']}% of leukocytes (>= {BLAST_FLAG_PERCENT:.0f}%, the WHO "
                         "threshold for acute leukemia): urgent review by a hematologist")
        elif blasts:
            flags.append(f"{blasts} cell(s) typed as blasts ({differential['blast']}% of leukocytes): review")
    nrbc = next((c for c in classes if normalize_label(c) == "erythroblast"), None)
    if nrbc and counts[nrbc] and n_wbc:
        summary["nrbc_per_100_wbc"] = round(100.0 * counts[nrbc] / n_wbc, 1)
        flags.append(f"nucleated red cells present: {summary['nrbc_per_100_wbc']} per 100 WBC")
    ig = next((c for c in wbc_classes if normalize_label(c) == "immature_granulocyte"), None)
    if ig and differential[ig] >= IG_FLAG_PERCENT:
        flags.append(f"immature granulocytes {differential[ig]}% of leukocytes (>= {IG_FLAG_PERCENT}%)")
    if n_wbc < 100:
        flags.append(f"only {n_wbc} confidently classified leukocytes: a differential needs at least 100")
    return summary, flags


def _apl_model(clf: Classifier):
    """The bundled APL-vs-AML patient model checked against this cell model, or why it cannot be used."""
    from leukodx.inference.patient import DEFAULT_APL_MODEL, PatientModel

    try:
        model = PatientModel.load(DEFAULT_APL_MODEL)
        model.check_cell_model(clf.card)
    except LeukodxError as exc:
        return None, str(exc)
    return model, None


#: cells whose features are decoded at a time when the case is scored (bounds the memory a large case takes)
_CHUNK = 1024


def _apl_inputs(model, entries: Iterator[dict], n_images: int, n_classes: int
                   ) -> tuple[np.ndarray, list[str], dict]:
    """One pass over the row file: each cell's probabilities and name, and what the patient model reads
    besides: ``cell_logits`` for an instance model (the features reduced a chunk at a time, so a case of
    any size keeps one number per cell), ``cell_embedding`` otherwise, nothing when the row file lacks
    features (a run resumed from a file made before they were kept)."""
    per_cell = model is not None and model.method == "instance"
    proba = np.empty((n_images, n_classes))
    names, chunk, parts = [], [], []
    complete = True
    for i, entry in enumerate(entries):
        proba[i] = entry["proba"]
        names.append(entry["row"]["input"])
        if "embedding" not in entry:
            complete = False
            continue
        chunk.append(np.frombuffer(base64.b64decode(entry["embedding"]), dtype="<f2"))
        if per_cell and len(chunk) == _CHUNK:
            parts.append(model.instance_logits(np.stack(chunk)))
            chunk = []
    if chunk:
        parts.append(model.instance_logits(np.stack(chunk)) if per_cell else np.stack(chunk).astype(np.float64))
    if not complete or not parts:
        return proba, names, {}
    return proba, names, {"cell_logits" if per_cell else "cell_embedding": np.concatenate(parts)}


def _apl_call(model, unusable: str | None, proba: np.ndarray, names: Sequence[str], inputs: dict
              ) -> tuple[dict, list[str]]:
    """The APL-vs-AML patient model over every cell of the case (``inputs``: see ``_apl_inputs``),
    when one fits this cell model (else ``unusable`` says why); drivers that are cells are named by
    their image."""
    from leukodx.inference.patient import DEFAULT_APL_MODEL

    def unused(name: str, reason: str) -> tuple[dict, list[str]]:
        return {"apl_probability": None, "apl_model": {"name": name, "used": False, "reason": reason}}, []

    if model is None:
        return unused(DEFAULT_APL_MODEL, unusable)
    try:
        outside = model.outside_cohort(proba)
        p = None if outside else model.probability(proba, **inputs)
    except LeukodxError as exc:
        return unused(DEFAULT_APL_MODEL, str(exc))
    if outside:
        return unused(model.card["name"], outside)
    drivers = model.contributions(proba, **inputs)
    for d in drivers:
        if "cell" in d:
            d["feature"] = f"cell {names[d['cell']]}"
    entry = {"apl_probability": round(p, 4),
             "apl_model": {"name": model.card["name"], "used": True, "sha256": model.card.get("sha256"),
                           "cells": int(len(proba)), "drivers": drivers,
                           "auroc_cv": model.card.get("metrics", {}).get("auroc_unseen_patients"),
                           "meaning": "probability that this patient's acute myeloid leukemia is APL; "
                                      "meaningful only for a patient with AML"}}
    flags = []
    if p >= APL_FLAG_PROBABILITY:
        flags.append(f"APL pattern (probability {p:.2f}): APL is an emergency; confirm by PML-RARA / t(15;17) "
                     "testing now")
    return entry, flags


def _field_summary(rows: Iterable[dict], classes: list[str]) -> tuple[dict, list[str]]:
    """The stage call from the fields' mean probabilities (one pass over ``rows``)."""
    total = np.zeros(len(classes))
    votes = dict.fromkeys(classes, 0)
    n = unsure = 0
    for r in rows:
        total += [r["probabilities"][c] for c in classes]
        votes[r["top_class"]] += 1
        unsure += bool(r["unsure"])
        n += 1
    mean = total / n
    call = classes[int(mean.argmax())]
    agreement = votes[call] / n
    summary = {
        "stage_probabilities": {c: round(float(v), 4) for c, v in zip(classes, mean)},
        "fields_per_stage": votes,
        "case_call": call,
        "field_agreement": round(agreement, 3),
        "unsure": unsure,
    }
    flags = []
    if agreement < FIELD_AGREEMENT:
        flags.append(f"fields disagree: only {agreement:.0%} of fields support the case call {call}")
    if call != "Benign" and "Benign" in classes:
        flags.append(f"B-ALL {call} pattern predicted: confirm by flow cytometry and a hematopathologist")
    return summary, flags


def diagnose(inputs: list[str | os.PathLike] | str | os.PathLike, kind: str = "auto",
             model: str | os.PathLike | Classifier | None = None, backend: str = "auto",
             smear: bool = True, pixel_scale: float | None = None, um_per_px: float | None = None,
             adapt_bn: bool = False, coverage: float = DEFAULT_COVERAGE, explain: bool = False,
             out_dir: str | os.PathLike | None = None, resume: bool = False, site: str | None = None,
             zoom: float | str | None = None, tta: bool = False) -> dict:
    """Diagnose one case. Returns the summary dict (summary, flags, shift, errors, provenance).

    Every image carries ``ood`` and a conformal ``prediction_set`` at ``coverage``; the counts and
    flags use only the images that are not ``unsure``, and the case gets a ``shift`` verdict
    (are these images like the model's training images at all?). With ``explain``, the report shows
    a Grad-CAM heatmap of each image's top class (``leukodx.inference.explain``). ``site``: for a model that
    keeps per-site batch-norm statistics (``Classifier.use_site``), which of them the case's images run with.
    ``zoom`` (cell images): the magnification the cell model reads them at (``Classifier.set_zoom``: a number,
    or 'auto' for the one chosen on the case's own images, no labels used); the summary records it. ``tta``:
    each image's (and each smear field's white cell's) probabilities averaged over its 8 orientations
    (``Classifier.with_tta``); the counts follow those calls, the OOD flags and the patient model read each image
    as it is.

    For smear fields, ``smear`` also runs the whole-smear pipeline on every field (cells found,
    white cells typed, counts, differential; ``leukodx.smear.pipeline``) beside the field model, at
    the scale given (``um_per_px`` or ``pixel_scale``) or measured per field from its red cells.

    With ``out_dir``, the case is streamed (``analyse_case``): summary.json, predictions.csv and
    report.html are written there, memory does not grow with the number of images, and ``resume``
    continues an interrupted run. Without it, the result also holds every row (``rows``) and the
    pictures the report shows, for a caller that keeps them in memory (``write_case_outputs``).
    """
    if out_dir is not None:
        run = analyse_case(inputs, out_dir, kind=kind, model=model, backend=backend, smear=smear,
                           pixel_scale=pixel_scale, um_per_px=um_per_px, adapt_bn=adapt_bn, coverage=coverage,
                           explain=explain, resume=resume, site=site, zoom=zoom, tta=tta)
        return {**run.result, "outputs": {k: str(v) for k, v in run.write_outputs().items()}}
    import tempfile

    with tempfile.TemporaryDirectory(prefix="leukodx-case-") as work:
        run = analyse_case(inputs, work, kind=kind, model=model, backend=backend, smear=smear,
                           pixel_scale=pixel_scale, um_per_px=um_per_px, adapt_bn=adapt_bn, coverage=coverage,
                           explain=explain, site=site, zoom=zoom, tta=tta)
        result = {**run.result, "rows": []}
        thumbnails, heatmaps, fields = {}, {}, []
        for entry in run.entries():
            result["rows"].append(entry["row"])
            thumbnails[entry["row"]["input"]] = base64.b64decode(entry["thumbnail"])
            if "heatmap" in entry:
                heatmaps[entry["row"]["input"]] = base64.b64decode(entry["heatmap"])
            if "field" in entry:
                fields.append(entry["field"])
        run.discard()
    return {**result, "_thumbnails": thumbnails,
            **({"_fields": fields} if "smear" in result else {}),  # every field's cells, with their boxes
            **({"_explanations": heatmaps} if explain else {})}


def case_files(out_dir: str | os.PathLike) -> dict[str, Path]:
    """The files of a diagnosed case in ``out_dir``."""
    out_dir = Path(out_dir)
    return {"summary": out_dir / "summary.json", "predictions": out_dir / "predictions.csv",
            "report": out_dir / "report.html"}


class CaseRun:
    """A case streamed into its row file (``analyse_case``): ``result`` (everything but the rows),
    ``entries()`` (each image's row with its thumbnail, heatmap and smear-field result, in input
    order), ``write_outputs()`` (the case's files beside the row file, which is then removed)."""

    def __init__(self, result: dict, rowfile, classes: list[str]):
        self.result, self.rowfile, self.classes = result, rowfile, classes

    def entries(self) -> Iterator[dict]:
        return _entries(self.rowfile)

    def write_outputs(self) -> dict[str, Path]:
        """summary.json, predictions.csv and report.html beside the row file, each written atomically,
        from the row file one image at a time (the report's rows come unsure first, then by
        probability); the row file is then removed."""
        from leukodx.diagnosis.report import write_case_html

        paths = case_files(self.rowfile.output.parent)
        ordered = self.rowfile.sorted_entries(lambda e: (not e["row"]["unsure"], e["row"]["probability"]))
        write_case_html(paths["report"], self.result, ordered)
        _atomic.write_json(paths["summary"], self.result)
        self.rowfile.finish({}, row_columns(self.classes), lambda r: row_cells(r, self.classes))
        return paths

    def discard(self) -> None:
        self.rowfile.close()
        self.rowfile.partial.unlink(missing_ok=True)


def _entries(rowfile) -> Iterator[dict]:
    """Each stored image: ``row`` and what is kept beside it."""
    return (e for e in rowfile.lines() if "row" in e)


def analyse_case(inputs: list[str | os.PathLike] | str | os.PathLike, work_dir: str | os.PathLike,
                 kind: str = "auto", model: str | os.PathLike | Classifier | None = None, backend: str = "auto",
                 smear: bool = True, pixel_scale: float | None = None, um_per_px: float | None = None,
                 adapt_bn: bool = False, coverage: float = DEFAULT_COVERAGE, explain: bool = False,
                 resume: bool = False, chunk: int | None = None, site: str | None = None,
                 zoom: float | str | None = None, tta: bool = False) -> CaseRun:
    """Stream a case through its models into ``work_dir/predictions.csv.partial.jsonl``
    (``leukodx._rowfile.RowFile``), ``chunk`` images at a time: each image is decoded once, reduced to
    what the case keeps (its row, a thumbnail, a heatmap with ``explain``, the smear pipeline's result
    for a field) and released, and each chunk's rows are appended as they are made. The summary is
    then made from that file, so memory holds no image and no row beyond the current chunk (only
    each image's class probabilities, for the patient model). ``resume`` continues an interrupted run
    of the same models, options and images without redoing finished images; anything else is refused
    with one line. With ``adapt_bn`` the images are read twice: once for the batch-norm statistics of
    the whole case, once to predict with them."""
    from leukodx._rowfile import RowFile, inputs_digest

    chunk = chunk or CASE_CHUNK
    if kind not in KINDS:
        raise InvalidInputError(f"--kind {kind!r}: expected one of {', '.join(KINDS)}")
    check_coverage(coverage)
    check_normalization(adapt_bn, site)
    if site is not None and isinstance(model, Classifier):
        raise InvalidInputError(f"site {site!r}: a Classifier passed in keeps the statistics it was loaded with "
                                "(Classifier.load(..., site=...))")
    if zoom is not None and isinstance(model, Classifier):
        raise InvalidInputError(f"zoom {zoom!r}: a Classifier passed in keeps its own zoom (Classifier.set_zoom)")
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    paths, errors = collect_image_paths(list(inputs))  # compact: a case may hold 10^5 images

    def nothing_readable(failed: list[dict]) -> InvalidInputError:
        where = ", ".join(str(i) for i in inputs)
        detail = f"; {len(failed)} unreadable, e.g. {failed[0]['error']}" if failed else ""
        return InvalidInputError(f"{where}: no readable image in this case{detail}")

    if not paths:
        raise nothing_readable(errors)
    clf = None
    if model is not None:
        clf = model if isinstance(model, Classifier) else load_model(model, backend=backend, site=site)
    if kind != "auto":
        evidence = "given by --kind"
    elif clf is not None:
        kind, evidence = model_kind(clf), "the model's input kind"
    else:  # a first pass that keeps one vote per image, not the images
        failed = len(errors)
        kind, evidence = recognise_kind(rgb for _, rgb in _stream_case(paths, errors, "recognising the case",
                                                                        max_side=CASE_READ_SIDE))
        unreadable = {e["input"] for e in errors[failed:]}
        paths = PathList(p for p in paths if p not in unreadable)
    clf = clf or load_model(DEFAULT_MODELS[kind], backend=backend, site=site)
    if model_kind(clf) != kind:
        raise InvalidInputError(f"model {clf.name} classifies {model_kind(clf)}, but the case was given as {kind}")
    if zoom is not None:
        if kind != "cells":
            raise InvalidInputError(f"--zoom {zoom}: it sets how large a single cell appears; this case holds {kind}")
        view = InputList()
        view.add_paths(paths)  # (path, path) items over the same buffer, no copy
        clf.set_zoom(zoom, view)
    analyzer = _smear_analyzer(pixel_scale, um_per_px, tta) if (kind == "fields" and smear) else None
    # the smear pipeline finds cells at full resolution; the image models see a few hundred px at most
    max_side = None if analyzer else CASE_READ_SIDE
    shas = [clf.card.get("sha256")] + ([analyzer.detector.card.get("sha256")] if analyzer else [])
    rowfile = RowFile(Path(work_dir) / "predictions.csv", {
        "model": clf.name + (f" + {analyzer.detector.name}" if analyzer else ""),
        "model_sha256": "+".join(str(s) for s in shas), "inputs_sha256": inputs_digest(str(p) for p in paths),
        "n_inputs": len(paths), "kind": kind, "backend": clf.backend, "precision": clf.precision, "site": clf.site,
        "zoom": clf.preprocess.zoom, "tta": tta,
        "coverage": coverage, "adapt_bn": adapt_bn, "explain": explain, "smear": analyzer is not None,
        "pixel_scale": pixel_scale, "um_per_px": um_per_px,
        "detector_backend": analyzer.detector.backend if analyzer else None}, resume=resume)
    done = rowfile.start()  # before anything is removed: a refused --resume leaves the folder as it was
    for stale in case_files(work_dir).values():  # an earlier run's files never sit beside an unfinished one
        stale.unlink(missing_ok=True)
    predictor = clf
    if adapt_bn:  # the statistics of the whole case, read once before any prediction
        predictor = clf.adapted_to(arrays for _, arrays, _ in _case_chunks(paths, clf, max_side, chunk,
                                                                          "adapting to the case"))
    if tta:
        predictor = predictor.with_tta()
    todo = PathList(p for p in paths if p not in done)
    try:
        for names, arrays, kept in _case_chunks(todo, clf, max_side, chunk, "reading the case", analyzer):
            if not names:
                rowfile.append([], kept["errors"])
                continue
            # the patient model was fitted on this model's probabilities unadapted; OOD is judged unadapted too
            base = clf.score_arrays(arrays)
            scored = Scored(predictor.predict_arrays(arrays), base.ood_scores) if predictor is not clf else base
            rows = clf.rows_for(names, scored, coverage, decimals=4)
            heat = _explanations(predictor, names, arrays, rows) if explain else {}
            extras = []
            for i, name in enumerate(names):
                extra = {"proba": base.proba[i].tolist(), "thumbnail": kept["thumbnails"][i],
                         "ood_score": None if base.ood_scores is None else float(base.ood_scores[i])}
                if kind == "cells" and base.embedding is not None:  # the patient model reads what the cells look like
                    extra["embedding"] = base64.b64encode(base.embedding[i].astype("<f2").tobytes()).decode("ascii")
                if explain:
                    extra["heatmap"] = base64.b64encode(heat[name]).decode("ascii")
                if analyzer is not None:
                    extra["field"] = kept["fields"][i]
                extras.append(extra)
            rowfile.append(rows, kept["errors"], extras)
    except KeyboardInterrupt:
        rowfile.close()
        n = sum(1 for _ in _entries(rowfile))
        raise Interrupted(n, len(paths), "images", f"{rowfile.partial} (rerun with --resume to finish)") from None
    rowfile.close()
    errors = errors + list(rowfile.entries("error"))
    if not any(True for _ in _entries(rowfile)):
        rowfile.partial.unlink(missing_ok=True)
        raise nothing_readable(errors)
    result = _case_result(inputs, kind, evidence, clf, analyzer, rowfile, coverage, adapt_bn, explain, errors,
                          pixel_scale, um_per_px, tta)
    return CaseRun(result, rowfile, clf.classes)


def _case_chunks(paths: Sequence[str | Path], clf: Classifier, max_side: int | None, chunk: int, what: str,
                 analyzer=None) -> Iterator[tuple[list[str], np.ndarray, dict]]:
    """``chunk`` readable images at a time: names, model inputs (stacked) and what the case keeps of
    each (``thumbnails``: base64 JPEGs; ``fields``: the smear pipeline's results), with the files found
    unreadable since the chunk before (``errors``)."""
    size = clf.preprocess.size
    failed: list[dict] = []
    names, arrays, thumbs, fields = [], [], [], []

    def emit():
        stacked = np.stack(arrays) if arrays else np.zeros((0, size, size, 3), np.uint8)
        out = (list(names), stacked, {"thumbnails": list(thumbs), "fields": list(fields), "errors": list(failed)})
        for kept in (names, arrays, thumbs, fields, failed):
            kept.clear()
        return out

    for name, rgb in _stream_case(paths, failed, what, max_side):
        names.append(name)
        arrays.append(clf.preprocess(rgb))
        thumbs.append(base64.b64encode(thumbnail_jpeg(rgb)).decode("ascii"))
        if analyzer is not None:
            fields.append(analyzer.analyze(rgb, name))
        del rgb
        if len(names) == chunk:
            yield emit()
    if names or failed:
        yield emit()


def _case_result(inputs, kind: str, evidence: str, clf: Classifier, analyzer, rowfile, coverage: float,
                 adapt_bn: bool, explain: bool, errors: list[dict], pixel_scale, um_per_px, tta: bool = False) -> dict:
    """The case's summary, flags and provenance, made from its row file (read one image at a time)."""

    def rows() -> Iterator[dict]:
        return rowfile.entries("row")

    n_images = sum(1 for _ in rows())
    summary, flags = (_cell_summary if kind == "cells" else _field_summary)(rows(), clf.classes)
    if kind == "cells":
        # one pass over the row file (thumbnails included)
        model, unusable = _apl_model(clf)
        proba, names, apl_inputs = _apl_inputs(model, (e for e in rowfile.lines() if "proba" in e), n_images,
                                                  len(clf.classes))
        apl, apl_flags = _apl_call(model, unusable, proba, names, apl_inputs)
        summary.update(apl)
        flags.extend(apl_flags)
    scores = None if clf.reliability is None else np.fromiter(rowfile.entries("ood_score"), dtype=float)
    shift = clf.shift_from(scores)
    review = _review_flag(rows(), n_images, clf, coverage)
    if review:
        flags.insert(0, review)
    if shift.get("flagged"):
        flags.insert(0, f"shift: {shift['reason']}")
    if errors:
        flags.append(f"{len(errors)} file(s) could not be read and were left out")
    smear_result = _smear_summary(analyzer, rowfile.entries("field"), pixel_scale, um_per_px) if analyzer else None
    if smear_result:
        flags.extend(f"smear: {f}" for f in smear_result["summary"]["flags"])
    return {
        "case": ", ".join(str(i) for i in inputs),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "kind": kind, "kind_evidence": evidence,
        "model": {"name": clf.name, "sha256": clf.card.get("sha256"), "classes": clf.classes,
                  "abstain_below": clf.abstain_below, "backend": clf.backend, "onnx_sha256": clf.onnx_sha256,
                  "coverage": coverage, "site_statistics": clf.site, "zoom": clf.zoom,
                  "test_time_adaptation": {"method": "AdaBN", "images": n_images} if adapt_bn else None,
                  "test_time_augmentation": dict(TTA) if tta else None,
                  "test_accuracy": clf.card.get("metrics", {}).get("test", {}).get("accuracy")},
        "n_images": n_images, "shift": shift, "summary": summary, "flags": flags, "errors": errors,
        "explained": explain,  # the report shows a Grad-CAM heatmap per image
        **({"smear": smear_result} if smear_result else {}),
        "versions": versions(), "provenance": provenance(),
    }


def _explanations(clf: Classifier, names: list[str], arrays: np.ndarray, rows: list[dict]) -> dict[str, bytes]:
    """A JPEG of each image with the Grad-CAM heatmap of its top class laid over it, read from the network that
    made the call (``Classifier.calling_networks``: the AdaBN copy, a site's network), over the views the call was
    averaged over (``--tta``)."""
    from leukodx.inference.explain import gradcam, overlay

    targets = np.asarray([clf.classes.index(r["top_class"]) for r in rows])
    heat = np.zeros((len(arrays), clf.preprocess.size, clf.preprocess.size), np.float32)
    for net, idx in clf.calling_networks(arrays):
        heat[idx] = gradcam(net, arrays[idx], clf.preprocess, targets[idx],
                            views=clf.tta["views"] if clf.tta else 1)
    return {name: jpeg_bytes(overlay(a, h)) for name, a, h in zip(names, arrays, heat)}


def _review_flag(rows: Iterable[dict], n_images: int, clf: Classifier, coverage: float) -> str | None:
    """How many images were left for review, and why (they are not counted); one pass over ``rows``."""
    unsure = ood = unset = low = 0
    has_sets = False
    for r in rows:
        if not r["unsure"]:
            continue
        unsure += 1
        ood += bool(r.get("ood"))
        has_sets = has_sets or r.get("prediction_set") is not None
        unset += r.get("prediction_set") is not None and len(r["prediction_set"]) != 1
        low += r["probability"] < clf.abstain_below
    if not unsure:
        return None
    why = [f"{ood} unlike the training images (ood)"]
    if has_sets:
        why.append(f"{unset} without a single class in their {coverage:.0%} conformal set")
    why.append(f"{low} below the model's confidence threshold ({clf.abstain_below:.2f})")
    return (f"{unsure} of {n_images} images left for review and not counted: " + ", ".join(why)
            + " (an image may have several reasons)")


def _smear_analyzer(pixel_scale: float | None, um_per_px: float | None, tta: bool = False):
    from leukodx.smear.pipeline import SmearAnalyzer

    cells = load_model(DEFAULT_CELL_MODEL).with_tta() if tta else None  # None: the analyzer's default, as it is
    return SmearAnalyzer(pixel_scale=pixel_scale, um_per_px=um_per_px, classifier=cells)


def _smear_summary(analyzer, fields: Iterable[dict], pixel_scale: float | None, um_per_px: float | None) -> dict:
    """Cells, counts and differential per field and for the case (the detector and cell-type model);
    one pass over ``fields``, keeping each field's result without its cells."""
    totals, listed = analyzer.totals(), []
    for f in fields:
        totals.add(f)
        listed.append({k: v for k, v in f.items() if k != "cells"} | {"cells": len(f["cells"])})
    return {"detector": {"name": analyzer.detector.name, "sha256": analyzer.detector.card.get("sha256"),
                         "backend": analyzer.detector.backend, "onnx_sha256": analyzer.detector.onnx_sha256},
            "scale_given": {"pixel_scale": pixel_scale, "um_per_px": um_per_px},
            "summary": totals.summary(), "fields": listed}


def write_case_outputs(result: dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    """summary.json, predictions.csv and report.html of a result held in memory (``diagnose`` without
    ``out_dir``) in ``out_dir``, each written atomically."""
    from leukodx.diagnosis.report import report_entries, write_case_html

    classes = result["model"]["classes"]
    paths = case_files(out_dir)
    write_case_html(paths["report"], result, report_entries(result))
    _atomic.write_json(paths["summary"], {k: v for k, v in result.items() if not k.startswith("_") and k != "rows"})
    _atomic.write_text(paths["predictions"], rows_to_csv(result["rows"], classes))
    return paths
