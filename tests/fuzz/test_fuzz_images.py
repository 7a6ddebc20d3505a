"""Fuzzing image reading with mutations of real files (bytes flipped, truncated, spliced, headers
rewritten) and in-memory arrays of any shape and type; each readable one is preprocessed for a model."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from contract import check
from leukodx.data.images import as_rgb_array, read_image, split_in_memory
from leukodx.preprocessing.transforms import Preprocess


@lru_cache(maxsize=None)
def _real(kind: str) -> bytes:
    """A real smear image in each container format."""
    import io

    from PIL import Image

    from leukodx.data.registry import load_dataset

    rgb = read_image(load_dataset("pbc").abspath(0))
    if kind == "jpg":
        return load_dataset("pbc").abspath(0).read_bytes()
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format={"png": "PNG", "bmp": "BMP", "tif": "TIFF", "webp": "WEBP"}[kind])
    return buf.getvalue()


PRE = Preprocess(size=32)


def _read_and_prepare(path):
    return PRE(read_image(path, max_side=st_max_side[0]))


st_max_side = [None]


@given(kind=st.sampled_from(["jpg", "png", "bmp", "tif", "webp"]), data=st.data())
def test_image_byte_mutations(tmp_path_factory, kind, data):
    raw = bytearray(_real(kind))
    op = data.draw(st.sampled_from(["flip", "truncate", "splice", "header"]))
    if op == "truncate":
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    elif op == "splice":
        at = data.draw(st.integers(0, len(raw)))
        raw[at:at] = data.draw(st.binary(min_size=1, max_size=64))
    else:
        hi = 64 if op == "header" else len(raw)
        for _ in range(data.draw(st.integers(1, 16))):
            raw[data.draw(st.integers(0, min(hi, len(raw)) - 1))] = data.draw(st.integers(0, 255))
    path = tmp_path_factory.mktemp("img") / f"mutant.{kind}"
    path.write_bytes(bytes(raw))
    st_max_side[0] = data.draw(st.sampled_from([None, 16, 100]))
    check("images: file bytes", _read_and_prepare, path)


arrays = hnp.arrays(
    dtype=st.sampled_from([np.uint8, np.uint16, np.float32, np.float64, np.int32, np.bool_, np.complex64]),
    shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=40),
    elements=None)


@given(array=arrays)
def test_in_memory_arrays(array):
    def use(a):
        return [PRE(as_rgb_array(x, "array")) for x in split_in_memory(a, "array")]

    check("images: in-memory arrays", use, array)
