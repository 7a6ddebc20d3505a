"""Fuzzing CLI option values: every verb cheap enough to run many times, with numbers, text, empty,
NaN / inf, negative and huge values for its options, and output names of any kind."""

from __future__ import annotations

from functools import lru_cache

from hypothesis import given, strategies as st

from contract import check_cli
from leukodx.data.root import resolve_data_root

option_values = st.one_of(
    st.sampled_from(["", "0", "-1", "1", "0.5", "0.9", "1.5", "nan", "inf", "-inf", "1e400", "1e-400", "abc",
                     "-", "--", " ", "2.0.0", "0x10", "1,2"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-10 ** 12, 10 ** 12).map(str),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=10),
)
out_names = st.sampled_from(["out.csv", "out.json", "out.txt", "out", "sub/out.csv", ".", "out.CSV"])


@lru_cache(maxsize=None)
def _inputs():
    from leukodx.data.registry import load_dataset

    root = resolve_data_root()
    return {"cell": str(load_dataset("pbc").abspath(0)), "fcs": str(root / "flow/tidytof/ddpr/UPN1_Basal.fcs"),
            "golub": str(root / "golub/data_set_ALL_AML_independent.csv")}


def _out(tmp_path_factory, name):
    return str(tmp_path_factory.mktemp("cli") / name)


valid_coverage = st.sampled_from(["0.9", "0.8", "0.95", "0.5"])


@given(coverage=st.one_of(valid_coverage, option_values), backend=st.sampled_from(["auto", "torch", "onnx", "gpu", ""]),
       out=out_names, model=st.sampled_from(["pbc-celltype", "pbc-celltype", "all-stage", "golub-all-aml", "nope", ""]))
def test_predict_options(tmp_path_factory, coverage, backend, out, model):
    check_cli("cli: predict options", ["predict", _inputs()["cell"], "-m", model, "--coverage", coverage,
                                       "--backend", backend, "-o", _out(tmp_path_factory, out)])


@given(kind=st.sampled_from(["auto", "cells", "fields", "smear", ""]), coverage=st.one_of(valid_coverage, option_values),
       um=st.one_of(st.sampled_from(["0.1", "0.08"]), option_values))
def test_diagnose_options(tmp_path_factory, kind, coverage, um):
    check_cli("cli: diagnose options", ["diagnose", _inputs()["cell"], "--kind", kind, "--coverage", coverage,
                                        "--um-per-px", um, "-o", _out(tmp_path_factory, "case")])


@given(cofactor=option_values, markers=st.one_of(option_values, st.sampled_from(["cd45", "cd45,cd19", "CD45, cd34",
                                                                                  ",,,", "cd45,cd45"])),
       out=out_names)
def test_flow_features_options(tmp_path_factory, cofactor, markers, out):
    check_cli("cli: flow features options", ["flow", "features", _inputs()["fcs"], "--cofactor", cofactor,
                                             "--markers", markers, "-o", _out(tmp_path_factory, out)])


@given(model=st.sampled_from(["ddpr-leukemic-cell", "golub-all-aml", "x", ""]), dataset=option_values)
def test_flow_info_and_readout_options(tmp_path_factory, model, dataset):
    check_cli("cli: flow options", ["flow", "info", _inputs()["fcs"], "--dataset", dataset])
    check_cli("cli: flow options", ["flow", "readout", _inputs()["fcs"], "--model", model, "--no-refit-missing",
                                    "-o", _out(tmp_path_factory, "r.json")])


@given(orientation=st.one_of(st.sampled_from(["auto", "genes-by-samples", "samples-by-genes"]), option_values),
       share=option_values, model=st.sampled_from(["golub-all-aml", "ddpr-leukemic-cell", "nope"]), out=out_names)
def test_expression_predict_options(tmp_path_factory, orientation, share, model, out):
    check_cli("cli: expression predict options",
              ["expression", "predict", _inputs()["golub"], "--orientation", orientation, "--min-genes-present", share,
               "-m", model, "-o", _out(tmp_path_factory, out)])


@given(n_genes=option_values, dataset=st.sampled_from(["golub", "ball-rnaseq", "pbc", "none"]),
       method=st.sampled_from(["mlp", "pnn", "svm", ""]))
def test_expression_evaluate_refusals(tmp_path_factory, n_genes, dataset, method):
    if n_genes.strip().lstrip("+").isdigit() and 0 < int(n_genes) and dataset in ("golub", "ball-rnaseq") \
            and method in ("mlp", "pnn"):
        return  # a valid request runs a full leave-one-out evaluation: the benchmark's job, not the fuzzer's
    check_cli("cli: expression evaluate options",
              ["expression", "evaluate", "-d", dataset, "--n-genes", n_genes, "--method", method,
               "-o", _out(tmp_path_factory, "e.json")])


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


@given(n_boot=option_values, seed=option_values)
def test_evaluate_options(tmp_path_factory, pbc_folder, n_boot, seed):
    value = _number(n_boot)
    if value is not None and 50 < value <= 100_000:
        return  # a valid request for many resamples is slow by design (~0.2 s each): the benchmark's job
    check_cli("cli: evaluate options", ["evaluate", "-m", "pbc-celltype", "--images", str(pbc_folder), "--seed", seed,
                                        "--n-boot", n_boot, "--no-report", "-o", _out(tmp_path_factory, "e.json")])


@given(split=st.sampled_from(["test", "val", "all", "nope", "", "TEST"]), dataset=st.sampled_from(["all-aria", "x", ""]))
def test_evaluate_dataset_refusals(tmp_path_factory, split, dataset):
    if dataset == "all-aria" and split in ("test", "val", "all"):
        return  # a valid request evaluates a whole split: the benchmark's job
    check_cli("cli: evaluate options", ["evaluate", "-m", "all-stage", "--dataset", dataset, "--split", split,
                                        "--no-report", "-o", _out(tmp_path_factory, "e.json")])
