"""The Ray executor against the local one: same points, same configs, same measured quality, same store layout.

A local Ray instance with two CPUs (`ray.init(num_cpus=2)`), one point per task. Skipped when Ray is not installed
(`pip install 'prunelab[sweep]'`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from prunelab.sweep import RayOptions, ResultStore, load_sweep_config, run_sweep
from tests.test_sweep import tiny_root, write_config  # noqa: F401 - tiny_root is a fixture

ray = pytest.importorskip("ray")

GRID = "grid:\n  - method: magnitude\n    sparsities: [0.5]\n  - method: wanda\n    patterns: [2:4]\n"


def test_ray_executor_gives_the_same_rows_as_local(tiny_root: Path, tmp_path: Path) -> None:  # noqa: F811
    cfg = load_sweep_config(write_config(tiny_root, GRID, name="ray.yaml"))
    local = run_sweep(cfg, tmp_path / "local")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = run_sweep(cfg, tmp_path / "ray", executor="ray", ray=RayOptions(num_cpus=1))
    finally:
        ray.shutdown()
    assert (local.ran, remote.ran, remote.failed) == (3, 3, [])
    with ResultStore(tmp_path / "local", write=False) as a, ResultStore(tmp_path / "ray", write=False) as b:
        rows_local, rows_ray = a.records(), b.records()
    assert [r.point_id for r in rows_ray] == [r.point_id for r in rows_local]
    assert [r.label for r in rows_ray] == ["dense", "magnitude 50%", "wanda 2:4"]
    for lr, rr in zip(rows_local, rows_ray, strict=True):
        assert rr.config == lr.config and rr.executor == "ray" and lr.executor == "local"
        assert set(rr.metrics) == set(lr.metrics)
        for name in ("params", "nonzero_params", "achieved_sparsity"):
            assert rr.metrics[name] == lr.metrics[name], name
        # Another process may sum in another order: equal up to float rounding.
        assert rr.metrics["perplexity"] == pytest.approx(lr.metrics["perplexity"], rel=1e-5)
    # Rerunning with Ray resumes like the local executor: nothing left to do.
    again = run_sweep(cfg, tmp_path / "ray", executor="ray")
    assert (again.ran, again.already_done) == (0, 3)
