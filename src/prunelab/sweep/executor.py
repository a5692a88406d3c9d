"""What the sweep driver and its executors share: the executor names, the result callbacks, Ray's options.

Its own module so that the driver (`runner.py`) and the Ray executor (`ray_executor.py`) both import it and
neither imports the other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prunelab.config.sweep import EXECUTORS, RayOptions
from prunelab.sweep.grid import Point

OnResult = Callable[[Point, dict[str, Any]], None]
OnError = Callable[[Point, BaseException], None]

__all__ = ["EXECUTORS", "OnError", "OnResult", "RayOptions"]
