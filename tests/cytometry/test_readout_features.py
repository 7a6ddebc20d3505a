import numpy as np
import pytest

from leukodx.cytometry.cells import load_cell_split, read_ddpr
from leukodx.cytometry.classifier import CellClassifier
from leukodx.cytometry.features import SampleFeatureAccumulator
from leukodx.cytometry.fcs import open_fcs
from leukodx.cytometry.readout import readout
from leukodx.stats import wilson_interval
from leukodx.errors import InvalidInputError


@pytest.fixture(scope="module")
def model():
    return CellClassifier.load()


def test_leukemic_and_healthy_files_read_out(flow_dir, model):
    upn = readout(flow_dir / "tidytof" / "ddpr" / "UPN1_Basal.fcs", model)
    healthy = readout(flow_dir / "tidytof" / "ddpr" / "Healthy1_Basal.fcs", model)
    assert upn["events_scored"] == healthy["events_scored"] == 100
    assert upn["fraction_leukemic_like"] > 0.8 and upn["flag"].startswith("leukemic-like population above")
    assert healthy["fraction_leukemic_like"] < 0.1 and healthy["flag"].startswith("no leukemic-like")
    assert sum(upn["probability_histogram"]) == 100
    assert healthy["ood"] is False and healthy["shift"]["flagged"] is False and 0 <= healthy["ood_score"] <= 0.2


def test_chunk_size_does_not_change_the_result(flow_dir, model):
    path = flow_dir / "tidytof" / "ddpr" / "UPN1_Basal.fcs"
    a, b = readout(path, model), readout(path, model, chunk_events=7)
    assert a["leukemic_like"] == b["leukemic_like"] and a["fraction_outside_training_range"] == b["fraction_outside_training_range"]


@pytest.mark.slow
def test_missing_markers_refit_or_refuse(flow_dir, model, data_root):
    path = flow_dir / "tidytof" / "aml" / "parbiu_dx_basal.fcs"
    with pytest.raises(InvalidInputError, match="lacks marker"):
        readout(path, model)
    table = read_ddpr(data_root)
    result = readout(path, model, table=table, split=load_cell_split(table))
    assert "cd19" not in result["markers_used"] and "cd45" in result["markers_used"]
    assert any("refit" in w for w in result["warnings"])
    assert "unreliable" in result["flag"]  # CD45 on Y89 sits on another scale than the training In115 channel
    assert result["ood"] is True and result["shift"]["flagged"] is True and "cd45" in result["shift"]["reason"]


def test_file_without_shared_markers_refused(fortessa, model, data_root):
    table = read_ddpr(data_root)
    with pytest.raises(InvalidInputError, match="shares only 0"):
        readout(fortessa, model, table=table, split=load_cell_split(table))


def test_wilson_interval():
    lo, hi = wilson_interval(0, 100)
    assert lo == 0 and 0.03 < hi < 0.04
    assert np.isnan(wilson_interval(0, 0)[0])


def test_sample_features_fixed_size_and_exact_moments(diva):
    fcs = open_fcs(diva)
    columns = [fcs.labels.index(n) for n in ("FITC-A", "PE-A", "APC-A")]
    acc = SampleFeatureAccumulator(["fitc", "pe", "apc"])
    for block in fcs.iter_events(chunk_events=5000):
        acc.update(block[:, columns])
    matrix, names = acc.matrix()
    assert matrix.shape == (3, len(names)) == (3, 24)
    t = np.arcsinh(fcs.read()[:, columns] / 5)
    np.testing.assert_allclose(matrix[:, 0], t.mean(0), rtol=1e-9)
    np.testing.assert_allclose(matrix[:, 1], t.std(0), rtol=1e-6)
    np.testing.assert_allclose(matrix[:, 2], np.median(np.clip(t, -1, 8), 0), atol=0.03)  # fine-histogram quantile
    np.testing.assert_allclose(matrix[:, 8:].sum(1), 1.0)


def test_features_of_no_events_or_only_nan_events_are_one_clear_error():
    from leukodx.cytometry.features import SampleFeatureAccumulator
    from leukodx.errors import InvalidInputError

    acc = SampleFeatureAccumulator(["cd45", "cd19"], source="empty.fcs")
    acc.update(np.zeros((0, 2)))
    with pytest.raises(InvalidInputError, match="empty.fcs: no events; nothing to summarize"):
        acc.matrix()
    acc = SampleFeatureAccumulator(["cd45", "cd19"], source="nan.fcs")
    acc.update(np.full((10, 2), np.nan))
    with pytest.raises(InvalidInputError, match="nan.fcs: all 10 events have non-finite values"):
        acc.matrix()


@pytest.mark.parametrize("cofactor", [float("nan"), float("inf"), 0.0, -5.0])
def test_transform_refuses_a_non_finite_or_non_positive_cofactor(cofactor):
    from leukodx.cytometry.transforms import Transform
    from leukodx.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="arcsinh cofactor must be > 0"):
        Transform("asinh", cofactor)


def test_flow_features_cli_with_a_nan_cofactor_is_one_line(tmp_path, flow_dir):
    import subprocess
    import sys

    fcs = flow_dir / "tidytof" / "ddpr" / "UPN1_Basal.fcs"
    proc = subprocess.run([sys.executable, "-m", "leukodx", "flow", "features", str(fcs),
                           "--cofactor", "nan", "-o", str(tmp_path / "f.csv")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: arcsinh cofactor must be > 0, got nan"
    assert not (tmp_path / "f.csv").exists()
