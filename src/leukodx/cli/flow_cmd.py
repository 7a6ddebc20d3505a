"""``leukodx flow info | train | evaluate | readout | features``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from leukodx.cli.options import DataRoot, OutputFile, Seed
from rich.console import Console

from leukodx import _atomic
from leukodx.errors import Interrupted, InvalidInputError

app = typer.Typer(no_args_is_help=True, help="Flow / mass cytometry: FCS files, leukemic-cell classifier, MRD-style read-out.")
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


@app.command("info")
def info(
    file: Path = typer.Argument(..., help="FCS file (2.0, 3.0, 3.1)."),
    dataset: int = typer.Option(1, "--dataset", min=1, help="Data set within the file (1 = first)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    check_data: bool = typer.Option(True, help="Stream every event once to check the DATA segment, not just the TEXT."),
) -> None:
    """Version, event count and channels of an FCS file, or the one-line reason it cannot be read."""
    from leukodx.cytometry.fcs import open_fcs

    fcs = open_fcs(file, dataset=dataset - 1)
    if check_data:
        for _ in fcs.iter_events(scale=False):
            pass
    summary = fcs.summary()
    if as_json:
        out.print_json(json.dumps(summary))
        return
    from rich.table import Table

    out.print(f"{fcs.path}: FCS {fcs.version}, {fcs.event_count} events, {fcs.channel_count} channels, "
              f"data type {fcs.datatype}, data set {fcs.dataset + 1} of {fcs.n_datasets}")
    if fcs.spillover:
        out.print(f"spillover matrix over {len(fcs.spillover[0])} channels: {', '.join(fcs.spillover[0])}")
    table = Table("#", "name", "stain", "marker", "kind", "range")
    for c in summary["channels"]:
        table.add_row(str(c["index"]), c["name"], c["stain"], c["marker"], c["kind"], f"{c['range']:g}")
    out.print(table)
    for note in fcs.warnings:
        console.print(f"warning: {note}")


@app.command("train")
def train(
    output: Path = typer.Option(..., "--output", "-o", help="Model folder (model.safetensors + card.json)."),
    seed: int = Seed,
    data_root: Optional[Path] = DataRoot,
) -> None:
    """Train the leukemic-cell classifier on the DDPR training cells (saved split), score the held-out cells."""
    from leukodx.cytometry.cells import load_cell_split, read_ddpr
    from leukodx.cytometry.classifier import train_cell_classifier
    from leukodx.cytometry.readout import error_rates

    table = read_ddpr(data_root)
    train_rows, test_rows = load_cell_split(table)
    model = train_cell_classifier(table, train_rows, seed=seed, progress=console.print)
    model.card["test"] = error_rates(model, table, test_rows)
    card = model.save(output)
    t = card["test"]
    console.print(f"held-out cells: AUROC {t['auroc']:.4f}, sensitivity {t['sensitivity']:.3f}, "
                  f"false-positive rate {t['false_positive_rate']:.3f} (n={t['cells']}); written to {output}")


@app.command("evaluate")
def evaluate(
    output: Path = typer.Option(..., "--output", "-o", help="Result JSON."),
    model: str = typer.Option("ddpr-leukemic-cell", help="Flow model name or folder."),
    data_root: Optional[Path] = DataRoot,
) -> None:
    """The model and comparators on the held-out DDPR cells, AUROC with bootstrap CIs."""
    from leukodx.cytometry.cells import load_cell_split, read_ddpr
    from leukodx.cytometry.classifier import CellClassifier
    from leukodx.cytometry.evaluate import evaluate_cell_classifiers

    table = read_ddpr(data_root)
    train_rows, test_rows = load_cell_split(table)
    result = evaluate_cell_classifiers(table, train_rows, test_rows, CellClassifier.load(model))
    _atomic.write_json(output, result)
    for name, entry in result["methods"].items():
        auc = entry["held_out"]["auroc"]
        console.print(f"{name}: held-out AUROC {auc['value']:.4f} [{auc['ci95'][0]:.4f}, {auc['ci95'][1]:.4f}]")
    console.print(f"written to {output}")


@app.command("readout")
def readout_cmd(
    files: list[Path] = typer.Argument(..., help="FCS files."),
    output: Path = OutputFile("Result JSON (one entry per file)."),
    model: str = typer.Option("ddpr-leukemic-cell", help="Flow model name or folder."),
    refit_missing: bool = typer.Option(True, help="Refit on the shared markers when a file lacks some (needs the data root)."),
    compensate: bool = typer.Option(True, help="Apply the file's spillover matrix when it has one."),
    data_root: Optional[Path] = DataRoot,
) -> None:
    """Fraction of leukemic-like cells per file and a sample flag; bad files are reported and skipped."""
    from leukodx.cytometry.classifier import CellClassifier
    from leukodx.cytometry.readout import readout_files

    def show(entry: dict) -> None:
        lo, hi = entry["fraction_ci95"]
        console.print(f"{entry['file']}: {entry['leukemic_like']}/{entry['events_scored']} leukemic-like "
                      f"({entry['fraction_leukemic_like']:.1%}, 95% CI {lo:.1%}-{hi:.1%}): {entry['flag']}")

    try:
        batch = readout_files(files, CellClassifier.load(model), refit_missing=refit_missing,
                              compensate_spillover=compensate, data_root=data_root, on_result=show,
                              on_error=lambda f, e: console.print(f"error: {e}"))
    except Interrupted as stop:  # keep what was read
        _atomic.write_json(output, {**stop.partial, "interrupted": True})
        stop.written_to = str(output)
        raise
    for note in batch.pop("notes"):
        console.print(f"warning: {note}")
    _atomic.write_json(output, batch)
    console.print(f"{len(batch['results'])} file(s) read, {len(batch['failed'])} failed; written to {output}")
    if not batch["results"]:
        raise typer.Exit(2)


@app.command("features")
def features_cmd(
    files: list[Path] = typer.Argument(..., help="FCS files."),
    output: Path = OutputFile("CSV: one row per file, markers x statistics flattened."),
    markers: str = typer.Option("cd45,cd19,cd34,cd10,cd38,cd123", help="Comma-separated markers, in order."),
    cofactor: float = typer.Option(5.0, help="arcsinh cofactor (5 mass cytometry, ~150 fluorescence)."),
) -> None:
    """Per-sample feature matrix (Adjouadi-style statistics + histograms) for each file."""
    from leukodx.cytometry.features import features_table
    from leukodx.cytometry.transforms import Transform

    wanted = [m.strip() for m in markers.split(",") if m.strip()]
    if not wanted:
        raise InvalidInputError(f"--markers {markers!r}: name at least one marker (comma-separated, e.g. cd45,cd19)")
    if len(set(wanted)) != len(wanted):
        raise InvalidInputError(f"--markers {markers!r}: a marker is named twice")
    transform = Transform("asinh", cofactor)  # a bad cofactor is one error, before any file is read
    from leukodx._csv import csv_text

    try:
        header, rows, failures = features_table(files, wanted, transform,
                                                on_error=lambda f, e: console.print(f"error: {e}"))
    except Interrupted as stop:  # keep the rows finished
        header, rows, _ = stop.partial
        if rows:
            _atomic.write_text(output, csv_text(header, rows))
            stop.written_to = str(output)
        raise
    if not rows:
        console.print("error: no file could be summarized")
        raise typer.Exit(2)
    _atomic.write_text(output, csv_text(header, rows))
    console.print(f"{len(rows)} file(s) summarized ({len(wanted)} markers x {(len(header) - 2) // len(wanted)} features), "
                  f"{len(failures)} failed; written to {output}")
