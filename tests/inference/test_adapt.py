"""``leukodx adapt``: few-shot fine-tuning on another site's labelled cells, recorded as a child bundle."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

import leukodx
from leukodx.cli.app import main
from leukodx.data.registry import load_dataset


def _folder(tmp_path, dataset, per_class, rename=None):
    index = load_dataset(dataset)
    root = tmp_path / f"{dataset}-k{per_class}"
    for c, name in enumerate(index.classes):
        members = np.flatnonzero(index.labels == c)[:per_class]
        target = root / (rename or {}).get(name, name)
        target.mkdir(parents=True, exist_ok=True)
        for i in members:
            shutil.copy(index.abspath(i), target / index.abspath(i).name)
    return root


@pytest.mark.slow
def test_adapt_writes_a_child_bundle_with_cross_validated_figures(tmp_path, aria_folder):
    images = _folder(tmp_path, "wbc-seg-2", 3)  # basophil has 3 images in wbc-seg-2: every class >= 2
    out = tmp_path / "adapted"
    assert main(["adapt", "-m", "pbc-celltype", "--images", str(images), "-o", str(out), "--epochs", "1",
                 "--zoom", "0.8"]) == 0
    card = json.loads((out / "card.json").read_text())
    # the lab's cells are read at the zoom given, in the fine-tuning and in every later use of the bundle
    assert card["data"]["zoom"] == {"zoom": 0.8, "method": "given"} and card["preprocess"]["zoom"] == 0.8
    assert leukodx.load(out).zoom == {"zoom": 0.8, "method": "the model's own (its card)"}
    assert "zoom" not in leukodx.load("pbc-celltype").card["preprocess"] and leukodx.load("pbc-celltype").zoom is None
    parent = leukodx.load("pbc-celltype").card
    assert card["training"]["config"]["freeze_batchnorm"] is True
    assert card["parent"] == {"name": "pbc-celltype", "sha256": parent["sha256"], "data": "pbc"}
    assert card["data"]["adaptation_counts"] == {c: 3 for c in ("basophil", "eosinophil", "lymphocyte",
                                                                 "monocyte", "neutrophil")}
    assert card["metrics"]["adaptation_cv"]["n"] == 15 and card["classes"] == parent["classes"]
    assert card["sha256"] != parent["sha256"]
    adapted = leukodx.load(out)
    rows = adapted.predict(sorted((images / "neutrophil").iterdir())).rows
    assert len(rows) == 3 and all(isinstance(r["ood"], bool) and r["prediction_set"] for r in rows)
    # the adapted bundle keeps a guard of its own: a black square is out of distribution
    black = tmp_path / "black.png"
    Image.new("RGB", (144, 144)).save(black)
    field = sorted(aria_folder.rglob("*.jpg"))[0]  # a smear field, not a cell
    assert [r["ood"] for r in adapted.predict([black, field]).rows] == [True, True]
    assert card["reliability"]["style_dim"] > 0  # the style part (stain, scanner) is scored on its own
    assert card["reliability"]["fitted_on"]["adaptation_images"] == 15 and card["reliability"]["n_conformal"] == 15


def test_adapt_refuses_too_few_images_and_unknown_classes(tmp_path, capsys):
    few = _folder(tmp_path, "wbc-seg-1", 2)  # wbc-seg-1 has a single basophil
    assert main(["adapt", "-m", "pbc-celltype", "--images", str(few), "-o", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {few}: adaptation needs at least 2 images per class "
                                               "(basophil has 1)")
    odd = _folder(tmp_path, "wbc-seg-2", 2, rename={"monocyte": "ghost cell"})
    assert main(["adapt", "-m", "pbc-celltype", "--images", str(odd), "-o", str(tmp_path / "o")]) == 2
    assert "class(es) the model does not have: ghost cell (model classes: basophil" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_images_from_the_models_own_training_set_are_flagged():
    from leukodx.data.root import resolve_data_root
    from leukodx.inference.adapt import overlaps_training_data
    from leukodx.inference.classifier import Classifier

    clf = Classifier.load("pbc-celltype", backend="torch")
    assert "belong to pbc" in overlaps_training_data(clf, resolve_data_root(None) / "pbc")
    assert overlaps_training_data(clf, resolve_data_root(None) / "wbc-seg") is None
