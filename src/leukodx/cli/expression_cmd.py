"""``leukodx expression evaluate | predict``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from leukodx.cli.options import DataRoot, OutputFile
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
    data_root: Optional[Path] = DataRoot,
) -> None:
    """Leave-one-out on the training samples and train -> independent test, per method."""
    from leukodx.omics.evaluate import evaluate_expression

    def show(name: str, entry: dict) -> None:
        held = f", independent {entry['independent_correct']}/{entry['independent_n']}" if "independent_n" in entry else ""
        console.print(f"{name}: LOOCV errors {entry['loocv_errors']}/{entry['n']}{held} ({entry['seconds']} s)")

    result = evaluate_expression(dataset, data_root, n_genes, method, progress=show)
    _atomic.write_json(output, result)
    console.print(f"best by leave-one-out: {result['best']}; written to {output}")


@app.command("train")
def train(
    output: Path = typer.Option(..., "--output", "-o", help="Bundle folder to write (model.safetensors + card.json)."),
    dataset: str = typer.Option("golub", "--dataset", "-d", help="golub | ball-rnaseq"),
    method: str = typer.Option("mlp", help="mlp | pnn | weighted-voting | elastic-net (the bundled one: mlp, "
                                            "the method leave-one-out picks on golub)."),
    n_genes: int = typer.Option(50, help="Genes kept by in-fold feature selection."),
    name: Optional[str] = typer.Option(None, help="Model name in the card (default: the output folder name)."),
    data_root: Optional[Path] = DataRoot,
) -> None:
    """Train one expression method on the training samples and write it as a bundle (no pickle)."""
    from leukodx.omics.bundle import train_expression_model

    model = train_expression_model(dataset, method, n_genes, data_root, name=name or output.name)
    card = model.save(output)
    m = card["metrics"]
    held = m.get("independent")
    line = f", independent {held['correct']}/{held['n']}" if held else ""
    console.print(f"{card['name']} ({method}, {len(model.genes)} genes): leave-one-out errors "
                  f"{m['loocv']['errors']}/{m['loocv']['n']}{line}; written to {output}")


@app.command("predict")
def predict(
    matrix: Path = typer.Argument(..., help="Expression table (CSV/TSV/GCT) of new samples."),
    output: Path = OutputFile("Predictions CSV."),
    model: str = typer.Option("golub-all-aml", "--model", "-m", help="Expression bundle name or folder."),
    orientation: str = typer.Option("auto", help="genes-by-samples | samples-by-genes | auto"),
    min_genes_present: float = typer.Option(0.8, min=0.0, max=1.0, help="Refuse a matrix holding fewer than this "
                                                                       "share of the model's genes (the rest are "
                                                                       "filled with training medians)."),
) -> None:
    """ALL/AML call for new samples from a trained bundle; genes aligned by probe id, mismatches reported."""
    from leukodx.omics.bundle import ExpressionModel, write_predictions
    from leukodx.omics.io import read_matrix

    bundle = ExpressionModel.load(model)
    new = read_matrix(matrix, orientation=orientation)
    proba, ood, missing, extra = bundle.score_set(new, min_genes_present)
    if missing:
        console.print(f"{matrix}: {len(missing)} of the model's {len(bundle.genes)} genes missing "
                      f"(e.g. {missing[0]}); filled with the training median")
    write_predictions(output, new.samples, proba, bundle.classes, ood, bundle.reliability)
    console.print(f"{len(new.samples)} sample(s) predicted with {bundle.card['name']} ({bundle.method}, "
                  f"{len(extra)} input genes unused); written to {output}")
    if ood is None:
        console.print("OOD check unavailable: this bundle has no reliability statistics (retrain it)")
    else:
        flagged = int(bundle.reliability.is_ood(ood).sum())
        if flagged:
            console.print(f"{flagged} of {len(ood)} sample(s) lie far from the training samples (ood): another "
                          "platform, normalization or tissue? Their calls are unreliable.")
        shift = bundle.reliability.shift(ood, unit="samples", causes="the platform, normalization or tissue likely "
                                         "differs from the training samples",
                                         advice="Check how the matrix was produced before using the calls.")
        if shift["flagged"]:
            console.print(f"shift: {shift['reason']}")
