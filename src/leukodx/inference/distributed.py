"""Scale-out on an existing engine: a large input list spread over a Ray cluster with Ray Data
(``map_batches`` with actors that each load the model once), rows streamed back in input order, so a
run on Ray writes exactly what the single-process run writes. ``address`` None starts a local Ray
(this machine's cores); ``"auto"`` or ``"ray://HOST:10001"`` joins a running cluster. Optional:
``pip install 'leukodx[distributed]'``."""

from __future__ import annotations

import json
import os
from typing import Iterator, Sequence

import numpy as np

from leukodx.errors import InvalidInputError

#: inputs per Ray batch (one actor call)
RAY_BATCH = 256


def connect(address: str | None, workers: int) -> None:
    """``ray.init`` once, or one line saying what is missing or unreachable."""
    try:
        import ray
    except ImportError:
        raise InvalidInputError("--ray needs Ray: pip install 'leukodx[distributed]'") from None
    if ray.is_initialized():
        return
    import warnings

    warnings.filterwarnings("ignore", module=r"ray\..*")
    try:
        if address in (None, "", "local"):
            ray.init(num_cpus=max(workers, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        else:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except Exception as exc:  # noqa: BLE001 - ConnectionError, RuntimeError, ValueError: all one line for the user
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InvalidInputError(f"--ray {address}: cannot reach a Ray cluster there ({first[:200]})") from None


def _quiet(prefix: str) -> None:
    """Ray's own plan and progress lines off (leukodx reports progress itself); errors still show."""
    import logging

    import ray.data  # noqa: F401 - configures its loggers on import: quieten them after

    for name in [prefix, *[n for n in logging.root.manager.loggerDict if n.startswith(prefix + ".")]]:
        logging.getLogger(name).setLevel(logging.ERROR)


class _Predictor:
    """A Ray actor: loads the model once, then decodes and scores a batch of paths."""

    def __init__(self, model: str, backend: str, precision: str, coverage: float):
        from leukodx.inference.classifier import load_model

        self.clf = load_model(model, backend=backend, precision=precision)
        self.coverage = coverage

    def __call__(self, batch: dict) -> dict:
        items = [(str(name), str(path)) for name, path in zip(batch["name"], batch["path"])]
        names, arrays, errors = self.clf.prepare(items)
        scored = self.clf.score_arrays(arrays)
        rows = self.clf.rows_for(names, scored, self.coverage)
        scores = scored.ood_scores if scored.ood_scores is not None else [None] * len(rows)
        by_name = {row["input"]: json.dumps({"row": row, "ood_score": None if s is None else float(s)})
                   for row, s in zip(rows, scores)}
        by_name.update({e["input"]: json.dumps({"error": e}) for e in errors})
        return {"i": batch["i"], "result": np.asarray([by_name[name] for name, _ in items], dtype=object)}


def ray_stream(model: str, items: Sequence[tuple[str, str]], coverage: float, backend: str = "auto",
               precision: str = "auto", address: str | None = None, workers: int = 2) -> Iterator:
    """``Classifier.stream`` on Ray: ``Chunk``s in input order, computed by ``workers`` actors."""
    import ray

    from leukodx.inference.classifier import Chunk

    connect(address, workers)
    _quiet("ray")
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # rows come back in input order
    context.enable_progress_bars = False
    dataset = ray.data.from_items([{"i": k, "name": n, "path": str(p)} for k, (n, p) in enumerate(items)],
                                  override_num_blocks=max(workers, min(-(-len(items) // RAY_BATCH), 4 * workers)))
    results = dataset.map_batches(_Predictor, fn_constructor_kwargs={"model": str(model), "backend": backend,
                                                                     "precision": precision, "coverage": coverage},
                                  batch_size=RAY_BATCH, compute=ray.data.ActorPoolStrategy(size=workers),
                                  batch_format="numpy", num_cpus=1)
    for batch in results.iter_batches(batch_size=RAY_BATCH, batch_format="numpy"):
        rows, errors, scores = [], [], []
        for text in batch["result"]:
            entry = json.loads(text)
            if "row" in entry:
                rows.append(entry["row"])
                scores.append(entry["ood_score"])
            else:
                errors.append(entry["error"])
        yield Chunk(rows, errors, None if not rows or scores[0] is None else np.asarray(scores, dtype=float))
