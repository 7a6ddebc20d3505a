"""Case diagnosis: a folder of cell images or smear fields -> per-image results, a case summary
(differential count or ALL stage probabilities, with flags) and a report a hematologist can read.
"""

from __future__ import annotations

import datetime as _dt
import os
from typing import Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from leukodx._progress import track
from leukodx import _atomic
from leukodx._versions import provenance, versions
from leukodx.data.images import collect_images, jpeg_bytes, read_image, thumbnail_jpeg
from leukodx.data.vocabulary import is_leukocyte, leukocyte_classes, normalize_label
from leukodx.errors import InvalidInputError, LeukodxError
from leukodx.inference.classifier import DEFAULT_CELL_MODEL, Classifier, Scored, load_model, rows_to_csv
from leukodx.models.reliability import DEFAULT_COVERAGE, check_coverage

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


def _stream_case(paths: list[Path], errors: list[dict], what: str,
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


def _cell_summary(rows: list[dict], classes: list[str]) -> tuple[dict, list[str]]:
    from leukodx.stats import wilson_interval

    confident = [r for r in rows if not r["unsure"]]
    counts = {c: sum(r["top_class"] == c for r in confident) for c in classes}
    wbc_classes = leukocyte_classes(classes)
    n_wbc = sum(counts[c] for c in wbc_classes)
    differential = {c: round(100.0 * counts[c] / n_wbc, 1) if n_wbc else 0.0 for c in wbc_classes}
    summary = {
        "counts": counts,
        "unsure": len(rows) - len(confident),
        "leukocytes_counted": n_wbc,
        "differential_percent": differential,
    }
    flags = []
    if "blast" in classes:
        blasts = counts["blast"]
        lo, hi = wilson_interval(blasts, n_wbc)
        summary["blast_fraction"] = round(blasts / n_wbc, 4) if n_wbc else None
        summary["blast_fraction_ci95"] = [round(lo, 4), round(hi, 4)] if n_wbc else None
        summary["mean_blast_probability"] = round(float(np.mean([r["probabilities"]["blast"] for r in rows])), 4)
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


def _apl_call(clf: Classifier, proba: np.ndarray) -> tuple[dict, list[str]]:
    """The APL-vs-AML patient model over every cell of the case, when one fits this cell model."""
    from leukodx.inference.patient import DEFAULT_APL_MODEL, PatientModel

    try:
        model = PatientModel.load(DEFAULT_APL_MODEL)
        model.check_cell_model(clf.card)
    except LeukodxError as exc:
        return {"apl_probability": None, "apl_model": {"name": DEFAULT_APL_MODEL, "used": False,
                                                       "reason": str(exc)}}, []
    outside = model.outside_cohort(proba)
    if outside:
        return {"apl_probability": None, "apl_model": {"name": model.card["name"], "used": False,
                                                       "reason": outside}}, []
    p = model.probability(proba)
    entry = {"apl_probability": round(p, 4),
             "apl_model": {"name": model.card["name"], "used": True, "sha256": model.card.get("sha256"),
                           "cells": int(len(proba)), "drivers": model.contributions(proba),
                           "auroc_cv": model.card.get("metrics", {}).get("auroc_unseen_patients"),
                           "meaning": "probability that this patient's acute myeloid leukemia is APL; "
                                      "meaningful only for a patient with AML"}}
    flags = []
    if p >= APL_FLAG_PROBABILITY:
        flags.append(f"APL pattern (probability {p:.2f}): APL is an emergency; confirm by PML-RARA / t(15;17) "
                     "testing now")
    return entry, flags


def _field_summary(rows: list[dict], classes: list[str]) -> tuple[dict, list[str]]:
    proba = np.array([[r["probabilities"][c] for c in classes] for r in rows])
    mean = proba.mean(axis=0)
    votes = {c: sum(r["top_class"] == c for r in rows) for c in classes}
    call = classes[int(mean.argmax())]
    agreement = votes[call] / len(rows)
    summary = {
        "stage_probabilities": {c: round(float(v), 4) for c, v in zip(classes, mean)},
        "fields_per_stage": votes,
        "case_call": call,
        "field_agreement": round(agreement, 3),
        "unsure": sum(r["unsure"] for r in rows),
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
             adapt_bn: bool = False, coverage: float = DEFAULT_COVERAGE, explain: bool = False) -> dict:
    """Diagnose one case. Returns the summary dict (rows, summary, flags, shift, errors, provenance).

    Every image carries ``ood`` and a conformal ``prediction_set`` at ``coverage``; the counts and
    flags use only the images that are not ``unsure``, and the case gets a ``shift`` verdict
    (are these images like the model's training images at all?). With ``explain``, the report shows
    a Grad-CAM heatmap of each image's top class (``leukodx.inference.explain``).

    For smear fields, ``smear`` also runs the whole-smear pipeline on every field (cells found,
    white cells typed, counts, differential; ``leukodx.smear.pipeline``) beside the field model, at
    the scale given (``um_per_px`` or ``pixel_scale``) or measured per field from its red cells.
    """
    if kind not in KINDS:
        raise InvalidInputError(f"--kind {kind!r}: expected one of {', '.join(KINDS)}")
    check_coverage(coverage)
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    paths, errors = collect_images(list(inputs))

    def nothing_readable() -> InvalidInputError:
        where = ", ".join(str(i) for i in inputs)
        detail = f"; {len(errors)} unreadable, e.g. {errors[0]['error']}" if errors else ""
        return InvalidInputError(f"{where}: no readable image in this case{detail}")

    if not paths:
        raise nothing_readable()
    clf = None
    if model is not None:
        clf = model if isinstance(model, Classifier) else load_model(model, backend=backend)
    if kind != "auto":
        evidence = "given by --kind"
    elif clf is not None:
        kind, evidence = model_kind(clf), "the model's input kind"
    else:  # a first pass that keeps one vote per image, not the images
        failed = len(errors)
        kind, evidence = recognise_kind(rgb for _, rgb in _stream_case(paths, errors, "recognising the case",
                                                                        max_side=CASE_READ_SIDE))
        unreadable = {e["input"] for e in errors[failed:]}
        paths = [p for p in paths if str(p) not in unreadable]
    clf = clf or load_model(DEFAULT_MODELS[kind], backend=backend)
    if model_kind(clf) != kind:
        raise InvalidInputError(f"model {clf.name} classifies {model_kind(clf)}, but the case was given as {kind}")
    # one streaming pass: each image is decoded, reduced to what the case keeps (the model's input,
    # a thumbnail, the smear pipeline's per-field result) and released before the next
    analyzer = _smear_analyzer(pixel_scale, um_per_px) if (kind == "fields" and smear) else None
    names, inputs_small, thumbnails, fields = [], [], {}, []
    # the smear pipeline finds cells at full resolution; the image models see a few hundred px at most
    for name, rgb in _stream_case(paths, errors, "reading the case", None if analyzer else CASE_READ_SIDE):
        names.append(name)
        inputs_small.append(clf.preprocess(rgb))
        thumbnails[name] = thumbnail_jpeg(rgb)
        if analyzer is not None:
            fields.append(analyzer.analyze(rgb, name))
    if not names:
        raise nothing_readable()
    arrays = np.stack(inputs_small)
    # the patient model was fitted on this model's probabilities unadapted; OOD is judged unadapted too
    base = clf.score_arrays(arrays)
    scored = Scored(clf.adapted_to(arrays).predict_arrays(arrays), base.ood_scores) if adapt_bn else base
    rows = clf.rows_for(names, scored, coverage, decimals=4)
    summary, flags = (_cell_summary if kind == "cells" else _field_summary)(rows, clf.classes)
    if kind == "cells":
        apl, apl_flags = _apl_call(clf, base.proba)
        summary.update(apl)
        flags.extend(apl_flags)
    shift = clf.shift_of(base)
    review = _review_flag(rows, clf, coverage)
    if review:
        flags.insert(0, review)
    if shift.get("flagged"):
        flags.insert(0, f"shift: {shift['reason']}")
    if errors:
        flags.append(f"{len(errors)} file(s) could not be read and were left out")
    smear_result = _smear_summary(analyzer, fields, pixel_scale, um_per_px) if analyzer is not None else None
    if smear_result:
        flags.extend(f"smear: {f}" for f in smear_result["summary"]["flags"])
    return {
        "case": ", ".join(str(i) for i in inputs),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "kind": kind, "kind_evidence": evidence,
        "model": {"name": clf.name, "sha256": clf.card.get("sha256"), "classes": clf.classes,
                  "abstain_below": clf.abstain_below, "backend": clf.backend, "onnx_sha256": clf.onnx_sha256,
                  "coverage": coverage,
                  "test_time_adaptation": {"method": "AdaBN", "images": len(arrays)} if adapt_bn else None,
                  "test_accuracy": clf.card.get("metrics", {}).get("test", {}).get("accuracy")},
        "n_images": len(rows), "shift": shift, "summary": summary, "flags": flags, "rows": rows, "errors": errors,
        **({"smear": smear_result} if smear_result else {}),
        "versions": versions(), "provenance": provenance(),
        "_thumbnails": thumbnails,
        **({"_fields": fields} if analyzer is not None else {}),  # every field's cells, with their boxes
        **({"_explanations": _explanations(clf, names, arrays, rows)} if explain else {}),
    }


def _explanations(clf: Classifier, names: list[str], arrays: np.ndarray, rows: list[dict]) -> dict[str, bytes]:
    """A JPEG of each image with the Grad-CAM heatmap of its top class laid over it."""
    from leukodx.inference.explain import gradcam, overlay

    targets = np.asarray([clf.classes.index(r["top_class"]) for r in rows])
    heat = gradcam(clf.net, arrays, clf.preprocess, targets)
    return {name: jpeg_bytes(overlay(a, h)) for name, a, h in zip(names, arrays, heat)}


def _review_flag(rows: list[dict], clf: Classifier, coverage: float) -> str | None:
    """How many images were left for review, and why (they are not counted)."""
    unsure = [r for r in rows if r["unsure"]]
    if not unsure:
        return None
    why = [f"{sum(bool(r.get('ood')) for r in unsure)} unlike the training images (ood)"]
    if unsure[0].get("prediction_set") is not None:
        why.append(f"{sum(r['prediction_set'] is not None and len(r['prediction_set']) != 1 for r in unsure)} "
                   f"without a single class in their {coverage:.0%} conformal set")
    why.append(f"{sum(r['probability'] < clf.abstain_below for r in unsure)} below the model's confidence "
               f"threshold ({clf.abstain_below:.2f})")
    return (f"{len(unsure)} of {len(rows)} images left for review and not counted: " + ", ".join(why)
            + " (an image may have several reasons)")


def _smear_analyzer(pixel_scale: float | None, um_per_px: float | None):
    from leukodx.smear.pipeline import SmearAnalyzer

    return SmearAnalyzer(pixel_scale=pixel_scale, um_per_px=um_per_px)


def _smear_summary(analyzer, fields: list[dict], pixel_scale: float | None, um_per_px: float | None) -> dict:
    """Cells, counts and differential per field and for the case (the detector and cell-type model)."""
    from leukodx.smear.pipeline import summarize_fields

    return {"detector": {"name": analyzer.detector.name, "sha256": analyzer.detector.card.get("sha256")},
            "scale_given": {"pixel_scale": pixel_scale, "um_per_px": um_per_px},
            "summary": summarize_fields(fields),
            "fields": [{k: v for k, v in f.items() if k != "cells"} | {"cells": len(f["cells"])} for f in fields]}




def write_case_outputs(result: dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    """summary.json, predictions.csv and report.html in ``out_dir``, each written atomically."""
    from leukodx.diagnosis.report import render_case_html

    out_dir = Path(out_dir)
    clean = {k: v for k, v in result.items() if not k.startswith("_")}
    paths = {"summary": out_dir / "summary.json", "predictions": out_dir / "predictions.csv",
             "report": out_dir / "report.html"}
    _atomic.write_json(paths["summary"], clean)
    _atomic.write_text(paths["predictions"], rows_to_csv(result["rows"], result["model"]["classes"]))
    _atomic.write_text(paths["report"], render_case_html(result))
    return paths
