"""Flow cytometry figures: FCS coverage, read speed and memory, the leukemic-cell classifier on
held-out DDPR cells, the read-out on the four tidytof FCS files, and a spike-in dilution series.

Read speed uses a float32 file of real events: the FACS Diva test file's 83,411 events tiled to
2 million, written with FlowIO into a temporary folder (deleted afterwards).
"""

from __future__ import annotations

import statistics
import tempfile
import time
import tracemalloc
import warnings
from array import array
from pathlib import Path

import numpy as np

from _common import ci, write_result
from leukodx.cytometry.cells import load_cell_split, read_ddpr
from leukodx.cytometry.classifier import CellClassifier
from leukodx.cytometry.evaluate import evaluate_cell_classifiers
from leukodx.cytometry.fcs import open_fcs
from leukodx.cytometry.markers import align_markers
from leukodx.cytometry.readout import readout
from leukodx.stats import wilson_interval
from leukodx.data.root import resolve_data_root
from leukodx.errors import LeukodxError

CLAIM = "Adjouadi 2010, neural network on per-sample statistics of 24 Beckman-Coulter parameters: 96.67% (samples)"


def formats_coverage(flow: Path) -> list[dict]:
    rows = []
    for path in sorted(p for p in (flow / "formats").rglob("*") if p.suffix in (".fcs", ".lmd")):
        name = str(path.relative_to(flow / "formats"))
        try:
            fcs = open_fcs(path)
            events = sum(len(b) for b in fcs.iter_events())
            rows.append({"file": name, "status": "read", "version": fcs.version, "events": events,
                         "channels": fcs.channel_count, "datasets": fcs.n_datasets, "notes": fcs.warnings})
        except LeukodxError as exc:
            rows.append({"file": name, "status": "refused", "reason": str(exc).replace(str(path) + ": ", "")})
    return rows


def read_speed(flow: Path, events_wanted: int = 2_000_000, repeats: int = 3) -> dict:
    import flowio

    base = open_fcs(flow / "formats" / "FACS_Diva" / "facs_diva_test.fcs")
    events = base.read(scale=False).astype(np.float32)
    events = np.tile(events, (int(np.ceil(events_wanted / len(events))), 1))[:events_wanted]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiled.fcs"
        with open(path, "wb") as fh:
            flowio.create_fcs(fh, array("f", events.tobytes()), base.labels)
        size = path.stat().st_size
        del events

        def ours() -> int:
            fcs = open_fcs(path)
            return sum(len(b) for b in fcs.iter_events())

        def theirs() -> int:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return len(flowio.FlowData(str(path)).as_array())

        result = {"events": events_wanted, "channels": base.channel_count, "file_bytes": size, "datatype": "F"}
        for name, fn in (("leukodx_streamed", ours), ("flowio_whole_file", theirs)):
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                n = fn()
                times.append(time.perf_counter() - t0)
            tracemalloc.start()
            fn()
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            result[name] = {"events_per_s": n / statistics.median(times), "seconds_median": statistics.median(times),
                            "peak_traced_mb": peak / 1e6}
    return result


def spike_in(model: CellClassifier, table, test: np.ndarray, fractions=(0.0, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5),
             events: int = 20_000, repeats: int = 20) -> list[dict]:
    """Held-out healthy cells with held-out leukemic cells mixed in (resampled with replacement)."""
    columns = [table.markers.index(m) for m in model.markers]
    proba = model.predict_proba(table.values[np.ix_(test, columns)])
    called = proba >= model.threshold
    y = table.labels[test]
    leuk, healthy = called[y == 1], called[y == 0]
    rates = model.card["test"]
    fpr, sens = rates["false_positive_rate"], rates["sensitivity"]
    fpr_hi = wilson_interval(rates["false_positives"], rates["healthy_cells"])[1]
    rng = np.random.default_rng(0)
    rows = []
    for f in fractions:
        observed, corrected, flagged = [], [], 0
        for _ in range(repeats):
            k = rng.binomial(events, f)
            hits = rng.choice(leuk, k).sum() + rng.choice(healthy, events - k).sum()
            obs = hits / events
            observed.append(obs)
            corrected.append(float(np.clip((obs - fpr) / (sens - fpr), 0, 1)))
            flagged += wilson_interval(int(hits), events)[0] > fpr_hi
        rows.append({"true_fraction": f, "observed_mean": float(np.mean(observed)),
                     "corrected_mean": float(np.mean(corrected)), "corrected_sd": float(np.std(corrected)),
                     "flagged": flagged, "repeats": repeats, "events": events})
    return rows


def tidytof_readouts(flow: Path, model: CellClassifier, table, split) -> list[dict]:
    out, cache = [], {}
    for path in [flow / "tidytof" / "ddpr" / "Healthy1_Basal.fcs", flow / "tidytof" / "ddpr" / "UPN1_Basal.fcs",
                 flow / "tidytof" / "aml" / "bm5721_healthy_basal.fcs", flow / "tidytof" / "aml" / "parbiu_dx_basal.fcs"]:
        entry = readout(path, model, table=table, split=split, refit_cache=cache)
        fcs = open_fcs(path)
        cols, missing = align_markers(fcs.labels, table.markers)
        if not missing:  # how many of the file's events are rows of the training table?
            x = fcs.read()[:, cols]
            rows = table.values[table.samples == path.stem]
            entry["events_also_in_cell_table"] = int(
                (np.abs(x[:, None, :] - rows[None, :, :]).max(axis=2).min(axis=1) < 1e-3).sum())
        out.append(entry)
    return out


def main() -> None:
    flow = resolve_data_root(None) / "flow"
    coverage = formats_coverage(flow)
    speed = read_speed(flow)
    table = read_ddpr()
    split = load_cell_split(table)
    model = CellClassifier.load()
    evaluation = evaluate_cell_classifiers(table, *split, model)
    readouts = tidytof_readouts(flow, model, table, split)
    spikes = spike_in(model, table, split[1])

    rows = [["FCS files in flow/formats read or cleanly refused",
             f"{sum(r['status'] == 'read' for r in coverage)} read + {sum(r['status'] == 'refused' for r in coverage)} "
             f"refused of {len(coverage)}", "all"]]
    for name in ("leukodx_streamed", "flowio_whole_file"):
        s = speed[name]
        rows.append([f"read speed, float32, {speed['events']:,} events x {speed['channels']} ch ({name})",
                     f"{s['events_per_s'] / 1e6:.2f} M events/s, peak {s['peak_traced_mb']:.0f} MB", ">= 1 M events/s"])
    for name, m in evaluation["methods"].items():
        cv = f"{m['cv_auroc_mean']:.4f} +- {m['cv_auroc_sd']:.4f}" if m["cv_auroc_mean"] is not None else "-"
        rows.append([f"held-out DDPR cells AUROC, {name} (5-fold CV on train: {cv})",
                     ci(m["held_out"]["auroc"]), ">= 0.99"])
    for r in readouts:
        lo, hi = r["fraction_ci95"]
        rows.append([f"read-out {Path(r['file']).name} ({r['events_scored']} events, {len(r['markers_used'])} markers)",
                     f"{r['fraction_leukemic_like']:.0%} [{lo:.0%}, {hi:.0%}]: {r['flag']}", "report"])
    for s in spikes:
        rows.append([f"spike-in {s['true_fraction']:.1%} leukemic in {s['events']:,} held-out cells",
                     f"observed {s['observed_mean']:.2%}, corrected {s['corrected_mean']:.2%} +- {s['corrected_sd']:.2%}, "
                     f"flagged {s['flagged']}/{s['repeats']}", "report"])
    refused = [f"{r['file']}: {r['reason']}" for r in coverage if r["status"] == "refused"]
    overlap = [f"{Path(r['file']).name}: {r['events_also_in_cell_table']} of 100" for r in readouts
               if "events_also_in_cell_table" in r]
    write_result("flow", {"formats": coverage, "read_speed": speed, "cells": evaluation, "readouts": readouts,
                          "spike_in": spikes, "paper_claim": CLAIM},
                 ["figure", "measured", "target"], rows,
                 ["Refused: " + "; ".join(refused),
                  f"Paper claim beside ours: {CLAIM}. Ours is cell-level on two samples, not a sample-level accuracy.",
                  "The two DDPR FCS files share events with the training table (" + ", ".join(overlap) + "), so their "
                  "read-outs are not fully independent; the spike-in series uses held-out cells only.",
                  "AML files lack 10 of the 20 markers: a model refit on the 10 shared ones scores them, and their CD45 "
                  "(Y89 channel) lies outside the training range, so the read-out is flagged unreliable.",
                  "Spike-in: the corrected estimate tracks the true fraction down to 0.5%, but a sample is flagged only "
                  "when its fraction's lower 95% bound clears the healthy background's upper bound (the classifier calls "
                  f"{model.card['test']['false_positive_rate']:.1%} of held-out healthy cells leukemic), so the flag's "
                  "detection limit is a few percent: far from the 0.01% of clinical MRD.",
                  evaluation["limits"]])


if __name__ == "__main__":
    main()
