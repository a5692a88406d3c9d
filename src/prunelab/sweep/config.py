"""The sweep YAML: a strict schema whose errors name the file and line, so a typo in a long grid is found at once.

Why a custom YAML loader: YAML 1.1 (PyYAML's dialect) reads an unquoted `2:4` as the base-60 integer 124, which
would silently turn an N:M pattern into nonsense; the loader below drops the sexagesimal forms, so `2:4` stays the
string "2:4". It also rejects duplicate keys (PyYAML keeps the last one silently). The document is composed into
nodes first, so a pydantic error location such as `grid[1].sparsities[0]` is mapped back to its node's line.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, PrivateAttr, ValidationError, create_model, field_validator

from prunelab.config.base import StrictModel, section
from prunelab.config.bench import BenchConfig
from prunelab.config.evaluation import PRUNE_EVAL_WINDOWS, EvalConfig
from prunelab.config.export import DEPLOY_HELP
from prunelab.config.models import Dtype
from prunelab.config.prune import PruneConfig
from prunelab.config.runtime import RuntimeConfig
from prunelab.errors import PrunelabError

Loc = tuple[str | int, ...]


Calibration = section(
    "Calibration",
    "Calibration windows shared by every point (computed once per sweep; a grid entry may override any of them).",
    PruneConfig,
    {"source": "calib", "samples": "calib_samples", "seqlen": "calib_seqlen", "batch_size": "calib_batch_size",
     "seed": "seed"},
)  # fmt: skip
# grid entry key -> PruneConfig field, for the calibration settings a grid entry overrides
CALIBRATION_FIELDS = {"source": "calib", "samples": "calib_samples", "seqlen": "calib_seqlen",
                      "batch_size": "calib_batch_size", "seed": "seed"}  # fmt: skip


class Evaluation(EvalConfig):
    """Quality measurements of every point. `ppl[0]` is the headline perplexity used for budgets and plots."""

    ppl: list[str] = Field(default_factory=lambda: ["shakespeare"], min_length=1)
    max_windows: int | None = Field(PRUNE_EVAL_WINDOWS, ge=1)


Measurement = section(
    "Measurement",
    """Cost measurements of every point through `prunelab.measurement` (what `prunelab bench` measures).

    The fields are `BenchConfig`'s, with lighter defaults because every point pays them: one prompt length, batch 1,
    3 repeats. `enabled: false` keeps only the parameter counts (no timing, energy or checkpoint sizes).""",
    BenchConfig,
    {k: k for k in ("gen_len", "batches", "repeats", "warmup", "threads", "energy", "cpu_watts", "country",
                    "region", "grid_intensity", "size", "sparse_kernels")},
    defaults={"gen_len": 32, "batches": [1], "repeats": 3, "cpu_watts": None},
    annotations={"cpu_watts": float | None},
    extra={
        "enabled": (bool, Field(True, description="measure costs at all")),
        "prompt_len": (int, Field(128, ge=1, description="the prefill length (one per sweep)")),
    },
)  # fmt: skip

# PruneConfig fields a grid entry sets or varies under their own name. `sparsity` and `pattern` are set through the
# grid's classic axes `sparsities` and `patterns`; `method` is the entry's own key.
GRID_SETTINGS = tuple(f for f in PruneConfig.model_fields if f not in ("method", "sparsity", "pattern"))
# RuntimeConfig fields a grid entry sets or varies too: a point with activation sparsity > 0 calibrates thresholds on
# its pruned model and is evaluated and measured with the runtime applied (`sweep/point.py`).
RUNTIME_SETTINGS = ("activation_sparsity",)
AXES = {"sparsity": "sparsities", "pattern": "patterns"}


class _GridEntryBase(StrictModel):
    """One method's slice of the grid: a prune config whose settings may be lists to vary.

    Any `PruneConfig` field may be set (`owl_lambda: 0.04`) or varied (`owl_lambda: [0.04, 0.12]`), and so may every
    method option (`options: {importance: [magnitude, activation]}`). A field whose value is itself a list
    (`targets`, `ignore`) varies when given a list of lists. Sparsities and patterns are the grid's classic axes
    (`sparsities`, `patterns`); structured methods vary their units with `structured_targets`. Values are validated
    by `PruneConfig` itself when each point is built.
    """

    method: str
    label: str | None = Field(None, description="name shown in plots instead of the method name")
    sparsities: list[float] = Field(default_factory=list)
    patterns: list[str] = Field(default_factory=lambda: ["unstructured"], min_length=1)
    structured_targets: list[str] = Field(default_factory=list, description="method structured: mlp, heads, ...")
    quant: Any = Field(None, description=DEPLOY_HELP["quant"])
    runtime: Any = Field(None, description=DEPLOY_HELP["runtime"])

    @field_validator("sparsities")
    @classmethod
    def _in_range(cls, v: list[float]) -> list[float]:
        for s in v:
            if not 0.0 < s < 1.0:
                raise ValueError(f"every sparsity must be in (0, 1), got {s}")
        if len(set(v)) != len(v):
            raise ValueError("sparsities repeat a value")
        return v

    def settings(self) -> dict[str, Any]:
        """The PruneConfig fields this entry sets (values possibly lists to vary), in PruneConfig order."""
        return {k: getattr(self, k) for k in (*GRID_SETTINGS, *RUNTIME_SETTINGS) if k in self.model_fields_set}


GridEntry = create_model(
    "GridEntry",
    __base__=_GridEntryBase,
    __module__=__name__,
    **{name: (Any, Field(None, description=PruneConfig.model_fields[name].description)) for name in GRID_SETTINGS},
    **{name: (Any, Field(None, description=RuntimeConfig.model_fields[name].description))
       for name in RUNTIME_SETTINGS},
)  # fmt: skip


class SweepConfig(StrictModel):
    """A whole sweep. Everything except `grid` and `name` is shared by all points and fixed for a sweep folder."""

    name: str | None = None
    model: str | None = Field(None, description="HF folder, hub id or .gguf; omitted = embedded SmolLM2-135M")
    dtype: Dtype = "auto"
    device: str = "cpu"
    calibration: Calibration = Field(default_factory=Calibration)  # type: ignore[valid-type]
    evaluation: Evaluation = Field(default_factory=Evaluation)
    measurement: Measurement = Field(default_factory=Measurement)  # type: ignore[valid-type]
    grid: list[GridEntry] = Field(min_length=1)  # type: ignore[valid-type]

    _where: Callable[[Loc], str] | None = PrivateAttr(default=None)
    _folder: Path | None = PrivateAttr(default=None)  # the sweep folder (points export their GGUF below it)

    def where(self, loc: Loc) -> str:
        """`FILE:LINE: loc` for an error about `loc` (just `loc` when the config did not come from a file)."""
        return self._where(loc) if self._where is not None else (loc_str(loc) or "sweep config")

    def settings(self) -> dict[str, Any]:
        """What every point shares: a sweep folder keeps these fixed (the grid may grow between runs)."""
        return self.model_dump(exclude={"grid", "name"})


# --- YAML loading with line numbers -------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1's base-60 numbers (`2:4` must stay a string)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)"
        r"|\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def loc_str(loc: Loc) -> str:
    """('grid', 1, 'sparsities', 0) -> 'grid[1].sparsities[0]'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _node_at(root: yaml.Node, loc: Loc) -> yaml.Node:
    """The deepest node along `loc` (a missing key points at its parent mapping)."""
    node = root
    for part in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            match = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
            if match is None:
                break
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
        else:
            break
    return node


def _check_duplicate_keys(node: yaml.Node, name: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for k, v in node.value:
            key = getattr(k, "value", None)
            if key in seen:
                raise PrunelabError(f"{name}:{k.start_mark.line + 1}: key '{key}' repeats the one on line {seen[key]}")
            seen[key] = k.start_mark.line + 1
            _check_duplicate_keys(v, name)
    elif isinstance(node, yaml.SequenceNode):
        for v in node.value:
            _check_duplicate_keys(v, name)


def parse_sweep_yaml(text: str, name: str = "sweep.yaml") -> SweepConfig:
    """Validate a sweep YAML; every problem is reported as `NAME:LINE: location: message`."""
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            raise PrunelabError(f"{name}: the sweep config is empty")
        _check_duplicate_keys(root, name)
        data = loader.construct_document(root)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise PrunelabError(f"{name}{line}: invalid YAML: {e.problem or e.context}") from e
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise PrunelabError(f"{name}:{root.start_mark.line + 1}: the sweep config must be a mapping of settings")

    def where(loc: Loc) -> str:
        return f"{name}:{_node_at(root, loc).start_mark.line + 1}: {loc_str(loc) or 'top level'}"

    try:
        cfg = SweepConfig(**data)
    except ValidationError as e:
        problems = [f"{where(tuple(err['loc']))}: {err['msg']}" for err in e.errors()]
        raise PrunelabError("; ".join(problems)) from e
    cfg._where = where
    return cfg


def load_sweep_config(path: str | Path) -> SweepConfig:
    """Read and validate a sweep YAML file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PrunelabError(f"cannot read sweep config '{path}': {e}") from e
    return parse_sweep_yaml(text, str(path))
