"""Training-side state for training-aware pruning: the weight-trajectory tracker, gradual pruning during training,
the framework-free callback (and `hf.TrajectoryTrainerCallback` for a Hugging Face Trainer, a separate module
because importing the Trainer costs seconds), and the small-transformer training loop of the reproduction
(`small_lm`). Nothing here imports `prunelab.pruning`: the trajectory method reads this state, not the other way.
Also the one recovery loop after structured pruning (`recover.py`, `distill.py`, `checkpoint.py`; imported on
demand: it pulls in accelerate), which both `pruning.structured` and `api` call.
"""

from prunelab.training.callbacks import TrajectoryCallback
from prunelab.training.gradual import GradualPruning, GradualSchedule
from prunelab.training.threshold import find_prune_rate, threshold_mask
from prunelab.training.tracker import TrajectoryTracker

__all__ = [
    "GradualPruning",
    "GradualSchedule",
    "TrajectoryCallback",
    "TrajectoryTracker",
    "find_prune_rate",
    "threshold_mask",
]
