"""``Classifier``: a loaded model bundle that predicts calibrated class probabilities.

    clf = leukodx.load_model("wbc-multisite")
    result = clf.predict(["cell1.jpg", array])   # paths, folders or (H, W[, C]) arrays
    result.rows[0]["top_class"], result.errors, result.shift

Every row also says whether the input looks like the model's training images (``ood_score``,
``ood``) and gives a conformal ``prediction_set``; the batch gets a ``shift`` verdict
(``leukodx.models.reliability``). Bad inputs in a batch are reported in ``result.errors`` and the
rest are still predicted.
"""

from __future__ import annotations

import bisect
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from leukodx._csv import csv_text
from leukodx._progress import track
from leukodx.data.cache import writable_cache_dir
from leukodx.data.images import PathList, as_rgb_array, list_image_paths, read_image, split_in_memory
from leukodx.errors import InvalidInputError, LeukodxError
from leukodx.models.bundle import interpreting, resolve_bundle, verify_bundle
from leukodx.models.device import one_blas_thread, resolve_device
from leukodx.models.reliability import (DEFAULT_COVERAGE, DEFAULT_STYLE_SOURCE, LEGACY_STYLE_SOURCE, check_coverage,
                                        load_reliability)
from leukodx.preprocessing.transforms import TTA, TTA_VIEWS, Preprocess, dihedral_view, normalize_batch
from leukodx.training.calibration import softmax

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx")
#: auto: the GPU when one is present (PyTorch backend), else the CPU
#: auto: the bundle's int8 file where its card says it is within 0.5 point of fp32 (ONNX Runtime only)
PRECISIONS = ("auto", "fp32", "int8")
TASK = "image-classification"

#: images are decoded at no less than this multiple of the model's input side (a JPEG reduced in its
#: DCT): accuracy unchanged on every test site of the shipped models against the full-size decode
#: training uses, at two thirds of the decoding and cropping time (benchmarks/results/decode_size.md)
DECODE_FACTOR = 1.5
#: inputs per streamed chunk (two chunks are in memory at once: the one inferred, the one decoded)
CHUNK = 256
#: ``--zoom`` that chooses the magnification from the inputs themselves
AUTO_ZOOM = "auto"
#: ``--zoom auto`` reads at most this many of the inputs (evenly spaced) at each magnification it tries
ZOOM_SAMPLE = 512
#: ... and needs at least this many readable ones
MIN_ZOOM_IMAGES = 32


@dataclass
class Predictions:
    """One row per readable input, and one error per unreadable input."""

    classes: list[str]
    rows: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    #: the batch's shift verdict (``{"flagged", "score", "reason", ...}``; ``flagged`` None when unavailable)
    shift: dict | None = None
    coverage: float | None = None

    def to_pandas(self):
        """One row per input: input, top_class, probability, unsure, ood..., then ``p_<class>`` columns."""
        import pandas as pd

        return pd.DataFrame([{**{k: v for k, v in r.items() if k != "probabilities"},
                              **{f"p_{c}": r["probabilities"][c] for c in self.classes}} for r in self.rows])

    @property
    def probabilities(self) -> np.ndarray:
        return np.array([[r["probabilities"][c] for c in self.classes] for r in self.rows]).reshape(-1, len(self.classes))


@dataclass
class Scored:
    """A batch through the network: calibrated probabilities and, where the bundle has the
    statistics, each input's OOD score."""

    proba: np.ndarray
    ood_scores: np.ndarray | None = None
    #: each input's penultimate features (the network's own description of the cell; the patient model pools them)
    embedding: np.ndarray | None = None

#: said in place of OOD figures for bundles made before leukodx fitted reliability statistics
NO_RELIABILITY = ("OOD checks and conformal sets are unavailable for this model: its bundle has no reliability "
                  "statistics (add them with `leukodx reliability fit`)")


class Classifier:
    def __init__(self, net, card: dict, backend: str = "auto", bundle_dir: Path | None = None,
                 precision: str = "fp32", device: str = "auto"):
        """``net``: the PyTorch network, or None to build it from ``bundle_dir`` only when something needs
        it (the torch backend, adaptation, explanations, an ONNX export): an ONNX run whose verified
        export is cached never imports PyTorch."""
        if backend not in BACKENDS:
            raise InvalidInputError(f"backend {backend!r}: expected one of {BACKENDS}")
        if precision not in PRECISIONS:
            raise InvalidInputError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        if net is None and bundle_dir is None:
            raise InvalidInputError("a Classifier needs a network or a bundle folder to build it from")
        #: where the PyTorch network runs: the GPU when one is present (auto), else the CPU
        self.device = resolve_device(device, auto_allows_cuda=backend != "onnx")
        self._net = net.eval().to(self.device) if net is not None else None
        self.card = card
        self.bundle_dir = bundle_dir
        self.classes: list[str] = list(card["classes"])
        self.preprocess = Preprocess.from_dict(card["preprocess"])
        #: how inputs are decoded and preprocessed (also in the stream's worker processes)
        self.reader = InputReader(self.preprocess, round(self.preprocess.size * DECODE_FACTOR))
        self.temperature = float(card.get("temperature", 1.0))
        self.abstain_below = float(card.get("abstain_below", 0.0))
        self.reliability = load_reliability(bundle_dir, card)
        self._features_net = None
        self._onnx = None
        self.onnx_sha256: str | None = None   # the digest of the ONNX file that runs (onnx backend only)
        self.precision = "fp32"
        self.backend = self._choose_backend(backend, precision)
        #: whose batch-norm statistics the probabilities are computed with (``use_site``): None (the bundle's
        #: own network), a training site's name, or AUTO_SITE (each image's nearest training site)
        self.site: str | None = None
        self._site_nets: dict = {}
        self._recognizer = None
        #: the magnification inputs are decoded with and how it was chosen (``use_zoom``): None, as they are
        self.zoom: dict | None = (None if self.preprocess.zoom == 1.0 else
                                  {"zoom": self.preprocess.zoom, "method": "the model's own (its card)"})
        #: test-time augmentation (``with_tta``): None, or how each image's logits are averaged over its views
        self.tta: dict | None = None

    @classmethod
    def load(cls, name_or_path: str | os.PathLike, backend: str = "auto", precision: str = "auto",
             device: str = "auto", site: str | None = None) -> "Classifier":
        directory = resolve_bundle(name_or_path, task=TASK)
        card, _ = verify_bundle(directory, task=TASK)
        with interpreting(directory):
            clf = cls(None, card, backend=backend, bundle_dir=directory, precision=precision, device=device)
            if site is None and "recognizer" in (card.get("site_statistics") or {}) and clf.reliability is not None:
                site = AUTO_SITE
            if site is not None:
                clf.use_site(site)
            # one blank image through every step a prediction takes: a card whose classes, calibration or
            # reliability statistics do not fit the network fails here, not on a user's images
            size = clf.preprocess.size
            scored = clf.score_arrays(np.full((1, size, size, 3), 255, dtype=np.uint8))
            if scored.proba.shape[1] != len(clf.classes):
                raise InvalidInputError(f"{directory}: the card names {len(clf.classes)} classes but the network "
                                        f"has {scored.proba.shape[1]} outputs")
            clf.rows_for(["self-test"], scored, DEFAULT_COVERAGE)
            return clf

    def use_site(self, site: str) -> None:
        """Compute probabilities with the batch-norm statistics the bundle keeps per training site
        (``models.site_stats``; a model trained with ``--site-batches``): one site's (``site`` its name), or with
        AUTO_SITE each image's own: the training site its style looks like (the bundle's site recognizer, a
        logistic regression on the reliability features' style part), unless the image is flagged OOD
        (then the bundle's own network, statistics pooled over every site). Those networks run in fp32 (there is
        no int8 file of them); the OOD check still reads the bundle's own network, on whose features it was
        fitted."""
        from leukodx.models.site_stats import load_site_statistics
        from leukodx.training.adaptation import with_batchnorm_statistics

        kept = load_site_statistics(self.bundle_dir, self.card)
        if kept is None:
            raise InvalidInputError(f"--site {site}: {self.name} keeps no per-site statistics (a model trained "
                                    "with --site-batches does)")
        statistics, self._recognizer = kept
        if site == POOLED_SITE:
            self.site, self._site_nets = site, {}
            return
        if site == AUTO_SITE:
            if self._recognizer is None or self.reliability is None or self.reliability.pen_dim is None:
                raise InvalidInputError(f"--site {AUTO_SITE}: {self.name} keeps no site recognizer and style "
                                        "features to tell its sites apart; name the site")
            names = list(statistics)  # the recognizer's classes, in the card's order
        elif site not in statistics:
            raise InvalidInputError(f"--site {site}: {self.name} keeps statistics for {', '.join(statistics)} only "
                                    f"(or give {AUTO_SITE} or {POOLED_SITE})")
        else:
            names = [site]
        self._site_nets = {name: self._site_classifier(name, with_batchnorm_statistics(
            self.net, statistics[name], f"{self.name} site {name}")) for name in names}
        self.site = site

    def use_zoom(self, zoom: float, how: dict | None = None) -> None:
        """Decode every input magnified by ``zoom`` about its centre (``Preprocess.zoom``; < 1 shows the cell
        smaller, padded with the image's own border colour): a lab whose optics or crop size show its cells
        larger or smaller in the frame than the training cells were. ``how`` says how the zoom was chosen
        (``zoom_for_inputs``); it is kept with the zoom in ``self.zoom`` for the outputs to record."""
        from dataclasses import replace

        self.preprocess = replace(self.preprocess, zoom=float(zoom))
        self.reader = InputReader(self.preprocess, self.reader.max_side)
        self.zoom = None if zoom == 1.0 and how is None else {"zoom": float(zoom), **(how or {"method": "given"})}

    def set_zoom(self, zoom: float | str | None, items: Sequence[tuple[str, object]]) -> None:
        """``--zoom``: None keeps the model's own zoom (1, or the one an adapted bundle was made with), a number
        magnifies the inputs by it (``use_zoom``; 1 reads them as they are), 'auto' by the zoom chosen on
        ``items``, one lab's images (``zoom_for_inputs``)."""
        if zoom == AUTO_ZOOM:
            self.use_zoom(*self.zoom_for_inputs(items))
        elif zoom is not None and float(zoom) != self.preprocess.zoom:
            self.use_zoom(float(zoom))

    def zoom_for_inputs(self, items: Sequence[tuple[str, object]]) -> tuple[float, dict]:
        """The magnification at which this model reads ``items`` (one lab's unlabelled images) with the most
        information (``training.adaptation.select_zoom``; no labels used): up to ``ZOOM_SAMPLE`` of them,
        evenly spaced, decoded at every zoom of the grid. Returns the zoom and how it was chosen."""
        from dataclasses import replace

        from leukodx.training.adaptation import ZOOM_GRID, select_zoom

        picked = np.unique(np.linspace(0, len(items) - 1, min(len(items), ZOOM_SAMPLE)).round().astype(int))
        rgbs = []  # decoded once; each zoom preprocesses them again
        for i in picked:
            try:
                rgbs.append(self.reader.read(items[int(i)][1]))
            except Exception:  # noqa: BLE001 - an unreadable input is reported by the pass that predicts
                continue
        if len(rgbs) < MIN_ZOOM_IMAGES:
            raise InvalidInputError(f"--zoom auto needs at least {MIN_ZOOM_IMAGES} readable images of one lab, "
                                    f"got {len(rgbs)}")

        def proba_at(pre: Preprocess) -> np.ndarray:
            return self.predict_arrays(np.stack(pre.batch(rgbs)))

        zoom, scores = select_zoom(proba_at, replace(self.preprocess, zoom=1.0), ZOOM_GRID)
        return zoom, {"method": "selected: the most information in the predictions, no labels",
                      "images": len(rgbs), "information": {z: round(v, 4) for z, v in scores.items()}}

    def _site_classifier(self, site: str, net) -> "Classifier":
        """The network with ``site``'s statistics, on this classifier's backend (ONNX Runtime fp32 on a CPU: its
        export cached under an identity of its own, made from the bundle's and the statistics' sha256)."""
        import hashlib

        identity = f"{self.card.get('sha256')}:{self.card['site_statistics']['sha256']}:{site}"
        card = {k: v for k, v in self.card.items() if k not in ("int8", "reliability", "site_statistics")}
        card["sha256"] = hashlib.sha256(identity.encode()).hexdigest()
        return Classifier(net, card, backend=self.backend, device=self.device)

    def _at_sites(self, batch_uint8: np.ndarray, logits: np.ndarray, features: np.ndarray | None
                  ) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
        """``logits`` (the bundle's network) replaced row by row by those of the site network ``use_site`` chose;
        the OOD scores when they were needed to choose (else None); and which rows each site network called."""
        if self.site != AUTO_SITE:
            plan, ood = {self.site: np.arange(len(batch_uint8))}, None
        elif features is None:  # an ONNX file without the features output: no site can be recognised
            plan, ood = {}, None
        else:
            plan, ood = self._rows_by_site(features)
        return self._run_sites(batch_uint8, logits, plan), ood, plan

    def _run_sites(self, batch_uint8: np.ndarray, logits: np.ndarray, plan: dict[str, np.ndarray]) -> np.ndarray:
        """``logits`` with the rows of each site in ``plan`` replaced by its site network's."""
        out = logits.copy()
        for name, rows in plan.items():
            if len(rows):
                out[rows] = self._site_nets[name].logits(batch_uint8[rows])
        return out

    def _rows_by_site(self, features: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """AUTO_SITE: the rows each site network calls (those recognised as its site and not OOD; the others keep
        the bundle's network), and the OOD scores."""
        ood = self.reliability.ood_scores(features)
        known = ~self.reliability.is_ood(ood)
        nearest = self._recognizer.sites(features[:, self.reliability.pen_dim:])
        return {name: np.flatnonzero(known & (nearest == i)) for i, name in enumerate(self._site_nets)}, ood

    def calling_networks(self, batch_uint8: np.ndarray) -> list[tuple[object, np.ndarray]]:
        """Which PyTorch network makes each image's call (what an explanation must read): ``(network, rows)``
        pairs that cover the batch. One network, but for a model running each image with its own site's
        statistics (``use_site`` with AUTO_SITE), where each recognised site's network calls its images."""
        everyone = np.arange(len(batch_uint8))
        if not self._site_nets:
            return [(self.net, everyone)]
        if self.site != AUTO_SITE:
            return [(self._site_nets[self.site].net, everyone)]
        features = self.forward(batch_uint8)[1]
        if features is None:
            return [(self.net, everyone)]
        by_site = self._rows_by_site(features)[0]
        own = np.ones(len(batch_uint8), dtype=bool)
        pairs = []
        for name, rows in by_site.items():
            if len(rows):
                pairs.append((self._site_nets[name].net, rows))
                own[rows] = False
        return pairs + ([(self.net, np.flatnonzero(own))] if own.any() else [])

    @property
    def net(self):
        """The PyTorch network (built from the verified bundle on first use)."""
        if self._net is None:
            from leukodx.models.architectures import network_from_card
            from leukodx.models.bundle import load_network

            net, _, _ = load_network(self.bundle_dir, TASK, network_from_card)
            self._net = net.to(self.device)
        return self._net

    @property
    def _with_features(self):
        if self._features_net is None:
            from leukodx.models.features import WithFeatures

            self._features_net = WithFeatures(self.net, self.style_source)
        return self._features_net

    @property
    def style_source(self) -> str:
        """Where the reliability features' style part is read: as the bundle's statistics were fitted."""
        return self.reliability.style_source if self.reliability is not None else DEFAULT_STYLE_SOURCE

    @property
    def name(self) -> str:
        return self.card.get("name", "model")

    # --- backends ---------------------------------------------------------------------------
    def _choose_backend(self, backend: str, precision: str) -> str:
        from leukodx.inference.onnx_backend import onnxruntime_available

        if backend == "auto":
            # ONNX Runtime is the faster CPU path (benchmarks/results/throughput.json)
            # on a GPU machine PyTorch runs on the GPU; ONNX Runtime here is a CPU build
            backend = "onnx" if (self.device == "cpu" and onnxruntime_available()) else "torch"
        if backend == "onnx" and self.device == "cuda":
            raise InvalidInputError("--device cuda runs the PyTorch backend: use --backend torch or auto")
        if precision == "int8" and backend != "onnx":
            raise InvalidInputError(f"--precision int8 runs on ONNX Runtime, not {backend}: use --backend onnx or auto")
        int8 = self.card.get("int8") or {}
        if backend == "onnx" and (precision == "int8" or (precision == "auto" and int8.get("default_on_cpu"))):
            from leukodx.inference.quantize import int8_session

            self._onnx, self.precision, self.onnx_sha256 = int8_session(self), "int8", int8.get("sha256")
            # the int8 network's features have their own out-of-distribution statistics
            self.reliability = load_reliability(self.bundle_dir, {"reliability": int8["reliability"]}) if (
                self.reliability is not None and int8.get("reliability")) else None
        elif backend == "onnx":
            self._onnx = self._onnx_session()
        return backend

    def onnx_path(self) -> Path:
        """Where the ONNX export is kept: the cache, or a private temporary folder when the cache cannot
        be written (the export is then made again by the next process)."""
        # the features' layout is part of the file: f2 reads the style at the quarter-side layer, f6 in the stage
        # with global average pools (f3, f4 and f5 read the stage in other ways: a file from before must not be
        # reused, as its stamp vouches for the weights only)
        layout = "f2" if self.style_source == LEGACY_STYLE_SOURCE else "f6"
        name = f"{self.card.get('sha256', 'unsaved')[:24]}-{self.preprocess.size}-{layout}.onnx"
        folder = writable_cache_dir("onnx")
        if folder is None:
            import tempfile

            folder = Path(tempfile.mkdtemp(prefix="leukodx-onnx-"))
        return folder / name

    def _onnx_session(self):
        """The ONNX Runtime session of the cached export (``onnx_backend.cached_session``): trusted once it
        answers a random probe as the verified PyTorch network does, stamped, and from then on started
        without PyTorch; ``onnx_sha256`` records the digest of the file that runs."""
        from leukodx.inference.onnx_backend import cached_session, export_onnx

        session, self.onnx_sha256 = cached_session(
            self.onnx_path(), self.card.get("sha256"),
            lambda path: export_onnx(self.net, self.preprocess.size, path, features=True,
                                     style_source=self.style_source),
            self._answers_like_torch, self.name, "logits and features of a random probe match PyTorch's")
        return session

    def _answers_like_torch(self, session) -> bool:
        """Logits and features of two random inputs (a new draw each time) agree with PyTorch's."""
        import torch

        size = self.preprocess.size
        probe = np.random.default_rng(int.from_bytes(os.urandom(8), "little")).integers(
            0, 256, (2, size, size, 3), dtype=np.uint8)
        x = normalize_batch(probe, self.preprocess)
        wrapped = self._with_features
        with torch.inference_mode():
            want = [t.float().numpy() for t in wrapped(torch.from_numpy(x))]
        got = session.outputs(x)
        return all(g is not None and g.shape == w.shape and np.allclose(g, w, rtol=1e-3, atol=1e-3)
                   for g, w in zip(got, want))

    # --- core ---------------------------------------------------------------------------------
    def forward(self, batch_uint8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, S, S, 3) uint8, already preprocessed -> raw logits (N, K) and the reliability features (N, D):
        penultimate features, then an early stage's style (``models.features.WithFeatures``)."""
        x = normalize_batch(batch_uint8, self.preprocess)
        if self.backend == "onnx":
            return self._onnx.outputs(x)
        import torch

        wrapped = self._with_features  # built (if needed) outside inference mode: its weights stay ordinary tensors
        with torch.inference_mode():
            logits, features = wrapped(torch.from_numpy(x).to(self.device))
            return logits.float().cpu().numpy(), features.float().cpu().numpy()

    def logits(self, batch_uint8: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8, already preprocessed -> (N, K) raw logits."""
        return self.forward(batch_uint8)[0]

    def score_arrays(self, batch_uint8: np.ndarray, batch_size: int = 64) -> Scored:
        """Calibrated probabilities and OOD scores (None without reliability statistics)."""
        logits, features, oods = [], [], []
        for s in range(0, len(batch_uint8), batch_size):
            batch = batch_uint8[s:s + batch_size]
            lo, fe = self.forward(batch)
            ood, plan = None, None
            if self._site_nets:  # probabilities as at the chosen site(s); OOD from the bundle's network
                lo, ood, plan = self._at_sites(batch, lo, fe)
            if self.tta is not None:
                lo = self._averaged_over_views(batch, lo, plan)
            logits.append(lo)
            features.append(fe)
            oods.append(ood)
        if not logits:
            return Scored(np.zeros((0, len(self.classes))), np.zeros(0) if self.reliability is not None else None)
        proba = self.proba_from_logits(np.concatenate(logits))
        # an ONNX file exported without the features output gives none (nor OOD scores: no statistics then)
        features = None if any(f is None for f in features) else np.concatenate(features)
        ood = None
        if self.reliability is not None:  # already scored where they chose each image's site
            ood = (np.concatenate(oods) if all(o is not None for o in oods)
                   else self.reliability.ood_scores(features))
        return Scored(proba, ood, None if features is None else features[:, :self.embedding_dim])

    def with_tta(self) -> "Classifier":
        """Test-time augmentation: a copy (sharing this one's networks) whose probabilities are those of each
        image's logits averaged over its 8 orientations (``dihedral_view``; the training augmentation turns and
        mirrors cells, so the network has seen each of them). It costs 8 forward passes per image. The OOD
        scores and the embedding stay those of the image as it is (what the reliability statistics were fitted
        on); the temperature and the conformal scores are the single view's, so the benchmark measures
        calibration and coverage with it (benchmarks/results/tta.md). Never applied unasked."""
        import copy

        twin = copy.copy(self)
        twin.tta = dict(TTA)
        return twin

    def _averaged_over_views(self, batch_uint8: np.ndarray, logits: np.ndarray,
                             plan: dict[str, np.ndarray] | None) -> np.ndarray:
        """``logits`` (view 0, from the networks that called each row) averaged with the other views', each row
        read by the same network in every view (``plan``: the site networks' rows, as ``_at_sites`` chose)."""
        total = logits.astype(np.float64)
        mine = len(batch_uint8) - sum(len(rows) for rows in (plan or {}).values())
        for i in range(1, TTA_VIEWS):
            view = dihedral_view(batch_uint8, i)
            lo = self.forward(view)[0] if mine else np.zeros_like(logits)
            total += self._run_sites(view, lo, plan) if plan else lo
        return (total / TTA_VIEWS).astype(logits.dtype)

    @property
    def embedding_dim(self) -> int:
        """Length of the penultimate features (the first part of ``forward``'s features)."""
        if self.reliability is not None:
            return int(self.reliability.means.shape[1])
        from leukodx.models.features import last_linear

        return int(last_linear(self.net).in_features)

    def proba_from_logits(self, logits: np.ndarray) -> np.ndarray:
        return softmax(logits, self.temperature)

    def prepare(self, items: Sequence[tuple[str, object]]) -> tuple[list[str], np.ndarray, list[dict]]:
        """``(name, path or array)`` items -> names, stacked model inputs, errors (``InputReader.prepare``)."""
        return self.reader.prepare(items)

    def load_inputs(self, inputs: Iterable) -> tuple[list[str], np.ndarray, list[dict]]:
        """Read and preprocess paths / folders / arrays, all at once; returns names, stacked arrays,
        errors. (``stream`` does the same a chunk at a time, in bounded memory.)"""
        items, errors = expand_inputs(inputs)
        parts = [self.prepare(items[s:s + CHUNK]) for s in track(range(0, len(items), CHUNK), "decoding images")]
        names = [n for p in parts for n in p[0]]
        size = self.preprocess.size
        arrays = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, size, size, 3), np.uint8)
        return names, arrays, errors + [e for p in parts for e in p[2]]

    def stream(self, items: Sequence[tuple[str, object]], coverage: float = DEFAULT_COVERAGE, batch_size: int = 64,
               chunk: int | None = None, workers: int | None = None, decimals: int | None = None,
               adapted: "Classifier | None" = None) -> Iterator[Chunk]:
        """Rows for ``items`` (``(name, path or array)``, as ``expand_inputs`` gives), one ``Chunk`` at a
        time, in input order. Chunks are decoded and preprocessed by ``workers`` processes (default: one
        per core; a single chunk is done in this process) while this process infers the chunk before, so
        memory holds a few chunks whatever the number of inputs. A bad input is an error row of its chunk.
        ``adapted``: probabilities from this copy (batch-norm-adapted, ``adapted_to``, and / or averaged over
        views, ``with_tta``), OOD scores from this model."""
        import contextlib

        check_coverage(coverage)
        chunk = chunk or CHUNK
        pooled = min(workers or os.cpu_count() or 1, -(-len(items) // chunk)) > 1
        for prepared in self.prepared_chunks(items, chunk, workers):
            # with a pool the other cores are decoding: a second BLAS thread would only spin
            with one_blas_thread() if pooled else contextlib.nullcontext():
                yield self._chunk(prepared, coverage, batch_size, decimals, adapted)

    def prepared_chunks(self, items: Sequence[tuple[str, object]], chunk: int | None = None,
                        workers: int | None = None) -> Iterator[tuple[list[str], np.ndarray, list[dict]]]:
        """``items`` decoded and preprocessed, ``chunk`` (default ``CHUNK``) at a time in input order:
        (names, model inputs, errors), by ``workers`` processes ahead of the caller (see ``stream``)."""
        chunk = chunk or CHUNK
        starts = range(0, len(items), chunk)
        workers = min(workers or os.cpu_count() or 1, len(starts))
        if workers <= 1:  # nothing to overlap with: no pool to start
            for start in starts:
                yield self.prepare(items[start:start + chunk])
            return
        import multiprocessing
        from collections import deque
        from concurrent.futures import ProcessPoolExecutor

        # fork: the workers need only the preprocessing (no model, no ONNX Runtime) and start at once
        context = multiprocessing.get_context("fork")
        import gc

        gc.freeze()  # the parent's objects stay out of the workers' garbage collection: no copy-on-write of them
        try:
            with ProcessPoolExecutor(workers, mp_context=context) as pool:
                pending = deque()
                it = iter(starts)
                for start in it:
                    pending.append(pool.submit(self.reader.prepare, list(items[start:start + chunk])))
                    if len(pending) > workers:
                        break
                while pending:
                    prepared = pending.popleft().result()
                    nxt = next(it, None)
                    if nxt is not None:
                        pending.append(pool.submit(self.reader.prepare, list(items[nxt:nxt + chunk])))
                    yield prepared
        finally:
            gc.unfreeze()

    def _chunk(self, prepared: tuple, coverage: float, batch_size: int, decimals: int | None,
               adapted: "Classifier | None" = None) -> Chunk:
        names, arrays, errors = prepared
        scored = self.score_arrays(arrays, batch_size)
        if adapted is not None:
            scored = Scored(adapted.predict_arrays(arrays, batch_size), scored.ood_scores)
        return Chunk(self.rows_for(names, scored, coverage, decimals), errors, scored.ood_scores)

    def predict_arrays(self, batch_uint8: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Calibrated probabilities (N, K) for preprocessed uint8 arrays."""
        return self.score_arrays(batch_uint8, batch_size).proba

    def shift_of(self, scored: Scored) -> dict:
        """Whether the batch as a whole looks like the training images (``Reliability.shift``)."""
        return self.shift_from(scored.ood_scores)

    def shift_from(self, ood_scores: np.ndarray | None) -> dict:
        """``shift_of`` from the OOD scores alone (a streamed run keeps only these)."""
        if self.reliability is None or ood_scores is None:
            return {"flagged": None, "score": None, "reason": NO_RELIABILITY}
        return self.reliability.shift(np.asarray(ood_scores, dtype=float))

    def adapted_to(self, arrays: np.ndarray | Iterable[np.ndarray]) -> "Classifier":
        """Test-time batch-norm adaptation (AdaBN): a copy whose batch-norm statistics are those of
        ``arrays``, one lab's unlabelled images (preprocessed; or an iterable of such chunks, read once,
        so a large site need not be held in memory). Every weight is kept; only the statistics the
        network normalizes with move to the new site. It helped on sites left out of training
        (benchmarks/results/LOSO.md, AdaBN column), so it is offered, never applied unasked: with it,
        a cell's call depends on the other images of the batch."""
        from leukodx.training.adaptation import adapt_batchnorm, has_batchnorm

        if not has_batchnorm(self.net):
            raise InvalidInputError(f"{self.name}: has no batch-norm layers to adapt")
        seen = [0]

        def counted(chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
            for part in chunks:
                seen[0] += len(part)
                yield part

        net = adapt_batchnorm(self.net, counted([arrays] if isinstance(arrays, np.ndarray) else arrays),
                              self.preprocess)
        if seen[0] < MIN_ADAPT_IMAGES:
            raise InvalidInputError(f"batch-norm adaptation needs at least {MIN_ADAPT_IMAGES} images of the new "
                                    f"site, got {seen[0]}")
        card = {**self.card, "test_time_adaptation": {"method": "AdaBN", "images": int(seen[0])}}
        adapted = Classifier(net, card, backend="torch", bundle_dir=None)
        adapted.reliability = None  # its features are re-normalized: OOD is judged on the unadapted network
        adapted.tta = self.tta
        return adapted

    def adapted_to_inputs(self, items: Sequence[tuple[str, object]]) -> "Classifier":
        """``adapted_to`` the inputs ``items`` (as ``expand_inputs`` lists them), read once, a chunk at a
        time (inputs that cannot be read are left out here and reported by the pass that predicts)."""
        return self.adapted_to(arrays for _, arrays, _ in self.prepared_chunks(items))

    def runners(self, items: Sequence[tuple[str, object]], adapt_bn: bool = False, tta: bool = False
                ) -> tuple["Classifier", "Classifier | None"]:
        """What ``stream`` runs for ``items``: the classifier to stream with and the copy its probabilities come
        from (``stream``'s ``adapted``, or None). With ``adapt_bn`` that copy is ``adapted_to_inputs(items)``
        (averaged over views with ``tta``) and the OOD scores come from this classifier; with ``tta`` alone the
        stream runs on ``with_tta()``, whose one pass gives the averaged probabilities and the OOD scores of the
        images as they are (no second pass of view 0)."""
        if adapt_bn:
            adapted = self.adapted_to_inputs(items)
            return self, (adapted.with_tta() if tta else adapted)
        return (self.with_tta() if tta else self), None

    def predict(self, inputs: Sequence | str | os.PathLike | np.ndarray, batch_size: int = 64,
                adapt_bn: bool = False, coverage: float = DEFAULT_COVERAGE, tta: bool = False) -> Predictions:
        """Per input: top class, its probability, every class probability, ``ood_score`` / ``ood``,
        a conformal ``prediction_set`` at ``coverage``, and ``unsure``; per batch: ``shift``.
        With ``adapt_bn``, batch-norm statistics are re-estimated on these inputs first (one site); with ``tta``,
        the probabilities are averaged over each input's 8 orientations (``with_tta``)."""
        check_coverage(coverage)
        if (isinstance(inputs, (str, os.PathLike, np.ndarray)) or type(inputs).__module__.startswith("torch")
                or type(inputs).__module__.startswith("PIL.")):
            inputs = [inputs]
        items, errors = expand_inputs(inputs)
        runner, adapted = self.runners(items, adapt_bn, tta)
        rows, scores = [], []
        for part in runner.stream(items, coverage, batch_size, adapted=adapted):
            rows += part.rows
            errors += part.errors
            scores.append(part.ood_scores)
        ood = None if self.reliability is None else np.concatenate([np.zeros(0)] + scores)
        return Predictions(classes=self.classes, rows=rows, errors=errors, shift=self.shift_from(ood),
                           coverage=coverage)

    def rows_for(self, names: Sequence[str], scored: Scored, coverage: float = DEFAULT_COVERAGE,
                 decimals: int | None = None) -> list[dict]:
        """One result row per input (see ``predict``)."""
        rel = self.reliability
        sets = (rel.prediction_sets(scored.proba, coverage) if rel is not None and rel.has_conformal
                else [None] * len(scored.proba))
        ood = scored.ood_scores if scored.ood_scores is not None else [None] * len(scored.proba)
        return [self.prediction_row(name, p, decimals, ood_score=o, prediction_set=s)
                for name, p, o, s in zip(names, scored.proba, ood, sets)]

    def prediction_row(self, name: str, p: np.ndarray, decimals: int | None = None, ood_score: float | None = None,
                       prediction_set: list[int] | None = None) -> dict:
        """One input's result. ``unsure`` when the top probability is below the card's threshold, the
        input is out of distribution, or the conformal set holds other than exactly one class."""
        def num(v) -> float:
            return round(float(v), decimals) if decimals is not None else float(v)

        top = int(p.argmax())
        ood = None if ood_score is None else bool(ood_score > self.reliability.threshold)
        unsure = bool(p[top] < self.abstain_below) or bool(ood) or (
            prediction_set is not None and len(prediction_set) != 1)
        return {"input": name, "top_class": self.classes[top], "probability": num(p[top]), "unsure": unsure,
                "ood_score": None if ood_score is None else round(float(ood_score), 3), "ood": ood,
                "prediction_set": None if prediction_set is None else [self.classes[k] for k in prediction_set],
                "probabilities": {c: num(v) for c, v in zip(self.classes, p)}}


@dataclass
class Chunk:
    """One streamed chunk's result rows, its inputs that failed, and its OOD scores (or None)."""
    rows: list[dict]
    errors: list[dict]
    ood_scores: np.ndarray | None


@dataclass(frozen=True)
class InputReader:
    """How a classifier's inputs become model inputs: a path decoded (a JPEG reduced in its DCT to
    ``max_side``, about ``DECODE_FACTOR`` times the model's input side) or an in-memory image checked,
    then preprocessed. Holds no network, so the stream's worker processes use it as it is."""

    preprocess: Preprocess
    max_side: int

    def read(self, item) -> np.ndarray:
        if isinstance(item, (str, os.PathLike)):
            return read_image(item, max_side=self.max_side)
        return as_rgb_array(item, "array")

    def prepare(self, items: Sequence[tuple[str, object]]) -> tuple[list[str], np.ndarray, list[dict]]:
        """``(name, path or array)`` items -> names, stacked model inputs, errors (in input order): each
        read, then all preprocessed together (``Preprocess.batch``: the nucleus search of 'cell-crop' runs
        once for the lot); an input that fails is an error, the others go on."""
        from leukodx.errors import item_error

        def error(name: str, exc: Exception) -> dict:
            return {"input": name, "error": str(exc) if isinstance(exc, LeukodxError) else item_error(name, exc)}

        names, rgbs, errors = [], [], []
        for name, item in items:
            try:
                rgbs.append(self.read(item))
                names.append(name)
            except Exception as exc:  # noqa: BLE001 - one input's failure is its error row
                errors.append(error(name, exc))
        try:
            arrays = self.preprocess.batch(rgbs)
        except Exception:  # noqa: BLE001 - find the input that fails, keep the others
            kept, arrays = [], []
            for name, rgb in zip(names, rgbs):
                try:
                    arrays.append(self.preprocess(rgb))
                    kept.append(name)
                except Exception as exc:  # noqa: BLE001
                    errors.append(error(name, exc))
            names = kept
        size = self.preprocess.size
        return names, np.stack(arrays) if arrays else np.zeros((0, size, size, 3), np.uint8), errors


class InputList(Sequence):
    """``(name, path or array)`` items in input order, as ``expand_inputs`` lists them: the paths in a
    ``PathList`` (a path is its own name), in-memory images by position. 10^5 paths take ~5 MB."""

    def __init__(self):
        self._paths = PathList()
        self._arrays: dict[int, tuple[str, object]] = {}
        self._array_at: list[int] = []  # positions of the in-memory images, ascending

    def add_path(self, path: str) -> None:
        self._paths.append(path)

    def add_paths(self, paths: PathList) -> None:
        """``paths`` appended; the first list is taken over, not copied (the caller gives it up)."""
        if len(self._paths):
            self._paths.extend(paths)
        else:
            self._paths = paths

    def add_array(self, name: str, array) -> None:
        self._array_at.append(len(self))
        self._arrays[len(self)] = (name, array)

    def __len__(self) -> int:
        return len(self._paths) + len(self._arrays)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        if i in self._arrays:
            return self._arrays[i]
        path = self._paths[i - bisect.bisect_left(self._array_at, i)]
        return path, path

    def without(self, names: set[str]) -> "InputList":
        """The items whose name is not in ``names`` (those an interrupted run finished), in order."""
        out = InputList()
        for name, item in self:
            if name not in names:
                out.add_path(item) if isinstance(item, str) else out.add_array(name, item)
        return out


def expand_inputs(inputs: Iterable) -> tuple[InputList, list[dict]]:
    """Paths, folders (walked, sorted) and in-memory images -> ``(name, path or array)`` in order, and
    the inputs that could not be listed."""
    items = InputList()
    errors: list[dict] = []
    for item in inputs:
        if isinstance(item, (str, os.PathLike)):
            try:
                items.add_paths(list_image_paths([item], errors))
            except LeukodxError as exc:
                errors.append({"input": str(item), "error": str(exc)})
        else:
            try:
                for a in split_in_memory(item, f"input[{len(items)}]"):
                    items.add_array(f"array[{len(items)}]", a)
            except LeukodxError as exc:
                errors.append({"input": f"input[{len(items)}]", "error": str(exc)})
    return items, errors


#: fewer images than this give unstable batch statistics: test-time adaptation refuses them
MIN_ADAPT_IMAGES = 32
#: ``--site`` values beside a training site's name: each image's nearest training site (the default of a
#: bundle with per-site statistics), or the bundle's own network (statistics pooled over every training site)
AUTO_SITE = "auto"
POOLED_SITE = "pooled"


def check_normalization(adapt_bn: bool, site: str | None) -> None:
    """Test-time batch-norm adaptation and a kept site's statistics are two answers to one question: one line
    when both are asked for."""
    if adapt_bn and site is not None:
        raise InvalidInputError("--adapt-bn and --site: give one (statistics from these images, or a site's kept "
                                "ones)")

#: the white-cell model used wherever none is named: multi-site, with blasts and smudge cells
DEFAULT_CELL_MODEL = "wbc-multisite"


def load_model(name_or_path: str | os.PathLike = DEFAULT_CELL_MODEL, backend: str = "auto",
               precision: str = "auto", device: str = "auto", site: str | None = None) -> Classifier:
    """A bundled model by name (``wbc-multisite``, ``pbc-celltype``, ``all-stage``) or a bundle folder.
    ``precision``: fp32, int8 (the bundle's quantized file, ONNX Runtime), or auto: int8 where the card
    measured it within 0.5 point of fp32. ``site``: a training site whose batch-norm statistics the bundle
    keeps (``Classifier.use_site``)."""
    return Classifier.load(name_or_path, backend=backend, precision=precision, device=device, site=site)


def row_columns(classes: Sequence[str]) -> list[str]:
    """The flat columns of a prediction row (CSV, Parquet)."""
    return ["input", "top_class", "probability", "unsure", "ood_score", "ood", "prediction_set"] + [
        f"p_{c}" for c in classes]


def row_cells(r: dict, classes: Sequence[str]) -> list:
    """A prediction row's typed flat values: the prediction set "|"-separated, None where unavailable."""
    pset = r.get("prediction_set")
    return ([r["input"], r["top_class"], float(r["probability"]), bool(r["unsure"]), r.get("ood_score"), r.get("ood"),
             None if pset is None else "|".join(pset)] + [float(r["probabilities"][c]) for c in classes])


def rows_to_csv(rows: list[dict], classes: list[str]) -> str:
    """Prediction rows as CSV text (``row_columns``): fractions to 4 decimals, booleans 0/1, empty cells
    where a figure is unavailable."""
    from leukodx._rowfile import text_cell

    return csv_text(row_columns(classes), ([text_cell(v) for v in row_cells(r, classes)] for r in rows))
