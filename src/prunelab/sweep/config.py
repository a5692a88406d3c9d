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
from typing import Any, Literal

import yaml
from pydantic import Field, PrivateAttr, ValidationError, field_validator

from prunelab.config import StrictModel
from prunelab.errors import PrunelabError

Loc = tuple[str | int, ...]


class Calibration(StrictModel):
    """Calibration windows shared by every point (computed once per sweep)."""

    source: str = "shakespeare"
    samples: int = Field(32, ge=1)
    seqlen: int = Field(512, ge=2)
    batch_size: int | None = Field(None, ge=1)
    seed: int = 0


class Evaluation(StrictModel):
    """Quality measurements of every point. `ppl[0]` is the headline perplexity used for budgets and plots."""

    ppl: list[str] = Field(default_factory=lambda: ["shakespeare"], min_length=1)
    seqlen: int = Field(512, ge=2)
    max_windows: int | None = Field(16, ge=1)
    batch_size: int | None = Field(None, ge=1)
    tasks: list[str] = Field(default_factory=list, description="zero-shot tasks (prunelab.evaluation.zeroshot)")
    task_data: str | None = Field(None, description="folder of local task files (offline zero-shot)")
    limit: int | None = Field(None, ge=1, description="examples per zero-shot task")


class Measurement(StrictModel):
    """Cost measurements of every point through `prunelab.measurement` (what `prunelab bench` measures).

    Lighter defaults than `prunelab bench`: one prompt length, batch 1, 3 repeats, because every point pays them.
    `enabled: false` keeps only the parameter counts (no timing, energy or checkpoint sizes).
    """

    enabled: bool = True
    prompt_len: int = Field(128, ge=1)
    gen_len: int = Field(32, ge=2)
    batches: list[int] = Field(default_factory=lambda: [1], min_length=1)
    repeats: int = Field(3, ge=1)
    warmup: int = Field(1, ge=0)
    threads: int | None = Field(None, ge=1)
    energy: Literal["auto", "rapl", "nvml", "estimate", "off"] = "auto"
    cpu_watts: float | None = Field(None, gt=0)
    country: str | None = None
    grid_intensity: float | None = Field(None, gt=0)
    size: bool = Field(True, description="write dense and compact checkpoints to a temp folder to measure them")
    sparse_kernels: bool = False


class GridEntry(StrictModel):
    """One method's slice of the grid: sparsities x patterns (x structured targets)."""

    method: str
    label: str | None = Field(None, description="name shown in plots instead of the method name")
    sparsities: list[float] = Field(default_factory=list)
    patterns: list[str] = Field(default_factory=lambda: ["unstructured"], min_length=1)
    structured_targets: list[str] = Field(default_factory=list, description="method structured: mlp, heads, ...")
    targets: list[str] | None = None
    ignore: list[str] = Field(default_factory=list)
    allocation: Literal["uniform", "owl"] = "uniform"
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("sparsities")
    @classmethod
    def _in_range(cls, v: list[float]) -> list[float]:
        for s in v:
            if not 0.0 < s < 1.0:
                raise ValueError(f"every sparsity must be in (0, 1), got {s}")
        if len(set(v)) != len(v):
            raise ValueError("sparsities repeat a value")
        return v


class SweepConfig(StrictModel):
    """A whole sweep. Everything except `grid` and `name` is shared by all points and fixed for a sweep folder."""

    name: str | None = None
    model: str | None = Field(None, description="HF folder, hub id or .gguf; omitted = embedded SmolLM2-135M")
    dtype: str = "auto"
    device: str = "cpu"
    calibration: Calibration = Field(default_factory=Calibration)
    evaluation: Evaluation = Field(default_factory=Evaluation)
    measurement: Measurement = Field(default_factory=Measurement)
    grid: list[GridEntry] = Field(min_length=1)

    _where: Callable[[Loc], str] | None = PrivateAttr(default=None)

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
