"""Multi-site training: one model over several sites' saved splits, on the vocabulary's top level."""

from __future__ import annotations

from pathlib import Path

import pytest

from leukodx._hashing import sha256_file
from leukodx.data.sites import site_split
from leukodx.errors import InvalidInputError
from leukodx.preprocessing.augment import augment_preset
from leukodx.preprocessing.transforms import Preprocess
from leukodx.training.recipe import train_multisite
from leukodx.training.trainer import TrainConfig

LOSO_RESULT = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "loso" / "cell-crop.json"


def _config() -> TrainConfig:
    return TrainConfig(arch="regnetx_002", epochs=1, batch_size=16, lr=1e-3, patience=1, seed=0,
                       preprocess=Preprocess(size=32, resize="cell-crop"), augment=augment_preset("stain"))


@pytest.mark.slow
def test_a_tiny_two_site_model_records_each_site_and_the_loso_figures(tmp_path):
    card = train_multisite(["pbc", "wbc-seg-2"], tmp_path / "m", _config(), max_per_class=6, min_class_count=5,
                           loso_result=LOSO_RESULT, show_progress=False, log=lambda m: None)
    # pbc's eight types and wbc-seg-2's five, on common names (pbc's "ig" is immature_granulocyte)
    assert "immature_granulocyte" in card["classes"] and "ig" not in card["classes"]
    assert {"neutrophil", "lymphocyte", "platelet"} <= set(card["classes"])
    sites = {s["dataset"]: s for s in card["data"]["sites"]}
    assert set(sites) == {"pbc", "wbc-seg-2"}
    for name, entry in sites.items():
        assert entry["split_sha256"] == sha256_file(site_split(name)[1])
        assert entry["license"] and entry["site"] and sum(entry["counts"]["train"].values()) > 0
    assert max(sites["pbc"]["counts"]["train"].values()) == 6  # the per-class cap holds per site
    assert set(card["metrics"]["test_by_site"]) == {"pbc", "wbc-seg-2"}
    loso = card["metrics"]["leave_one_site_out"]
    assert set(loso["left_out"]) == {"pbc", "deepapl", "wbc-seg-1", "wbc-seg-2"}
    assert loso["variant"] == "cell-crop"
    assert (tmp_path / "m" / "model.safetensors").exists()


def test_multisite_refuses_repeated_sites_and_too_few_classes(tmp_path):
    with pytest.raises(InvalidInputError, match="each site once"):
        train_multisite(["pbc", "pbc"], tmp_path, _config())
    with pytest.raises(InvalidInputError, match="fewer than two classes"):
        train_multisite(["pbc", "wbc-seg-2"], tmp_path, _config(), max_per_class=3, min_class_count=1000)
