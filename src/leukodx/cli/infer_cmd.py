"""``leukodx evaluate | predict | diagnose | export onnx | models``: verbs over the inference API."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from leukodx.cli.options import (Backend, Coverage, DataRoot, Device, OutputDir, OutputFile, Precision, Seed, Site, Tta,
                                 Zoom)
from rich.console import Console

from leukodx import _atomic
from leukodx.errors import InvalidInputError
from leukodx.stats import MAX_BOOT

console = Console(stderr=True, soft_wrap=True)


def _report_errors(errors: list[dict]) -> None:
    for e in errors:
        print(f"skipped: {e['error']}", file=sys.stderr)


def _coverage_for(clf, coverage: float | None) -> float:
    """The coverage to use: the default where none was asked for; an asked-for one must be valid and
    the model must carry conformal calibration scores."""
    from leukodx.models.reliability import DEFAULT_COVERAGE, check_coverage

    if coverage is None:
        return DEFAULT_COVERAGE
    check_coverage(coverage)
    if clf.reliability is None or not clf.reliability.has_conformal:
        raise InvalidInputError(f"--coverage {coverage}: {clf.name} has no conformal calibration in its bundle "
                                f"(add it with `leukodx reliability fit {clf.name}`, or leave --coverage out)")
    return coverage


def register(app: typer.Typer) -> None:
    models_app = typer.Typer(no_args_is_help=True, help="Bundled models: list and show their cards.")
    export_app = typer.Typer(no_args_is_help=True, help="Export a model for deployment.")
    app.add_typer(models_app, name="models")
    app.add_typer(export_app, name="export")

    @models_app.command("list")
    def models_list(task: Optional[str] = typer.Option(None, help="Only models of this task (image-classification, "
                                                                   "detection, segmentation, flow-cell-classification, "
                                                                   "expression-classification).")) -> None:
        """Every bundled model (any task) with its headline held-out figure."""
        from leukodx.hub import describe, list_models

        for name in list_models(task):
            d = describe(name)
            print(f"{name}\t{d['task']}\t{len(d['classes'])} classes\t{d['headline']}")

    @models_app.command("info")
    def models_info(name: str = typer.Argument(..., help="Bundled model name or bundle folder.")) -> None:
        """Print a model's card (JSON), without the training history."""
        from leukodx.models.bundle import read_card, resolve_bundle

        card = read_card(resolve_bundle(name))
        card.get("training", {}).pop("history", None)
        print(_atomic.dumps(card, indent=2))

    @app.command("evaluate")
    def evaluate(
        model: str = typer.Option("wbc-multisite", "--model", "-m", help="Bundled model name or bundle folder."),
        output: Path = OutputFile("Result JSON to write."),
        images: Optional[Path] = typer.Option(None, "--images", help="Folder of class sub-folders."),
        dataset: Optional[str] = typer.Option(None, "--dataset", help="Registered dataset (instead of --images)."),
        split: str = typer.Option("test", help="With --dataset: a side of the model's split (train/val/test) or 'all'."),
        split_file: Optional[Path] = typer.Option(None, help="With --dataset: split file (default: the bundled one)."),
        report: Optional[Path] = typer.Option(None, help="Folder for report.md/report.html with plots (default: beside OUTPUT)."),
        no_report: bool = typer.Option(False, "--no-report", help="Write only the JSON result."),
        n_boot: int = typer.Option(1000, min=1, max=MAX_BOOT, help="Bootstrap resamples for the 95% CIs."),
        seed: int = Seed,
        adapt_bn: bool = typer.Option(False, "--adapt-bn", help="Test-time batch-norm adaptation: re-estimate the "
                                                                "model's normalization statistics on these images "
                                                                "(one lab's, >= 32) before predicting (LOSO.md)."),
        site: Optional[str] = Site,
        zoom: Optional[str] = Zoom,
        tta: bool = Tta,
        backend: str = Backend,
        precision: str = Precision,
        device: str = Device,
        resume: bool = typer.Option(False, "--resume", help="Continue an interrupted evaluation of the same model "
                                                            "and images into the same OUTPUT without redoing "
                                                            "finished images."),
        data_root: Optional[Path] = DataRoot,
    ) -> None:
        """Accuracy, balanced accuracy, F1, per-class sensitivity/specificity/PPV/NPV, AUROC, ECE with 95% CIs."""
        from leukodx.evaluation.evaluate import evaluate_dataset, evaluate_folder
        from leukodx.evaluation.report import write_report
        from leukodx.inference.classifier import check_normalization, load_model

        if (images is None) == (dataset is None):
            raise InvalidInputError("give exactly one of --images DIR or --dataset NAME")
        check_normalization(adapt_bn, site)
        clf = load_model(model, backend=backend, precision=precision, device=device, site=site)
        streamed = {"rows_to": output, "resume": resume, "zoom": zoom, "tta": tta}
        if images is not None:
            result = evaluate_folder(clf, images, n_boot=n_boot, seed=seed, adapt_bn=adapt_bn, **streamed)
        else:
            result = evaluate_dataset(clf, dataset, split, split_file, data_root, n_boot=n_boot, seed=seed,
                                      adapt_bn=adapt_bn, **streamed)
        _report_errors(result["errors"])
        _atomic.write_json(output, result)
        if not no_report:
            write_report(result, report or output.with_suffix("").with_name(output.stem + "_report"))
        m = result["metrics"]
        ci95 = m["accuracy"]["ci95"]
        ci_text = f"[{ci95[0]:.4f}, {ci95[1]:.4f}]" if ci95 else "(no CI)"
        tta_note = ", averaged over 8 views (--tta)" if tta else ""
        console.print(f"{clf.name} on {result['n']} images{tta_note}: accuracy {result['accuracy']:.4f} "
                      f"{ci_text}, balanced {result['balanced_accuracy']:.4f}, macro-F1 "
                      f"{result['macro_f1']:.4f}; written to {output}")

    @app.command("predict")
    def predict(
        inputs: List[Path] = typer.Argument(..., help="Image files and/or folders."),
        model: str = typer.Option("wbc-multisite", "--model", "-m", help="Bundled model name or bundle folder."),
        output: Path = OutputFile("FILE.csv, FILE.jsonl, FILE.json or FILE.parquet"),
        adapt_bn: bool = typer.Option(False, "--adapt-bn", help="Test-time batch-norm adaptation: re-estimate the "
                                                                "model's normalization statistics on these images "
                                                                "(one lab's, >= 32) before predicting (LOSO.md). "
                                                                "Reads every image first (not streamed)."),
        site: Optional[str] = Site,
        zoom: Optional[str] = Zoom,
        tta: bool = Tta,
        coverage: Optional[float] = Coverage,
        resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run of the same model over the "
                                                            "same inputs (OUTPUT.partial.jsonl): finished inputs are "
                                                            "not redone."),
        backend: str = Backend,
        precision: str = Precision,
        device: str = Device,
        ray: Optional[str] = typer.Option(None, "--ray", help="Spread the inputs over a Ray cluster: 'local' (a Ray "
                                                               "started on this machine), 'auto' (the cluster this "
                                                               "machine belongs to) or ray://HOST:10001. Needs "
                                                               "leukodx[distributed]."),
        ray_workers: int = typer.Option(2, "--ray-workers", min=1, max=4096, help="Model-holding Ray actors."),
    ) -> None:
        """One row per image: top class, its probability, every class probability, whether it looks like
        the model's training images (ood), a conformal prediction set; and a shift verdict for the batch.
        Streamed: rows are written as they are produced (OUTPUT.partial.jsonl) and the output is written
        when every input is done; memory does not grow with the number of inputs."""
        import numpy as np

        from leukodx._rowfile import RowFile, check_output, inputs_digest
        from leukodx.errors import Interrupted
        from leukodx.inference.classifier import (check_normalization, expand_inputs, load_model, row_cells,
                                                  row_columns)
        from leukodx.preprocessing.transforms import TTA

        check_output(output)
        if ray is not None and adapt_bn:
            raise InvalidInputError("--ray and --adapt-bn: the adaptation needs every image in one process")
        if ray is not None and site is not None:
            raise InvalidInputError("--ray and --site: the Ray workers run the bundle's own statistics")
        if ray is not None and zoom is not None:
            raise InvalidInputError("--ray and --zoom: the Ray workers read the images at the model's own scale")
        if ray is not None and tta:
            raise InvalidInputError("--ray and --tta: the Ray workers read each image once, as it is")
        check_normalization(adapt_bn, site)
        if ray is not None:  # before any output exists: a missing extra or an unreachable cluster is one line
            from leukodx.inference.distributed import connect

            connect(ray, ray_workers)
        clf = load_model(model, backend=backend, precision=precision, device=device, site=site)
        coverage = _coverage_for(clf, coverage)
        items, list_errors = expand_inputs(inputs)
        _report_errors(list_errors)
        if not items:
            raise InvalidInputError(f"no image found in {', '.join(map(str, inputs))}")
        clf.set_zoom(zoom, items)
        rowfile = RowFile(output, {"model": clf.name, "model_sha256": clf.card.get("sha256"),
                                   "inputs_sha256": inputs_digest(n for n, _ in items), "n_inputs": len(items),
                                   "coverage": coverage, "adapt_bn": adapt_bn, "site": clf.site, "tta": tta,
                                   "zoom": clf.preprocess.zoom, "precision": clf.precision},
                          resume=resume)
        done = rowfile.start()
        todo = items.without(done) if done else items
        n_rows, n_errors = len(done), 0
        try:
            from leukodx._progress import track
            from leukodx.inference.classifier import CHUNK

            if ray is not None:
                from leukodx.inference.distributed import RAY_BATCH, ray_stream

                chunks = ray_stream(model, todo, coverage, backend, precision, ray, ray_workers)
                total = -(-len(todo) // RAY_BATCH)
            else:
                # AdaBN: the statistics of every input (a resumed run's finished ones too), read once first
                runner, adapted = clf.runners(items, adapt_bn and bool(todo), tta)
                chunks, total = runner.stream(todo, coverage, adapted=adapted), -(-len(todo) // CHUNK)
            for part in track(chunks, "predicting", total=total):
                scores = part.ood_scores if part.ood_scores is not None else [None] * len(part.rows)
                rowfile.append(part.rows, part.errors, [{"ood_score": s} for s in scores])
                _report_errors(part.errors)
                n_rows, n_errors = n_rows + len(part.rows), n_errors + len(part.errors)
        except KeyboardInterrupt:
            rowfile.close()
            raise Interrupted(n_rows, len(items), "images", f"{rowfile.partial} (rerun with --resume to finish)") from None
        if not n_rows:
            rowfile.close()
            rowfile.partial.unlink(missing_ok=True)
            raise InvalidInputError(f"no image could be processed ({n_errors} failed)")
        # the unrounded scores kept beside the rows (the rows show 3 decimals)
        scores = np.fromiter(rowfile.entries("ood_score"), dtype=float) if clf.reliability is not None else None
        shift = clf.shift_from(scores)
        header = {"model": clf.name, "model_sha256": clf.card.get("sha256"), "backend": clf.backend,
                  "precision": clf.precision,
                  "onnx_sha256": clf.onnx_sha256, "site_statistics": clf.site, "zoom": clf.zoom,
                  "test_time_augmentation": dict(TTA) if tta else None,
                  "classes": clf.classes, "coverage": coverage, "shift": shift}
        rowfile.finish(header, row_columns(clf.classes), lambda r: row_cells(r, clf.classes))
        resumed = f" ({rowfile.resumed} from the interrupted run)" if rowfile.resumed else ""
        console.print(f"{n_rows} image(s) predicted{resumed}, {n_errors + len(list_errors)} skipped; written to {output}")
        if shift.get("flagged") is not False:
            console.print(f"shift: {shift['reason']}")

    @app.command("diagnose")
    def diagnose_cmd(
        inputs: List[Path] = typer.Argument(..., help="A case: a folder (or files) of cell images or smear fields."),
        output: Path = OutputDir("Folder for summary.json, predictions.csv, report.html."),
        kind: str = typer.Option("auto", help="cells | fields | auto (recognised from the images)"),
        model: Optional[str] = typer.Option(None, "--model", "-m", help="Override the model for this kind."),
        backend: str = Backend,
        smear: bool = typer.Option(True, help="For smear fields, also detect and count every cell (leukodx detect)."),
        adapt_bn: bool = typer.Option(False, "--adapt-bn", help="Test-time batch-norm adaptation: re-estimate the "
                                                                "model's normalization statistics on these images "
                                                                "(one lab's, >= 32) before predicting (LOSO.md)."),
        um_per_px: Optional[float] = typer.Option(None, "--um-per-px", help="Smear fields: the camera's scale in um "
                                                                         "per pixel, when known (else measured)."),
        pixel_scale: Optional[float] = typer.Option(None, help="Smear fields: px per px at the detector's "
                                                               "magnification (default: measured per field)."),
        coverage: Optional[float] = Coverage,
        site: Optional[str] = Site,
        zoom: Optional[str] = Zoom,
        tta: bool = Tta,
        explain: bool = typer.Option(False, "--explain", help="Add a Grad-CAM heatmap of each image's top class to "
                                                              "the report."),
        resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run into the same folder (same "
                                                            "images, models and options) without redoing finished "
                                                            "images."),
    ) -> None:
        """The main job: per-image results, a case summary with flags, and an HTML report."""
        from leukodx.diagnosis.case import diagnose

        if coverage is not None:
            from leukodx.models.reliability import check_coverage

            check_coverage(coverage)
            if model is not None:
                from leukodx.inference.classifier import load_model

                _coverage_for(load_model(model, backend="torch"), coverage)
        result = diagnose(inputs, kind=kind, model=model, backend=backend, smear=smear, pixel_scale=pixel_scale,
                          um_per_px=um_per_px, adapt_bn=adapt_bn, explain=explain, out_dir=output, resume=resume,
                          site=site, zoom=zoom, tta=tta,
                          **({"coverage": coverage} if coverage is not None else {}))
        _report_errors(result["errors"])
        s = result["summary"]
        if result["kind"] == "cells":
            headline = ", ".join(f"{c} {p}%" for c, p in s["differential_percent"].items())
        else:
            headline = f"case call {s['case_call']} " + ", ".join(f"{c} {p:.2f}" for c, p in s["stage_probabilities"].items())
        console.print(f"{result['n_images']} {result['kind']} analysed: {headline}")
        if "smear" in result:
            sm = result["smear"]["summary"]
            if sm["counts"] is None:
                console.print(f"cells not counted: no field's scale could be trusted ({sm['fields_not_counted']} "
                              "field(s); see the flags)")
            else:
                counts = ", ".join(f"{k} {v}" for k, v in sm["counts"].items())
                diff = ", ".join(f"{c} {p}%" for c, p in sm["differential_percent"].items() if p)
                console.print(f"cells found in {sm['fields_counted']} field(s) at median pixel scale "
                              f"{sm['pixel_scale_median']} ({', '.join(sm['scale_sources'])}): {counts}; "
                              f"differential: {diff or 'no typed white cell'}")
        for flag in result["flags"]:
            console.print(f"flag: {flag}")
        console.print(f"report: {result['outputs']['report']}")

    @app.command("adapt")
    def adapt_cmd(
        model: str = typer.Option("wbc-multisite", "--model", "-m", help="Bundled cell classifier or bundle folder to adapt."),
        images: Path = typer.Option(..., "--images", help="Folder of class sub-folders: k labelled cells per class "
                                                          "from the lab's own scanner."),
        output: Path = OutputDir("Folder for the adapted bundle."),
        epochs: Optional[int] = typer.Option(None, help="Fine-tuning epochs (default: the recipe's)."),
        lr: Optional[float] = typer.Option(None, help="Peak learning rate of the fine-tuning (default: the recipe's)."),
        seed: int = Seed,
        name: Optional[str] = typer.Option(None, help="Name in the new card (default: the output folder name)."),
        zoom: Optional[str] = Zoom,
        data_root: Optional[Path] = DataRoot,
    ) -> None:
        """Few-shot site adaptation: fine-tune on a few labelled cells per class, write a bundle that records its
        parent. With --zoom the new bundle reads every cell at that magnification (its card keeps it)."""
        from leukodx.inference.adapt import adapt

        card = adapt(model, images, output, epochs=epochs, lr=lr, seed=seed, name=name, data_root=data_root,
                     zoom=zoom)
        cv, parent = card["metrics"]["adaptation_cv"], card["metrics"]["parent_on_adaptation_images"]
        console.print(f"{card['name']} (from {card['parent']['name']}): cross-validated accuracy on the "
                      f"{cv['n']} adaptation images {cv['accuracy']['value']:.3f} (parent: "
                      f"{parent['accuracy']['value']:.3f}); written to {output}")

    reliability_app = typer.Typer(no_args_is_help=True, help="A classifier's out-of-distribution statistics and "
                                                             "conformal calibration.")
    app.add_typer(reliability_app, name="reliability")

    @reliability_app.command("fit")
    def reliability_fit(
        model: str = typer.Argument(..., help="Bundled image classifier or bundle folder (written in place)."),
        data_root: Optional[Path] = DataRoot,
    ) -> None:
        """Fit the OOD statistics (training data) and conformal scores (validation images) of a bundle
        made without them, from the data and split its card names; the weights are not touched.
        Image classifiers, smear detectors (per field), segmenters and expression models."""
        from leukodx.models.bundle import read_card, resolve_bundle

        task = read_card(resolve_bundle(model))["task"]
        if task == "image-classification":
            from leukodx.training.recipe import refit_reliability

            card = refit_reliability(model, data_root)
        elif task == "expression-classification":
            from leukodx.omics.bundle import refit_expression_reliability

            card = refit_expression_reliability(model, data_root)
        elif task == "detection":
            from leukodx.smear.detector import refit_detector_reliability

            card = refit_detector_reliability(model, data_root)
        elif task == "segmentation":
            from leukodx.smear.segmentation import refit_segmenter_reliability

            card = refit_segmenter_reliability(model, data_root)
        else:
            raise InvalidInputError(f"{model}: a {task} model; reliability statistics are fitted for image "
                                    "classifiers, detectors, segmenters and expression models (flow read-outs check their own "
                                    "events against the training range)")
        r = card["reliability"]
        console.print(f"{card['name']}: OOD threshold {r['threshold']:.2f} ({r['false_alarm']:.0%} of held-out "
                      f"samples above it), {r['n_conformal']} conformal scores; written to its bundle")

    @export_app.command("onnx")
    def export_onnx_cmd(
        model: str = typer.Option(..., "--model", "-m"),
        output: Optional[Path] = OutputFile("FILE.onnx (with --int8: a copy of the int8 file)", required=False),
        check: bool = typer.Option(True, help="Compare ONNX Runtime logits with PyTorch on random input."),
        int8: bool = typer.Option(False, "--int8", help="Quantize to int8 into the bundle (model.int8.onnx), calibrated "
                                                        "on its training images, and record in its card the test "
                                                        "accuracy of both precisions; int8 becomes the model's CPU "
                                                        "default where it loses at most 0.5 point."),
        data_root: Optional[Path] = DataRoot,
    ) -> None:
        """Export to ONNX (dynamic batch) and check parity with PyTorch; or, with --int8, quantize."""
        from leukodx.inference.classifier import load_model

        if int8:
            import shutil

            from leukodx.inference.quantize import INT8_FILE, quantize_bundle
            from leukodx.models.bundle import resolve_bundle

            record = quantize_bundle(model, data_root)
            t = record["test"]
            console.print(f"{model}: int8 test accuracy {t['accuracy_int8']:.4f} vs fp32 {t['accuracy_fp32']:.4f} "
                          f"({t['drop_points']:+.2f} points lost, n={t['n']}); CPU default: "
                          f"{'int8' if record['default_on_cpu'] else 'fp32'}")
            if output is not None:
                shutil.copyfile(resolve_bundle(model) / INT8_FILE, output)
                console.print(f"written to {output}")
            return
        if output is None:
            raise InvalidInputError("--output FILE.onnx is needed (or --int8 to quantize into the bundle)")
        from leukodx.inference.onnx_backend import export_checked

        diff = export_checked(load_model(model, backend="torch"), output, check=check)
        if diff is not None:
            console.print(f"max abs logit difference ONNX Runtime vs PyTorch: {diff:.2e}")
        console.print(f"written to {output}")
