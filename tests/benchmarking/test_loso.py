"""Leave-one-site-out protocol, the cell-centred crop and test-time batch-norm adaptation."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from leukodx.benchmarking.loso import (FEW_SHOT_DRAWS, RELIABILITY_ABLATIONS, SELF_TRAIN_POOL, SHARED, VARIANTS, quick,
                                      run_loso, site_sides, unlabelled_pool, write_table)
from leukodx.data.images import read_image
from leukodx.data.registry import load_dataset
from leukodx.errors import InvalidInputError
from leukodx.preprocessing.transforms import Preprocess, _nucleus_box, cell_crop
from leukodx.training.adaptation import ZOOM_GRID


def test_sites_are_relabelled_onto_the_five_shared_types_from_saved_splits():
    for site in ("pbc", "deepapl", "wbc-seg-1"):
        sides = site_sides(site)
        assert set(sides) == {"train", "val", "test"}
        assert all(side.classes == list(SHARED) for side in sides.values())
    deepapl = site_sides("deepapl")
    assert not set(deepapl["train"].groups) & set(deepapl["test"].groups)  # patients never straddle
    # deepapl neutrophils: segmented + band, in the shared top-level class
    total = sum(int((s.labels == SHARED.index("neutrophil")).sum()) for s in deepapl.values())
    assert total == 1560 + 105


def test_cell_crop_centres_the_nucleus_and_equalizes_scale():
    def nucleus_share(rgb):
        top, left, bottom, right = _nucleus_box(rgb)
        return max(bottom - top, right - left) / max(rgb.shape[:2])

    before, after = {}, {}
    for name in ("pbc", "wbc-seg-1"):
        index = load_dataset(name)
        images = [read_image(index.abspath(i)) for i in range(0, len(index), len(index) // 20)[:20]]
        crops = [cell_crop(rgb) for rgb in images]
        assert all(c.shape[0] == c.shape[1] for c in crops)
        before[name] = np.median([nucleus_share(rgb) for rgb in images])
        after[name] = np.median([nucleus_share(c) for c in crops])
    # as taken, wbc-seg-1's nucleus fills a larger share of the image than pbc's; after the crop the
    # share is about 1/1.9 for both
    assert before["wbc-seg-1"] - before["pbc"] > 0.05, before
    assert abs(after["wbc-seg-1"] - after["pbc"]) < 0.06
    assert all(0.4 < v < 0.65 for v in after.values())
    out = Preprocess(size=48, resize="cell-crop")(read_image(load_dataset("pbc").abspath(0)))
    assert out.shape == (48, 48, 3)


def test_cell_crop_of_an_image_without_a_nucleus_is_the_whole_image():
    blank = np.full((50, 70, 3), 230, np.uint8)
    assert _nucleus_box(blank) is None and cell_crop(blank).shape == (50, 70, 3)


def test_adabn_changes_only_batchnorm_statistics():
    from leukodx.models.architectures import create_network
    from leukodx.training.adaptation import adapt_batchnorm

    torch.manual_seed(0)
    net = create_network("resnet10t", 5).eval()
    pre = Preprocess(size=32)
    target = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    adapted = adapt_batchnorm(net, target, pre)
    before, after = net.state_dict(), adapted.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)
    assert not adapted.training and all(not m.training for m in adapted.modules())


@pytest.mark.slow
def test_loso_quick_run_on_two_sites_and_its_table(tmp_path):
    variant = replace(quick(VARIANTS["cell-crop+adabn"]), self_train=True)
    result = run_loso(variant, sites=("wbc-seg-1", "wbc-seg-2"), n_boot=50, log=lambda m: None, adapt_k=(2,),
                      reliability=True)
    assert set(result["folds"]) == {"wbc-seg-1", "wbc-seg-2"}
    fold = result["folds"]["wbc-seg-2"]
    assert fold["train_sites"] == ["wbc-seg-1"] and set(fold["in_site"]) == {"wbc-seg-1"}
    cm = np.array(fold["left_out"]["confusion_matrix"])
    assert cm.shape == (5, 5) and cm.sum() == fold["left_out"]["n"]
    assert fold["left_out"]["accuracy"]["value"] == pytest.approx(np.trace(cm) / cm.sum())
    assert result["provenance"]["argv"] and json.loads(json.dumps(result))
    curve = fold["learning_curve"]
    assert set(curve) == {"0", "2"} and curve["0"]["n"] == curve["2"]["n"]  # the same test images
    train_counts = site_sides("wbc-seg-2")["train"].class_counts()
    assert curve["2"]["n_adaptation"] == sum(min(2, n) for n in train_counts.values())
    draws = curve["2"]["draws"]  # several draws of the k labelled cells, the first one the curve's own
    assert draws["seeds"] == [variant.seed + d for d in range(FEW_SHOT_DRAWS)]
    assert draws["accuracy"][0] == curve["2"]["accuracy"]["value"]
    assert draws["min"] <= draws["mean"] <= draws["max"] and len(draws["accuracy"]) == FEW_SHOT_DRAWS
    assert len(curve["2"]["prior_accuracy"]) == FEW_SHOT_DRAWS  # the same draws, class proportions re-estimated
    # the same draws self-trained on the site's unlabelled train and val cells
    assert len(curve["2"]["self_trained_accuracy"]) == FEW_SHOT_DRAWS
    assert all(0.0 <= a <= 1.0 for a in curve["2"]["self_trained_accuracy"])
    sides = site_sides("wbc-seg-2")
    assert fold["n_unlabelled"] == min(SELF_TRAIN_POOL, len(sides["train"]) + len(sides["val"]))
    prior = fold["left_out_prior"]
    assert prior["n"] == fold["left_out"]["n"] and np.array(prior["confusion_matrix"]).sum() == prior["n"]
    rel = fold["reliability"]
    assert set(rel["others"]) == {"wbc-seg-2"} and 0.0 <= rel["others"]["wbc-seg-2"]["ood_auroc"] <= 1.0
    assert set(rel["ablations"]) == set(RELIABILITY_ABLATIONS)
    ablated = [a["ood_auroc"]["wbc-seg-2"] for a in rel["ablations"].values()]
    assert all(0.0 <= a <= 1.0 for a in ablated)
    text = write_table([result], tmp_path / "LOSO.md")
    assert "| cell-crop+adabn (quick) |" in text and "left out: wbc-seg-2" in text
    assert "## Few-shot adaptation" in text and "| 2 |" in text and f"{FEW_SHOT_DRAWS} draws: mean" in text
    assert "class proportions re-estimated |" in text and "proportions re-estimated: mean" in text
    assert "self-trained on unlabelled cells: mean" in text


def test_the_unlabelled_pool_is_drawn_from_the_train_and_val_sides_never_the_test_side():
    sides = site_sides("pbc")
    pool = unlabelled_pool(sides, seed=0)
    paths = [set(part.paths) for part in pool]
    assert sum(len(p) for p in paths) == SELF_TRAIN_POOL < len(sides["train"]) + len(sides["val"])
    assert paths[0] <= set(sides["train"].paths) and paths[1] <= set(sides["val"].paths)
    assert not (paths[0] | paths[1]) & set(sides["test"].paths)
    assert len(paths[1]) > 0  # a draw over both sides, not the first cells listed
    assert [p.paths for p in unlabelled_pool(sides, seed=0)] == [p.paths for p in pool]
    assert [p.paths for p in unlabelled_pool(sides, seed=1)] != [p.paths for p in pool]


@pytest.mark.slow
def test_scale_match_zooms_only_the_left_out_site_to_the_training_cells_scale():
    """pbc's crops show smaller cells than wbc-seg-2's: left out, pbc is zoomed in and wbc-seg-2 out."""
    variant = quick(VARIANTS["stain-aug+scale-match-large"])
    result = run_loso(variant, sites=("pbc", "wbc-seg-2"), n_boot=20, log=lambda m: None)
    assert result["folds"]["pbc"]["zoom"] > 1.15
    assert result["folds"]["wbc-seg-2"]["zoom"] < 0.9
    assert "zoom" not in run_loso(quick(VARIANTS["baseline"]), sites=("pbc", "wbc-seg-2"), n_boot=20,
                                  log=lambda m: None)["folds"]["pbc"]


@pytest.mark.slow
def test_scale_select_zooms_the_left_out_site_by_the_zoom_its_cells_are_read_with_most_information():
    variant = quick(VARIANTS["stain-aug+scale-select-large"])
    fold = run_loso(variant, sites=("wbc-seg-1", "wbc-seg-2"), n_boot=20, log=lambda m: None)["folds"]["wbc-seg-1"]
    scores = fold["zoom_information"]
    assert set(scores) == {f"{z:g}" for z in ZOOM_GRID}
    assert scores[f"{fold['zoom']:g}"] == pytest.approx(max(scores.values()), abs=1e-4)


def test_the_tta_arm_scores_every_test_cell_over_its_views_and_keeps_the_single_view_figure(monkeypatch):
    import leukodx.benchmarking.loso as loso

    calls, proba = [], loso._proba

    def spy(net, arrays, pre, temperature, adabn, tta=False):
        calls.append(tta)
        return proba(net, arrays, pre, temperature, adabn, tta)

    monkeypatch.setattr(loso, "_proba", spy)
    fold = run_loso(quick(VARIANTS["stain-aug+tta-large"]), sites=("wbc-seg-1", "wbc-seg-2"), n_boot=20,
                    log=lambda m: None, adapt_k=(2,))["folds"]["wbc-seg-2"]
    # per fold: in-site, left-out, its AdaBN figure, then the learning curve's k = 0 and each draw: all averaged;
    # the one single-view call is the left-out site's figure read once
    assert calls.count(False) == 2 and calls.count(True) == 2 * (4 + FEW_SHOT_DRAWS)
    assert fold["left_out_single_view"]["n"] == fold["left_out"]["n"]
    assert fold["left_out_single_view"]["ece"]["value"] != fold["left_out"]["ece"]["value"]


def test_an_ensemble_arm_trains_and_tunes_every_member_and_averages_their_logits(monkeypatch):
    import leukodx.training.adaptation as adaptation
    import leukodx.training.trainer as trainer
    from leukodx.benchmarking.loso import LogitMean

    seeds, tuned, fit, few_shot_fit = [], [], trainer.fit, adaptation.few_shot_fit

    def fit_spy(*args, **kw):
        if args[6] is not None:  # a fold's training (few-shot fits keep no work folder)
            seeds.append(args[5].seed)
        return fit(*args, **kw)

    def tune_spy(parent, x, y, n_classes, config, workdir, **kw):
        tuned.append(parent)
        return few_shot_fit(parent, x, y, n_classes, replace(config, epochs=1), workdir, **kw)  # one epoch: quick

    monkeypatch.setattr(trainer, "fit", fit_spy)
    monkeypatch.setattr(adaptation, "few_shot_fit", tune_spy)
    variant = replace(quick(VARIANTS["stain-aug+ensemble3-large"]), members=2)
    result = run_loso(variant, sites=("wbc-seg-1", "wbc-seg-2"), n_boot=20, log=lambda m: None, adapt_k=(2,))
    # two members per fold (seeds 0 and 1), then each member tuned on each draw of the few-shot cells
    assert seeds == [0, 1, 0, 1]
    assert len(tuned) == 2 * 2 * FEW_SHOT_DRAWS and not any(isinstance(t, LogitMean) for t in tuned)
    assert all(len(f["member_best_epochs"]) == 2 for f in result["folds"].values())

    members = [torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)]
    x = torch.randn(4, 3)
    torch.testing.assert_close(LogitMean(members)(x), (members[0](x) + members[1](x)) / 2)
    with pytest.raises(InvalidInputError, match="ensemble"):
        run_loso(replace(variant, site_batches=True), sites=("wbc-seg-1", "wbc-seg-2"), log=lambda m: None)


@pytest.mark.slow
def test_site_batch_variant_is_also_scored_without_site_statistics(tmp_path):
    """A site-bn network is scored with each site's own batch-norm statistics and, beside that, with statistics
    pooled over its training cells (what it gives where a site has none): other figures than the adapted ones."""
    result = run_loso(quick(VARIANTS["site-bn-large"]), sites=("wbc-seg-1", "wbc-seg-2"), n_boot=20,
                      log=lambda m: None)
    fold = result["folds"]["wbc-seg-2"]
    pooled, adapted = fold["left_out_pooled"], fold["left_out"]
    assert pooled["n"] == adapted["n"] and set(fold["in_site_pooled"]) == {"wbc-seg-1"}
    assert pooled["confusion_matrix"] != adapted["confusion_matrix"]
    row = next(line for line in write_table([result], tmp_path / "LOSO.md").splitlines()
               if line.startswith("| site-bn-large (quick) |"))
    wanted = " / ".join(f"{result['folds'][s]['left_out_pooled']['accuracy']['value']:.3f}"
                        for s in ("wbc-seg-1", "wbc-seg-2"))
    assert row.rstrip(" |").split(" | ")[-1].startswith(wanted + "; ")


def test_loso_needs_two_sites_and_known_variants(tmp_path):
    from leukodx.benchmarking.loso import run_suite

    with pytest.raises(InvalidInputError, match="at least two sites"):
        run_loso(VARIANTS["baseline"], sites=("pbc",))
    with pytest.raises(InvalidInputError, match="--variant 'magic'"):
        run_suite(["magic"], tmp_path)
