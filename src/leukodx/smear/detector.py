"""Cell detector for smear fields: torchvision Faster R-CNN on a timm backbone with an FPN.

The detector sees fields at a fixed magnification, so a cell keeps the pixel size it had in
training (BCCD's 640 x 480 fields): a field up to ~4 Mpx goes through in one pass at that scale,
a larger one is cut into overlapping 640 x 480 tiles (``leukodx.smear.tiling``). ``input_scale``
shrinks the input before the network (0.5 halves compute; platelets stay ~20 px).

Weights are a safetensors file and a JSON card, like every leukodx model; no pickle is read. On a
CPU the network runs from its ONNX export through ONNX Runtime (``backend='auto'``): exported once
from the verified weights into the cache, trusted only after it answers probe fields as the PyTorch
network does, and from then on loaded without importing PyTorch (``leukodx.smear.detector_net``
holds the PyTorch side).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from leukodx.models.bundle import interpreting, save_bundle
from leukodx.smear.tiling import DEFAULT_OVERLAP, iter_tile_batches, merge_tile_detections

log = logging.getLogger(__name__)

DETECTION_CLASSES = ("RBC", "WBC", "Platelets")
BACKENDS = ("auto", "onnx", "torch")
#: bumped when the exported graph changes, so a cached export of an older graph is not reused
EXPORT_VERSION = 1
#: fields up to this size (about 2,000 x 2,000 px) are detected in one pass; larger ones are tiled
WHOLE_FIELD_PIXELS = 4_200_000


@dataclass(frozen=True)
class DetectorConfig:
    """Everything needed to rebuild the network; stored in the card."""

    backbone: str = "resnet18"           # any timm model with ``features_only`` support
    fpn_channels: int = 64
    classes: tuple[str, ...] = DETECTION_CLASSES
    tile: tuple[int, int] = (480, 640)    # (height, width) of one field at the training magnification
    input_scale: float = 0.5              # tile is resized by this before the network
    anchor_sizes: tuple[int, ...] = (16, 32, 64, 128, 256)  # in network pixels (after input_scale)
    max_detections: int = 300             # per tile: crowded fields hold far more than BCCD's ~30 cells
    score_threshold: float = 0.05         # kept for AP; the pipeline applies its own per-class thresholds

    @classmethod
    def from_dict(cls, d: dict) -> "DetectorConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for key in ("classes", "tile", "anchor_sizes"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class CellDetector:
    """A loaded detector: ``detect`` finds every cell of a field, ``detect_tiles`` runs the network on
    whole tiles. ``net`` is the PyTorch network (built from the bundle on first use when ONNX Runtime
    serves the detections); ``session`` the ONNX Runtime session, or None for the PyTorch backend."""

    net: object
    config: DetectorConfig
    card: dict = field(default_factory=dict)
    #: per-field OOD statistics of the backbone's deepest features (``leukodx.models.reliability``)
    reliability: object = None
    #: where the network runs ('cpu' or 'cuda'; ``load_detector(device=...)``)
    device: str = "cpu"
    session: object = None
    directory: Path | None = None
    #: sha256 of the ONNX file that runs (None for the PyTorch backend)
    onnx_sha256: str | None = None

    @property
    def classes(self) -> list[str]:
        return list(self.config.classes)

    @property
    def name(self) -> str:
        return self.card.get("name", "detector")

    @property
    def backend(self) -> str:
        return "onnx" if self.session is not None else "torch"

    def torch_net(self):
        """The PyTorch network, built from the verified bundle if it has not been yet."""
        if self.net is None:
            self.net = _load_net(self.directory)[0].to(self.device)
        return self.net

    def detect_tiles(self, tiles: list[np.ndarray]) -> list[dict]:
        """Per tile (each whole, at its own size): boxes (N, 4) xyxy in tile pixels, labels (N,) class
        indices, scores (N,), and ``features``: the backbone's deepest map averaged over the tile (for
        the OOD check; free, taken from the same pass)."""
        if not tiles:
            return []
        if self.session is None:
            from leukodx.smear.detector_net import detect_torch

            return detect_torch(self.torch_net().eval(), self.config, tiles, self.device)
        out = []
        for tile in tiles:
            image = np.ascontiguousarray(np.transpose(tile, (2, 0, 1)), dtype=np.float32) / np.float32(255.0)
            boxes, labels, scores, features = self.session.run({"image": image})
            out.append({"boxes": boxes.astype(np.float32), "labels": (labels - 1).astype(int),
                        "scores": scores.astype(np.float32), "features": features.astype(np.float64)})
        return out

    def field_ood(self, detections: dict) -> tuple[float | None, bool | None]:
        """(OOD score, flagged) of a field from its detections' features; (None, None) without statistics."""
        if self.reliability is None or detections.get("features") is None:
            return None, None
        score = float(self.reliability.ood_scores(np.asarray(detections["features"])[None])[0])
        return score, bool(score > self.reliability.threshold)

    def detect(self, rgb: np.ndarray, overlap: int = DEFAULT_OVERLAP, batch: int = 4) -> dict:
        """Every cell in a field of any size: boxes in field pixels, class indices, scores.

        A field up to ``WHOLE_FIELD_PIXELS`` goes through the network in one pass at the training
        magnification (no padding, no seams); a larger one is cut into overlapping tiles.
        """
        h, w = rgb.shape[:2]
        if h * w <= WHOLE_FIELD_PIXELS:
            return self.detect_tiles([rgb])[0]
        origins, per_tile = [], []
        for chunk, tiles in iter_tile_batches(rgb, self.config.tile, overlap, batch):
            origins.extend(chunk)
            per_tile.extend(self.detect_tiles(tiles))
        merged = merge_tile_detections(per_tile, origins, rgb.shape[:2], self.config.tile)
        return {**merged, "features": np.mean([t["features"] for t in per_tile], axis=0)}


def save_detector(directory: str | os.PathLike, net, config: DetectorConfig, card: dict) -> dict:
    """Weights + card, written atomically; the card gains the config, sha256 and size."""
    return save_bundle(directory, net, {**card, "task": "detection", "detector": config.as_dict(),
                                        "classes": list(config.classes)})


def _load_net(directory: Path):
    from leukodx.models.bundle import load_network
    from leukodx.smear.detector_net import build_detector

    return load_network(directory, "detection", lambda card: build_detector(DetectorConfig.from_dict(card["detector"])))


def load_detector(name_or_path: str | os.PathLike = "bccd-frcnn", device: str = "auto",
                  backend: str = "auto") -> CellDetector:
    """A bundled detector by name or a folder; the weights' sha256 is checked against the card.
    ``device``: auto (a CUDA GPU when present) | cpu | cuda (``leukodx.models.device``).
    ``backend``: auto (ONNX Runtime on a CPU, PyTorch on a GPU) | onnx | torch."""
    from leukodx.errors import InvalidInputError
    from leukodx.models.bundle import resolve_bundle, verify_bundle
    from leukodx.models.device import resolve_device
    from leukodx.models.reliability import load_reliability

    if backend not in BACKENDS:
        raise InvalidInputError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    where = resolve_device(device)
    if backend == "onnx" and where != "cpu":
        raise InvalidInputError("--backend onnx runs on the CPU; use --device cpu (or --backend torch on the GPU)")
    directory = resolve_bundle(name_or_path, "detection")
    card, _ = verify_bundle(directory, "detection")
    with interpreting(directory):
        config = DetectorConfig.from_dict(card["detector"])
        detector = CellDetector(None, config, card, load_reliability(directory, card), device=where,
                                directory=directory)
    use_onnx = backend == "onnx" or (backend == "auto" and where == "cpu" and _onnxruntime_available())
    if use_onnx:
        try:
            detector.session, detector.onnx_sha256 = _onnx_session(detector)
        except OSError as exc:  # the export cannot be written (a full disk): PyTorch serves, unless asked for ONNX
            if backend == "onnx":
                raise InvalidInputError(f"{detector.name}: its ONNX export cannot be written "
                                        f"({exc.strerror or type(exc).__name__})") from None
            log.warning("%s: ONNX export not written (%s); running on PyTorch", detector.name,
                        exc.strerror or type(exc).__name__)
            detector.torch_net()
    else:
        detector.torch_net()
    return detector


def _onnxruntime_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def export_path(card: dict) -> Path:
    """Where a detector's ONNX export is kept: the cache, or a private temporary folder when the cache
    cannot be written (the export is then made again by the next process)."""
    from leukodx.data.cache import writable_cache_dir

    folder = writable_cache_dir("onnx")
    if folder is None:
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="leukodx-onnx-"))
    return folder / f"{str(card.get('sha256', 'unsaved'))[:24]}-detector-v{EXPORT_VERSION}.onnx"


def _onnx_session(detector: CellDetector):
    """(session, sha256) of the detector's cached ONNX export (``onnx_backend.cached_session``): trusted
    once probe fields (random, of two sizes) come out as the verified PyTorch network finds them; a file
    the stamp does not vouch for is exported again rather than probed (a random field may hold no box
    that a changed box head would move)."""
    from leukodx import _atomic
    from leukodx.inference.onnx_backend import cached_session

    def export(path: Path) -> None:
        from leukodx.smear.detector_net import export_detector

        with _atomic.atomic_path(path) as tmp:
            export_detector(detector.torch_net(), detector.config, tmp)

    return cached_session(export_path(detector.card), detector.card.get("sha256"), export,
                          lambda session: _answers_like_torch(detector, session), detector.name,
                          "boxes, labels, scores and features of probe fields match PyTorch's", reuse_unvouched=False)


def _answers_like_torch(detector: CellDetector, session) -> bool:
    """Detections and features of probe fields (random, a new draw each time; a BCCD-sized one and one of
    odd size) agree with the PyTorch network's."""
    rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))
    h, w = detector.config.tile
    probes = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8), rng.integers(0, 256, (h // 2 + 37, w - 101, 3),
                                                                            dtype=np.uint8)]
    want = CellDetector(detector.torch_net(), detector.config, detector.card, device="cpu").detect_tiles(probes)
    got = CellDetector(None, detector.config, detector.card, session=session).detect_tiles(probes)
    return all(detections_agree(a, b) for a, b in zip(got, want))


def detections_agree(a: dict, b: dict, min_score: float = 0.3, atol_px: float = 0.5, score_tol: float = 1e-3) -> bool:
    """Two runs' detections of one field agree: features within float tolerance, and each box scored at
    least ``min_score`` in either run found in the other (same class, corners within ``atol_px``, score
    within ``score_tol``; a box just below ``min_score`` on one side still counts)."""
    if not np.allclose(a["features"], b["features"], rtol=1e-3, atol=1e-3):
        return False
    for x, y in ((a, b), (b, a)):
        for box, label, score in zip(x["boxes"], x["labels"], x["scores"]):
            if score < min_score:
                continue
            near = ((y["labels"] == label) & (np.abs(y["scores"] - score) <= score_tol)
                    & np.all(np.abs(y["boxes"] - box) <= atol_px, axis=1))
            if not near.any():
                return False
    return True


def fit_detector_reliability(detector: CellDetector, train_fields: list[np.ndarray], val_fields: list[np.ndarray],
                             fitted_on: dict | None = None):
    """Per-field OOD statistics: mean and covariance of the training fields' pooled backbone
    features, threshold at the validation fields' 95th percentile (few fields: shrunk covariance)."""
    from leukodx.models.reliability import fit_unlabelled

    train = np.stack([detector.detect(f)["features"] for f in train_fields])
    val = np.stack([detector.detect(f)["features"] for f in val_fields])
    return fit_unlabelled(train, val, {"train_fields": len(train), "val_fields": len(val), **(fitted_on or {})})


def refit_detector_reliability(name_or_path: str | os.PathLike = "bccd-frcnn", data_root=None,
                               fitted_on: dict | None = None) -> dict:
    """``leukodx reliability fit DETECTOR`` (and the end of ``train-detector``): statistics from the
    train / val fields its card lists, written into its bundle."""
    from leukodx._versions import provenance
    from leukodx.data.registry import load_dataset, load_fields
    from leukodx.errors import InvalidInputError
    from leukodx.models.bundle import resolve_bundle
    from leukodx.models.reliability import attach_reliability

    detector = load_detector(name_or_path, backend="torch")  # the statistics of the network as trained
    directory = resolve_bundle(name_or_path, "detection")
    data = detector.card.get("data", {})
    index = load_dataset(data.get("dataset", "bccd"), data_root)
    ids = {str(r.get("id", i)): i for i, r in enumerate(index.records)}
    missing = [t for t in data.get("train_ids", []) + data.get("val_ids", []) if t not in ids]
    if missing or not data.get("train_ids"):
        raise InvalidInputError(f"{directory}: its card's training fields are not all in {index.name} "
                                f"(e.g. {missing[0] if missing else 'no train_ids'})")
    train, _ = load_fields(index, [ids[t] for t in data["train_ids"]])
    val, _ = load_fields(index, [ids[t] for t in data["val_ids"]])
    rel = fit_detector_reliability(detector, train, val,
                                   fitted_on or {"refit": "weights unchanged", "provenance": provenance()})
    return attach_reliability(directory, detector.card, rel)
