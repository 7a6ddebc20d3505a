"""The benchmark protocol on real data: quick runs complete, metrics are in range, results resume."""

from __future__ import annotations

import json

import numpy as np

import pytest

from leukodx.benchmarking.leaderboard import write_leaderboard
from leukodx.benchmarking.protocol import run_recipe
from leukodx.cli.app import main
from leukodx.zoo.recipes import QUICK, get_recipe, list_recipes


def _consistent(test: dict) -> bool:
    """The reported figures agree with the confusion matrix they came from, and each CI holds its value."""
    cm = np.asarray(test["confusion_matrix"])
    ok = abs(test["accuracy"]["value"] - np.trace(cm) / cm.sum()) < 1e-9 and test["n"] == cm.sum()
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        lo, hi = test[key]["ci95"]
        ok &= lo - 1e-9 <= test[key]["value"] <= hi + 1e-9
    return bool(ok)


def test_quick_run_cross_dataset_and_resume(tmp_path):
    logs = []
    result = run_recipe(get_recipe("muhamad2022-cnn"), "pbc", QUICK, tmp_path, cross=["wbc-seg-2"], log=logs.append)
    assert len(result["cv"]["folds"]) == QUICK.folds and 0 <= result["cv"]["macro_f1"]["mean"] <= 1
    assert _consistent(result["test"])
    assert result["n_test"] == 8 * 8 and result["params"] > 0 and result["flops_per_image"] > 0
    cross = result["cross_dataset"]["wbc-seg-2"]
    assert set(cross["shared_classes"]) == {"basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"}
    from leukodx.data.registry import load_dataset

    counts = load_dataset("wbc-seg-2").class_counts()
    assert cross["n"] == sum(min(QUICK.test_per_class, n) for n in counts.values())  # capped per class
    assert cross["accuracy"]["ci95"][0] <= cross["accuracy"]["value"] <= cross["accuracy"]["ci95"][1]
    again = run_recipe(get_recipe("muhamad2022-cnn"), "pbc", QUICK, tmp_path, cross=["wbc-seg-2"], log=logs.append)
    assert again == json.loads((tmp_path / "pbc" / "muhamad2022-cnn__quick.json").read_text())
    assert "reusing" in logs[-1]


@pytest.mark.slow
def test_quick_suite_every_recipe_end_to_end(tmp_path):
    """The CI smoke test of the issue: every recipe of the review suite completes on real data."""
    out = tmp_path / "zoo"
    assert main(["benchmark", "--suite", "review", "-d", "all-aria", "--quick", "--output-dir", str(out)]) == 0
    files = sorted((out / "all-aria").glob("*.json"))
    assert {f.name.split("__")[0] for f in files} == set(list_recipes())
    for f in files:
        r = json.loads(f.read_text())
        assert _consistent(r["test"])
        assert r["pretrained"].startswith("none") and r["train_seconds"] >= 0
    board = (tmp_path / "LEADERBOARD.md").read_text()
    assert "## all-aria (quick" in board and all(name in board for name in list_recipes())
    assert "paper claims" in board


def test_leaderboard_sorted_by_macro_f1_and_lists_ablations(tmp_path):
    base = {"paper": "P", "method": "m", "claimed": "99%", "reading": "", "dataset": "pbc", "n_test": 10,
            "budget": {"name": "full", "size": 64, "epochs": 6, "per_class": 100}, "cv": {"folds": []},
            "params": 1e6, "flops_per_image": 1e6, "train_seconds": 1, "inference_ms_per_image": 1, "epochs_run": 1,
            "augment": "light", "stain": "none", "cross_dataset": {}}
    for name, f1, ablation in (("a", 0.5, False), ("b", 0.9, False), ("c", 0.7, True)):
        entry = {"value": f1, "ci95": [f1 - 0.1, f1 + 0.1]}
        r = dict(base, recipe=name, ablation=ablation, test={k: entry for k in ("macro_f1", "accuracy", "balanced_accuracy")})
        (tmp_path / f"{name}.json").write_text(json.dumps(r))
    text = write_leaderboard(tmp_path, tmp_path / "L.md").read_text()
    main_table = text.split("## Ablations")[0]
    assert main_table.index("| 1 | b |") < main_table.index("| 2 | a |") and "| c |" not in main_table
    assert "## Ablations" in text and "| pbc | c | full |" in text


def test_benchmark_cli_refuses_unknown_suite_and_recipe(tmp_path, capsys):
    assert main(["benchmark", "-d", "pbc", "--suite", "other", "--output-dir", str(tmp_path)]) == 2
    assert main(["benchmark", "-d", "pbc", "-r", "nope", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "only suite is 'review'" in err and "not in the zoo" in err


def test_the_cache_key_changes_with_the_code(monkeypatch):
    """A resumed suite cannot reuse a result computed by other code."""
    from leukodx import _versions
    from leukodx.benchmarking.protocol import config_key

    args = (get_recipe("muhamad2022-cnn"), QUICK, "pbc", 0, None, None, [], None)
    before = config_key(*args)
    monkeypatch.setattr(_versions, "source_digest", lambda: "0123456789abcdef")
    assert config_key(*args) != before
