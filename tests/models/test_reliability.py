"""Reliability statistics: OOD scores, shift checks and conformal sets on real cells, and the
bundle plumbing (stored, verified, refitted, absent in old bundles)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from leukodx.data.cache import cached_arrays
from leukodx.data.folder import limit_per_class
from leukodx.data.sites import site_sides
from leukodx.data.vocabulary import normalize_label
from leukodx.errors import IntegrityError, InvalidInputError
from leukodx.inference.classifier import load_model
from leukodx.models.reliability import (MIN_EXCEED, RELIABILITY_FILE, aps_scores, aps_sets, aps_tiebreak,
                                        check_coverage, conformal_quantile)
from leukodx.stats import rank_sum_greater


@pytest.fixture(scope="module")
def pbc_model():
    return load_model("pbc-celltype", backend="torch")


def _cells(clf, site: str, per_class: int):
    side = limit_per_class(site_sides(site, coarse=True)["test"], per_class, 0)
    position = {normalize_label(c): i for i, c in enumerate(clf.classes)}
    labels = np.asarray([position.get(normalize_label(side.classes[y]), -1) for y in side.labels])
    return cached_arrays(side, clf.preprocess), labels


def test_conformal_quantile_and_sets_follow_the_definition():
    scores = np.linspace(0.01, 1.0, 100)
    assert conformal_quantile(scores, 0.9) == pytest.approx(scores[90])  # ceil(101 * 0.9) = 91st smallest
    assert conformal_quantile(scores[:5], 0.95) == np.inf  # too few scores for this coverage: every class
    proba = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    assert aps_sets(proba, np.inf) == [[0, 1, 2], [2, 1, 0]]
    assert all(len(s) <= 1 for s in aps_sets(proba, 0.05))
    u = aps_tiebreak(proba)
    assert np.all((u >= 0) & (u < 1)) and np.array_equal(u, aps_tiebreak(proba.copy()))
    # the true label's score lies between the mass ranked above it and that plus its own probability
    s = aps_scores(proba, np.array([1, 1]))
    assert 0.7 <= s[0] <= 0.9 and 0.6 <= s[1] <= 0.9
    for bad in (0, 1, 1.5, -0.1, float("nan")):
        with pytest.raises(InvalidInputError, match="coverage"):
            check_coverage(bad)


def test_tiebreak_is_spread_over_the_unit_interval():
    rng = np.random.default_rng(0)
    u = aps_tiebreak(rng.dirichlet(np.ones(8), size=4000))
    counts = np.histogram(u, bins=10, range=(0, 1))[0]
    assert counts.min() > 300 and counts.max() < 500


def test_rank_sum_test_matches_scipy():
    from scipy.stats import mannwhitneyu

    rng = np.random.default_rng(0)
    for n, m, shift in ((100, 160, 0.3), (5, 7, 0.0), (300, 4000, 0.1), (50, 50, -0.5)):
        x, ref = rng.normal(shift, 1, n).round(1), rng.normal(0, 1, m).round(1)  # rounded: many ties
        want = mannwhitneyu(x, ref, alternative="greater", method="asymptotic")
        p, exceed = rank_sum_greater(x, ref)
        assert p == pytest.approx(want.pvalue, rel=1e-9) and exceed == pytest.approx(want.statistic / (n * m))
    assert np.isnan(rank_sum_greater(np.zeros(0), np.ones(3))[0])


def test_shift_check_reads_the_whole_score_distribution(pbc_model):
    rel = pbc_model.reliability
    # 100 inputs whose scores all sit in the upper half of the validation images', none above the
    # threshold: the count test sees nothing, the rank test sees scores that run high
    high = np.quantile(rel.reference, np.linspace(0.55, 0.9, 100))
    assert not rel.is_ood(high).any()
    verdict = rel.shift(high)
    assert verdict["flagged"] is True and verdict["n_ood"] == 0
    assert verdict["rank_test"]["exceed"] >= MIN_EXCEED and "run higher" in verdict["reason"]
    assert verdict["p_value"] < 1e-3
    # a large batch barely above the reference: unlikely by chance, too small to matter, not flagged
    rng = np.random.default_rng(0)
    slight = np.quantile(rel.reference, rng.uniform(0.15, 0.94, 20000))
    verdict = rel.shift(slight)
    assert verdict["rank_test"]["p_value"] < 1e-6 and verdict["rank_test"]["exceed"] < MIN_EXCEED
    assert verdict["flagged"] is False and verdict["p_value"] > 1e-3


def test_a_multi_site_batch_is_judged_against_the_training_site_it_resembles(pbc_model):
    from dataclasses import replace

    rng = np.random.default_rng(0)
    # two training sites whose validation scores differ below the threshold (site 1 runs higher)
    ref = np.concatenate([rng.uniform(0.0, 1.0, 2000), rng.uniform(0.5, 1.5, 2000)])
    sites = np.repeat([0, 1], 2000)
    order = np.argsort(ref, kind="stable")
    pooled = replace(pbc_model.reliability, reference=ref[order], reference_sites=None,
                     threshold=float(np.quantile(ref, 0.95)))
    per_site = replace(pooled, reference_sites=sites[order])
    like_site_1 = rng.uniform(0.5, 1.5, 100)
    assert pooled.shift(like_site_1)["flagged"] is True  # against the pool it runs high...
    verdict = per_site.shift(like_site_1)
    assert verdict["flagged"] is False and abs(verdict["rank_test"]["exceed"] - 0.5) < 0.1  # ...not against its site
    np.testing.assert_array_equal(per_site.closest_reference(like_site_1), np.sort(ref[sites == 1]))
    beyond_both = rng.uniform(1.0, 2.0, 100)
    assert per_site.shift(beyond_both)["flagged"] is True


def test_in_site_cells_pass_and_another_labs_cells_are_flagged(pbc_model):
    rel = pbc_model.reliability
    x_in, y_in = _cells(pbc_model, "pbc", 40)
    x_out, _ = _cells(pbc_model, "wbc-seg-1", 40)
    s_in, s_out = pbc_model.score_arrays(x_in), pbc_model.score_arrays(x_out)
    assert np.mean(rel.is_ood(s_in.ood_scores)) < 0.15  # ~5% by construction
    assert np.mean(rel.is_ood(s_out.ood_scores)) > 0.8
    assert pbc_model.shift_of(s_in)["flagged"] is False
    shifted = pbc_model.shift_of(s_out)
    assert shifted["flagged"] is True and "leukodx adapt" in shifted["reason"]
    sets = rel.prediction_sets(s_in.proba, 0.9)
    covered = np.mean([y in s for y, s in zip(y_in, sets)])
    assert 0.8 <= covered <= 1.0
    bigger = rel.prediction_sets(s_in.proba, 0.99)
    assert np.mean([len(s) for s in bigger]) >= np.mean([len(s) for s in sets])


def test_not_a_cell_is_flagged_and_never_confident(pbc_model):
    from leukodx.data.registry import load_dataset, load_fields

    bccd = load_dataset("bccd")
    fields, _ = load_fields(bccd, bccd.splits["test"][:3])
    rng = np.random.default_rng(1)
    junk = [np.zeros((80, 80, 3), np.uint8), np.full((80, 80, 3), 255, np.uint8),
            rng.integers(0, 256, (80, 80, 3)).astype(np.uint8), np.stack([rng.integers(0, 256, (80, 80))] * 3, 2)
            .astype(np.uint8), *fields]
    result = pbc_model.predict(junk)
    assert len(result.rows) == len(junk)
    assert all(r["ood"] and r["unsure"] for r in result.rows)
    assert result.shift["flagged"] is True


def test_bundle_without_statistics_still_predicts_and_says_so(tmp_path, pbc_folder, capsys):
    from leukodx.cli.app import main

    bundle = tmp_path / "old"
    shutil.copytree(load_model("pbc-celltype").bundle_dir, bundle)
    (bundle / RELIABILITY_FILE).unlink()
    card = json.loads((bundle / "card.json").read_text())
    card.pop("reliability")
    (bundle / "card.json").write_text(json.dumps(card))
    result = load_model(bundle).predict(pbc_folder / "monocyte")
    assert result.rows and all(r["ood"] is None and r["prediction_set"] is None for r in result.rows)
    assert result.shift["flagged"] is None and "unavailable" in result.shift["reason"]
    assert main(["predict", "-m", str(bundle), str(pbc_folder / "monocyte"), "-o", str(tmp_path / "p.json")]) == 0
    assert "unavailable" in capsys.readouterr().err
    assert main(["predict", "-m", str(bundle), str(pbc_folder / "monocyte"), "-o", str(tmp_path / "q.json"),
                 "--coverage", "0.9"]) != 0
    err = capsys.readouterr().err
    assert "no conformal calibration" in err and "Traceback" not in err and not (tmp_path / "q.json").exists()


def test_a_changed_statistics_file_is_refused(tmp_path):
    bundle = tmp_path / "m"
    shutil.copytree(load_model("pbc-celltype").bundle_dir, bundle)
    data = bytearray((bundle / RELIABILITY_FILE).read_bytes())
    data[-8:] = b"\x00" * 8
    (bundle / RELIABILITY_FILE).write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        load_model(bundle)
    (bundle / RELIABILITY_FILE).unlink()
    with pytest.raises(IntegrityError, match="missing"):
        load_model(bundle)


@pytest.mark.slow
def test_refit_writes_statistics_a_trained_model_also_gets(tiny_pbc_model, tmp_path):
    from leukodx.training.recipe import refit_reliability

    trained = json.loads((tiny_pbc_model / "card.json").read_text())["reliability"]
    bundle = tmp_path / "copy"
    shutil.copytree(tiny_pbc_model, bundle)
    (bundle / RELIABILITY_FILE).unlink()
    card = refit_reliability(bundle)
    entry = card["reliability"]
    assert entry["n_conformal"] == trained["n_conformal"] and entry["feature_dim"] == trained["feature_dim"]
    assert entry["threshold"] > 0 and (bundle / RELIABILITY_FILE).is_file()
    assert load_model(bundle).reliability is not None


def test_style_bank_distances_are_each_sites_nearest_neighbour(pbc_model, monkeypatch):
    import leukodx.models.reliability as reliability
    from scipy.spatial.distance import cdist

    x, _ = _cells(pbc_model, "pbc", 6)
    style = pbc_model.forward(x)[1][:, pbc_model.reliability.pen_dim:]
    sites = np.arange(len(style)) % 3
    monkeypatch.setattr(reliability, "MIN_BANK_PER_SITE", 5)
    bank, bank_sites = reliability._style_bank(style, sites, per_site=5)
    assert bank.dtype == np.float32 and np.bincount(bank_sites).tolist() == [5, 5, 5]
    queries = style.astype(np.float64)
    monkeypatch.setattr(reliability, "_BANK_CHUNK", 7)  # several chunks, the last one short
    got = reliability._bank_distances(queries, bank, bank_sites, 3)
    brute = cdist(queries, bank.astype(np.float64), "sqeuclidean")
    want = np.stack([brute[:, bank_sites == g].min(axis=1) for g in range(3)], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    # a site without bank rows (scored by its Gaussian) gets NaN, the others the same distances
    wider = reliability._bank_distances(queries, bank, bank_sites, 4)
    assert np.isnan(wider[:, 3]).all()
    np.testing.assert_array_equal(wider[:, :3], got)
    # a bank image is its own nearest neighbour at its site
    own = reliability._bank_distances(bank, bank, bank_sites, 3)[np.arange(len(bank)), bank_sites]
    np.testing.assert_allclose(own, 0.0, atol=1e-3)


def test_another_labs_cells_between_training_images_are_flagged_by_the_bank(pbc_model):
    """pbc-celltype's style bank against the same statistics with one Gaussian per site (the scoring of
    bundles made before the bank): deepapl's cells (another lab, the same scanner make) are told from
    pbc's held-out cells at least as well, and the old form still loads and scores."""
    from leukodx.evaluation.reliability import ood_auroc
    import dataclasses
    import tempfile

    from leukodx.models.reliability import load_reliability, save_reliability

    rel = pbc_model.reliability
    assert rel.style_bank is not None and "nearest-neighbour style" in rel.card_entry("x")["ood_score"]
    x_in, _ = _cells(pbc_model, "pbc", 25)
    x_out, _ = _cells(pbc_model, "deepapl", 25)
    f_in, f_out = pbc_model.forward(x_in)[1], pbc_model.forward(x_out)[1]
    bank_style = [rel.style_distances(f[:, rel.pen_dim:]).min(axis=1) for f in (f_in, f_out)]
    # the old form: the same statistics without the bank (each site's Gaussian only)
    old = dataclasses.replace(rel, style_bank=None, bank_sites=None)
    gauss_style = [old.style_distances(f[:, rel.pen_dim:]).min(axis=1) for f in (f_in, f_out)]
    assert ood_auroc(*bank_style) > 0.9
    assert ood_auroc(*bank_style) >= ood_auroc(*gauss_style) - 0.02
    with tempfile.TemporaryDirectory() as tmp:
        entry = old.card_entry(save_reliability(tmp, old))
        loaded = load_reliability(tmp, {"reliability": entry})
    assert loaded.style_bank is None and "mahalanobis-nearest-site" in entry["ood_score"]
    np.testing.assert_allclose(loaded.ood_scores(f_out), old.ood_scores(f_out))


def test_a_site_with_few_training_images_is_scored_by_its_gaussian(pbc_model):
    """Nearest neighbours need a dense reference: a site below MIN_BANK_PER_SITE training images gets no
    bank rows and keeps the Mahalanobis distance to its mean; a site above it is scored by the bank."""
    from leukodx.models.reliability import MIN_BANK_PER_SITE, _distances, fit_reliability

    x, y = _cells(pbc_model, "pbc", 20)
    features = pbc_model.forward(x)[1]
    small = MIN_BANK_PER_SITE // 2
    groups = np.r_[np.zeros(len(y) - small, dtype=int), np.ones(small, dtype=int)]
    assert len(y) - small >= MIN_BANK_PER_SITE
    rel = fit_reliability(features, y, features, y, None, pen_dim=pbc_model.reliability.pen_dim, groups=groups,
                          val_groups=groups)
    assert set(rel.bank_sites.tolist()) == {0} and len(rel.style_means) == 2
    style = features[:, rel.pen_dim:]
    d = rel.style_distances(style)
    whitened = (style - rel.style_center) @ rel.style_whitening
    # (the scoring whitens in float32)
    np.testing.assert_allclose(d[:, 1], _distances(whitened, rel.style_means, rel.style_whitener)[:, 1], rtol=1e-5)
    # site 0 by its nearest bank image: its own bank images sit at distance 0
    assert np.sum(d[:, 0] < 1e-3) == len(rel.style_bank)


def test_style_is_whitened_within_sites(pbc_model):
    """The style part's coordinates: whitened by the (shrunk) covariance within a site, unit spread over all
    training images, so a direction along which one lab's images barely vary is not drowned by the channels
    that vary a lot; without the shrinkage they are uncorrelated within a site."""
    from leukodx.models.reliability import MIN_WHITEN_PER_CHANNEL, SHRINKAGE, STYLE_SHRINKAGE, _style_whitening

    x_a, _ = _cells(pbc_model, "pbc", 40)
    x_b, _ = _cells(pbc_model, "deepapl", 40)
    style = np.concatenate([pbc_model.forward(x)[1][:, pbc_model.reliability.pen_dim:] for x in (x_a, x_b)])
    assert len(style) - 2 >= MIN_WHITEN_PER_CHANNEL * style.shape[1]
    sites = np.r_[np.zeros(len(x_a), dtype=int), np.ones(len(x_b), dtype=int)]

    def within(x):
        return np.concatenate([x[sites == g] - x[sites == g].mean(0) for g in (0, 1)])

    def mean_abs_corr(x):
        corr = np.abs(np.corrcoef(within(x).T))
        return np.nanmean(corr[~np.eye(len(corr), dtype=bool)])

    w = _style_whitening(style, sites, SHRINKAGE)
    np.testing.assert_allclose(((style - style.mean(0)) @ w).std(axis=0), 1.0, rtol=1e-6)
    # the shrunk within-site covariance is diagonal in the whitened coordinates
    c = within(style)
    cov = c.T @ c / (len(c) - 2)
    shrunk = (1 - STYLE_SHRINKAGE) * cov + STYLE_SHRINKAGE * np.trace(cov) / len(cov) * np.eye(len(cov))
    m = w.T @ shrunk @ w
    np.testing.assert_allclose(m - np.diag(np.diag(m)), 0.0, atol=1e-8 * np.abs(m).max())
    full = _style_whitening(style, sites, SHRINKAGE, style_shrinkage=SHRINKAGE)
    # the raw channels are correlated within a site; the shrunk whitening removes most of it, the full one all
    # but what its tiny ridge leaves
    raw, part, none = mean_abs_corr(style), mean_abs_corr(style @ w), mean_abs_corr(style @ full)
    assert raw > 0.2 and part < raw / 2 and none < 0.05, (raw, part, none)


def test_bundles_standardized_per_channel_still_score(pbc_model):
    """Bundles made before the whitening keep their per-channel standardized bank (``style_spread``) and
    raw-style Gaussians, load and score as they did."""
    import dataclasses
    import tempfile

    from leukodx.models.reliability import _bank_distances, _distances, load_reliability, save_reliability

    rel = pbc_model.reliability
    x, _ = _cells(pbc_model, "pbc", 6)
    f = pbc_model.forward(x)[1]
    style = f[:, rel.pen_dim:]
    center, spread = style.mean(0), style.std(0) + 1e-6
    old = dataclasses.replace(rel, style_whitening=None, style_center=center, style_spread=spread,
                              style_bank=((style - center) / spread).astype(np.float32),
                              bank_sites=np.zeros(len(style), dtype=int))
    with tempfile.TemporaryDirectory() as tmp:
        entry = old.card_entry(save_reliability(tmp, old))
        loaded = load_reliability(tmp, {"reliability": entry})
    assert loaded.style_whitening is None and loaded.style_spread is not None
    d = loaded.style_distances(style)
    np.testing.assert_allclose(d[:, 0], 0.0, atol=1e-3)  # each image is its own bank neighbour
    gauss = _distances(style, old.style_means, old.style_whitener)
    np.testing.assert_allclose(_bank_distances((style - center) / spread, old.style_bank, old.bank_sites, 1)[:, 0],
                               d[:, 0], atol=1e-3)
    assert gauss.shape[1] == len(old.style_means)


def test_too_few_images_to_whiten_are_only_scaled_per_channel(pbc_model):
    """Fewer than MIN_WHITEN_PER_CHANNEL images per style channel: a within-site covariance would blow up the
    directions no training image spans, so the channels are only scaled to unit spread; with the heavy
    shrinkage of a few-shot adaptation the (shrunk) covariance is still used."""
    from leukodx.models.reliability import MIN_WHITEN_PER_CHANNEL, SHRINKAGE, SMALL_SAMPLE_SHRINKAGE, _style_whitening

    x, _ = _cells(pbc_model, "pbc", 4)
    style = pbc_model.forward(x)[1][:, pbc_model.reliability.pen_dim:]
    assert len(style) < MIN_WHITEN_PER_CHANNEL * style.shape[1]
    sites = np.zeros(len(style), dtype=int)
    w = _style_whitening(style, sites, SHRINKAGE)
    np.testing.assert_allclose(w, np.diag(np.diag(w)))
    np.testing.assert_allclose(((style - style.mean(0)) @ w).std(axis=0)[style.std(axis=0) > 1e-6], 1.0, rtol=1e-6)
    shrunk = _style_whitening(style, sites, SMALL_SAMPLE_SHRINKAGE)
    assert np.abs(shrunk - np.diag(np.diag(shrunk))).max() > 1e-6
