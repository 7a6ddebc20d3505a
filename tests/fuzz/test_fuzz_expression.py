"""Fuzzing expression tables: shapes, cell types (text, NaN, inf, empty), duplicate ids, orientation,
separators, the model's genes present or not; each table is read and scored by the bundled model."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from hypothesis import given, strategies as st

from contract import check

cells = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.integers(-10 ** 6, 10 ** 6),
                  st.sampled_from(["", "NA", "nan", "inf", "-inf", "1e400", "high", "1,5", '"', "=1+1"]),
                  st.floats(20, 16000))


@lru_cache(maxsize=1)
def _model():
    from leukodx.omics.bundle import ExpressionModel

    return ExpressionModel.load()


def _use(path, orientation):
    from leukodx.omics.io import read_matrix

    data = read_matrix(path, orientation=orientation)
    return _model().score_set(data)


@given(n_samples=st.integers(0, 4), n_model_genes=st.integers(0, 50), n_other=st.integers(0, 5), data=st.data(),
       orientation=st.sampled_from(["auto", "genes-by-samples", "samples-by-genes", "sideways"]),
       suffix=st.sampled_from([".csv", ".tsv", ".gct", ".txt"]), duplicate=st.booleans())
def test_expression_tables(tmp_path_factory, n_samples, n_model_genes, n_other, data, orientation, suffix, duplicate):
    model = _model()
    genes = model.genes[:n_model_genes] + [f"other_{i}" for i in range(n_other)]
    if duplicate and genes:
        genes.append(genes[0])
    typical = data.draw(st.booleans())
    rows = []
    for g in genes:
        if typical:  # plausible values, so the deeper checks (gene share, scale) are reached
            values = [f"{v:.1f}" for v in np.random.default_rng(len(rows)).uniform(100, 4000, n_samples)]
        else:
            values = [str(data.draw(cells)) for _ in range(n_samples)]
        rows.append([g, *values])
    sep = "\t" if suffix in (".tsv", ".txt", ".gct") else ","
    header = ["gene", *[f"s{i}" for i in range(n_samples)]]
    text = "\n".join(sep.join(r) for r in [header, *rows]) + "\n"
    if suffix == ".gct":
        text = f"#1.2\n{len(rows)}\t{n_samples}\n" + text
    path = tmp_path_factory.mktemp("expr") / f"m{suffix}"
    path.write_text(text)
    _model()
    check("expression: tables", _use, path, orientation)
