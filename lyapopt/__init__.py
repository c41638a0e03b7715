"""lyapopt: composable optax transformations for stable neural-network training.

After "Super Level Sets and Exponential Decay: A Synergistic Approach to
Stable Neural Network Training" (Chaudhary et al., JAIR 83, 2025). Each
docstring says which formula is the paper's and which is this project's.

The core transforms and optimizers live here; the diagnostics and the loss
geometry in :mod:`lyapopt.diagnostics`, the Flax helpers in
:mod:`lyapopt.flax`, and assertions for users' tests in :mod:`lyapopt.testing`.
"""

from lyapopt import diagnostics, flax, testing
from lyapopt._alias import lyapunov_adam, lyapunov_sgd
from lyapopt._curvature import ScaleByCurvatureState, scale_by_curvature
from lyapopt._guard import LyapunovGuardState, lyapunov_guard
from lyapopt._level import ScaleByLevelState, scale_by_level
from lyapopt._modulation import (
    ScaleByGradientModulationState,
    scale_by_gradient_modulation,
)
from lyapopt._options import StageOptions
from lyapopt._rate import ScaleByHeldOutRateState, scale_by_held_out_rate
from lyapopt._schedule import (
    ScaleByLoggedLearningRateState,
    exponential_schedule,
    scale_by_logged_learning_rate,
)
from lyapopt._spikes import SkipLossSpikesState, skip_loss_spikes
from lyapopt._stabilize import StabilizeState, stabilize
from lyapopt._stats import stats

__version__ = "0.2.0"

__all__ = [
    "LyapunovGuardState",
    "ScaleByCurvatureState",
    "ScaleByGradientModulationState",
    "ScaleByHeldOutRateState",
    "ScaleByLevelState",
    "ScaleByLoggedLearningRateState",
    "SkipLossSpikesState",
    "StabilizeState",
    "StageOptions",
    "diagnostics",
    "exponential_schedule",
    "flax",
    "lyapunov_adam",
    "lyapunov_guard",
    "lyapunov_sgd",
    "scale_by_curvature",
    "scale_by_gradient_modulation",
    "scale_by_held_out_rate",
    "scale_by_level",
    "scale_by_logged_learning_rate",
    "skip_loss_spikes",
    "stabilize",
    "stats",
    "testing",
]
