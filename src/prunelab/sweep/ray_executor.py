"""Run sweep points as Ray tasks: one point per task, resources per task configurable.

Why tasks, not actors: a point is minutes of independent work, and a fresh process per point cannot leak pruned
weights into the next one. Each task loads the model itself (from the path or hub id in the config, so every worker
must be able to read it) and returns plain dicts; the driver writes them to the store as they arrive, so the store
has one writer and the crash-safety argument of `store.py` holds unchanged. `ray.init(address=...)` joins an
existing cluster (`ray start --head` on one machine, `ray start --address=HEAD:6379` on the others); without an
address Ray starts a local instance. See docs/sweep.md.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prunelab._util import is_quiet, set_quiet
from prunelab.errors import PrunelabError
from prunelab.models import load_model
from prunelab.sweep.config import SweepConfig
from prunelab.sweep.executor import OnError, OnResult, RayOptions
from prunelab.sweep.grid import Point
from prunelab.sweep.point import Context, check_model, run_point

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'prunelab[sweep]'  (or: pip install 'ray>=2')"


def _task(cfg_data: dict[str, Any], point: Point, quiet: bool = False) -> dict[str, Any]:
    """Body of one Ray task: load the model, run the point, return the result dict (no store access). `quiet`
    is the driver's -q: a worker's environment need not be the driver's (a cluster joined by address)."""
    import transformers

    set_quiet(quiet)
    transformers.utils.logging.disable_progress_bar()
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = SweepConfig(**cfg_data)
    lm = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
    check_model(cfg, lm.model)
    return run_point(Context(cfg, lm, dense_state=None), point)


def _absolute(spec: str | None) -> str | None:
    """A local path (or the PATH of `wikitext2:PATH`) made absolute on the driver; names and hub ids unchanged."""
    if spec is None:
        return None
    name, sep, arg = spec.partition(":")
    if name == "wikitext2" and sep and arg:
        return f"wikitext2:{Path(arg).expanduser().resolve()}"
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def worker_config(cfg: SweepConfig) -> dict[str, Any]:
    """The config a task receives: relative paths resolved here, since a worker's working folder is not ours."""
    data = cfg.model_dump()
    data["model"] = _absolute(data["model"])
    data["calibration"]["source"] = _absolute(data["calibration"]["source"])
    data["evaluation"]["ppl"] = [_absolute(s) for s in data["evaluation"]["ppl"]]
    data["evaluation"]["task_data"] = _absolute(data["evaluation"]["task_data"])
    return data


def run_ray(cfg: SweepConfig, todo: list[Point], on_result: OnResult, on_error: OnError, opts: RayOptions) -> None:
    """Submit every point, then hand each result to the driver's callbacks in completion order."""
    try:
        import ray
    except ImportError:
        raise PrunelabError(f"--executor ray needs Ray: {INSTALL_HINT}") from None
    if not todo:
        return
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=opts.address, ignore_reinit_error=True, logging_level=logging.WARNING)
    log.info("ray: %s; %d tasks of %g CPU / %g GPU each", ray.cluster_resources(), len(todo), opts.num_cpus,
             opts.num_gpus)  # fmt: skip
    task = ray.remote(num_cpus=opts.num_cpus, num_gpus=opts.num_gpus, max_retries=0)(_task)
    cfg_data = worker_config(cfg)
    pending = {task.remote(cfg_data, point, is_quiet()): point for point in todo}
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            point = pending.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except Exception as e:  # a RayTaskError wraps the task's own exception
                cause = getattr(e, "cause", None)
                on_error(point, cause if isinstance(cause, BaseException) else e)
                continue
            on_result(point, result)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started_here:
            ray.shutdown()
