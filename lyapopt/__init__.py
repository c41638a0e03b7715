"""lyapopt: composable optax transformations for stable neural-network training.

After "Super Level Sets and Exponential Decay: A Synergistic Approach to
Stable Neural Network Training" (Chaudhary et al., JAIR 83, 2025). Each
docstring says which formula is the paper's and which is this project's.
"""

from lyapopt import testing
from lyapopt._alias import lyapunov_adam, lyapunov_sgd
from lyapopt._curvature import CurvatureState, scale_by_curvature
from lyapopt._diagnostics import hvp, segment_profile, sharpness
from lyapopt._flax import apply_gradients, nnx_value_fn
from lyapopt._geometry import (
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
from lyapopt._guard import GuardState, lyapunov_guard
from lyapopt._level import LevelState, scale_by_level
from lyapopt._modulation import ModulationState, scale_by_gradient_modulation
from lyapopt._schedule import (
    ScaleByLearningRateState,
    exponential_schedule,
    scale_by_learning_rate,
)
from lyapopt._stabilize import StabilizeState, stabilize
from lyapopt._stats import stats

__version__ = "0.1.0"

__all__ = [
    "CurvatureState",
    "GuardState",
    "LevelSetComponents",
    "LevelState",
    "LossSlice",
    "ModulationState",
    "PathChecks",
    "ScaleByLearningRateState",
    "StabilizeState",
    "TrajectoryPCA",
    "apply_gradients",
    "exponential_schedule",
    "filter_normalized_directions",
    "hvp",
    "level_set_components",
    "loss_slice",
    "lyapunov_adam",
    "lyapunov_guard",
    "lyapunov_sgd",
    "nnx_value_fn",
    "path_checks",
    "pca_directions",
    "scale_by_curvature",
    "scale_by_gradient_modulation",
    "scale_by_learning_rate",
    "scale_by_level",
    "segment_profile",
    "sharpness",
    "stabilize",
    "stats",
    "testing",
]
