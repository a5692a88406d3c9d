"""Expand a sweep's grid into points, each with a stable id.

A point is one pruning configuration plus everything shared that affects its numbers (model, dtype, device,
calibration, evaluation, measurement). Its `point_id` is a hash of that resolved config in canonical JSON, so the
same point gets the same id in every run, on every machine and under every executor: that is what resume and the
store's uniqueness rest on. The dense baseline is always point 0 (method `dense`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Any

from prunelab.config.base import build
from prunelab.config.export import DeployConfig
from prunelab.config.pattern import parse_pattern
from prunelab.config.prune import PruneConfig
from prunelab.config.runtime import RuntimeConfig
from prunelab.errors import PrunelabError, did_you_mean
from prunelab.pruning import METHODS, get_method, make_pruner
from prunelab.sweep.config import CALIBRATION_FIELDS, RUNTIME_SETTINGS, SweepConfig

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
    def deploy(self) -> DeployConfig | None:
        """How the point is exported and where it is measured; None = torch, no export (today's points)."""
        raw = self.config.get("deploy")
        return None if raw is None else DeployConfig(**raw)

    @property
    def prune(self) -> PruneConfig | None:
        raw = self.config["prune"]
        return None if raw is None else PruneConfig(**raw)

    @property
    def runtime(self) -> RuntimeConfig:
        """Run-time settings (activation sparsity); only points that set them carry a `runtime` key, so the ids of
        every other point are what they were before the setting existed."""
        return RuntimeConfig(**self.config.get("runtime", {}))

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
    return get_method(method).capabilities.changes_shapes


def structured_prune_fields(target: str) -> dict[str, Any]:
    """Adapter to the structured method's config: the target is its option `target` (mlp, heads, layers, ...)."""
    return {"options": {"target": target}}


def _pct(s: float) -> str:
    return f"{s * 100:.4g}%"


def _is_list_field(key: str) -> bool:
    return key in PruneConfig.model_fields and "list[" in str(PruneConfig.model_fields[key].annotation)


def _varies(key: str, value: Any) -> bool:
    """A list varies the setting, except for list-typed fields (targets, ignore), where a list of lists does."""
    if not isinstance(value, list):
        return False
    if key.startswith("options.") or not _is_list_field(key):
        return True
    return bool(value) and all(isinstance(v, list) or v is None for v in value)


def _split(entry: Any, where: str) -> tuple[dict[str, Any], dict[str, Any], list[tuple[str, list[Any]]]]:
    """(fixed PruneConfig settings, fixed options, varying axes as (key, values)); options keys as `options.K`."""
    settings = entry.settings()
    options = settings.pop("options", None) or {}
    if not isinstance(options, dict):
        raise PrunelabError(f"{where}: options must be a mapping of method options")
    fixed: dict[str, Any] = {}
    varying: list[tuple[str, list[Any]]] = []
    for key, value in [*settings.items(), *((f"options.{k}", v) for k, v in options.items())]:
        if _varies(key, value):
            varying.append((key, value))
        else:
            fixed[key] = value
    fixed_options = {k.removeprefix("options."): v for k, v in fixed.items() if k.startswith("options.")}
    return {k: v for k, v in fixed.items() if not k.startswith("options.")}, fixed_options, varying


def _show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _describe(entry: Any, fixed: dict[str, Any], options: dict[str, Any]) -> str:
    name = entry.label or entry.method
    if entry.label is None:
        if fixed.get("allocation", "uniform") != "uniform":
            name += f" {fixed['allocation']}"
        if fixed.get("targets"):
            name += f" [{','.join(fixed['targets'])}]"
        if fixed.get("ignore"):
            name += f" [-{','.join(fixed['ignore'])}]"
        for key, value in fixed.items():
            if key not in ("allocation", "targets", "ignore"):
                name += f" {key}={_show(value)}"
        if options:
            name += " (" + ", ".join(f"{k}={v}" for k, v in sorted(options.items())) + ")"
    return name


def _shared(cfg: SweepConfig) -> dict[str, Any]:
    return {
        "model": cfg.model or "default",
        "dtype": cfg.dtype,
        "device": cfg.device,
        "evaluation": cfg.evaluation.model_dump(),
        "measurement": cfg.measurement.model_dump(),
    }


def _entry_points(cfg: SweepConfig, i: int, entry: Any) -> list[tuple[str, str, str, float, str | None, dict]]:
    """(label, series, pattern, sparsity, target, PruneConfig fields) for each point of one grid entry."""
    where = cfg.where
    if entry.method not in METHODS:
        raise PrunelabError(f"{where(('grid', i, 'method'))}: {did_you_mean(entry.method, METHODS, 'method')}")
    structured = is_structured(entry.method)
    if structured and not entry.structured_targets:
        raise PrunelabError(f"{where(('grid', i))}: method '{entry.method}' needs structured_targets (e.g. [mlp])")
    if not structured and entry.structured_targets:
        raise PrunelabError(f"{where(('grid', i, 'structured_targets'))}: only structured methods take targets")
    fixed, fixed_options, varying = _split(entry, where(("grid", i, "options")))
    sparsities, patterns = list(entry.sparsities), list(entry.patterns)
    calib = cfg.calibration
    base = {
        "method": entry.method,
        **{field: getattr(calib, key) for key, field in CALIBRATION_FIELDS.items()},
        **fixed,
        "options": dict(fixed_options),
    }
    name = _describe(entry, fixed, fixed_options)
    out = []
    for combo in itertools.product(*(values for _, values in varying)):
        fields = {**base, "options": dict(base["options"])}
        suffix = []
        for (key, _), value in zip(varying, combo, strict=True):
            if key.startswith("options."):
                fields["options"][key.removeprefix("options.")] = value
            else:
                fields[key] = value
            suffix.append(f"{key.removeprefix('options.')}={_show(value)}")
        combo_name = " ".join([name, *suffix])
        for j, pattern_text in enumerate(patterns):
            try:
                pattern = parse_pattern(str(pattern_text))
            except PrunelabError as e:
                raise PrunelabError(f"{where(('grid', i, 'patterns', j))}: {e}") from None
            if pattern.is_nm:
                if structured:
                    raise PrunelabError(f"{where(('grid', i, 'patterns', j))}: structured methods take no N:M pattern")
                assert pattern.sparsity is not None
                label = f"{combo_name} {pattern}"
                out.append((label, label, str(pattern), pattern.sparsity, None, fields))
                continue
            if not sparsities:
                raise PrunelabError(f"{where(('grid', i))}: pattern 'unstructured' needs a list of sparsities")
            for target in entry.structured_targets or [None]:
                series = f"{combo_name} {target}" if target else combo_name
                for s in sparsities:
                    point_fields = {**fields, "sparsity": s, "pattern": str(pattern)}
                    if target:
                        extra = structured_prune_fields(target)
                        point_fields["options"] = {**fields["options"], **extra.get("options", {})}
                    out.append((f"{series} {_pct(s)}", series, str(pattern), s, target, point_fields))
    return out


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _deploys(cfg: SweepConfig, i: int, entry: Any) -> list[DeployConfig | None]:
    """The entry's deploy axis: every quant x runtime it names (None: torch, no export)."""
    quants = _as_list(entry.quant) if entry.quant is not None else [None]
    runtimes = _as_list(entry.runtime) if entry.runtime is not None else ["torch"]
    out: list[DeployConfig | None] = []
    for q, r in itertools.product(quants, runtimes):
        d = build(DeployConfig, {"quant": q, "runtime": r}, "deploy settings")
        if d.is_default:
            out.append(None)
        else:
            out.append(d)
    if len({json.dumps(d.model_dump() if d else None) for d in out}) != len(out):
        raise PrunelabError(f"{cfg.where(('grid', i, 'quant'))}: quant/runtime repeat a value")
    return out


def _deploy_name(d: DeployConfig | None) -> str:
    if d is None:
        return ""
    return f" {d.quant}" + (" llamacpp" if d.runtime == "llamacpp" else "")


def _with_deploy(config: dict[str, Any], d: DeployConfig | None) -> dict[str, Any]:
    return config if d is None else {**config, "deploy": d.model_dump()}


def expand_grid(cfg: SweepConfig) -> list[Point]:
    """All points of a sweep in a fixed order: the dense baseline (and the dense model at every quant/runtime the
    grid deploys to, so pruning and quantization are compared at equal bytes), then each grid entry as written."""
    shared = _shared(cfg)
    dense_cfg = {**shared, "prune": None}
    points = [
        Point(0, point_hash(dense_cfg), DENSE, DENSE, DENSE, DENSE, 0.0, None, False, dense_cfg),
    ]
    seen: dict[str, str] = {points[0].point_id: "the dense baseline"}
    labels = {DENSE}
    deploys = [_deploys(cfg, i, entry) for i, entry in enumerate(cfg.grid)]
    for d in [d for ds in deploys for d in ds if d is not None]:
        config = _with_deploy(dense_cfg, d)
        pid = point_hash(config)
        if pid not in seen:
            label = DENSE + _deploy_name(d)
            seen[pid] = f"point '{label}'"
            labels.add(label)
            points.append(Point(len(points), pid, label, label, DENSE, DENSE, 0.0, None, False, config))
    for i, entry in enumerate(cfg.grid):
        expanded = [
            (label + _deploy_name(d), series + _deploy_name(d), pattern, sparsity, target, fields, d)
            for label, series, pattern, sparsity, target, fields in _entry_points(cfg, i, entry)
            for d in deploys[i]
        ]
        structured = is_structured(entry.method)
        for label, series, pattern, sparsity, target, fields, deploy in expanded:
            fields = {**fields, "pattern": pattern}
            runtime = {k: fields.pop(k) for k in RUNTIME_SETTINGS if k in fields}
            if "sparsity" not in fields:
                fields["sparsity"] = None
            try:
                prune_cfg = build(PruneConfig, fields, f"settings of {label}")
                make_pruner(prune_cfg)  # validates the method's options and the sparsity/pattern pair now
                runtime_cfg = build(RuntimeConfig, runtime, f"run-time settings of {label}")
            except PrunelabError as e:
                raise PrunelabError(f"{cfg.where(('grid', i))}: {label}: {e}") from None
            config = _with_deploy({**shared, "prune": prune_cfg.identity()}, deploy)
            if runtime_cfg.activation_sparsity > 0:
                config["runtime"] = {"activation_sparsity": runtime_cfg.activation_sparsity}
            pid = point_hash(config)
            if pid in seen:
                raise PrunelabError(f"{cfg.where(('grid', i))}: {label} repeats {seen[pid]}")
            seen[pid] = f"point '{label}'"
            if label in labels:
                label = f"{label} #{len(points)}"
            labels.add(label)
            shown = "structured" if structured else pattern
            points.append(
                Point(len(points), pid, label, series, entry.method, shown, sparsity, target, structured, config)
            )
    return points


def flat_settings(point: Point) -> dict[str, Any]:
    """A point's prune settings as one flat mapping (`options.K` for method options); {} for the dense point."""
    prune = point.config["prune"] or {}
    flat = {k: v for k, v in prune.items() if k != "options"}
    flat.update({f"options.{k}": v for k, v in (prune.get("options") or {}).items()})
    flat.update(point.config.get("runtime", {}))
    if prune:
        flat.update(point.config.get("deploy") or {"quant": None, "runtime": "torch"})
    return flat


def varying_settings(points: list[Point]) -> list[str]:
    """The prune settings whose values differ between the pruned points, in PruneConfig order."""
    flats = [flat_settings(p) for p in points if p.config["prune"] is not None]
    keys: list[str] = []
    for flat in flats:
        keys.extend(k for k in flat if k not in keys)
    return [k for k in keys if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flats}) > 1]
