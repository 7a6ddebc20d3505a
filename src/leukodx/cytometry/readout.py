"""MRD-style read-out: the fraction of leukemic-like cells in an FCS file, and a sample flag.

Events stream through compensation, marker alignment, the transform and the cell classifier
chunk by chunk, so memory stays bounded whatever the file size. The observed fraction is set
against the classifier's error rates on held-out cells: a file is flagged only when the lower
95% bound of its fraction exceeds the upper 95% bound of the false-positive rate on healthy
cells, and a corrected estimate (Rogan-Gladen: (observed - FPR) / (sensitivity - FPR)) is given
beside the raw one.
"""

from __future__ import annotations

import os

import numpy as np

from leukodx.cytometry.cells import CellTable
from leukodx.cytometry.classifier import CellClassifier, train_cell_classifier
from leukodx.cytometry.fcs import DEFAULT_CHUNK_EVENTS, open_fcs
from leukodx.cytometry.markers import align_markers
from leukodx.cytometry.transforms import compensate
from leukodx.errors import InvalidInputError
from leukodx.stats import auroc, wilson_interval

SHIFT_WARNING_FRACTION = 0.2  # events outside the training range on one marker before a file is called shifted


def error_rates(model: CellClassifier, table: CellTable, rows: np.ndarray) -> dict:
    """Sensitivity and false-positive rate at the model's threshold on the given (held-out) cells."""
    columns = [table.markers.index(m) for m in model.markers]
    proba = model.predict_proba(table.values[np.ix_(rows, columns)])
    y = table.labels[rows]
    called = proba >= model.threshold
    return {"cells": int(len(rows)), "leukemic_cells": int(y.sum()), "healthy_cells": int((y == 0).sum()),
            "auroc": auroc(y == 1, proba),
            "sensitivity": float(called[y == 1].mean()), "false_positive_rate": float(called[y == 0].mean()),
            "false_positives": int(called[y == 0].sum())}


def reduced_model(model: CellClassifier, markers: list[str], table: CellTable, train_rows: np.ndarray,
                  test_rows: np.ndarray) -> CellClassifier:
    """The same recipe refit on a subset of markers (a panel that lacks some), with its own held-out rates."""
    chosen = model.card.get("selection", {}).get("chosen", {})
    reduced = train_cell_classifier(table, train_rows, markers=markers, transform=model.transform,
                                    seed=int(model.card.get("training", {}).get("seed", model.card.get("seed", 0))),
                                    hidden=tuple(chosen.get("hidden", (64, 32))), alpha=float(chosen.get("alpha", 0.1)))
    reduced.card["name"] = f"{model.card.get('name', 'model')} (refit on {len(markers)} markers)"
    reduced.card["test"] = error_rates(reduced, table, test_rows)
    return reduced


def readout(path: str | os.PathLike, model: CellClassifier, dataset: int = 0, compensate_spillover: bool = True,
            chunk_events: int = DEFAULT_CHUNK_EVENTS, table: CellTable | None = None,
            split: tuple[np.ndarray, np.ndarray] | None = None, refit_cache: dict | None = None) -> dict:
    """Score every event of one FCS data set. When the file lacks some of the model's markers and the
    training ``table`` + ``split`` are given, a reduced model is refit on the shared markers;
    otherwise the missing markers are an error."""
    fcs = open_fcs(path, dataset=dataset)
    columns, missing = align_markers(fcs.marker_sources, model.markers, source=str(fcs.path))
    notes = list(fcs.warnings)
    used = model
    if missing:
        shared = [m for m, c in zip(model.markers, columns) if c is not None]
        if table is None or split is None:
            raise InvalidInputError(f"{fcs.path}: lacks marker(s) {', '.join(missing)} the model needs "
                                    "(give the training table to refit on the shared markers)")
        if len(shared) < 3:
            raise InvalidInputError(f"{fcs.path}: shares only {len(shared)} marker(s) with the model "
                                    f"({', '.join(shared) or 'none'}); cannot score its cells")
        key = tuple(shared)
        cache = refit_cache if refit_cache is not None else {}
        if key not in cache:
            cache[key] = reduced_model(model, shared, table, *split)
        used = cache[key]
        columns = [c for c in columns if c is not None]
        notes.append(f"missing marker(s) {', '.join(missing)}: scored by a model refit on the {len(shared)} shared markers")
    rates = used.card.get("test") or {}
    apply_comp = compensate_spillover and fcs.spillover is not None
    total = called = 0
    outside = np.zeros(len(used.markers), dtype=np.int64)
    histogram = np.zeros(20, dtype=np.int64)
    for block in fcs.iter_events(chunk_events=chunk_events):
        if apply_comp:
            block = compensate(block, [c.pnn for c in fcs.channels], fcs.spillover)
        values = block[:, columns]
        finite = np.isfinite(values).all(axis=1)
        values = values[finite]
        proba = used.predict_proba(values)
        total += len(values)
        called += int((proba >= used.threshold).sum())
        outside += used.outside_training_range(values)
        histogram += np.histogram(proba, bins=20, range=(0.0, 1.0))[0]
    return summarize(fcs, used, total, called, outside, histogram, rates, notes, apply_comp)


def summarize(fcs, model: CellClassifier, total: int, called: int, outside: np.ndarray, histogram: np.ndarray,
              rates: dict, notes: list[str], compensated: bool) -> dict:
    fraction = called / total if total else float("nan")
    lo, hi = wilson_interval(called, total)
    shift = {m: round(float(o) / total, 4) for m, o in zip(model.markers, outside)} if total else {}
    shifted = sorted(m for m, f in shift.items() if f > SHIFT_WARNING_FRACTION)
    result = {
        "file": str(fcs.path), "dataset": fcs.dataset + 1, "events": fcs.event_count, "events_scored": total,
        "model": model.card.get("name", ""), "markers_used": model.markers, "compensated": compensated,
        "threshold": model.threshold, "leukemic_like": called, "fraction_leukemic_like": fraction,
        "fraction_ci95": [lo, hi], "probability_histogram": histogram.tolist(),
        "fraction_outside_training_range": shift, "warnings": notes,
    }
    fpr, sens = rates.get("false_positive_rate"), rates.get("sensitivity")
    if total == 0:
        result["flag"] = "not assessable: no events"
        return result
    if fpr is not None and sens is not None and sens > fpr:
        healthy_n = rates.get("healthy_cells", 0)
        fpr_hi = wilson_interval(rates.get("false_positives", round(fpr * healthy_n)), healthy_n)[1]
        result["healthy_background"] = {"false_positive_rate": fpr, "upper95": fpr_hi, "sensitivity": sens,
                                        "measured_on": f"{rates.get('cells')} held-out cells"}
        result["fraction_corrected"] = float(np.clip((fraction - fpr) / (sens - fpr), 0.0, 1.0))
        positive = lo > fpr_hi
        result["flag"] = ("leukemic-like population above the healthy background" if positive
                          else "no leukemic-like population above the healthy background")
    else:
        result["flag"] = "not assessable: the model carries no held-out error rates"
    if shifted:
        result["flag"] += f" (unreliable: >{SHIFT_WARNING_FRACTION:.0%} of events outside the training range on " \
                          f"{', '.join(shifted)})"
    # the same reliability fields as every leukodx model: the sample is out of distribution when a
    # marker's events leave the training range too often (another panel, instrument or compensation)
    worst = max(shift.values()) if shift else 0.0
    result["ood_score"] = round(float(worst), 4)
    result["ood"] = bool(shifted)
    result["shift"] = {"flagged": bool(shifted), "score": round(float(worst), 4),
                       "reason": (f"{', '.join(shifted)}: more than {SHIFT_WARNING_FRACTION:.0%} of events outside the "
                                  "range of the training cells (another panel, instrument, voltage or compensation?); "
                                  "the read-out is unreliable" if shifted else
                                  f"every marker's events lie within the training range (worst {worst:.1%} outside)")}
    if total < 1000:
        result["warnings"].append(f"only {total} events: the fraction's interval is wide")
    return result


def readout_files(files: list[str | os.PathLike], model: CellClassifier, refit_missing: bool = True,
                  compensate_spillover: bool = True, data_root: str | os.PathLike | None = None,
                  on_result=None, on_error=None) -> dict:
    """Read out a batch of FCS files: a bad file is reported (``failed``) and the rest still read.

    ``on_result(entry)`` / ``on_error(file, message)`` are called as each file finishes (progress).
    When ``refit_missing``, the DDPR training table is read once so files lacking markers get a
    model refit on the shared markers (a missing table is a note, not an error).
    """
    from leukodx._batch import run_batch
    from leukodx.errors import Interrupted, LeukodxError

    table = split = None
    notes = []
    if refit_missing:
        from leukodx.cytometry.cells import load_cell_split, read_ddpr

        try:
            table = read_ddpr(data_root)
            split = load_cell_split(table)
        except LeukodxError as exc:
            notes.append(f"no refit for files lacking markers ({exc})")
    cache: dict = {}

    def batch(results: list, failures: list) -> dict:
        return {"model": model.card.get("name"), "model_sha256": model.card.get("sha256"), "results": results,
                "failed": failures, "notes": notes}

    try:
        results, failures = run_batch(files, lambda path: readout(path, model, compensate_spillover=compensate_spillover,
                                                                  table=table, split=split, refit_cache=cache),
                                      "files", on_result=on_result, on_error=on_error)
    except Interrupted as stop:
        stop.partial = batch(*stop.partial)
        raise
    return batch(results, failures)
