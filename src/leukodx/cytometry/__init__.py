"""Flow and mass cytometry: FCS reading, compensation and transforms, marker alignment,
per-sample features, a per-cell leukemic classifier and an MRD-style read-out."""

from leukodx.cytometry.fcs import Channel, FCSFile, open_fcs
from leukodx.cytometry.markers import align_markers, canonical_marker
from leukodx.cytometry.transforms import Transform, compensate

__all__ = ["Channel", "FCSFile", "open_fcs", "align_markers", "canonical_marker", "Transform", "compensate"]
