"""Does an adapted bundle keep its guard? ``leukodx adapt`` on 10 labelled cells per class of each site.

For each site (pbc, deepapl, wbc-seg-1, wbc-seg-2): the shipped white-cell model adapted on 10 cells
per class of the site's train side (the five shared leukocyte types), then:

- accuracy on the site's test side (capped at 200 per class), parent and adapted. The parent was
  trained on all four sites, so this is in-site adaptation, not a generalization figure (those are
  the few-shot curves of LOSO.md);
- the adapted bundle's OOD flags on that test side (new cells of the lab it was adapted to: about
  5% expected) and its shift verdict on them;
- its OOD flags on 100 test cells of each other site, and on 40 all-aria smear fields (not cells).

Run: ``python benchmarks/adapt_guard.py`` (~10 min on 2 cores).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from _common import write_result
from leukodx.benchmarking.loso import SITES, site_sides
from leukodx.data.folder import limit_per_class
from leukodx.data.registry import load_dataset
from leukodx.inference.adapt import adapt
from leukodx.inference.classifier import DEFAULT_CELL_MODEL, load_model

K = 10
OTHER_SITE_CELLS = 100
FIELDS = 40


def _folder(index, root: Path) -> Path:
    for c, name in enumerate(index.classes):
        members = np.flatnonzero(index.labels == c)
        if len(members) < 2:  # adapt needs two per class: a site without them leaves the class out
            continue
        (root / name).mkdir(parents=True)
        for i in members:
            shutil.copy(index.abspath(i), root / name / f"{i}-{index.abspath(i).name}")
    return root


def _scored(clf, paths: list[Path], labels: list[str] | None = None) -> dict:
    result = clf.predict(paths)
    rows = result.rows
    out = {"n": len(rows), "ood_share": round(float(np.mean([r["ood"] for r in rows])), 4),
           "shift_flagged": bool(result.shift["flagged"])}
    if labels is not None:
        out["accuracy"] = round(float(np.mean([r["top_class"] == y for r, y in zip(rows, labels)])), 4)
    return out


def main() -> None:
    rng = np.random.default_rng(0)
    parent = load_model(DEFAULT_CELL_MODEL)
    sides = {s: site_sides(s) for s in SITES}
    tests = {s: limit_per_class(sides[s]["test"], 200, 0) for s in SITES}
    aria = load_dataset("all-aria")
    fields = [aria.abspath(i) for i in rng.choice(len(aria), FIELDS, replace=False)]
    results, rows = {}, []
    for site in SITES:
        shots = limit_per_class(sides[site]["train"], K, 0)
        test = tests[site]
        paths = [test.abspath(i) for i in range(len(test))]
        labels = [test.classes[y] for y in test.labels]
        with tempfile.TemporaryDirectory() as work:
            card = adapt(DEFAULT_CELL_MODEL, _folder(shots, Path(work) / "cells"), Path(work) / "adapted")
            adapted = load_model(Path(work) / "adapted")
            others = {}
            for other in SITES:
                if other != site:
                    t = tests[other]
                    pick = rng.choice(len(t), min(OTHER_SITE_CELLS, len(t)), replace=False)
                    others[other] = _scored(adapted, [t.abspath(i) for i in pick])
            results[site] = {"adaptation_counts": card["data"]["adaptation_counts"],
                             "parent": _scored(parent, paths, labels), "adapted": _scored(adapted, paths, labels),
                             "other_sites": others, "smear_fields": _scored(adapted, fields)}
        r = results[site]
        rows.append([site, sum(r["adaptation_counts"].values()), r["parent"]["accuracy"], r["adapted"]["accuracy"],
                     f"{r['adapted']['ood_share']:.3f} (n={r['adapted']['n']})",
                     "yes" if r["adapted"]["shift_flagged"] else "no",
                     ", ".join(f"{o} {v['ood_share']:.2f}" for o, v in others.items()),
                     f"{r['smear_fields']['ood_share']:.3f}"])
        print(site, r, flush=True)
    write_result("adapt_guard", {"model": DEFAULT_CELL_MODEL, "k_per_class": K, "sites": results},
                 ["adapted to", "cells", "parent acc.", "adapted acc.", "OOD, new cells of that site",
                  "shift flagged", "OOD, other sites' cells", "OOD, smear fields"], rows,
                 notes=["The parent was trained on all four sites: the accuracies are in-site adaptation, not "
                        "generalization (see LOSO.md for left-out sites).",
                        f"About 5% of new cells of the adapted site are expected to be flagged; other sites' cells "
                        f"({OTHER_SITE_CELLS} each) and {FIELDS} all-aria smear fields should be."])


if __name__ == "__main__":
    main()
