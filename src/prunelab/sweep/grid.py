"""Expand a sweep's grid into points, each with a stable id.

A point is one pruning configuration plus everything shared that affects its numbers (model, dtype, device,
calibration, evaluation, measurement). Its `point_id` is a hash of that resolved config in canonical JSON, so the
same point gets the same id in every run, on every machine and under every executor: that is what resume and the
store's uniqueness rest on. The dense baseline is always point 0 (method `dense`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from prunelab.config import PruneConfig, build
from prunelab.errors import PrunelabError, did_you_mean
from prunelab.pruning import METHODS, make_pruner
from prunelab.pruning.masks import parse_pattern
from prunelab.sweep.config import GridEntry, SweepConfig

DENSE = "dense"


@dataclass(frozen=True)
class Point:
    """One configuration to measure. `prune` is None for the dense baseline."""

    index: int
    point_id: str
    label: str  # unique, human-readable: "wanda 50%", "sparsegpt 2:4", "structured mlp 30%"
    series: str  # what plots connect with a line: the label without the sparsity
    method: str
    pattern: str  # "dense", "unstructured" or "N:M"
    sparsity: float  # 0 for dense; 1 - N/M for N:M
    target: str | None  # structured target (mlp, heads, ...)
    structured: bool  # changes tensor shapes: needs a fresh copy of the model, not a mask restore
    config: dict[str, Any]  # the resolved config that `point_id` hashes

    @property
    def prune(self) -> PruneConfig | None:
        raw = self.config["prune"]
        return None if raw is None else PruneConfig(**raw)

    def summary(self) -> dict[str, Any]:
        return {
            "point_id": self.point_id,
            "label": self.label,
            "series": self.series,
            "method": self.method,
            "pattern": self.pattern,
            "sparsity": self.sparsity,
            "target": self.target,
            "structured": self.structured,
        }


def point_hash(config: dict[str, Any]) -> str:
    """sha256 of canonical JSON (sorted keys, no whitespace), 16 hex digits: stable across runs and machines."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def is_structured(method: str) -> bool:
    """Methods that remove whole units change shapes (a mask restore cannot undo them)."""
    return getattr(METHODS.get(method), "kind", None) == "structured"


def structured_prune_fields(target: str) -> dict[str, Any]:
    """Adapter to the structured method's config: the target is its option `target` (mlp, heads, layers, ...)."""
    return {"options": {"target": target}}


def _pct(s: float) -> str:
    return f"{s * 100:.4g}%"


def _describe(entry: GridEntry) -> str:
    name = entry.label or entry.method
    if entry.label is None:
        if entry.allocation != "uniform":
            name += f" {entry.allocation}"
        if entry.targets:
            name += f" [{','.join(entry.targets)}]"
        if entry.ignore:
            name += f" [-{','.join(entry.ignore)}]"
        if entry.options:
            name += " (" + ", ".join(f"{k}={v}" for k, v in sorted(entry.options.items())) + ")"
    return name


def _shared(cfg: SweepConfig) -> dict[str, Any]:
    return {
        "model": cfg.model or "default",
        "dtype": cfg.dtype,
        "device": cfg.device,
        "evaluation": cfg.evaluation.model_dump(),
        "measurement": cfg.measurement.model_dump(),
    }


def _entry_points(cfg: SweepConfig, i: int, entry: GridEntry) -> list[tuple[str, str, str, float, str | None, dict]]:
    """(label, series, pattern, sparsity, target, PruneConfig fields) for each point of one grid entry."""
    where = cfg.where
    if entry.method not in METHODS:
        raise PrunelabError(f"{where(('grid', i, 'method'))}: {did_you_mean(entry.method, METHODS, 'method')}")
    structured = is_structured(entry.method)
    if structured and not entry.structured_targets:
        raise PrunelabError(f"{where(('grid', i))}: method '{entry.method}' needs structured_targets (e.g. [mlp])")
    if not structured and entry.structured_targets:
        raise PrunelabError(f"{where(('grid', i, 'structured_targets'))}: only structured methods take targets")
    calib = cfg.calibration
    base = {
        "method": entry.method,
        "targets": entry.targets,
        "ignore": entry.ignore,
        "calib": calib.source,
        "calib_samples": calib.samples,
        "calib_seqlen": calib.seqlen,
        "calib_batch_size": calib.batch_size,
        "seed": calib.seed,
        "allocation": entry.allocation,
        "options": dict(entry.options),
    }
    name = _describe(entry)
    out = []
    for j, pattern_text in enumerate(entry.patterns):
        try:
            pattern = parse_pattern(str(pattern_text))
        except PrunelabError as e:
            raise PrunelabError(f"{where(('grid', i, 'patterns', j))}: {e}") from None
        if pattern.is_nm:
            if structured:
                raise PrunelabError(f"{where(('grid', i, 'patterns', j))}: structured methods take no N:M pattern")
            assert pattern.sparsity is not None
            out.append((f"{name} {pattern}", f"{name} {pattern}", str(pattern), pattern.sparsity, None, base))
            continue
        if not entry.sparsities:
            raise PrunelabError(f"{where(('grid', i))}: pattern 'unstructured' needs a list of sparsities")
        for target in entry.structured_targets or [None]:
            series = f"{name} {target}" if target else name
            for s in entry.sparsities:
                fields = {**base, "sparsity": s, "pattern": str(pattern)}
                if target:
                    extra = structured_prune_fields(target)
                    fields = {**fields, **extra, "options": {**base["options"], **extra.get("options", {})}}
                out.append((f"{series} {_pct(s)}", series, str(pattern), s, target, fields))
    return out


def expand_grid(cfg: SweepConfig) -> list[Point]:
    """All points of a sweep in a fixed order: the dense baseline, then each grid entry as written."""
    shared = _shared(cfg)
    dense_cfg = {**shared, "prune": None}
    points = [
        Point(0, point_hash(dense_cfg), DENSE, DENSE, DENSE, DENSE, 0.0, None, False, dense_cfg),
    ]
    seen: dict[str, str] = {points[0].point_id: "the dense baseline"}
    labels = {DENSE}
    for i, entry in enumerate(cfg.grid):
        for label, series, pattern, sparsity, target, fields in _entry_points(cfg, i, entry):
            fields = {**fields, "pattern": pattern}
            if "sparsity" not in fields:
                fields["sparsity"] = None
            prune_cfg = build(PruneConfig, fields, f"settings of {label}")
            try:
                make_pruner(prune_cfg)  # validates the method's options and the sparsity/pattern pair now
            except PrunelabError as e:
                raise PrunelabError(f"{cfg.where(('grid', i))}: {label}: {e}") from None
            config = {**shared, "prune": prune_cfg.model_dump()}
            pid = point_hash(config)
            if pid in seen:
                raise PrunelabError(f"{cfg.where(('grid', i))}: {label} repeats {seen[pid]}")
            seen[pid] = f"point '{label}'"
            if label in labels:
                label = f"{label} #{len(points)}"
            labels.add(label)
            structured = is_structured(entry.method)
            shown = "structured" if structured else pattern
            points.append(
                Point(len(points), pid, label, series, entry.method, shown, sparsity, target, structured, config)
            )
    return points
