"""Per-site batch-norm statistics: taken from a network, put into a copy of it, kept in a bundle, chosen with
``--site`` (domain-specific batch norm of a model trained with one site per batch)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from leukodx.cli.app import main
from leukodx.data.images import read_image
from leukodx.data.sites import site_sides
from leukodx.diagnosis.case import CASE_READ_SIDE
from leukodx.errors import IntegrityError, InvalidInputError
from leukodx.inference.classifier import Classifier
from leukodx.models.site_stats import SITE_STATS_FILE
from leukodx.preprocessing.augment import augment_preset
from leukodx.preprocessing.transforms import TTA_VIEWS, Preprocess, dihedral_view, normalize_batch
from leukodx.training.adaptation import batchnorm_statistics, with_batchnorm_statistics
from leukodx.training.recipe import train_multisite
from leukodx.training.trainer import TrainConfig

SITES = ["wbc-seg-2", "wbc-seg-1"]  # not in sorted order: the bundle keeps the card's order
#: a site-batch recipe's leave-one-site-out result, with its pooled-statistics figures
LOSO_RESULT = (Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "loso"
               / "levels+site-bn-large__adapt.json")


def _net(width: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, width, 3), torch.nn.BatchNorm2d(width), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(width, 2)).eval()


def test_statistics_move_into_a_copy_and_nothing_else_moves():
    net, other = _net(), _net()
    other[1].running_mean += 1.5
    other[1].running_var *= 3.0
    moved = with_batchnorm_statistics(net, batchnorm_statistics(other))
    assert torch.equal(moved[1].running_mean, other[1].running_mean)
    assert torch.equal(moved[1].running_var, other[1].running_var)
    assert not torch.equal(net[1].running_mean, other[1].running_mean)  # the original is untouched
    for (name, a), b in zip(moved.state_dict().items(), net.state_dict().values()):
        assert "running" in name or torch.equal(a, b)
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(moved(x), net(x))


def test_statistics_of_another_architecture_are_refused():
    with pytest.raises(InvalidInputError, match="site x: do not fit"):
        with_batchnorm_statistics(_net(4), batchnorm_statistics(_net(6)), "site x")


@pytest.fixture(scope="module")
def site_model(tmp_path_factory):
    config = TrainConfig(arch="regnetx_002", epochs=1, batch_size=8, lr=1e-3, patience=1, seed=0,
                         preprocess=Preprocess(size=32), augment=augment_preset("flip"), site_batches=True)
    out = tmp_path_factory.mktemp("site-bn") / "m"
    card = train_multisite(SITES, out, config, max_per_class=8, min_class_count=5, show_progress=False,
                           log=lambda m: None, loso_result=LOSO_RESULT)
    return out, card


@pytest.mark.slow
def test_a_site_batch_model_keeps_each_sites_statistics_and_runs_with_them(site_model, tmp_path):
    out, card = site_model
    entry = card["site_statistics"]
    assert set(entry["sites"]) == set(SITES) and (out / SITE_STATS_FILE).is_file()
    assert list(entry["recognizer"]["validation_named_right"]) == SITES
    for s in SITES:
        assert entry["sites"][s]["images"] == sum(card["data"]["sites"][SITES.index(s)]["counts"]["train"].values())
    loso, folds = card["metrics"]["leave_one_site_out"], json.loads(LOSO_RESULT.read_text())["folds"]
    pooled = loso["left_out_pooled_statistics"]["wbc-seg-1"]["accuracy"]
    assert pooled == folds["wbc-seg-1"]["left_out_pooled"]["accuracy"]
    assert loso["left_out"]["wbc-seg-1"]["accuracy"] == folds["wbc-seg-1"]["left_out"]["accuracy"]
    without = card["metrics"]["test_by_site_without_site_statistics"]
    assert set(without) == set(SITES) and without["wbc-seg-2"]["n"] == card["metrics"]["test_by_site"]["wbc-seg-2"]["n"]
    images = site_sides("wbc-seg-1")["test"].abspaths()[:12]
    plain = Classifier.load(out, backend="torch", site="pooled")
    at_site = Classifier.load(out, backend="torch", site="wbc-seg-1")
    assert plain.site == "pooled" and at_site.site == "wbc-seg-1"
    a, b = plain.predict(images), at_site.predict(images)
    pa = np.array([[r["probabilities"][c] for c in plain.classes] for r in a.rows])
    pb = np.array([[r["probabilities"][c] for c in plain.classes] for r in b.rows])
    assert pa.shape == pb.shape == (12, len(plain.classes)) and not np.allclose(pa, pb, atol=1e-4)
    # the OOD check reads the bundle's own network either way
    assert [r["ood_score"] for r in a.rows] == [r["ood_score"] for r in b.rows]
    test = site_sides("wbc-seg-1")["test"]
    for path, label in list(zip(test.abspaths(), test.labels))[:12]:  # a small folder of class sub-folders
        (tmp_path / "cells" / test.classes[label]).mkdir(parents=True, exist_ok=True)
        (tmp_path / "cells" / test.classes[label] / Path(path).name).symlink_to(path)
    result = tmp_path / "r.json"
    assert main(["evaluate", "-m", str(out), "--images", str(tmp_path / "cells"), "--site", "wbc-seg-1",
                 "--no-report", "--n-boot", "20", "-o", str(result)]) == 0
    assert json.loads(result.read_text())["site_statistics"] == "wbc-seg-1"
    case = tmp_path / "case"  # the main job takes the same choice
    assert main(["diagnose", str(tmp_path / "cells"), "-m", str(out), "--kind", "cells", "--site", "wbc-seg-1",
                 "-o", str(case)]) == 0
    assert json.loads((case / "summary.json").read_text())["model"]["site_statistics"] == "wbc-seg-1"
    with (case / "predictions.csv").open() as f:
        written = {Path(r["input"]).name: [float(r[f"p_{c}"]) for c in plain.classes] for r in csv.DictReader(f)}
    case_arrays = np.stack([at_site.preprocess(read_image(p, max_side=CASE_READ_SIDE)) for p in images])
    expected = dict(zip((Path(p).name for p in images), at_site.predict_arrays(case_arrays)))  # as a case reads
    assert sorted(written) == sorted(expected)
    np.testing.assert_allclose([written[n] for n in expected], list(expected.values()), atol=2e-4)


@pytest.mark.slow
def test_by_default_each_image_runs_with_its_recognised_sites_statistics_unless_it_is_ood(site_model, tmp_path):
    out, _ = site_model
    auto = Classifier.load(out, backend="torch")
    assert auto.site == "auto"
    fixed = {s: Classifier.load(out, backend="torch", site=s) for s in [*SITES, "pooled"]}
    paths = [p for s in SITES for p in site_sides(s)["test"].abspaths()[:10]]
    truth = np.repeat(np.arange(len(SITES)), 10)
    _, arrays, errors = auto.load_inputs(paths)
    assert not errors
    features = auto.forward(arrays)[1]
    nearest = auto._recognizer.sites(features[:, auto.reliability.pen_dim:])
    ood = auto.reliability.is_ood(auto.reliability.ood_scores(features))
    assert np.mean(nearest == truth) >= 0.8  # the two labs' cells are told apart by their style
    got = auto.predict_arrays(arrays)
    want = {name: clf.predict_arrays(arrays) for name, clf in fixed.items()}
    for i in range(len(paths)):
        expected = want["pooled"][i] if ood[i] else want[SITES[nearest[i]]][i]
        np.testing.assert_allclose(got[i], expected, atol=1e-6)
    assert (~ood).sum() >= 10
    # an explanation reads the network that made the call: each recognised site's, the bundle's for the rest
    pairs = auto.calling_networks(arrays)
    assert sorted(np.concatenate([rows for _, rows in pairs]).tolist()) == list(range(len(paths)))
    assert len(pairs) >= 2
    for net, rows in pairs:
        with torch.no_grad():
            logits = net.eval()(torch.from_numpy(normalize_batch(arrays[rows], auto.preprocess))).numpy()
        np.testing.assert_allclose(auto.proba_from_logits(logits), got[rows], atol=1e-5)
    written = tmp_path / "p.json"  # predict says which statistics it ran with
    assert main(["predict", *map(str, paths[:3]), "-m", str(out), "-o", str(written)]) == 0
    assert json.loads(written.read_text())["site_statistics"] == "auto"
    # on ONNX Runtime each site's network runs from its own cached export, answering as PyTorch does
    on_onnx = Classifier.load(out, backend="onnx")
    site_net = on_onnx._site_nets["wbc-seg-2"]
    assert site_net.backend == "onnx" and site_net.card["sha256"] != on_onnx.card["sha256"]
    np.testing.assert_allclose(site_net.logits(arrays), fixed["wbc-seg-2"]._site_nets["wbc-seg-2"].logits(arrays),
                               rtol=1e-3, atol=1e-3)


@pytest.mark.slow
def test_tta_reads_every_view_of_an_image_with_the_network_that_calls_it(site_model):
    out, _ = site_model
    auto = Classifier.load(out, backend="torch")
    paths = [p for s in SITES for p in site_sides(s)["test"].abspaths()[:10]]
    _, arrays, _ = auto.load_inputs(paths)
    features = auto.forward(arrays)[1]  # the sites and OOD flags of the images as they are
    nearest = auto._recognizer.sites(features[:, auto.reliability.pen_dim:])
    ood = auto.reliability.is_ood(auto.reliability.ood_scores(features))
    assert (~ood).sum() >= 10 and len(set(nearest[~ood].tolist())) == 2
    pooled = Classifier.load(out, backend="torch", site="pooled")
    site_nets = {s: Classifier.load(out, backend="torch", site=s)._site_nets[s] for s in SITES}
    mean = np.zeros((len(paths), len(auto.classes)))
    for i in range(TTA_VIEWS):
        view = dihedral_view(arrays, i)
        by_site = {s: net.logits(view) for s, net in site_nets.items()}
        own = pooled.logits(view)
        mean += np.stack([own[r] if ood[r] else by_site[SITES[nearest[r]]][r] for r in range(len(paths))])
    np.testing.assert_allclose(auto.with_tta().predict_arrays(arrays), auto.proba_from_logits(mean / TTA_VIEWS),
                               atol=1e-5)
    one_site = Classifier.load(out, backend="torch", site="wbc-seg-1").with_tta()
    mean = np.mean([site_nets["wbc-seg-1"].logits(dihedral_view(arrays, i)) for i in range(TTA_VIEWS)], axis=0)
    np.testing.assert_allclose(one_site.predict_arrays(arrays), one_site.proba_from_logits(mean), atol=1e-5)


@pytest.mark.slow
def test_site_choices_that_cannot_work_are_one_line_errors(site_model, tiny_pbc_model, tmp_path, capsys):
    out, _ = site_model
    with pytest.raises(InvalidInputError, match="keeps statistics for wbc-seg-2, wbc-seg-1 only"):
        Classifier.load(out, site="pbc")
    with pytest.raises(InvalidInputError, match="keeps no per-site statistics"):
        Classifier.load(tiny_pbc_model, site="pbc")
    image = str(site_sides("wbc-seg-1")["test"].abspaths()[0])
    rc = main(["predict", image, "-m", str(out), "--site", "wbc-seg-1", "--adapt-bn", "-o", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "--adapt-bn and --site" in err and len(err.splitlines()) == 1
    rc = main(["diagnose", image, "-m", str(out), "--site", "pbc", "-o", str(tmp_path / "case")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "--site pbc" in err and len(err.splitlines()) == 1
    assert main(["train", "-d", "pbc", "--site-batches", "-o", str(tmp_path / "x")]) != 0
    assert "--site-batches: give two or more sites" in capsys.readouterr().err
    copy = tmp_path / "tampered"
    import shutil

    shutil.copytree(out, copy)
    (copy / SITE_STATS_FILE).write_bytes((copy / SITE_STATS_FILE).read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(IntegrityError, match="sha256 does not match"):
        Classifier.load(copy, site="wbc-seg-1")
