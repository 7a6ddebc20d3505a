"""``leukodx benchmark``: run the review's recipes under one protocol and regenerate the leaderboard."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from leukodx.cli.options import DataRoot, Seed
from rich.console import Console

console = Console(stderr=True, soft_wrap=True)
RESULTS = Path("benchmarks") / "results"


def register(app: typer.Typer) -> None:
    @app.command("benchmark")
    def benchmark(
        dataset: Optional[str] = typer.Option(None, "--dataset", "-d",
                                              help="Image dataset (pbc, all-aria, wbc-seg-1, ...); review protocol."),
        protocol: str = typer.Option("review", help="review: the zoo's recipes on one dataset; loso: "
                                                    "leave-one-site-out over pbc, deepapl, wbc-seg-1, wbc-seg-2."),
        variant: Optional[list[str]] = typer.Option(None, "--variant", help="loso: only these training variants."),
        adapt_k: Optional[list[int]] = typer.Option(None, "--adapt-k", help="loso: also the few-shot learning curve, "
                                                                             "k labelled cells per class (repeatable)."),
        suite: str = typer.Option("review", help="Recipe suite: 'review' = every recipe in the zoo."),
        recipe: Optional[list[str]] = typer.Option(None, "--recipe", "-r", help="Only these recipes (repeatable)."),
        quick: bool = typer.Option(False, help="Smoke run: 32 px, 2 epochs, 12 images/class, 2 folds."),
        cross: Optional[list[str]] = typer.Option(None, "--cross", help="Also test on this dataset's shared classes."),
        augment: Optional[str] = typer.Option(None, help="Ablation: augmentation preset for every recipe."),
        stain: Optional[str] = typer.Option(None, help="Ablation: none | reinhard | macenko | levels for every recipe."),
        no_cv: bool = typer.Option(False, "--no-cv", help="Skip cross-validation (ablations)."),
        pretrained: Optional[str] = typer.Option(None, help="Local .safetensors weights for network recipes."),
        output_dir: Optional[Path] = typer.Option(None, help="Where per-run JSON files go (default: "
                                                             "benchmarks/results/zoo or .../loso)."),
        leaderboard: Optional[Path] = typer.Option(None, help="Leaderboard Markdown (default: beside output-dir)."),
        force: bool = typer.Option(False, help="Rerun even when a result with the same configuration exists."),
        table_only: bool = typer.Option(False, "--table-only", help="loso: only rewrite LOSO.md from the result "
                                                                    "files in output-dir; train nothing."),
        seed: int = Seed,
        data_root: Optional[Path] = DataRoot,
    ) -> None:
        """Every recipe of the suite on one dataset: k-fold CV on train+val, held-out test, cross-dataset."""
        from leukodx.benchmarking.leaderboard import write_leaderboard
        from leukodx.benchmarking.protocol import run_recipe
        from leukodx.errors import InvalidInputError, LeukodxError
        from leukodx.zoo.recipes import BUDGETS, get_recipe, list_recipes

        if protocol == "loso":
            from leukodx.benchmarking.loso import rewrite_table, run_suite

            if table_only:
                console.print(f"leave-one-site-out table: {rewrite_table(output_dir or RESULTS / 'loso', quick)}")
                return
            _, table = run_suite(variant, output_dir or RESULTS / "loso", quick_run=quick, data_root=data_root,
                                 force=force, log=console.print, adapt_k=tuple(adapt_k or ()))
            console.print(f"leave-one-site-out table: {table}")
            return
        if protocol != "review":
            raise InvalidInputError(f"--protocol {protocol!r}: expected review or loso")
        if dataset is None:
            raise InvalidInputError("the review protocol needs --dataset NAME")
        output_dir = output_dir or RESULTS / "zoo"
        if suite != "review":
            raise InvalidInputError(f"--suite {suite!r}: the only suite is 'review'")
        names = recipe or list_recipes()
        recipes = [get_recipe(n) for n in names]
        budget = BUDGETS["quick" if quick else "full"]
        failed = []
        for r in recipes:
            try:
                run_recipe(r, dataset, budget, output_dir, cross=cross or [], seed=seed, augment=augment, stain=stain,
                           pretrained=pretrained, data_root=data_root, skip_cv=no_cv, force=force, log=console.print)
            except LeukodxError as exc:
                console.print(f"error: {r.name}: {exc}")
                failed.append(r.name)
            except Exception as exc:  # a bug in one recipe must not cost the suite's other runs
                if os.environ.get("LEUKODX_DEBUG"):
                    raise
                console.print(f"error: {r.name}: {type(exc).__name__}: {exc} (a bug; LEUKODX_DEBUG=1 shows the traceback)")
                failed.append(r.name)
        board = write_leaderboard(output_dir, leaderboard or Path(output_dir).parent / "LEADERBOARD.md")
        console.print(f"{len(recipes) - len(failed)}/{len(recipes)} recipes ran; leaderboard: {board}")
        if failed:
            raise typer.Exit(2)

    @app.command("zoo")
    def zoo() -> None:
        """The recipes: name, method, paper, claimed figure."""
        from rich.table import Table

        from leukodx.zoo.recipes import get_recipe, list_recipes

        table = Table("recipe", "kind", "method", "paper", "claimed")
        for name in list_recipes():
            r = get_recipe(name)
            table.add_row(name, r.kind, r.method, r.paper, r.claimed)
        Console(soft_wrap=True).print(table)
