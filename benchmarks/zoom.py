"""``--zoom auto`` on the shipped cell classifiers: each site's test cells read as they are and at the zoom the
model chooses on the site's cells (``Classifier.zoom_for_inputs``, no labels), as a lab would run
``leukodx predict --zoom auto`` on a batch of its own cells (every side of the site's split, up to 512 of
them, labels unread); accuracy on the classes the model knows, the paired
difference with a bootstrap 95% CI over cells, and the zoom chosen.

- ``wbc-multisite`` was trained on every site here: its rows say what the option costs or gains at a lab
  the model already knows.
- ``pbc-celltype`` was trained on pbc only: on the other sites it is a model meeting another lab's cells.

Inputs: the test side of each site's saved split, whole. Run: ``python benchmarks/zoom.py``.
Writes results/zoom.{json,md}.
"""

from __future__ import annotations

import numpy as np

from _common import ci, write_result

from leukodx.data.sites import CELL_SITES, site_sides
from leukodx.evaluation.evaluate import match_classes
from leukodx.inference.classifier import load_model
from leukodx.stats import bootstrap_estimate

MODELS = ("wbc-multisite", "pbc-celltype")


def main() -> None:
    out: dict = {"models": {}}
    rows = []
    for model in MODELS:
        out["models"][model] = {}
        for site in CELL_SITES:
            sides = site_sides(site, None, coarse=True)
            side = sides["test"]
            # the zoom is chosen on the site's cells of every side, labels unread (a lab's batch of its own cells;
            # wbc-seg-2's test side alone holds fewer than --zoom auto's 32)
            batch = [(str(p), str(p)) for s in sides.values() for p in s.abspaths()]
            clf = load_model(model)
            mapping = match_classes(side.classes, clf.classes)
            keep = [i for i, y in enumerate(side.labels) if side.classes[y] in mapping]
            items = [(str(side.abspath(i)), str(side.abspath(i))) for i in keep]
            y = np.asarray([mapping[side.classes[side.labels[i]]] for i in keep])
            hits = {}
            for how in ("as they are", "auto"):
                if how == "auto":
                    clf.set_zoom("auto", batch)
                names, x, errors = clf.prepare(items)
                assert not errors and len(names) == len(y), errors[:3]
                hits[how] = (clf.predict_arrays(x).argmax(1) == y).astype(float)
            diff = hits["auto"] - hits["as they are"]
            result = {"n": len(y), "zoom": clf.zoom, "precision": clf.precision,
                      **{how: bootstrap_estimate(lambda idx, h=h: float(h[idx].mean()), len(h))
                         for how, h in hits.items()},
                      "auto_minus_as_they_are": bootstrap_estimate(lambda idx: float(diff[idx].mean()), len(diff))}
            out["models"][model][site] = result
            d = result["auto_minus_as_they_are"]
            rows.append([model, site, len(y), f"{clf.zoom['zoom']:g}", ci(result["as they are"], 3),
                         ci(result["auto"], 3),
                         f"{100 * d['value']:+.1f} [{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}]"])
            print(model, site, "done", flush=True)
    write_result("zoom", out, ["model", "test site", "n", "zoom chosen", "accuracy as they are",
                               "accuracy at --zoom auto", "auto minus as they are (points, 95% CI)"], rows,
                 ["Accuracy on the test cells of the classes the model knows (the site's labels mapped through the "
                  "shared vocabulary); the default precision (`leukodx predict`'s).",
                  "The zoom is chosen on up to 512 of the site's cells, all sides of its split (no labels read), of "
                  "a grid from 0.4 to 2; a tie within 1e-4 nats goes to the zoom nearest 1.",
                  "wbc-multisite was trained on all four sites; pbc-celltype on pbc only."])


if __name__ == "__main__":
    main()
