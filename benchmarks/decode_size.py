"""How small a cell image may be decoded before the classifier notices: accuracy of each shipped image
classifier on every test site of its card, with the images decoded at full size (as training reads
them) and reduced in the JPEG's DCT to no less than 2x and 1.5x the model's input side (what
``leukodx predict`` does, ``DECODE_FACTOR``), in both precisions; the paired difference against the
full-size decode with a bootstrap 95% CI over images; and the decode + preprocess time per image.

Inputs: the test side of each model's own split (never trained on), whole.
Run: ``python benchmarks/decode_size.py``. Writes results/decode_size.{json,md}.
"""

from __future__ import annotations

import time

import numpy as np

from _common import ci, write_result

from leukodx.data.registry import load_dataset
from leukodx.data.sites import site_sides
from leukodx.data.splits import apply_split, bundled_split_path, load_split
from leukodx.inference.classifier import DECODE_FACTOR, InputReader, load_model
from leukodx.stats import bootstrap_estimate

MODELS = ("wbc-multisite", "pbc-celltype", "all-stage")
FACTORS = (None, 2.0, 1.5)  # None: full size, as training decodes


def test_sides(card: dict) -> list[tuple[str, object]]:
    data = card["data"]
    if data.get("sites"):
        return [(s["dataset"], site_sides(s["dataset"], None, coarse=True)["test"]) for s in data["sites"]]
    index = load_dataset(data["dataset"])
    return [(data["dataset"], apply_split(index, load_split(bundled_split_path(data["dataset"])))["test"])]


def main() -> None:
    out: dict = {"decode_factor_in_use": DECODE_FACTOR, "models": {}}
    rows = []
    for model in MODELS:
        clf = {"int8": load_model(model), "fp32": load_model(model, precision="fp32")}
        position = {c: i for i, c in enumerate(clf["fp32"].classes)}
        out["models"][model] = {}
        for site, side in test_sides(clf["fp32"].card):
            keep = [i for i, y in enumerate(side.labels) if side.classes[y] in position]
            items = [(str(side.abspath(i)), side.abspath(i)) for i in keep]
            y = np.asarray([position[side.classes[side.labels[i]]] for i in keep])
            correct, result = {}, {"n": len(y)}
            for factor in FACTORS:
                side_px = None if factor is None else round(clf["fp32"].preprocess.size * factor)
                reader = InputReader(clf["fp32"].preprocess, side_px)
                reader.prepare(items[:16])  # imports and first-call set-up stay out of the timing
                t0 = time.perf_counter()
                names, x, errors = reader.prepare(items)
                ms = 1000 * (time.perf_counter() - t0) / len(items)
                assert not errors and len(names) == len(y), errors[:3]
                key = "full" if factor is None else f"x{factor:g}"
                result[key] = {"prepare_ms_per_image": round(ms, 3)}
                for precision, c in clf.items():
                    hit = (c.predict_arrays(x).argmax(1) == y).astype(float)
                    correct[(key, precision)] = hit
                    result[key][precision] = bootstrap_estimate(lambda idx: float(hit[idx].mean()), len(hit))
            for key in ("x2", "x1.5"):
                for precision in clf:
                    diff = correct[(key, precision)] - correct[("full", precision)]
                    result[key][f"{precision}_minus_full"] = bootstrap_estimate(lambda idx: float(diff[idx].mean()),
                                                                                len(diff))
            out["models"][model][site] = result
            for key in ("full", "x2", "x1.5"):
                r = result[key]
                delta = (lambda e: "-" if e is None else
                         f"{100 * e['value']:+.2f} [{100 * e['ci95'][0]:+.2f}, {100 * e['ci95'][1]:+.2f}]")
                rows.append([model, site, len(y), key, r["prepare_ms_per_image"], ci(r["fp32"]), ci(r["int8"]), delta(r.get("fp32_minus_full")),
                             delta(r.get("int8_minus_full"))])
            print(model, site, "done", flush=True)
    write_result("decode_size", out, ["model", "test site", "n", "decode", "decode + preprocess (ms/image)",
                                      "accuracy fp32", "accuracy int8", "fp32 vs full (points, 95% CI)",
                                      "int8 vs full (points, 95% CI)"], rows,
                 [f"decode: full = the file's own size (training's decode); x2 / x1.5 = a JPEG reduced in its DCT to "
                  f"the smallest scale whose longer side is >= 2x / 1.5x the model's input side (smaller files are "
                  f"never enlarged); leukodx predict uses x{DECODE_FACTOR:g}",
                  "differences are paired (the same images), bootstrap over images, 1,000 resamples",
                  "decode + preprocess: one process, all images of the site in one batch, after a warm-up batch of 16"])


if __name__ == "__main__":
    main()
