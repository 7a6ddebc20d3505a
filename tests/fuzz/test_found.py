"""Every failure the fuzz suite found, kept as a fixed regression case. ``FOUND`` is also what
``benchmarks/robustness.py`` reports as "found by fuzzing and fixed" (it replays each one)."""

from __future__ import annotations

import json
import shutil

import pytest

from contract import check, check_cli
from found_cases import FOUND
from fcs_mutate import FCSParts
from leukodx.data.root import resolve_data_root
from leukodx.errors import LeukodxError


def _fcs(tmp_path, key, value):
    parts = FCSParts.read(resolve_data_root() / "flow/tidytof/ddpr/UPN1_Basal.fcs")
    parts.set(key, value)
    return parts.write(tmp_path / "found.fcs")


def _open_and_read(path):
    from leukodx.cytometry.fcs import open_fcs

    return open_fcs(path).read()


def _bundle(tmp_path, name, edit):
    from leukodx.models.bundle import resolve_bundle

    folder = tmp_path / name
    shutil.copytree(resolve_bundle(name), folder)
    card = json.loads((folder / "card.json").read_text())
    edit(folder, card)
    (folder / "card.json").write_text(json.dumps(card))
    return folder


def _load_classifier(folder):
    from leukodx.inference.classifier import load_model

    return load_model(folder, backend="torch")


def _load_flow(folder):
    from leukodx.cytometry.classifier import CellClassifier

    return CellClassifier.load(folder)


def _load_expression(folder):
    from leukodx.omics.bundle import ExpressionModel

    return ExpressionModel.load(folder)


def _rename_tensor(folder, card):
    """Rename one tensor in the safetensors header and make the card's checksum match the result."""
    import hashlib

    path = folder / "model.safetensors"
    raw = path.read_bytes().replace(b"layer1.weight", b"layer9.weight")
    path.unlink()
    path.write_bytes(raw)
    card["sha256"] = hashlib.sha256(raw).hexdigest()
    card["size_bytes"] = len(raw)


def _gct_without_columns(tmp_path):
    path = tmp_path / "m.gct"
    path.write_text("#1.2\n0\t0\ngene\n")
    from leukodx.omics.io import read_matrix

    return read_matrix(path)




def test_found_list_is_replayed_below():
    assert len(FOUND) == len(REPLAYS)


REPLAYS = [
    lambda t: check("found", _open_and_read, _fcs(t, "$BEGINANALYSIS", "-1")),
    lambda t: check("found", _gct_without_columns, t),
    lambda t: check("found", _load_classifier, _bundle(t, "all-stage", lambda f, c: c.update(abstain_below=None))),
    lambda t: check("found", _load_flow, _bundle(t, "ddpr-leukemic-cell", lambda f, c: c.update(task=[]))),
    lambda t: check("found", _load_expression, _bundle(t, "golub-all-aml", _rename_tensor)),
    lambda t: check_cli("found", ["flow", "features", str(resolve_data_root() / "flow/tidytof/ddpr/UPN1_Basal.fcs"),
                                  "--markers", "", "-o", str(t / "f.csv")]),
    lambda t: check_cli("found", ["evaluate", "-m", "all-stage", "--dataset", "all-aria", "--n-boot", "2043528",
                                  "-o", str(t / "e.json")]),
    lambda t: check_cli("found", ["evaluate", "-m", "all-stage", "--dataset", "all-aria", "--seed", "-1",
                                  "-o", str(t / "e.json")]),
]


@pytest.mark.parametrize("i", range(len(REPLAYS)), ids=[f[1][:40] for f in FOUND])
def test_found_cases_are_handled(tmp_path, i):
    outcome = REPLAYS[i](tmp_path)
    # each of these inputs is unusable: the answer is a clean error now
    assert isinstance(outcome, LeukodxError) or outcome == 2
