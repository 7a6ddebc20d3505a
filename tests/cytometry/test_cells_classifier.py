import shutil

import numpy as np
import pytest

from leukodx.cytometry.cells import load_cell_split, read_cell_table, read_ddpr
from leukodx.cytometry.classifier import CellClassifier, train_cell_classifier
from leukodx.cytometry.readout import error_rates
from leukodx.errors import IntegrityError, InvalidInputError, ModelNotFoundError


@pytest.fixture(scope="module")
def ddpr(data_root):
    return read_ddpr(data_root)


def test_ddpr_table_and_saved_split(ddpr):
    assert ddpr.values.shape == (5000, 20) and ddpr.labels.sum() == 2500
    train, test = load_cell_split(ddpr)
    assert len(train) == 4000 and len(test) == 1000 and not set(train) & set(test)
    assert ddpr.labels[test].sum() == 500  # stratified by sample


def test_split_refuses_a_changed_table(ddpr, data_root, tmp_path):
    copy = tmp_path / "cells.csv"
    lines = (data_root / "flow" / "tidytof" / "ddpr_cells.csv").read_text().splitlines()
    copy.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(IntegrityError, match="changed"):
        load_cell_split(read_cell_table(copy))


@pytest.mark.parametrize("body,match", [("sample_name,cd45\nUPN1,1\nHealthy1,x\n", "non-numeric"),
                                        ("sample_name,cd45\nUPN1,1\nHealthy1,\n", "missing value"),
                                        ("sample,cd45\nUPN1,1\n", "no 'sample_name' column"),
                                        ("sample_name,cd45\nHealthy1,1\nHealthy2,2\n", "only healthy"),
                                        ("", "not a readable CSV")])
def test_bad_cell_tables(tmp_path, body, match):
    path = tmp_path / "bad.csv"
    path.write_text(body)
    with pytest.raises(InvalidInputError, match=match):
        read_cell_table(path)


def test_bundled_model_separates_held_out_cells(ddpr):
    model = CellClassifier.load()
    train, test = load_cell_split(ddpr)
    rates = error_rates(model, ddpr, test)
    assert rates["auroc"] >= 0.99
    assert rates == model.card["test"]  # the card reports what the weights do
    assert model.card["data"]["sha256"] == ddpr.sha256


def test_train_save_load_roundtrip(ddpr, tmp_path):
    train, test = load_cell_split(ddpr)
    model = train_cell_classifier(ddpr, train[::8], markers=["cd45", "cd10", "cd34", "cd38"], hidden=(8,), alpha=0.1)
    assert model.card["selection"]["chosen"] == {"hidden": [8], "alpha": 0.1}
    model.save(tmp_path / "m")
    again = CellClassifier.load(tmp_path / "m")
    x = ddpr.values[np.ix_(test, [ddpr.markers.index(m) for m in again.markers])]
    np.testing.assert_allclose(again.predict_proba(x), model.predict_proba(x))
    assert error_rates(again, ddpr, test)["auroc"] > 0.9  # cd10/cd34/cd45 alone mark these blasts
    with pytest.raises(InvalidInputError, match="expected"):
        again.predict_proba(x[:, :2])


def test_tampered_weights_refused(tmp_path):
    from leukodx.models.bundle import bundled

    copy = tmp_path / "m"
    shutil.copytree(bundled()["ddpr-leukemic-cell"], copy)
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (copy / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        CellClassifier.load(copy)
    with pytest.raises(ModelNotFoundError):
        CellClassifier.load("no-such-model")
    with pytest.raises(InvalidInputError, match="a image-classification model, not a flow-cell-classification"):
        CellClassifier.load("pbc-celltype")
