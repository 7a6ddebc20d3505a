"""Options shared by many verbs, defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

DataRoot: Optional[Path] = typer.Option(None, "--data-root",
                                        help="Data folder (default: $LEUKODX_DATA, else ../shared/data).")
Threads: Optional[int] = typer.Option(None, help="CPU threads for torch.")
Quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar.")
Resume: bool = typer.Option(False, help="Continue from the last checkpoint in OUTPUT/work.")
Seed: int = typer.Option(0, min=0, max=2 ** 32 - 1, help="Random seed (splits, initialization, batches, resamples).")
Backend = typer.Option("auto", help="auto (ONNX Runtime on CPU when installed) | torch | onnx")
Device = typer.Option("auto", "--device", help="auto (a CUDA GPU when present, with PyTorch) | cpu | cuda")
Precision = typer.Option("auto", "--precision", help="auto (int8 where the model's card measured it within 0.5 "
                                                      "point of fp32) | fp32 | int8 (ONNX Runtime)")
Coverage: Optional[float] = typer.Option(None, "--coverage", help="Conformal prediction sets hold the true class "
                                                                  "this often on images like the model's own "
                                                                  "(0 < coverage < 1; default 0.90).")


def _output_file(value):
    from leukodx._atomic import check_output_file

    return value if value is None else check_output_file(value)


def _output_dir(value):
    from leukodx._atomic import check_output_dir

    return value if value is None else check_output_dir(value)


def OutputFile(help: str, required: bool = True):  # noqa: N802 - reads like the other option constants
    """``--output/-o FILE``, refused before any work when it cannot be written (``required=False``:
    an optional output, default none)."""
    return typer.Option(... if required else None, "--output", "-o", help=help, callback=_output_file)


def OutputDir(help: str):  # noqa: N802
    """``--output/-o DIR``, refused before any work when it cannot be written."""
    return typer.Option(..., "--output", "-o", help=help, callback=_output_dir)


Site: Optional[str] = typer.Option(None, "--site", help="A model trained with --site-batches keeps each training "
                                                        "site's batch-norm statistics (`leukodx models info MODEL` "
                                                        "lists them): a site's name runs every image with that "
                                                        "site's; auto (its default) each image with those of the "
                                                        "site it looks like, the pooled ones if it is OOD; pooled "
                                                        "always the pooled ones.")


def _zoom(value):
    if value is None:
        return None
    from leukodx.errors import InvalidInputError
    from leukodx.inference.classifier import AUTO_ZOOM
    from leukodx.preprocessing.transforms import ZOOM_RANGE

    if value.strip().lower() == AUTO_ZOOM:
        return AUTO_ZOOM
    try:
        zoom = float(value)
    except ValueError:
        raise InvalidInputError(f"--zoom {value!r}: expected auto or a number") from None
    if not ZOOM_RANGE[0] <= zoom <= ZOOM_RANGE[1]:
        raise InvalidInputError(f"--zoom {value}: expected auto or a number from {ZOOM_RANGE[0]} to {ZOOM_RANGE[1]}")
    return zoom


Zoom = typer.Option(None, "--zoom", callback=_zoom, metavar="auto|FACTOR",
                    help="Magnify every image about its centre by FACTOR before the model reads it (0.4-2.5; "
                         "< 1 shows the cells smaller), for a lab whose optics or crop size show cells larger or "
                         "smaller than the model's training images did; auto: the zoom at which the model reads "
                         "these images (one lab's, >= 32; a sample of up to 512) with the most information, no "
                         "labels used (LOSO.md, scale-select). Default: the model's own (1, as they are, for "
                         "the shipped models; a bundle made by adapt --zoom keeps its zoom).")


Tta: bool = typer.Option(False, "--tta", help="Test-time augmentation: average each image's call over its 8 "
                                              "flips and quarter turns (8 forward passes each; accuracy, "
                                              "calibration and coverage with it: benchmarks/results/tta.md).")
