"""``leukodx datasets list | info | verify | split | audit``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from leukodx.cli.options import DataRoot, OutputFile, Seed
from rich.console import Console
from rich.table import Table

from leukodx import _atomic
from leukodx.data.registry import dataset_info, list_datasets, load_dataset
from leukodx.errors import IntegrityError, InvalidInputError

app = typer.Typer(no_args_is_help=True, help="Registered datasets: list, describe, verify, split, audit.")
console = Console(soft_wrap=True)


@app.command("list")
def list_cmd() -> None:
    """Name, task, site, classes and size of every registered dataset."""
    table = Table("name", "task", "site", "classes", "images", "license")
    for name in list_datasets():
        info = dataset_info(name)
        table.add_row(name, info.task, info.site, str(len(info.classes)), str(info.n_images or ""),
                      info.license.split(":")[0].split(";")[0])
    console.print(table)


@app.command("info")
def info_cmd(name: str, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Everything known about one dataset: source, license, citation, known limits."""
    info = dataset_info(name)
    if as_json:
        print(json.dumps(info.as_dict(), indent=2))
        return
    for key, value in info.as_dict().items():
        if isinstance(value, (list, tuple)):
            value = "\n  - " + "\n  - ".join(value) if key == "limits" else ", ".join(value)
        console.print(f"[bold]{key}[/bold]: {value}")


@app.command("verify")
def verify_cmd(name: str, data_root: Optional[Path] = DataRoot) -> None:
    """Check a dataset's files against SHA256SUMS; non-zero exit on any mismatch."""
    from leukodx.data.verify import verify_dataset

    report = verify_dataset(name, data_root)
    for rel in report.missing[:20]:
        console.print(f"missing: {rel}")
    for rel in report.mismatched[:20]:
        console.print(f"sha256 mismatch: {rel}")
    for entry in report.unreadable[:20]:
        console.print(f"unreadable: {entry}")
    for rel in report.unlisted[:20]:
        console.print(f"not in SHA256SUMS (not checked): {rel}")
    if not report.ok:
        raise IntegrityError(f"{name}: {report.checked} files checked, {len(report.missing)} missing, "
                             f"{len(report.mismatched)} mismatched, {len(report.unreadable)} unreadable")
    extra = f"; {len(report.unlisted)} file(s) present but not listed" if report.unlisted else ""
    console.print(f"{name}: {report.checked} files OK{extra}")


@app.command("split")
def split_cmd(
    name: str = typer.Argument(..., help="Dataset name or folder of class sub-folders."),
    output: Path = typer.Option(..., "--output", "-o", help="Split file to write (JSON)."),
    val: float = typer.Option(0.15, help="Validation fraction."),
    test: float = typer.Option(0.15, help="Test fraction."),
    folds: int = typer.Option(0, help="Write a k-fold split instead (k >= 2)."),
    seed: int = Seed,
    group: str = typer.Option("near-duplicates", help="Keep together: 'near-duplicates', 'patient' (patient ids, "
                                                      "split at the patient level), 'dataset' (the index's own group "
                                                      "key) or 'none'."),
    data_root: Optional[Path] = DataRoot,
) -> None:
    """Make a stratified, seeded split (group-aware) and save it for every later run."""
    from leukodx.data.leakage import near_duplicate_groups
    from leukodx.data.splits import make_kfold, make_patient_split, make_split, save_split

    index = load_dataset(name, data_root)
    if group == "patient":
        if folds:
            raise InvalidInputError("--group patient makes a train/val/test split; --folds is not supported with it")
        split = make_patient_split(index, val, test, seed)
        save_split(split, output)
        sizes = {k: f"{len(split['patients'][k])} patients, {len(split[k])} images" for k in ("train", "val", "test")}
        console.print(f"{name}: split written to {output} {sizes}")
        return
    if group == "near-duplicates":
        groups = near_duplicate_groups(index)
    elif group == "dataset":
        groups = index.groups
    elif group == "none":
        groups = None
        index.groups = None
    else:
        raise InvalidInputError(f"--group {group!r}: expected near-duplicates, patient, dataset or none")
    if folds:
        if folds < 2:
            raise InvalidInputError(f"--folds {folds}: at least 2")
        split = make_kfold(index, folds, seed, groups, group)
    else:
        split = make_split(index, val, test, seed, groups, group)
    save_split(split, output)
    sizes = {k: len(split[k]) for k in ("train", "val", "test") if k in split} or {"folds": [len(f) for f in split["folds"]]}
    console.print(f"{name}: split written to {output} {sizes}")


@app.command("audit")
def audit_cmd(
    name: str,
    split: Optional[Path] = typer.Option(None, help="Split file to audit (default: the bundled split, if any)."),
    output: Optional[Path] = OutputFile("Write the report as JSON.", required=False),
    max_hamming: int = typer.Option(6, help="pHash Hamming radius for candidates."),
    max_thumb_diff: float = typer.Option(6.0, help="Max mean abs difference of 32x32 thumbnails (0-255)."),
    data_root: Optional[Path] = DataRoot,
) -> None:
    """Leakage audit: near-duplicate images, and how many straddle the split."""
    from leukodx.data.leakage import audit
    from leukodx.data.splits import bundled_split_path, load_split

    index = load_dataset(name, data_root)
    split_path = split or (bundled_split_path(name) if bundled_split_path(name).exists() else None)
    report = audit(index, load_split(split_path) if split_path else None, max_hamming, max_thumb_diff)
    result = report.as_dict() | {"split": str(split_path) if split_path else None}
    if output:
        _atomic.write_json(output, result)
    console.print(f"{name}: {report.n_images} images, {report.n_pairs} near-duplicate pairs "
                  f"({report.n_pairs_cross_class} across classes); across split sides: {report.cross_split or 0}")
    for ex in report.examples[:5]:
        console.print(f"  {ex['a']} ~ {ex['b']} (hamming {ex['hamming']}, {ex['side_a'] or '-'}/{ex['side_b'] or '-'})")
    if report.unreadable:
        console.print(f"{len(report.unreadable)} unreadable image(s) left out of the audit, e.g. {report.unreadable[0]}")
