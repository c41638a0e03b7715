"""Diagnostics of the loss around the parameters, and the geometry of a run.

- Hessian products: :func:`hvp`, :func:`sharpness` (the top Hessian
  eigenvalue) and :func:`segment_profile` (the loss along a segment).
- Geometry: :func:`level_set_components` (connected components of super- and
  sub-level sets on a grid), :func:`loss_slice` on a plane spanned by
  :func:`filter_normalized_directions` or :func:`pca_directions`, and
  :func:`path_checks` along a recorded run.

None of these run in an optimizer step; they are for looking.
"""

from lyapopt.diagnostics._geometry import (
    LevelSetComponents,
    LossSlice,
    PathChecks,
    TrajectoryPCA,
    filter_normalized_directions,
    level_set_components,
    loss_slice,
    path_checks,
    pca_directions,
)
from lyapopt.diagnostics._hessian import hvp, segment_profile, sharpness

__all__ = [
    "LevelSetComponents",
    "LossSlice",
    "PathChecks",
    "TrajectoryPCA",
    "filter_normalized_directions",
    "hvp",
    "level_set_components",
    "loss_slice",
    "path_checks",
    "pca_directions",
    "segment_profile",
    "sharpness",
]
