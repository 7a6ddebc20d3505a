"""The two kinds of recipe, behind one estimator contract: ``fit(x_tr, y_tr, x_val, y_val, k)``
then ``predict_proba(x)`` on uint8 image arrays (N, S, S, 3).

- ``NetworkEstimator``: one network trained end to end by the project's trainer (one-cycle AdamW,
  label smoothing, class weights, early stopping on validation macro-F1, temperature scaling).
- ``FeatureEstimator``: CNN backbones trained here (no ImageNet weights exist on this machine),
  their penultimate activations as features, then a classic scikit-learn head (gain-ratio +
  SVM, SVM / subspace-KNN / naive Bayes, CCA fusion + bagging), as the feature papers did.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from dataclasses import replace

import numpy as np
import torch

from leukodx.training.calibration import softmax
from leukodx.training.trainer import TrainConfig, fit, normalize, predict_logits, to_input
from leukodx.errors import InvalidInputError


def count_flops(net: torch.nn.Module, size: int) -> int:
    """Forward FLOPs of one image (multiply-add = 2 FLOPs), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    net.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(torch.zeros(1, 3, size, size, device=next(net.parameters()).device))
    return int(counter.get_total_flops())


class NetworkEstimator:
    def __init__(self, config: TrainConfig, show_progress: bool = False):
        self.config = config
        self.show_progress = show_progress

    def fit(self, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
            n_classes: int) -> "NetworkEstimator":
        with tempfile.TemporaryDirectory(prefix="leukodx-zoo-") as work:
            result = fit(x_train, y_train, x_val, y_val, n_classes, self.config, work, show_progress=self.show_progress)
        self.net_, self.temperature_, self.best_epoch_ = result.net, result.temperature, result.best_epoch
        self.epochs_run_ = len(result.history)
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return softmax(predict_logits(self.net_, x, self.config.preprocess), self.temperature_)

    def features(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Penultimate activations: the input of the network's final linear layer."""
        captured: list[torch.Tensor] = []
        hook = self.net_.get_classifier().register_forward_hook(lambda m, inp, out: captured.append(inp[0].detach()))
        try:
            self.net_.eval()
            pre = self.config.preprocess
            with torch.no_grad():
                for start in range(0, len(x), batch_size):
                    self.net_(normalize(to_input(x[start:start + batch_size], pre), pre))
        finally:
            hook.remove()
        return torch.cat(captured).flatten(1).cpu().numpy().astype(np.float64)

    @property
    def n_params(self) -> int:
        return int(sum(p.numel() for p in self.net_.parameters()))

    def flops(self) -> int:
        return count_flops(self.net_, self.config.preprocess.size)


def _calibrated_linear_svm(smallest_class: int = 3):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    # SVC(probability=True) is deprecated in scikit-learn 1.9; a calibrated linear SVM gives probabilities.
    # Calibration needs every class in every fold: fewer folds for rare classes, and for a class seen
    # once, a linear model that is probabilistic by itself.
    folds = min(3, smallest_class)
    if folds < 2:
        return LogisticRegression(C=0.1, max_iter=5000)
    return CalibratedClassifierCV(LinearSVC(C=0.1, max_iter=5000), cv=folds)


def feature_head(kind: str, select_k: int, seed: int, smallest_class: int = 3):
    """The classic classifier on top of CNN features, as a scikit-learn pipeline (or candidates).

    ``smallest_class`` is the training count of the rarest class (it bounds the calibration folds)."""
    from sklearn.ensemble import BaggingClassifier
    from sklearn.naive_bayes import GaussianNB
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    from leukodx.omics.selection import GainRatioSelector

    if kind == "gain-ratio-svm":
        return {"svm": make_pipeline(StandardScaler(), GainRatioSelector(k=select_k), _calibrated_linear_svm(smallest_class))}
    if kind == "svm-knn-nb":
        subspace_knn = BaggingClassifier(KNeighborsClassifier(5), n_estimators=15, max_features=0.5, bootstrap=False,
                                         random_state=seed)
        return {"svm": make_pipeline(StandardScaler(), _calibrated_linear_svm(smallest_class)),
                "subspace-knn": make_pipeline(StandardScaler(), subspace_knn),
                "naive-bayes": make_pipeline(StandardScaler(), GaussianNB())}
    if kind == "bagging":
        return {"bagged-trees": BaggingClassifier(DecisionTreeClassifier(random_state=seed), n_estimators=50,
                                                  random_state=seed)}
    raise InvalidInputError(f"unknown feature head {kind!r}")


class FeatureEstimator:
    """Backbones -> penultimate features -> (CCA fusion) -> classic head chosen on validation."""

    def __init__(self, backbones: tuple[str, ...], head: str, config: TrainConfig, select_k: int = 200,
                 cca_components: int = 0, show_progress: bool = False):
        self.backbones, self.head, self.config = backbones, head, config
        self.select_k, self.cca_components, self.show_progress = select_k, cca_components, show_progress

    def _features(self, x: np.ndarray) -> list[np.ndarray]:
        return [net.features(x) for net in self.nets_]

    def _fuse(self, parts: list[np.ndarray], fit: bool = False) -> np.ndarray:
        if not self.cca_components:
            return np.concatenate(parts, axis=1)
        from sklearn.cross_decomposition import CCA
        from sklearn.preprocessing import StandardScaler

        if fit:
            self.scalers_ = [StandardScaler().fit(p) for p in parts]
            a, b = (s.transform(p) for s, p in zip(self.scalers_, parts))
            n = max(1, min(self.cca_components, a.shape[1], b.shape[1], len(a) - 1))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.cca_ = CCA(n_components=n, max_iter=1000).fit(a, b)
        a, b = (s.transform(p) for s, p in zip(self.scalers_, parts))
        u, v = self.cca_.transform(a, b)
        return np.concatenate([u, v], axis=1)  # Baig 2022 fuse by concatenating the canonical variates

    def fit(self, x_train, y_train, x_val, y_val, n_classes: int) -> "FeatureEstimator":
        from sklearn.metrics import f1_score

        self.nets_ = []
        for i, arch in enumerate(self.backbones):
            config = replace(self.config, arch=arch, seed=self.config.seed + i)
            self.nets_.append(NetworkEstimator(config, self.show_progress).fit(x_train, y_train, x_val, y_val, n_classes))
        f_train = self._fuse(self._features(x_train), fit=True)
        f_val = self._fuse(self._features(x_val))
        self.candidates_ = {}
        best = None
        counts = np.bincount(y_train)
        smallest = int(counts[counts > 0].min())
        for name, model in feature_head(self.head, self.select_k, self.config.seed, smallest).items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.fit(f_train, y_train)
                proba = self._full_proba(model, f_val, n_classes)
            score = f1_score(y_val, proba.argmax(1), average="macro")
            self.candidates_[name] = float(score)
            if best is None or score > best[0]:
                best = (score, name, model)
        _, self.chosen_, self.model_ = best
        self.n_classes_ = n_classes
        return self

    @staticmethod
    def _full_proba(model, features: np.ndarray, n_classes: int) -> np.ndarray:
        """Probabilities over all classes even when a class was absent from a small training fold."""
        proba = np.zeros((len(features), n_classes))
        proba[:, model.classes_] = model.predict_proba(features)
        return proba

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self._full_proba(self.model_, self._fuse(self._features(x)), self.n_classes_)

    @property
    def n_params(self) -> int:
        return int(sum(n.n_params for n in self.nets_))

    def flops(self) -> int:
        return int(sum(n.flops() for n in self.nets_))

    @property
    def best_epoch_(self) -> int:
        return max(n.best_epoch_ for n in self.nets_)

    @property
    def epochs_run_(self) -> int:
        return max(n.epochs_run_ for n in self.nets_)


def timed_predict(estimator, x: np.ndarray) -> tuple[np.ndarray, float]:
    """Probabilities and wall milliseconds per image (batched as the estimator batches)."""
    start = time.perf_counter()
    proba = estimator.predict_proba(x)
    return proba, 1000 * (time.perf_counter() - start) / max(1, len(x))
