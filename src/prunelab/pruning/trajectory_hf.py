"""Moved to `prunelab.training.hf`; kept so existing imports work."""

from prunelab.training.hf import TrajectoryTrainerCallback

__all__ = ["TrajectoryTrainerCallback"]
