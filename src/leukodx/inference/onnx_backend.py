"""ONNX export of a classifier network and an ONNX Runtime session to run it on CPU."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from leukodx import _atomic
from leukodx.errors import LeukodxError
from leukodx.models.reliability import DEFAULT_STYLE_SOURCE

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def export_onnx(net: torch.nn.Module, input_size: int, path: str | os.PathLike, opset: int = 17,
                features: bool = False, style_source: str = DEFAULT_STYLE_SOURCE) -> Path:
    """Write ``net`` as ONNX with a dynamic batch axis: input ``image`` (N, 3, S, S), output ``logits``
    (and, with ``features``, ``features``: the reliability checks' features, ``models.features.WithFeatures``
    with the style read where ``style_source`` says)."""
    import torch

    from leukodx.models.features import WithFeatures

    path = Path(path)
    net = (WithFeatures(net, style_source) if features else net).eval()
    outputs = ["logits", "features"] if features else ["logits"]
    example = torch.zeros(1, 3, input_size, input_size)
    with _atomic.atomic_path(path) as tmp, warnings.catch_warnings():
        # the TorchScript exporter is deprecated in favour of dynamo, which needs onnxscript;
        # it still produces the same graph for these plain CNNs
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (example,), str(tmp), input_names=["image"], output_names=outputs,
                          dynamic_axes={"image": {0: "batch"}, **{o: {0: "batch"} for o in outputs}},
                          opset_version=opset, dynamo=False)
    return path


class OnnxSession:
    """Callable (N, 3, S, S) float32 -> (N, K) logits through ONNX Runtime on CPU; ``outputs``
    gives logits and features where the file has both."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        if not onnxruntime_available():
            raise LeukodxError("onnxruntime is not installed: pip install onnxruntime (a leukodx dependency)")
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or (os.cpu_count() or 1)
        # idle threads sleep instead of spinning: the cores are shared with the decoding workers
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict) -> list[np.ndarray]:
        """Every output of the graph, in its order, for ``feeds`` (input name -> array)."""
        return self.session.run(None, feeds)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(["logits"], {"image": np.ascontiguousarray(x, dtype=np.float32)})[0]

    def outputs(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(logits, features); features None when the file was exported without them."""
        out = self.session.run(self.output_names, {"image": np.ascontiguousarray(x, dtype=np.float32)})
        named = dict(zip(self.output_names, out))
        return named["logits"], named.get("features")


def cached_session(path: Path, bundle_sha256: str | None, export: Callable[[Path], None],
                   agrees: Callable[["OnnxSession"], bool], name: str, checked: str,
                   reuse_unvouched: bool = True) -> tuple["OnnxSession", str]:
    """The session of a model's cached ONNX export at ``path``, and the sha256 of the file that runs.

    A stamp beside the file that vouches for this bundle and this very file lets it load at once, without
    PyTorch. Otherwise the file (the one there when ``reuse_unvouched``, else a new ``export``) is
    trusted only once ``agrees(session)`` (it answers probes as the verified PyTorch network does); the
    stamp is then written. One that disagrees or cannot be read is exported again, once; then
    ``IntegrityError``."""
    from leukodx._hashing import sha256_file
    from leukodx.errors import IntegrityError

    stamp = path.with_name(path.name + ".verified.json")
    vouched = _vouched(path, stamp, bundle_sha256)
    if vouched is not None:
        return vouched
    for attempt in range(2):
        if attempt or not reuse_unvouched or not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            export(path)
        try:
            session = OnnxSession(path)
        except Exception as exc:  # a damaged cache file: rebuild it
            if isinstance(exc, LeukodxError):
                raise
            continue
        if agrees(session):
            digest = sha256_file(path)
            try:
                _atomic.write_json(stamp, {"bundle_sha256": bundle_sha256, "onnx_sha256": digest, "checked": checked})
            except OSError:
                pass  # no stamp: the next run checks against PyTorch again
            return session, digest
        log.warning("%s: the cached ONNX file does not reproduce %s's weights; rebuilt from the verified bundle",
                    path, name)
    raise IntegrityError(f"{path}: the ONNX export of {name} does not reproduce its PyTorch network")


def _vouched(path: Path, stamp: Path, bundle_sha256: str | None) -> tuple["OnnxSession", str] | None:
    """(session, sha256) of the cached export when its stamp vouches for this bundle and this very file."""
    import json

    from leukodx._hashing import sha256_file

    if not (path.exists() and stamp.exists()):
        return None
    try:
        record = json.loads(stamp.read_text())
        if record.get("bundle_sha256") != bundle_sha256:
            return None
        digest = sha256_file(path)
        if digest != record.get("onnx_sha256"):
            return None
        return OnnxSession(path), digest
    except (OSError, ValueError, AttributeError):
        return None
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime cannot read it: rebuilt by the caller
        if isinstance(exc, LeukodxError):
            raise
        return None


PARITY_TOLERANCE = 1e-4


def export_checked(classifier, path: str | os.PathLike, check: bool = True, seed: int = 0) -> float | None:
    """Export ``classifier`` to ONNX; with ``check``, compare ONNX Runtime and PyTorch logits on random
    input and refuse (deleting the file) when they differ by ``PARITY_TOLERANCE`` or more.
    Returns the largest absolute logit difference (None without the check)."""
    from leukodx.errors import InvalidInputError
    from leukodx.preprocessing.transforms import normalize_batch

    import torch

    path = Path(path)
    export_onnx(classifier.net, classifier.preprocess.size, path)
    if not check:
        return None
    size = classifier.preprocess.size
    batch = np.random.default_rng(seed).integers(0, 256, (8, size, size, 3), dtype=np.uint8)
    with torch.inference_mode():
        torch_logits = classifier.net.eval()(torch.from_numpy(normalize_batch(batch, classifier.preprocess))).numpy()
    diff = float(np.abs(OnnxSession(path)(normalize_batch(batch, classifier.preprocess)) - torch_logits).max())
    if diff >= PARITY_TOLERANCE:
        path.unlink(missing_ok=True)
        raise InvalidInputError(f"{path}: ONNX parity check failed (max abs logit difference {diff:.2e})")
    return diff
