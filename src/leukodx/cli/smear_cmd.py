"""Smear-field commands: train-detector, detect, evaluate-detection, train-segmenter, segment,
evaluate-segmentation."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from leukodx.cli.options import DataRoot, Device, OutputDir, Quiet, Resume, Seed, Threads
from rich.console import Console

from leukodx.stats import MAX_BOOT

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def register(app: typer.Typer) -> None:
    @app.command("train-detector")
    def train_detector_cmd(
        output: Path = typer.Option(..., "--output", "-o", help="Bundle folder to write (model.safetensors + card.json)."),
        dataset: str = typer.Option("bccd", "--dataset", "-d", help="Registered detection dataset."),
        backbone: str = typer.Option("resnet18", help="timm backbone (features_only)."),
        epochs: int = typer.Option(36),
        batch_size: int = typer.Option(4),
        lr: float = typer.Option(2e-3),
        input_scale: float = typer.Option(0.5, help="Tiles are resized by this before the network."),
        max_images: Optional[int] = typer.Option(None, help="Use at most this many train / val fields (quick runs)."),
        augment: str = typer.Option("scale-stain", help="'scale-stain': magnification x0.55-1.8 and stain / hue / grey "
                                                        "jitter; 'flip': flips and brightness only."),
        seed: int = Seed,
        name: Optional[str] = typer.Option(None, help="Model name in the card (default: output folder name)."),
        threads: Optional[int] = Threads,
        resume: bool = Resume,
        quiet: bool = Quiet,
        data_root: Optional[Path] = DataRoot,
    ) -> None:
        """Train the cell detector from scratch on train, select on val, report test; writes a bundle."""
        import torch

        from leukodx.smear.detector import DetectorConfig
        from leukodx.smear.train_detector import DetectorTraining, train_detector_bundle

        if threads:
            torch.set_num_threads(threads)
        card = train_detector_bundle(output, DetectorConfig(backbone=backbone, input_scale=input_scale),
                                     DetectorTraining(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                                                      max_images=max_images, augment=augment),
                                     dataset=dataset, name=name, data_root=data_root, resume=resume,
                                     show_progress=not quiet)
        test = card["metrics"]["test"]
        ap = ", ".join(f"{c} {v:.3f}" for c, v in test["ap50"].items() if v is not None)
        console.print(f"{card['name']}: test AP@0.5 {ap}; WBC count MAE {test['wbc_count_mae']:.3f}; written to {output}")

    @app.command("detect")
    def detect_cmd(
        inputs: list[Path] = typer.Argument(..., help="Smear-field images or folders of them (any size)."),
        output: Path = OutputDir("Folder for per-field JSON, overlays, cells.csv, summary.json."),
        detector: str = typer.Option("bccd-frcnn", help="Bundled detector name or bundle folder (bccd-frcnn-aug: "
                                                        "trained for other stains and magnifications, see "
                                                        "detector_shift.md)."),
        model: str = typer.Option("wbc-multisite", help="White-cell type classifier (bundled name or folder)."),
        um_per_px: Optional[float] = typer.Option(None, "--um-per-px", help="The camera's scale in um per pixel, "
                                                                         "when known (else measured per field)."),
        pixel_scale: Optional[float] = typer.Option(None, help="Image px per px at the detector's magnification "
                                                               "(BCCD: ~103 px per red cell); default: measured."),
        overlay: bool = typer.Option(True, help="Write an overlay JPEG per field."),
        resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run into the same folder (same "
                                                            "fields, detector, model and options): finished fields "
                                                            "are not redone."),
        device: str = Device,
        backend: str = typer.Option("auto", help="Detector backend: auto (ONNX Runtime on a CPU, PyTorch on a GPU) "
                                                 "| onnx | torch"),
    ) -> None:
        """Find every cell in smear fields, type the white cells, count them; bad files are reported and skipped.
        Streamed: each field's files are written as it finishes; cells.csv and summary.json at the end."""
        from leukodx.smear.report import analyze_fields

        summary = analyze_fields(inputs, output, detector=detector, model=model, pixel_scale=pixel_scale,
                                 um_per_px=um_per_px, overlay=overlay, log=lambda m: err.print(m), resume=resume,
                                 device=device, backend=backend)
        if not summary["n_fields"]:
            err.print(f"error: no readable field ({len(summary['errors'])} unreadable); only summary.json written to "
                      f"{output}")
            raise typer.Exit(2)
        counts = summary["summary"]["counts"]
        if counts is None:
            console.print(f"{summary['n_fields']} field(s), none counted; {len(summary['errors'])} unreadable; "
                          f"written to {output}")
        else:
            console.print(f"{summary['n_fields']} field(s): WBC {counts['WBC']}, RBC {counts['RBC']}, platelets "
                          f"{counts['Platelets']}; {len(summary['errors'])} unreadable; written to {output}")
        for flag in summary["summary"].get("flags", []):
            console.print(f"flag: {flag}")

    @app.command("evaluate-detection")
    def evaluate_detection_cmd(
        output: Path = typer.Option(..., "--output", "-o", help="JSON result file (written atomically)."),
        dataset: str = typer.Option("bccd", "--dataset", "-d"),
        split: str = typer.Option("test"),
        detector: str = typer.Option("bccd-frcnn", help="Bundled detector name or bundle folder (bccd-frcnn-aug: "
                                                        "trained for other stains and magnifications, see "
                                                        "detector_shift.md)."),
        method: str = typer.Option("detector", help="detector | classical (white cells only: colour threshold + watershed)."),
        bootstrap: int = typer.Option(0, min=0, max=MAX_BOOT, help="Bootstrap resamples over fields for 95% CIs (0: none)."),
        data_root: Optional[Path] = DataRoot,
    ) -> None:
        """AP@0.5 and AP@[0.5:0.95] per class and the per-field WBC count error on one split."""
        from leukodx import _atomic
        from leukodx.data.registry import load_dataset
        from leukodx.errors import InvalidInputError
        from leukodx.smear.evaluate import evaluate_classical, evaluate_detector

        index = load_dataset(dataset, data_root)
        if getattr(index, "records", None) is None:
            raise InvalidInputError(f"{dataset}: not a detection dataset (no boxes)")
        if method == "detector":
            from leukodx.smear.detector import load_detector

            result = evaluate_detector(load_detector(detector), index, split, bootstrap=bootstrap)
        elif method == "classical":
            result = evaluate_classical(index, split, bootstrap=bootstrap)
        else:
            raise InvalidInputError(f"--method {method!r}: expected detector or classical")
        _atomic.write_json(output, result)
        ap = ", ".join(f"{c} {v:.3f}" for c, v in result["ap50"].items() if v is not None)
        console.print(f"{dataset} {split} ({result['n_fields']} fields): AP@0.5 {ap}; WBC count MAE "
                      f"{result['wbc_count_mae']:.3f}; written to {output}")

    @app.command("train-segmenter")
    def train_segmenter_cmd(
        output: Path = typer.Option(..., "--output", "-o", help="Bundle folder to write."),
        dataset: list[str] = typer.Option(["wbc-seg-1"], "--dataset", "-d", help="wbc-seg-1 and/or wbc-seg-2 (train splits pooled)."),
        architecture: str = typer.Option("Unet", help="segmentation_models_pytorch architecture: Unet, UnetPlusPlus, DeepLabV3Plus..."),
        encoder: str = typer.Option("tu-resnet10t", help="Encoder (timm encoders as tu-NAME)."),
        size: int = typer.Option(128, help="Input side in px."),
        steps: int = typer.Option(600),
        batch_size: int = typer.Option(16),
        lr: float = typer.Option(3e-3),
        max_images: Optional[int] = typer.Option(None, help="Use at most this many train / val images per set (quick runs)."),
        seed: int = Seed,
        name: Optional[str] = typer.Option(None),
        threads: Optional[int] = Threads,
        resume: bool = Resume,
        quiet: bool = Quiet,
        data_root: Optional[Path] = DataRoot,
    ) -> None:
        """Train the nucleus / cytoplasm segmenter from scratch on the saved split; reports test and cross-set Dice."""
        import torch

        from leukodx.smear.segmentation import SegmenterConfig, SegmenterTraining, train_segmenter_bundle

        if threads:
            torch.set_num_threads(threads)
        card = train_segmenter_bundle(output, list(dataset),
                                      SegmenterConfig(architecture=architecture, encoder=encoder, size=size),
                                      SegmenterTraining(steps=steps, batch_size=batch_size, lr=lr, seed=seed),
                                      name=name, max_images=max_images, data_root=data_root, resume=resume,
                                      show_progress=not quiet)
        line = "; ".join(f"{ds} test nucleus Dice {m['nucleus']['dice']:.3f}" for ds, m in card["metrics"]["test"].items())
        console.print(f"{card['name']}: {line}; written to {output}")

    @app.command("segment")
    def segment_cmd(
        inputs: list[Path] = typer.Argument(..., help="Single white-cell images or folders of them."),
        output: Path = OutputDir("Folder for masks (PNG: 0 background, 128 cytoplasm, 255 nucleus) and areas.csv."),
        model: str = typer.Option("wbc-seg-unet", help="Bundled segmenter name or bundle folder."),
        device: str = Device,
    ) -> None:
        """Nucleus and cytoplasm masks of white-cell images; bad files are reported and skipped."""
        from leukodx.smear.segmentation import load_segmenter, segment_files

        done, errors, shift = segment_files(inputs, output, load_segmenter(model, device=device))
        for e in errors:
            err.print(f"error: {e['input']}: {e['error']}" if not e["error"].startswith(e["input"]) else f"error: {e['error']}")
        if not done:
            err.print(f"error: no image segmented ({len(errors)} unreadable, "
                      f"{'no image found' if not errors else 'none readable'}); nothing written")
            raise typer.Exit(2)
        console.print(f"{done} image(s) segmented, {len(errors)} unreadable; written to {output}")
        if shift["flagged"] is not False:
            console.print(f"shift: {shift['reason']}")

    @app.command("evaluate-segmentation")
    def evaluate_segmentation_cmd(
        output: Path = typer.Option(..., "--output", "-o", help="JSON result file (written atomically)."),
        dataset: str = typer.Option("wbc-seg-1", "--dataset", "-d", help="wbc-seg-1 or wbc-seg-2."),
        split: str = typer.Option("test", help="train | val | test | all"),
        model: str = typer.Option("wbc-seg-unet", help="Bundled segmenter name or bundle folder."),
        bootstrap: int = typer.Option(0, min=0, max=MAX_BOOT, help="Bootstrap resamples for 95% CIs (0: none)."),
        data_root: Optional[Path] = DataRoot,
    ) -> None:
        """Dice and IoU per structure (nucleus, cytoplasm, whole cell) on one split of one set."""
        from leukodx import _atomic
        from leukodx.smear.segmentation import evaluate_segmenter, load_segmenter

        result = evaluate_segmenter(load_segmenter(model), dataset, split, data_root, bootstrap=bootstrap)
        _atomic.write_json(output, result)
        console.print(f"{dataset} {split} ({result['n_images']} images): nucleus Dice {result['nucleus']['dice']:.3f}, "
                      f"cytoplasm Dice {result['cytoplasm']['dice']:.3f}; written to {output}")
