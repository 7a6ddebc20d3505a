"""Compensation and the display/analysis transforms of cytometry: arcsinh and logicle.

Compensation and logicle come from flowutils (the FlowKit project's numerical core, which
implements Parks et al.'s logicle in C); arcsinh is one NumPy call. A ``Transform`` is a small
value object so that a trained model can record exactly which transform its inputs had.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from leukodx.errors import InvalidInputError


@dataclass(frozen=True)
class Transform:
    """``asinh``: arcsinh(x / cofactor) (5 for mass cytometry, ~150 for fluorescence);
    ``logicle``: Parks 2006 with top of scale ``t``, decades ``m``, linear width ``w``, offset ``a``;
    ``none``: values as stored."""

    kind: str = "asinh"
    cofactor: float = 5.0
    t: float = 262144.0
    m: float = 4.5
    w: float = 0.5
    a: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("asinh", "logicle", "none"):
            raise InvalidInputError(f"transform must be asinh, logicle or none, got {self.kind!r}")
        if self.kind == "asinh" and not (np.isfinite(self.cofactor) and self.cofactor > 0):
            raise InvalidInputError(f"arcsinh cofactor must be > 0, got {self.cofactor}")
        if self.kind == "logicle" and not (np.isfinite([self.t, self.m, self.w, self.a]).all()
                                           and self.t > 0 and self.m > 0 and 0 <= self.w <= self.m / 2):
            raise InvalidInputError(f"logicle needs t > 0, m > 0, 0 <= w <= m/2 (got t={self.t}, m={self.m}, w={self.w})")

    def __call__(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        if self.kind == "none":
            return values.copy()
        if self.kind == "asinh":
            return np.arcsinh(values / self.cofactor)
        from flowutils import transforms

        flat = values.reshape(len(values), -1) if values.ndim > 1 else values.reshape(-1, 1)
        out = transforms.logicle(flat.copy(), list(range(flat.shape[1])), t=self.t, m=self.m, w=self.w, a=self.a)
        return out.reshape(values.shape)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, spec: dict) -> "Transform":
        return cls(**spec)


def compensate(events: np.ndarray, labels: list[str], spillover: tuple[list[str], np.ndarray]) -> np.ndarray:
    """Events with the spillover removed from the fluorescence channels the matrix names.

    ``labels`` are the file's $PnN names in column order; the matrix rows/columns follow
    ``spillover[0]``. Other columns (scatter, time) are returned unchanged.
    """
    from flowutils import compensate as flow_compensate

    names, matrix = spillover
    try:
        indices = [labels.index(name) for name in names]
    except ValueError as exc:
        raise InvalidInputError(f"spillover names a channel the events lack ({exc})") from None
    if np.linalg.cond(matrix) > 1e12:
        raise InvalidInputError("spillover matrix is singular: cannot compensate")
    return flow_compensate.compensate(np.asarray(events, dtype=np.float64), matrix, indices)
