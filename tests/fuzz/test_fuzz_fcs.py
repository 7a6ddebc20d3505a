"""Fuzzing FCS reading with mutations of real files: TEXT keyword values, HEADER / TEXT / DATA bytes,
truncations; each mutant goes through open -> stream every event -> per-sample features -> read-out."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from hypothesis import given, strategies as st

from contract import check
from fcs_mutate import FCSParts
from leukodx.data.root import resolve_data_root

SOURCES = ["tidytof/ddpr/UPN1_Basal.fcs", "formats/FACSCaliburHTS/Sample_Well_A02.fcs",
           "formats/cyflow_cube_8/cyflow_cube_8.fcs", "formats/MiltenyiBiotec/FCS3.1/SG_2014-09-26_Duplicate_Names.fcs"]
REQUIRED = ["$TOT", "$PAR", "$DATATYPE", "$BYTEORD", "$MODE", "$NEXTDATA", "$BEGINDATA", "$ENDDATA",
            "$P1B", "$P1R", "$P1E", "$P1N", "$P2B", "$P2R", "$P2E", "$P2G", "$P3N", "$P3S", "$SPILLOVER",
            "$TIMESTEP", "$PAR"]

values = st.one_of(
    st.integers(-2 ** 40, 2 ** 40).map(str),
    st.sampled_from(["", " ", "nan", "inf", "-inf", "1e400", "-0", "16,", "4,3,2,1", "1,2,3,4", "3,1,2,4", "F", "I",
                     "D", "A", "X", "0,0", "4", "x,y", "2,a,b,1,0,0,1", "2,a,b,nan,0,0,1", "*", "L", "C"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(min_size=0, max_size=12),
)


@lru_cache(maxsize=None)
def _parts(name: str) -> tuple[bytes, tuple]:
    path = resolve_data_root() / "flow" / name
    parts = FCSParts.read(path)
    return path.read_bytes(), tuple(k for k, _ in parts.keywords)


@lru_cache(maxsize=1)
def _model():
    from leukodx.cytometry.classifier import CellClassifier

    return CellClassifier.load()


def _use(path: Path):
    from leukodx.cytometry.features import SampleFeatureAccumulator
    from leukodx.cytometry.fcs import open_fcs
    from leukodx.cytometry.readout import readout
    from leukodx.cytometry.transforms import Transform

    fcs = open_fcs(path)
    markers = [m for m in fcs.markers if m][:3]
    acc = SampleFeatureAccumulator(markers or ["cd45"], Transform("asinh", 5.0), source=str(path))
    columns = [fcs.markers.index(m) for m in markers]
    for block in fcs.iter_events(chunk_events=4096):
        if columns:
            acc.update(block[:, columns])
    if columns:
        acc.matrix()
    return readout(path, _model())


@given(source=st.sampled_from(SOURCES), edits=st.lists(st.tuples(st.one_of(st.sampled_from(REQUIRED),
                                                                            st.integers(0, 400)),
                                                                  st.one_of(values, st.none())),
                                                        min_size=1, max_size=3))
def test_fcs_keyword_mutations(tmp_path_factory, source, edits):
    raw, keys = _parts(source)
    path = tmp_path_factory.mktemp("fcs") / "mutant.fcs"
    path.write_bytes(raw)
    parts = FCSParts.read(path)
    for key, value in edits:
        key = keys[key % len(keys)] if isinstance(key, int) else key
        if value is None:
            parts.drop(key)
        else:
            parts.set(key, value)
    try:
        parts.write(path, fix_offsets=not any(k in ("$BEGINDATA", "$ENDDATA") for k, _ in edits))
    except (UnicodeEncodeError, ValueError):
        return  # not representable in an FCS TEXT segment (latin-1): nothing to test
    _model()  # loaded once, outside the timed case
    check("fcs: TEXT keywords", _use, path)


@given(source=st.sampled_from(SOURCES), data=st.data())
def test_fcs_byte_mutations(tmp_path_factory, source, data):
    raw, _ = _parts(source)
    text_end = int(raw[18:26])
    mutated = bytearray(raw)
    kind = data.draw(st.sampled_from(["header", "text", "data", "truncate", "append", "splice"]))
    if kind == "truncate":
        mutated = mutated[:data.draw(st.integers(0, len(raw) - 1))]
    elif kind == "append":
        mutated += data.draw(st.binary(min_size=1, max_size=64))
    elif kind == "splice":
        at = data.draw(st.integers(0, len(raw)))
        mutated[at:at] = data.draw(st.binary(min_size=1, max_size=32))
    else:
        lo, hi = {"header": (0, 58), "text": (58, text_end + 1), "data": (text_end + 1, len(raw))}[kind]
        for _ in range(data.draw(st.integers(1, 8))):
            mutated[data.draw(st.integers(lo, hi - 1))] = data.draw(st.integers(0, 255))
    path = tmp_path_factory.mktemp("fcs") / "mutant.fcs"
    path.write_bytes(bytes(mutated))
    _model()
    check("fcs: HEADER/TEXT/DATA bytes", _use, path)
