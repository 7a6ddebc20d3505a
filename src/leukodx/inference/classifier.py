"""``Classifier``: a loaded model bundle that predicts calibrated class probabilities.

    clf = leukodx.load_model("wbc-multisite")
    result = clf.predict(["cell1.jpg", array])   # paths, folders or (H, W[, C]) arrays
    result.rows[0]["top_class"], result.errors

Bad inputs in a batch are reported in ``result.errors`` and the rest are still predicted.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from leukodx._progress import track
from leukodx.data.cache import cache_dir
from leukodx.data.images import as_rgb_array, list_images, read_image, split_in_memory
from leukodx.errors import InvalidInputError, LeukodxError
from leukodx.models.architectures import create_network
from leukodx.models.bundle import load_network
from leukodx.preprocessing.transforms import Preprocess, normalize_batch
from leukodx.training.calibration import softmax

BACKENDS = ("auto", "torch", "onnx")
TASK = "image-classification"


def _build_classifier(card: dict) -> torch.nn.Module:
    return create_network(card["arch"], num_classes=len(card["classes"]))


@dataclass
class Predictions:
    """One row per readable input, and one error per unreadable input."""

    classes: list[str]
    rows: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)

    def to_pandas(self):
        """One row per input: input, top_class, probability, unsure, then ``p_<class>`` columns."""
        import pandas as pd

        return pd.DataFrame([{**{k: v for k, v in r.items() if k != "probabilities"},
                              **{f"p_{c}": r["probabilities"][c] for c in self.classes}} for r in self.rows])

    @property
    def probabilities(self) -> np.ndarray:
        return np.array([[r["probabilities"][c] for c in self.classes] for r in self.rows]).reshape(-1, len(self.classes))


class Classifier:
    def __init__(self, net: torch.nn.Module, card: dict, backend: str = "auto", bundle_dir: Path | None = None):
        if backend not in BACKENDS:
            raise InvalidInputError(f"backend {backend!r}: expected one of {BACKENDS}")
        self.net = net.eval()
        self.card = card
        self.bundle_dir = bundle_dir
        self.classes: list[str] = list(card["classes"])
        self.preprocess = Preprocess.from_dict(card["preprocess"])
        self.temperature = float(card.get("temperature", 1.0))
        self.abstain_below = float(card.get("abstain_below", 0.0))
        self._onnx = None
        self.backend = self._choose_backend(backend)

    @classmethod
    def load(cls, name_or_path: str | os.PathLike, backend: str = "auto") -> "Classifier":
        net, card, directory = load_network(name_or_path, TASK, _build_classifier)
        return cls(net, card, backend=backend, bundle_dir=directory)

    @property
    def name(self) -> str:
        return self.card.get("name", "model")

    # --- backends ---------------------------------------------------------------------------
    def _choose_backend(self, backend: str) -> str:
        from leukodx.inference.onnx_backend import onnxruntime_available

        if backend == "auto":
            # ONNX Runtime is the faster CPU path (benchmarks/results/inference_throughput.json)
            backend = "onnx" if (not torch.cuda.is_available() and onnxruntime_available()) else "torch"
        if backend == "onnx":
            self._onnx = self._onnx_session()
        return backend

    def onnx_path(self) -> Path:
        return cache_dir() / "onnx" / f"{self.card.get('sha256', 'unsaved')[:24]}-{self.preprocess.size}.onnx"

    def _onnx_session(self):
        from leukodx.inference.onnx_backend import OnnxSession, export_onnx

        path = self.onnx_path()
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            export_onnx(self.net, self.preprocess.size, path)
        try:
            return OnnxSession(path)
        except Exception as exc:  # a stale or damaged cache file: rebuild it once
            if isinstance(exc, LeukodxError):
                raise
            export_onnx(self.net, self.preprocess.size, path)
            return OnnxSession(path)

    # --- core ---------------------------------------------------------------------------------
    def logits(self, batch_uint8: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8, already preprocessed -> (N, K) raw logits."""
        x = normalize_batch(batch_uint8, self.preprocess)
        if self.backend == "onnx":
            return self._onnx(x)
        with torch.inference_mode():
            return self.net(torch.from_numpy(x)).float().numpy()

    def proba_from_logits(self, logits: np.ndarray) -> np.ndarray:
        return softmax(logits, self.temperature)

    def load_inputs(self, inputs: Iterable) -> tuple[list[str], np.ndarray, list[dict]]:
        """Read and preprocess paths / folders / arrays; returns names, stacked arrays, errors."""
        names, arrays, errors = [], [], []
        items: list = []
        for item in inputs:
            if isinstance(item, (str, os.PathLike)):
                try:
                    items.extend(list_images([item]))
                except LeukodxError as exc:
                    errors.append({"input": str(item), "error": str(exc)})
            else:
                try:
                    items.extend(split_in_memory(item, f"input[{len(items)}]"))
                except LeukodxError as exc:
                    errors.append({"input": f"input[{len(items)}]", "error": str(exc)})
        for i, item in enumerate(track(items, "decoding images")):
            name = str(item) if isinstance(item, Path) else f"array[{i}]"
            try:
                rgb = read_image(item) if isinstance(item, Path) else as_rgb_array(item, name)
                arrays.append(self.preprocess(rgb))
                names.append(name)
            except LeukodxError as exc:
                errors.append({"input": name, "error": str(exc)})
        size = self.preprocess.size
        stacked = np.stack(arrays) if arrays else np.zeros((0, size, size, 3), dtype=np.uint8)
        return names, stacked, errors

    def predict_arrays(self, batch_uint8: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Calibrated probabilities (N, K) for preprocessed uint8 arrays."""
        out = [self.logits(batch_uint8[s:s + batch_size]) for s in range(0, len(batch_uint8), batch_size)]
        if not out:
            return np.zeros((0, len(self.classes)))
        return self.proba_from_logits(np.concatenate(out))

    def predict(self, inputs: Sequence | str | os.PathLike | np.ndarray, batch_size: int = 64) -> Predictions:
        """Top class, its probability, every class probability and an ``unsure`` flag per input."""
        if (isinstance(inputs, (str, os.PathLike, np.ndarray)) or torch.is_tensor(inputs)
                or type(inputs).__module__.startswith("PIL.")):
            inputs = [inputs]
        names, arrays, errors = self.load_inputs(inputs)
        proba = self.predict_arrays(arrays, batch_size)
        rows = [self.prediction_row(name, p) for name, p in zip(names, proba)]
        return Predictions(classes=self.classes, rows=rows, errors=errors)

    def prediction_row(self, name: str, p: np.ndarray, decimals: int | None = None) -> dict:
        """One input's result: top class, its probability, ``unsure`` and every class probability."""
        def num(v) -> float:
            return round(float(v), decimals) if decimals is not None else float(v)

        top = int(p.argmax())
        return {"input": name, "top_class": self.classes[top], "probability": num(p[top]),
                "unsure": bool(p[top] < self.abstain_below),
                "probabilities": {c: num(v) for c, v in zip(self.classes, p)}}


#: the white-cell model used wherever none is named: multi-site, with blasts and smudge cells
DEFAULT_CELL_MODEL = "wbc-multisite"


def load_model(name_or_path: str | os.PathLike = DEFAULT_CELL_MODEL, backend: str = "auto") -> Classifier:
    """A bundled model by name (``wbc-multisite``, ``pbc-celltype``, ``all-stage``) or a bundle folder."""
    return Classifier.load(name_or_path, backend=backend)


def rows_to_csv(rows: list[dict], classes: list[str]) -> str:
    """Prediction rows as CSV text: input, top class, probability, unsure, one column per class."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["input", "top_class", "probability", "unsure"] + [f"p_{c}" for c in classes])
    for r in rows:
        writer.writerow([r["input"], r["top_class"], f"{r['probability']:.4f}", int(r["unsure"])]
                        + [f"{r['probabilities'][c]:.4f}" for c in classes])
    return buf.getvalue()
