"""Blasts and APL on deepapl: cell-level blast vs non-blast, patient-level APL vs other AML.

Cell level: the shipped white-cell model on deepapl's patient-held-out test side (13 patients it
never saw), blast vs every other cell (one-vs-rest AUROC) and per-class F1, bootstrap CIs.

Patient level: the shipped APL model's figures (its card: repeated patient-grouped CV on all 82
discovery patients, and on the 13 outside the cell model's training), beside comparators put
through the same CV: the expert-labelled promyelocyte share of a patient's cells (the baseline
DeepAPL compares itself with), the cell model's immature-granulocyte share alone (no fitting), the
bag model (one vector per patient: the cell mix and the pooled features of its leukemic-looking
cells; the design shipped before the instance model), the same bag model on cell probabilities only
(the ablation of what those cells look like), and the shipped method over ``pbc-celltype`` (a cell
model that never saw a deepapl cell).

Run: ``python benchmarks/apl.py`` (after ``leukodx train-apl``; ~3 min on 2 cores).
"""

from __future__ import annotations

import numpy as np

from _common import ci, write_result
from leukodx.data.sites import site_sides
from leukodx.data.splits import bundled_split_path, load_split
from leukodx.evaluation.evaluate import evaluate_index
from leukodx.inference.classifier import DEFAULT_CELL_MODEL, load_model
from leukodx.inference.patient import (DEFAULT_APL_MODEL, PatientModel, apl_dataset, cross_validate,
                                       instance_cross_validate, patient_auroc)

DEEPAPL_PAPER = ("Sidhom et al. 2021 (npj Precision Oncology 5:38): DeepAPL, a multiple-instance CNN trained on the "
                 "same 82-patient discovery cohort (Monte-Carlo CV) and tested on a 24-patient prospective "
                 "validation cohort (held back here); like the instance model here it averages per-cell APL "
                 "predictions over a patient's cells, trained either on immature myeloid cells only or on all "
                 "cells, and it benchmarks itself against the proportion of promyelocytes, as we do. Its AUCs are in "
                 "its Fig. 2; they are not restated here because no copy of the figure was available offline to "
                 "check them. Other anchors (other cohorts, not comparable figure for figure): bone-marrow smears, "
                 "APL vs other AML AUROC 0.8575 (51 APL, 1,048 AML; BMC Cancer 2022, doi 10.1186/s12885-022-09307-8); "
                 "SCEMILA, blood smears, APL among four genetic AML subtypes and healthy controls, F1 0.86 +- 0.05 "
                 "(5-fold CV; PLOS Digital Health 2023, PMC10016704).")


def blast_cell_level(clf) -> dict:
    m = evaluate_index(clf, site_sides("deepapl")["test"])["metrics"]
    blast = m["per_class"]["blast"]
    return {"n_cells": m["n"], "n_patients": len(load_split(bundled_split_path("deepapl"))["patients"]["test"]),
            "blast_auroc": blast["auroc"], "blast_sensitivity": blast["sensitivity"],
            "blast_specificity": blast["specificity"], "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
            "per_class_f1": {c: {**v["f1"], "support": v["support"]} for c, v in m["per_class"].items()
                             if v["support"]}}


def main() -> None:
    clf = load_model(DEFAULT_CELL_MODEL)
    apl = PatientModel.load(DEFAULT_APL_MODEL)
    apl.check_cell_model(clf.card)
    cells = blast_cell_level(clf)

    data = apl_dataset(clf)
    y, unseen = data["y"], data["unseen"]
    everyone = np.arange(len(y))
    # comparators, through the same patient CV where they are fitted
    from leukodx.data.registry import load_dataset

    index = load_dataset("deepapl")
    promyelocyte = index.classes.index("promyelocyte")
    share = np.asarray([np.mean(index.labels[index.groups == p] == promyelocyte) for p in data["patients"]])
    ig = data["feature_names"].index("fraction_immature_granulocyte")
    pbc = load_model("pbc-celltype")
    pbc_data = apl_dataset(pbc)
    pbc_cv = (instance_cross_validate(pbc_data, list(pbc.classes)) if apl.method == "instance"
              else cross_validate(pbc_data["x"], pbc_data["y"]))
    bag = cross_validate(data["x"], y)["oof"]
    probs_only = cross_validate(data["x"][:, :2 * len(clf.classes)], y)["oof"]
    comparators = {
        "expert promyelocyte share (labels, no model)": {"all": patient_auroc(y, share, everyone),
                                                          "unseen": patient_auroc(y, share, everyone[unseen])},
        f"{clf.name} immature-granulocyte share (no fitting)": {
            "all": patient_auroc(y, data["x"][:, ig], everyone), "unseen": patient_auroc(y, data["x"][:, ig], everyone[unseen])},
        f"{apl.method} model over pbc-celltype (never saw deepapl)": {
            "all": patient_auroc(y, pbc_cv["oof"], everyone), "unseen": None},
        "bag model (cell mix + pooled features of leukemic-looking cells)": {
            "all": patient_auroc(y, bag, everyone), "unseen": patient_auroc(y, bag, everyone[unseen])},
        "bag model, cell probabilities only (no pooled features)": {
            "all": patient_auroc(y, probs_only, everyone), "unseen": patient_auroc(y, probs_only, everyone[unseen])},
    }
    card = apl.card["metrics"]
    rows = [["cell", f"blast vs non-blast AUROC, {clf.name}", ci(cells["blast_auroc"]),
             f"{cells['n_cells']} cells, {cells['n_patients']} held-out patients"],
            ["cell", f"macro-F1 over classes, {clf.name}", ci(cells["macro_f1"]), "same cells"],
            ["patient", f"APL vs AML AUROC, {apl.card['name']}, {apl.method} model (all patients)",
             ci(card["auroc_all_patients"]),
             f"{card['auroc_all_patients']['n_patients']} patients ({card['auroc_all_patients']['n_apl']} APL)"],
            ["patient", f"APL vs AML AUROC, {apl.card['name']} (patients unseen by the cell model)",
             ci(card["auroc_unseen_patients"]),
             f"{card['auroc_unseen_patients']['n_patients']} patients ({card['auroc_unseen_patients']['n_apl']} APL)"]]
    for name, entry in comparators.items():
        rows.append(["patient", f"comparator: {name}", ci(entry["all"]),
                     f"{entry['all']['n_patients']} patients" + (f"; unseen only {ci(entry['unseen'])}"
                                                                  if entry["unseen"] else "")])
    per_class = ", ".join(f"{c} {v['value']:.2f} (n={v['support']})" for c, v in cells["per_class_f1"].items())
    write_result("apl", {"cell_level": cells, "patient_level": {"model": card, "comparators": comparators},
                         "cell_model": {"name": clf.name, "sha256": clf.card["sha256"]},
                         "apl_model": {"name": apl.card["name"], "sha256": apl.card["sha256"]},
                         "deepapl_paper": DEEPAPL_PAPER},
                 ["level", "figure", "value [95% CI]", "on"], rows,
                 [f"Per-class F1 on deepapl's held-out test patients: {per_class}.",
                  "Patient CV: 20 x stratified 5-fold over patients, out-of-fold probabilities averaged over repeats; "
                  "bootstrap over patients. 'Unseen': the patients outside the cell model's training and "
                  "validation sides (it saw the cell types, never the diagnosis, of the others).",
                  DEEPAPL_PAPER])


if __name__ == "__main__":
    main()
