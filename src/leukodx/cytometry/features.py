"""Per-sample features in the spirit of Adjouadi 2010: each marker's distribution summarized by
statistics and a fixed-bin histogram, giving every file the same (markers x features) matrix.

Adjouadi et al. reduced each patient's list-mode data to a fixed-size matrix of per-parameter
statistics before a neural network; with a fixed marker list, bins and transform, files of any
event count become comparable rows for a per-sample classifier.
"""

from __future__ import annotations

import numpy as np

from leukodx.cytometry.transforms import Transform
from leukodx.errors import InvalidInputError

STATISTICS = ("mean", "sd", "median", "iqr", "p05", "p95", "skewness", "fraction_positive")


class SampleFeatureAccumulator:
    """Streams event blocks (raw values, columns = markers) into the per-sample matrix.

    Means, variances, skewness and histograms are exact over the stream; the quantiles
    (median, IQR, p05, p95) are read from a fine histogram (400 bins over the transformed range),
    so memory does not grow with the event count.
    """

    def __init__(self, markers: list[str], transform: Transform = Transform("asinh", 5.0), bins: int = 16,
                 low: float = -1.0, high: float = 8.0, positive_above: float = 1.5, source: str = "sample"):
        self.source = source
        self.markers, self.transform, self.bins = list(markers), transform, bins
        self.low, self.high, self.positive_above = low, high, positive_above
        k = len(markers)
        self.n = 0
        self.s1, self.s2, self.s3 = np.zeros(k), np.zeros(k), np.zeros(k)
        self.positive = np.zeros(k)
        self.fine_edges = np.linspace(low, high, 401)
        self.fine = np.zeros((k, 400))
        self.coarse = np.zeros((k, bins))

    def update(self, values: np.ndarray) -> None:
        t = self.transform(values)
        finite = np.isfinite(t).all(axis=1)
        self.dropped = getattr(self, "dropped", 0) + int((~finite).sum())
        t = t[finite]
        self.n += len(t)
        self.s1 += t.sum(0)
        self.s2 += (t ** 2).sum(0)
        self.s3 += (t ** 3).sum(0)
        self.positive += (t > self.positive_above).sum(0)
        clipped = np.clip(t, self.low, self.high - 1e-9)
        for j in range(t.shape[1]):
            self.fine[j] += np.histogram(clipped[:, j], bins=self.fine_edges)[0]
            self.coarse[j] += np.histogram(clipped[:, j], bins=self.bins, range=(self.low, self.high))[0]

    def _quantile(self, j: int, q: float) -> float:
        cdf = np.cumsum(self.fine[j]) / max(self.n, 1)
        i = int(np.searchsorted(cdf, q))
        return float((self.fine_edges[min(i, 399)] + self.fine_edges[min(i + 1, 400)]) / 2)

    def matrix(self) -> tuple[np.ndarray, list[str]]:
        """(markers, statistics + histogram bins) and the column names."""
        if self.n == 0:
            dropped = getattr(self, "dropped", 0)
            why = f"all {dropped} events have non-finite values" if dropped else "no events"
            raise InvalidInputError(f"{self.source}: {why}; nothing to summarize")
        mean = self.s1 / self.n
        var = np.maximum(self.s2 / self.n - mean ** 2, 0.0)
        sd = np.sqrt(var)
        third = self.s3 / self.n - 3 * mean * self.s2 / self.n + 2 * mean ** 3
        skew = np.where(sd > 0, third / np.where(sd > 0, sd, 1) ** 3, 0.0)
        rows = []
        for j in range(len(self.markers)):
            q = {p: self._quantile(j, p) for p in (0.05, 0.25, 0.5, 0.75, 0.95)}
            rows.append([mean[j], sd[j], q[0.5], q[0.75] - q[0.25], q[0.05], q[0.95], skew[j],
                         self.positive[j] / self.n, *(self.coarse[j] / self.n)])
        edges = np.linspace(self.low, self.high, self.bins + 1)
        names = list(STATISTICS) + [f"hist[{edges[i]:.2f},{edges[i + 1]:.2f})" for i in range(self.bins)]
        return np.asarray(rows), names


def features_table(files: list, markers: list[str], transform: Transform, on_error=None) -> tuple[list[str], list[list], list[dict]]:
    """One row per readable FCS file (file, events, markers x features flattened); bad files reported."""
    from leukodx.cytometry.fcs import open_fcs
    from leukodx.cytometry.markers import align_markers
    from leukodx._batch import run_batch
    from leukodx.errors import Interrupted

    header: list[str] = []

    def row(path) -> list:
        fcs = open_fcs(path)
        columns, missing = align_markers(fcs.marker_sources, markers, source=str(path))
        if missing:
            raise InvalidInputError(f"{path}: lacks marker(s) {', '.join(missing)}")
        acc = SampleFeatureAccumulator(markers, transform, source=str(path))
        for block in fcs.iter_events():
            acc.update(block[:, columns])
        matrix, names = acc.matrix()
        header[:] = ["file", "events"] + [f"{m}:{n}" for m in markers for n in names]
        return [str(path), fcs.event_count] + [f"{v:.6g}" for v in matrix.ravel()]

    try:
        rows, failures = run_batch(files, row, "files", on_error=on_error)
    except Interrupted as stop:
        stop.partial = (header, *stop.partial)
        raise
    return header, rows, failures
