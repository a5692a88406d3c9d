"""Sweeps: many pruning configurations of one model, each measured the same way, stored crash-safely.

config.py (the YAML schema), grid.py (points and their stable ids), store.py (SQLite + CSV), point.py (one point:
restore, prune, evaluate, measure), executor.py (what executors share), runner.py (local executor and the
driver loop), ray_executor.py (Ray tasks).
"""

from prunelab.sweep.config import SweepConfig, load_sweep_config, parse_sweep_yaml
from prunelab.sweep.executor import RayOptions
from prunelab.sweep.grid import Point, expand_grid
from prunelab.sweep.runner import SweepOutcome, run_sweep
from prunelab.sweep.store import PointRecord, ResultStore

__all__ = [
    "Point",
    "PointRecord",
    "RayOptions",
    "ResultStore",
    "SweepConfig",
    "SweepOutcome",
    "expand_grid",
    "load_sweep_config",
    "parse_sweep_yaml",
    "run_sweep",
]
