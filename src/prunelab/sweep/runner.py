"""Run a sweep: expand the grid, skip what the store already has, run the rest, commit each point as it finishes.

The driver (this process) is the only writer of the store, whatever the executor: the local executor runs points
here in grid order on one loaded model; the Ray executor (`ray_executor.py`) runs one point per task and hands each
result back here; both speak the callback types of `executor.py`, so neither imports the other. A point that raises
is logged and left out of the store (a rerun retries it); the other points go on. The dense baseline is point 0 of
every sweep, measured by the same code as every other point.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.contrib.logging import logging_redirect_tqdm

from prunelab._util import check_writable, environment, progress
from prunelab.errors import PrunelabError
from prunelab.models import check_device, load_model
from prunelab.sweep.config import SweepConfig
from prunelab.sweep.executor import EXECUTORS, OnError, OnResult, RayOptions
from prunelab.sweep.grid import Point, expand_grid
from prunelab.sweep.point import Context, check_inputs, check_model, run_point, snapshot
from prunelab.sweep.store import PointRecord, ResultStore, crash_hook

log = logging.getLogger(__name__)


@dataclass
class SweepOutcome:
    """What one invocation did."""

    folder: Path
    total: int
    already_done: int
    ran: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (label, one-line error)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "folder": str(self.folder)}


def run_local(cfg: SweepConfig, todo: list[Point], total: int, on_result: OnResult, on_error: OnError) -> None:
    """Load the model once, keep its dense weights on the CPU, and run the points in grid order."""
    if not todo:
        return
    t0 = time.perf_counter()
    lm = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
    check_model(cfg, lm.model)
    ctx = Context(cfg, lm, snapshot(lm.model))
    log.info("loaded %s and kept a CPU copy of its dense weights in %.1f s", lm.source, time.perf_counter() - t0)
    for point in todo:

        def say(msg: str, point: Point = point) -> None:
            log.info("[%d/%d] %s: %s", point.index + 1, total, point.label, msg)

        try:
            result = run_point(ctx, point, say)
        except Exception as e:
            on_error(point, e)
            continue
        on_result(point, result)


def run_sweep(
    cfg: SweepConfig, out: str | Path, executor: str = "local", ray: RayOptions | None = None
) -> SweepOutcome:
    """Run every point of `cfg` that `out/results.sqlite` does not hold yet; returns what happened."""
    if executor not in EXECUTORS:
        raise PrunelabError(f"unknown executor '{executor}'; use one of {', '.join(EXECUTORS)}")
    start = time.perf_counter()
    points = expand_grid(cfg)
    check_inputs(cfg, points)
    check_device(cfg.device)
    check_writable(out, "folder", "sweep folder")
    folder = Path(out)
    cfg._folder = folder.resolve()
    created = not folder.exists()
    try:
        return _run_sweep(cfg, folder, points, executor, ray, start)
    except BaseException:
        # A new folder that holds no finished point yet (broken model, interrupt before the first point) is only
        # a lock, a header-only CSV and an empty database: remove it rather than leave a half-made sweep.
        if created and not _has_points(folder):
            shutil.rmtree(folder, ignore_errors=True)
        raise


def _has_points(folder: Path) -> bool:
    try:
        with ResultStore(folder, write=False) as store:
            return bool(store.done_ids())
    except Exception:
        return False


def _run_sweep(
    cfg: SweepConfig, folder: Path, points: list[Point], executor: str, ray: RayOptions | None, start: float
) -> SweepOutcome:
    with ResultStore(folder) as store:
        store.check_settings(cfg.settings())
        run_no = int(store.get_meta("runs") or 0) + 1
        store.set_meta("runs", run_no)
        store.set_meta("config", cfg.model_dump())
        store.set_meta("points", [p.summary() for p in points])
        store.set_meta("environment", environment())
        done = store.done_ids()
        todo = [p for p in points if p.point_id not in done]
        outcome = SweepOutcome(folder, len(points), len(points) - len(todo))
        log.info(
            "sweep %s: %d points, %d already in %s, %d to run (%s executor)",
            cfg.name or folder.name, len(points), outcome.already_done, store.path, len(todo), executor,
        )  # fmt: skip
        store.export_csv()
        bar = progress(total=len(points), initial=outcome.already_done, unit="point", desc="sweep", dynamic_ncols=True)

        def on_result(point: Point, result: dict[str, Any]) -> None:
            result["details"]["run"] = run_no
            if not store.add(PointRecord.build(point, result, executor)):
                log.warning("%s was already stored; the new result is dropped", point.label)
            store.export_csv()
            outcome.ran += 1
            bar.update(1)
            log.info("[%d/%d] %s: done in %.1f s", point.index + 1, len(points), point.label, result["seconds"])
            crash_hook("between", point.index)

        def on_error(point: Point, exc: BaseException) -> None:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            outcome.failed.append((point.label, f"{type(exc).__name__}: {first}"))
            log.error("%s failed (%s: %s); left out of the store, a rerun retries it", point.label,
                      type(exc).__name__, first, exc_info=not isinstance(exc, PrunelabError))  # fmt: skip

        with logging_redirect_tqdm():
            try:
                if executor == "local":
                    run_local(cfg, todo, len(points), on_result, on_error)
                else:
                    from prunelab.sweep.ray_executor import run_ray

                    run_ray(cfg, todo, on_result, on_error, ray or RayOptions())
            finally:
                bar.close()
    outcome.seconds = time.perf_counter() - start
    return outcome


__all__ = ["EXECUTORS", "RayOptions", "SweepOutcome", "run_local", "run_sweep"]
