"""Temperature scaling (Guo et al. 2017), fitted on validation logits."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from leukodx.models.reliability import DEFAULT_STYLE_SOURCE

if TYPE_CHECKING:
    import torch


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 200) -> float:
    """The T > 0 minimizing the NLL of softmax(logits / T) on held-out data."""
    import torch

    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    return t if np.isfinite(t) and 0.05 < t < 20 else 1.0


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


#: training images per class used for the OOD statistics (class means and covariance settle well before)
RELIABILITY_PER_CLASS = 600


def network_outputs(net: torch.nn.Module, arrays: np.ndarray, preprocess, batch_size: int = 256,
                    style_source: str = DEFAULT_STYLE_SOURCE) -> tuple[np.ndarray, np.ndarray]:
    """Logits and reliability features (``models.features.WithFeatures``: penultimate features, then the
    style ``style_source`` names) of preprocessed uint8 arrays, in eval mode."""
    import torch

    from leukodx.models.features import WithFeatures
    from leukodx.preprocessing.transforms import normalize_batch

    wrapped = WithFeatures(net.eval(), style_source)
    logits, features = [], []
    with torch.inference_mode():
        for s in range(0, len(arrays), batch_size):
            lo, fe = wrapped(torch.from_numpy(normalize_batch(arrays[s:s + batch_size], preprocess)))
            logits.append(lo.float().numpy())
            features.append(fe.float().numpy())
    return np.concatenate(logits), np.concatenate(features)


def fit_network_reliability(net: torch.nn.Module, preprocess, temperature: float, x_train: np.ndarray,
                            y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, seed: int = 0,
                            fitted_on: dict | None = None, groups: np.ndarray | None = None,
                            val_groups: np.ndarray | None = None, style_source: str = DEFAULT_STYLE_SOURCE,
                            **options):
    """The bundle's reliability statistics (``leukodx.models.reliability``): OOD statistics from up to
    ``RELIABILITY_PER_CLASS`` training images per class (per class and site when ``groups`` gives
    each training image's site; ``val_groups`` the validation images'), threshold and conformal scores
    from val; the features' style read where ``style_source`` says."""
    from leukodx.models.features import last_linear

    return fit_outputs_reliability(lambda arrays: network_outputs(net, arrays, preprocess, style_source=style_source),
                                   last_linear(net).in_features, temperature, x_train, y_train, x_val, y_val, seed,
                                   fitted_on, groups, val_groups, style_source=style_source, **options)


def fit_outputs_reliability(outputs, pen_dim: int, temperature: float, x_train: np.ndarray, y_train: np.ndarray,
                            x_val: np.ndarray, y_val: np.ndarray, seed: int = 0, fitted_on: dict | None = None,
                            groups: np.ndarray | None = None, val_groups: np.ndarray | None = None,
                            style_source: str = DEFAULT_STYLE_SOURCE, **options):
    """``fit_network_reliability`` for any runtime: ``outputs(arrays) -> (logits, features)`` (e.g. an
    int8 ONNX Runtime session, whose features differ from the fp32 network's and need their own statistics);
    ``style_source``: where those features' style part was read; ``options``: passed
    to ``models.reliability.fit_reliability`` (e.g. ``style_shrinkage``)."""
    from leukodx.models.reliability import fit_reliability

    y_train = np.asarray(y_train)
    groups = np.zeros(len(y_train), dtype=int) if groups is None else np.asarray(groups)
    rng = np.random.default_rng(seed)
    keep = np.concatenate([rng.permutation(np.flatnonzero((y_train == c) & (groups == g)))[:RELIABILITY_PER_CLASS]
                           for g in np.unique(groups) for c in np.unique(y_train)])
    _, f_train = outputs(x_train[keep])
    val_logits, f_val = outputs(x_val)
    record = {"train_images": int(len(keep)), "val_images": int(len(y_val)), "sites": int(len(np.unique(groups))),
              "seed": seed, **(fitted_on or {})}
    rel = fit_reliability(f_train, y_train[keep], f_val, np.asarray(y_val), softmax(val_logits, temperature),
                          fitted_on=record, pen_dim=pen_dim, groups=groups[keep], val_groups=val_groups, **options)
    rel.style_source = style_source
    return rel
