import numpy as np
import pytest
from flowutils import transforms as fu

from leukodx.cytometry.fcs import open_fcs
from leukodx.cytometry.markers import align_markers, canonical_marker
from leukodx.cytometry.transforms import Transform, compensate
from leukodx.errors import InvalidInputError


@pytest.mark.parametrize("label", ["CD45", "cd45", "145Nd_CD45", "CD45_In115", "CD45 FITC", "CD45_Y89", "CD45-A"])
def test_cd45_spellings_align(label):
    assert canonical_marker(label) == "cd45"


@pytest.mark.parametrize("label,expected", [("CD45RA_La139", "cd45ra"), ("Ki67_Sm152", "ki67"),
                                            ("HLA-DR_Yb174", "hladr"), ("empty_I127", ""), ("PU.1_Gd157", "pu1")])
def test_distinct_antigens_stay_distinct(label, expected):
    assert canonical_marker(label) == expected


def test_real_panels_align_on_shared_markers(flow_dir):
    ddpr = open_fcs(flow_dir / "tidytof" / "ddpr" / "UPN1_Basal.fcs")
    aml = open_fcs(flow_dir / "tidytof" / "aml" / "parbiu_dx_basal.fcs")
    columns, missing = align_markers(aml.labels, ["CD45", "cd34", "cd19"])
    assert aml.labels[columns[0]] == "CD45_Y89"  # not CD45RA_La139
    assert aml.labels[columns[1]] == "CD34_Nd148" and missing == ["cd19"]
    columns, missing = align_markers(ddpr.labels, ["cd45", "cd10"])
    assert [ddpr.labels[c] for c in columns] == ["CD45_In115", "CD10_Gd156"] and not missing


def test_area_channel_preferred_and_true_ambiguity_raises(flow_dir):
    dup = open_fcs(flow_dir / "formats" / "MiltenyiBiotec" / "FCS3.1" / "SG_2014-09-26_Duplicate_Names.fcs")
    sources = [c.pns or c.pnn for c in dup.channels]
    columns, _ = align_markers(sources, ["gfp_fitc"])
    assert dup.channels[columns[0]].pnn == "FL7-A"
    with pytest.raises(InvalidInputError, match="several channels"):
        align_markers(["CD3_Nd142", "CD3 FITC"], ["cd3"])


def test_asinh_and_logicle():
    x = np.array([[-100.0], [0.0], [10.0], [1000.0], [100000.0]])
    np.testing.assert_allclose(Transform("asinh", 5)(x), np.arcsinh(x / 5))
    logicle = Transform("logicle")(x)
    np.testing.assert_allclose(logicle, fu.logicle(x.copy(), [0], t=262144, m=4.5, w=0.5, a=0))
    assert np.all(np.diff(logicle[:, 0]) > 0)
    with pytest.raises(InvalidInputError):
        Transform("asinh", cofactor=0)
    with pytest.raises(InvalidInputError):
        Transform("log10")


def test_compensation_removes_spillover_and_inverts(diva):
    fcs = open_fcs(diva)
    events = fcs.read(max_events=2000)
    pnn = [c.pnn for c in fcs.channels]
    comp = compensate(events, pnn, fcs.spillover)
    names, matrix = fcs.spillover
    idx = [pnn.index(n) for n in names]
    np.testing.assert_allclose(comp[:, idx] @ matrix, events[:, idx], rtol=1e-9, atol=1e-6)
    untouched = [i for i in range(len(pnn)) if i not in idx]
    np.testing.assert_array_equal(comp[:, untouched], events[:, untouched])
    assert not np.allclose(comp[:, idx], events[:, idx])
    with pytest.raises(InvalidInputError, match="singular"):
        compensate(events, pnn, (names[:2], np.ones((2, 2))))
