"""``leukodx expression evaluate | predict``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from leukodx import _atomic

app = typer.Typer(no_args_is_help=True, help="Gene-expression classifiers (Golub ALL/AML, B-ALL RNA-seq, any matrix).")
console = Console(stderr=True, soft_wrap=True)


@app.command("evaluate")
def evaluate(
    dataset: str = typer.Option("golub", "--dataset", "-d", help="golub | ball-rnaseq"),
    output: Path = typer.Option(..., "--output", "-o", help="Result JSON."),
    n_genes: int = typer.Option(50, help="Genes kept by in-fold feature selection."),
    method: Optional[list[str]] = typer.Option(None, "--method", help="Only these methods (repeatable)."),
    data_root: Optional[Path] = typer.Option(None, "--data-root"),
) -> None:
    """Leave-one-out on the training samples and train -> independent test, per method."""
    from leukodx.omics.evaluate import evaluate_expression

    def show(name: str, entry: dict) -> None:
        held = f", independent {entry['independent_correct']}/{entry['independent_n']}" if "independent_n" in entry else ""
        console.print(f"{name}: LOOCV errors {entry['loocv_errors']}/{entry['n']}{held} ({entry['seconds']} s)")

    result = evaluate_expression(dataset, data_root, n_genes, method, progress=show)
    _atomic.write_json(output, result)
    console.print(f"best by leave-one-out: {result['best']}; written to {output}")


@app.command("predict")
def predict(
    matrix: Path = typer.Argument(..., help="Expression table (CSV/TSV/GCT) of new samples."),
    output: Path = typer.Option(..., "--output", "-o", help="Predictions CSV."),
    method: str = typer.Option("svm-linear", help="Method, trained on the Golub training samples."),
    orientation: str = typer.Option("auto", help="genes-by-samples | samples-by-genes | auto"),
    data_root: Optional[Path] = typer.Option(None, "--data-root"),
) -> None:
    """ALL/AML call for new samples; genes are aligned by probe id and mismatches reported."""
    import csv
    import io
    import warnings

    import numpy as np

    from sklearn.exceptions import ConvergenceWarning

    from leukodx.errors import InvalidInputError
    from leukodx.omics.classifiers import expression_methods
    from leukodx.omics.io import align_genes, read_golub, read_matrix
    from leukodx.omics.preprocess import GolubPreprocessor

    registry = expression_methods(GolubPreprocessor)
    if method not in registry:
        raise InvalidInputError(f"method {method!r}: expected one of {', '.join(registry)}")
    train, _ = read_golub(data_root)
    new = read_matrix(matrix, orientation=orientation)
    values, missing, extra = align_genes(new, train.genes)
    if missing:
        console.print(f"{matrix}: {len(missing)} of the model's {len(train.genes)} genes missing "
                      f"(e.g. {missing[0]}); filled with the training median")
        median = np.median(train.values, axis=0)
        values = np.where(np.isnan(values), median, values)
    if extra:
        console.print(f"{matrix}: {len(extra)} genes not in the training data ignored (e.g. {extra[0]})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = registry[method]().fit(train.values, train.labels)
    proba = model.predict_proba(values)
    buf = io.StringIO()
    writer = csv.writer(buf)
    classes = list(model.classes_)
    writer.writerow(["sample", "prediction", "probability"] + [f"p_{c}" for c in classes])
    for s, p in zip(new.samples, proba):
        writer.writerow([s, classes[int(p.argmax())], f"{p.max():.4f}"] + [f"{v:.4f}" for v in p])
    _atomic.write_text(output, buf.getvalue())
    console.print(f"{len(new.samples)} sample(s) predicted with {method}; written to {output}")

