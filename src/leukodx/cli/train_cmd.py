"""``leukodx train``: one verb over ``leukodx.training.recipe.train_from_dataset``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from leukodx.cli.options import DataRoot, Quiet, Resume, Seed, Threads
from rich.console import Console

console = Console(soft_wrap=True)


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train(
        dataset: list[str] = typer.Option(..., "--dataset", "-d", help="Registered dataset name or folder of class "
                                          "sub-folders; repeat it (-d pbc -d deepapl ...) for one multi-site model "
                                          "on the shared vocabulary's classes."),
        output: Path = typer.Option(..., "--output", "-o", help="Bundle folder to write (model.safetensors + card.json)."),
        arch: str = typer.Option("regnetx_002", help="timm architecture."),
        size: int = typer.Option(64, help="Input side in pixels."),
        epochs: int = typer.Option(20),
        batch_size: int = typer.Option(64),
        lr: float = typer.Option(4e-3, help="Peak learning rate of the one-cycle schedule."),
        weight_decay: float = typer.Option(0.05),
        label_smoothing: float = typer.Option(0.1),
        imbalance: str = typer.Option("weights", help="weights | sampler | none"),
        patience: int = typer.Option(6, help="Early-stopping patience in epochs."),
        seed: int = Seed,
        split: Optional[Path] = typer.Option(None, help="Split file (default: the bundled split, else a new one)."),
        stain: str = typer.Option("none", help="Colour normalization: none | reinhard | macenko | levels."),
        resize: str = typer.Option("resize", help="resize | center-crop | pad | cell-crop"),
        augment: str = typer.Option("all", help="all | light | none | flip | rotation | color | stain | scale-stain"),
        pretrained: Optional[Path] = typer.Option(None, help="Local .safetensors backbone weights."),
        max_per_class: Optional[int] = typer.Option(None, help="Use at most this many training images per class (quick runs)."),
        name: Optional[str] = typer.Option(None, help="Model name in the card (default: output folder name)."),
        min_class_count: int = typer.Option(50, help="Multi-site: keep a class when the sites have this many "
                                                      "training cells of it."),
        loso: Optional[Path] = typer.Option(None, help="Multi-site: a leave-one-site-out result of this recipe "
                                                       "(benchmarks/results/loso/*.json) to list in the card."),
        site_batches: bool = typer.Option(False, "--site-batches", help="Multi-site: one site per training batch, "
                                          "so batch norm learns each site's statistics; the bundle keeps them "
                                          "(predict --site NAME) and runs with them pooled otherwise."),
        refit_head: str = typer.Option("none", "--refit-head", help="After training, re-fit the last layer (a "
                                       "logistic regression) on the training images' features, then calibrate: "
                                       "none | clean (the images as they are) | clean+augmented (and one "
                                       "augmented copy of each)."),
        resume: bool = Resume,
        threads: Optional[int] = Threads,
        data_root: Optional[Path] = DataRoot,
        quiet: bool = Quiet,
    ) -> None:
        """Train an image classifier on a saved split; writes a calibrated, evaluated bundle."""
        import torch

        from leukodx.errors import InvalidInputError

        from leukodx.preprocessing.augment import augment_preset
        from leukodx.preprocessing.transforms import Preprocess
        from leukodx.training.recipe import train_from_dataset, train_multisite
        from leukodx.training.trainer import TrainConfig

        if threads:
            torch.set_num_threads(threads)
        config = TrainConfig(
            arch=arch, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
            label_smoothing=label_smoothing, imbalance=imbalance, patience=patience, seed=seed,
            pretrained=str(pretrained) if pretrained else None,
            preprocess=Preprocess(size=size, resize=resize, stain=stain),
            augment=augment_preset(augment), site_batches=site_batches, refit_head=refit_head,
        )
        if site_batches and len(dataset) < 2:
            raise InvalidInputError("--site-batches: give two or more sites (-d pbc -d deepapl ...)")
        if len(dataset) > 1:
            if split:
                raise InvalidInputError("--split: a multi-site model uses each site's saved split")
            card = train_multisite(dataset, output, config, name=name, data_root=data_root,
                                   max_per_class=max_per_class, min_class_count=min_class_count, loso_result=loso,
                                   resume=resume, show_progress=not quiet, log=console.print)
        else:
            card = train_from_dataset(dataset[0], output, config, name=name, split_path=split, data_root=data_root,
                                      max_per_class=max_per_class, resume=resume, show_progress=not quiet)
        test = card["metrics"]["test"]
        console.print(
            f"{card['name']}: test accuracy {test['accuracy']['value']:.4f} "
            f"[{test['accuracy']['ci95'][0]:.4f}, {test['accuracy']['ci95'][1]:.4f}], macro-F1 "
            f"{test['macro_f1']['value']:.4f}, ECE {test['ece']['value']:.4f}; "
            f"{card['training']['seconds']:.0f} s; written to {output}"
        )

    @app.command("train-apl")
    def train_apl(
        output: Path = typer.Option(..., "--output", "-o", help="Bundle folder to write (arrays + card.json)."),
        model: str = typer.Option("wbc-multisite", "--model", "-m", help="Cell model whose outputs (probabilities, "
                                                                         "features) the patient model reads."),
        repeats: int = typer.Option(20, help="Repeats of the patient-level 5-fold cross-validation."),
        method: str = typer.Option("instance", help="instance: a regression over each leukemic-looking cell, "
                                                    "pooled per patient; bag: one vector per patient (the cell "
                                                    "mix and its leukemic cells' mean features)."),
        name: Optional[str] = typer.Option(None, help="Model name in the card (default: output folder name)."),
        seed: int = Seed,
        threads: Optional[int] = Threads,
        data_root: Optional[Path] = DataRoot,
    ) -> None:
        """APL vs other AML for a patient from all their cells (deepapl discovery cohort), with patient-level CV."""
        import torch

        from leukodx.errors import InvalidInputError
        from leukodx.inference.classifier import load_model
        from leukodx.inference.patient import train_apl_model

        if repeats < 1:
            raise InvalidInputError(f"--repeats {repeats}: at least 1")
        if threads:
            torch.set_num_threads(threads)
        clf = load_model(model)
        patient_model, _ = train_apl_model(clf, data_root, repeats=repeats, seed=seed, name=name or output.name,
                                           method=method)
        card = patient_model.save(output)
        m = card["metrics"]
        for key, label in (("auroc_all_patients", "all patients"), ("auroc_unseen_patients", "patients unseen by the cell model")):
            a = m[key]
            console.print(f"APL vs AML AUROC, {label}: {a['value']:.3f} [{a['ci95'][0]:.3f}, {a['ci95'][1]:.3f}] "
                          f"(n={a['n_patients']}, {a['n_apl']} APL)")
        console.print(f"written to {output}")
