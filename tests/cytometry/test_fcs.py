import tracemalloc
import warnings
from array import array

import flowio
import numpy as np
import pytest

from leukodx.cytometry.fcs import open_fcs
from leukodx.errors import DataNotFoundError, InvalidInputError

READABLE = {
    "Cytek_xP5/Cytek_xP5.fcs": ("3.0", 23126, 8),
    "FACSCaliburHTS/Sample_Well_A02.fcs": ("2.0", 37395, 8),
    "FACS_Diva/facs_diva_test.fcs": ("3.0", 83411, 12),
    "Fortessa/FCS_3.0_Fortessa_PBS_Specimen_001_A1_A01.fcs": ("3.0", 11585, 11),
    "GuavaMuse/Guava Muse.fcs": ("3.0", 108, 10),
    "HTS_BD_LSR-II/HTS_BD_LSR_II_Mixed_Specimen_001_D6_D06.fcs": ("3.0", 14945, 11),
    "MiltenyiBiotec/FCS2.0/EY_2013-07-19_PBS_FCS_2.0_Custom_Without_Add_Well_A1.001.fcs": ("2.0", 10000, 16),
    "MiltenyiBiotec/FCS3.0/FCS3.0_Custom_Compatible.fcs": ("3.0", 10000, 16),
    "MiltenyiBiotec/FCS3.1/EY_2013-07-19_PBS_FCS_3.1_Custom_Add_Well_A1.001.fcs": ("3.1", 10000, 19),
    "MiltenyiBiotec/FCS3.1/EY_2013-07-19_PBS_FCS_3.1_Custom_Without_Add_Well_A1.001.fcs": ("3.1", 10000, 19),
    "MiltenyiBiotec/FCS3.1/EY_2013-07-19_PBS_FCS_3.1_Well_A1.001.fcs": ("3.1", 10000, 19),
    "MiltenyiBiotec/FCS3.1/SG_2014-09-26_Duplicate_Names.fcs": ("3.1", 8129, 9),
    "cyflow_cube_8/cyflow_cube_8.fcs": ("3.0", 725, 10),
    "fake_large_fcs/fake_large_fcs.fcs": ("3.0", 11585, 11),
}
REFUSED = {
    "corrupted/corrupted.fcs": "not an FCS file",
    "cytek-nl-2000/sample_header.fcs": "truncated",
    "fake_bitmask_error/fcs1_cleaned.lmd": "exceed the channel range",
}


def test_every_formats_file_is_listed(flow_dir):
    found = {str(p.relative_to(flow_dir / "formats")) for p in (flow_dir / "formats").rglob("*")
             if p.is_file() and p.suffix in (".fcs", ".lmd")}
    assert found == set(READABLE) | set(REFUSED)


@pytest.mark.parametrize("name", sorted(READABLE))
def test_readable_files_load_with_metadata(flow_dir, name):
    version, events, channels = READABLE[name]
    fcs = open_fcs(flow_dir / "formats" / name)
    assert (fcs.version, fcs.event_count, fcs.channel_count) == (version, events, channels)
    data = fcs.read()
    assert data.shape == (events, channels) and np.isfinite(data).all()
    assert len(set(fcs.labels)) == channels


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_broken_files_are_refused_with_one_line(flow_dir, name):
    with pytest.raises(InvalidInputError) as err:
        open_fcs(flow_dir / "formats" / name).read()
    message = str(err.value)
    assert REFUSED[name] in message and name.split("/")[-1] in message and "\n" not in message


@pytest.mark.parametrize("name", [n for n in sorted(READABLE) if not n.startswith(("Cytek", "Guava", "fake_large"))])
def test_events_equal_flowio(flow_dir, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = flowio.FlowData(str(flow_dir / "formats" / name), ignore_offset_error=True).as_array()
    np.testing.assert_array_equal(open_fcs(flow_dir / "formats" / name).read(), reference)


def test_blank_header_offsets_read_from_text(flow_dir, fortessa):
    large = open_fcs(flow_dir / "formats" / "fake_large_fcs" / "fake_large_fcs.fcs")
    assert any("blank" in w for w in large.warnings)
    np.testing.assert_array_equal(large.read(), open_fcs(fortessa).read())


def test_every_data_set_of_a_multi_set_file(flow_dir):
    path = flow_dir / "formats" / "GuavaMuse" / "Guava Muse.fcs"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sets = flowio.read_multiple_data_sets(str(path))
    for i, reference in enumerate(sets):
        fcs = open_fcs(path, dataset=i)
        assert fcs.n_datasets == 4
        np.testing.assert_array_equal(fcs.read(), reference.as_array())
    with pytest.raises(InvalidInputError, match="data set 5 does not exist"):
        open_fcs(path, dataset=4)


def test_24_bit_integers_within_declared_range(flow_dir):
    fcs = open_fcs(flow_dir / "formats" / "Cytek_xP5" / "Cytek_xP5.fcs")
    raw = fcs.read(scale=False)
    assert (raw >= 0).all() and (raw < np.array([c.range for c in fcs.channels])).all()
    assert raw[:, 1].std() > 10  # FSC varies: bytes were assembled, not garbage


def test_off_by_one_data_end_is_read_and_noted(flow_dir):
    fcs = open_fcs(flow_dir / "formats" / "MiltenyiBiotec" / "FCS3.1" / "EY_2013-07-19_PBS_FCS_3.1_Well_A1.001.fcs")
    assert any("off by one" in w for w in fcs.warnings)


def test_duplicate_channel_names_made_unique(fortessa, tmp_path):
    raw = bytearray(fortessa.read_bytes())
    at = raw.index(b"FSC-H")  # same length as FSC-A: offsets stay valid
    raw[at:at + 5] = b"FSC-A"
    copy = tmp_path / "dup.fcs"
    copy.write_bytes(bytes(raw))
    fcs = open_fcs(copy)
    assert fcs.labels[:2] == ["FSC-A", "FSC-A#2"]
    assert any("duplicate channel name" in w for w in fcs.warnings)


def test_spillover_parsed(diva):
    names, matrix = open_fcs(diva).spillover
    assert names[0] == "FITC-A" and matrix.shape == (8, 8) and np.allclose(np.diag(matrix), 1)


def test_streamed_chunks_equal_whole_read(diva):
    fcs = open_fcs(diva)
    np.testing.assert_array_equal(np.vstack(list(fcs.iter_events(chunk_events=1000))), fcs.read())


def _write_tiled(source, path, copies):
    base = open_fcs(source)
    events = np.tile(base.read(scale=False).astype(np.float32), (copies, 1))
    with open(path, "wb") as fh:
        flowio.create_fcs(fh, array("f", events.tobytes()), base.labels)
    return events.shape


def test_large_file_streams_in_bounded_memory(diva, tmp_path):
    path = tmp_path / "large.fcs"
    shape = _write_tiled(diva, path, 12)  # 1,000,932 events x 12 channels (48 MB float32)
    fcs = open_fcs(path)
    assert fcs.event_count == shape[0] >= 1_000_000
    tracemalloc.start()
    total = checksum = 0
    for block in fcs.iter_events(chunk_events=50_000):
        total += len(block)
        checksum += float(block[:, 1].sum())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert total == shape[0]
    assert peak < 20e6, f"peak {peak / 1e6:.0f} MB: events were not streamed"  # whole file as float64 is 96 MB


def test_text_file_renamed_fcs(tmp_path):
    path = tmp_path / "notes.fcs"
    path.write_text("sample,cd45\nA,1.0\n" * 20)
    with pytest.raises(InvalidInputError, match="not an FCS file"):
        open_fcs(path)


def test_truncated_copy_refused(diva, tmp_path):
    path = tmp_path / "cut.fcs"
    path.write_bytes(diva.read_bytes()[: diva.stat().st_size // 2])
    with pytest.raises(InvalidInputError, match="truncated"):
        open_fcs(path)


def test_wrong_data_offset_refused(fortessa, tmp_path):
    raw = bytearray(fortessa.read_bytes())
    start = int(raw[26:34])
    raw[26:34] = f"{start + 8:>8d}".encode()
    path = tmp_path / "moved.fcs"
    path.write_bytes(bytes(raw))
    with pytest.raises(InvalidInputError, match="disagree"):
        open_fcs(path)


def test_empty_and_missing(tmp_path):
    (tmp_path / "empty.fcs").write_bytes(b"")
    with pytest.raises(InvalidInputError, match="not an FCS file"):
        open_fcs(tmp_path / "empty.fcs")
    with pytest.raises(DataNotFoundError):
        open_fcs(tmp_path / "absent.fcs")
