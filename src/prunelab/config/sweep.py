"""How a sweep runs (the executor and its resources); the sweep file's schema is `prunelab.sweep.config`."""

from __future__ import annotations

from dataclasses import dataclass

EXECUTORS = ("local", "ray")


@dataclass
class RayOptions:
    """Where and how the Ray executor runs tasks (resources are per task, i.e. per point)."""

    address: str | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
