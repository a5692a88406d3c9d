"""What to prune and how: the one definition of every prune setting and its default.

The CLI flags of `prunelab prune` and the keys of a sweep's grid entries are built from these fields (see
`prunelab.cli.prune` and `prunelab.sweep.grid`), so a new setting is added here once. Method-specific settings
live in `options` and are validated by that method's own options model (`prunelab.config.methods`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import Field, field_validator, model_validator

from prunelab.config.base import StrictModel
from prunelab.config.pattern import Pattern, parse_pattern
from prunelab.errors import PrunelabError

Allocation = Literal["uniform", "owl", "alpha"]
ReconstructScope = Literal["block", "separate"]
ReconstructTarget = Literal["block", "model"]
ALLOCATIONS: tuple[str, ...] = get_args(Allocation)
AUTO = "auto"
# `--owl-lambda auto` / `--owl-m auto`: the candidates searched (lambda 0 is uniform, so the search may keep it) and
# how many calibration windows are held out to score them (see `prunelab.pruning.owl_auto`).
OWL_LAMBDA_GRID: tuple[float, ...] = (0.0, 0.04, 0.08, 0.12, 0.16, 0.2)
OWL_M_GRID: tuple[float, ...] = (3.0, 5.0, 7.0, 10.0)
OWL_AUTO_HOLDOUT = 4
# `prunelab prune` without --sparsity on an unstructured pattern (the API and the sweep ask for it explicitly).
DEFAULT_SPARSITY = 0.5
# The PruneConfig fields each stage reads (`prunelab.pruning.stages`); the CLI and the recipe use this map.
STAGE_SETTINGS: dict[str, tuple[str, ...]] = {
    "dsnot": ("dsnot_cycles", "dsnot_threshold"),
    "reconstruct": ("reconstruct_steps", "reconstruct_lr", "reconstruct_scope", "reconstruct_target"),
}
# Fields added after sweep stores existed: a point's identity omits them while at their default, so the ids of
# every point that does not use them stay what they were (see `PruneConfig.identity`).
LATER_FIELDS: tuple[str, ...] = ("alpha_eps", "stages", *(f for fields in STAGE_SETTINGS.values() for f in fields))


class PruneConfig(StrictModel):
    """What to prune and how. `sparsity` may be omitted for N:M patterns (it is then 1 - N/M)."""

    method: str = Field("wanda", description="pruning method, see `prunelab methods`")
    sparsity: float | None = Field(None, description="fraction of weights removed (1 - N/M for an N:M pattern)")
    pattern: str = Field("unstructured", description="unstructured or N:M, e.g. 2:4 (N kept of every M)")
    targets: list[str] | None = Field(None, description="layer names or re:REGEX to prune (default all)")
    ignore: list[str] = Field(default_factory=list, description="layer names or re:REGEX to leave dense")
    calib: str = Field("shakespeare", description="calibration source (offline)")
    calib_samples: int = Field(32, ge=1, description="calibration windows")
    calib_seqlen: int = Field(512, ge=2, description="tokens per calibration window")
    calib_batch_size: int | None = Field(None, ge=1, description="windows per forward; default 1 on CPU, 8 on GPU")
    seed: int = Field(0, description="seed of the calibration windows and of the pruning itself")
    allocation: Allocation = Field(
        "uniform", description="per-block sparsity: uniform, owl (outliers) or alpha (AlphaPruning, weights only)"
    )
    owl_lambda: Annotated[float, Field(ge=0.0, lt=1.0)] | Literal["auto"] = Field(
        0.08,
        description="OWL: max deviation of a block from the target, or auto: the lambda grid "
        f"{','.join(f'{x:g}' for x in OWL_LAMBDA_GRID)} scored by loss on {OWL_AUTO_HOLDOUT} held-out calibration "
        "windows (one prune per candidate, then the final prune)",
    )
    owl_m: Annotated[float, Field(gt=0.0)] | Literal["auto"] = Field(
        5.0,
        description="OWL: a score is an outlier above M x the block's mean score, or auto: the M grid "
        f"{','.join(f'{x:g}' for x in OWL_M_GRID)} scored like --owl-lambda auto",
    )
    alpha_eps: float = Field(
        0.2, gt=0.0, lt=1.0, description="alpha: blocks get target x (1 +/- eps) sparsity (paper: 0.2 Wanda/SparseGPT)"
    )
    options: dict[str, Any] = Field(default_factory=dict, description="method options (see `prunelab methods`)")
    stages: list[str] = Field(
        default_factory=list, description="stages run with a layer-wise method: dsnot (mask refinement), reconstruct"
    )
    dsnot_cycles: int = Field(50, gt=0, description="dsnot: prune-and-grow swaps tried per output row")
    dsnot_threshold: float = Field(0.0, ge=0.0, description="dsnot: a row stops once |its expected error| <= this")
    reconstruct_steps: int = Field(32, gt=0, description="reconstruct: Adam steps per block, a calibration batch each")
    reconstruct_lr: float = Field(1e-4, gt=0.0, description="reconstruct: Adam learning rate")
    reconstruct_scope: ReconstructScope = Field(
        "block", description="reconstruct: match each block's output, or its attention and MLP outputs separately"
    )
    reconstruct_target: ReconstructTarget = Field(
        "block",
        description="reconstruct: targets from the dense block on the pruned model's inputs (block), or the dense "
        "model's own hidden states (model: later blocks also correct the error of earlier ones)",
    )

    @field_validator("sparsity")
    @classmethod
    def _sparsity_range(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 < v < 1.0:
            raise ValueError(f"sparsity must be in (0, 1), got {v}")
        return v

    @model_validator(mode="after")
    def _alpha_range(self) -> PruneConfig:
        if self.allocation == "alpha" and self.sparsity is not None and self.sparsity * (1 + self.alpha_eps) >= 1:
            raise ValueError(f"alpha: sparsity {self.sparsity:g} x (1 + alpha_eps {self.alpha_eps:g}) >= 1")
        return self

    @property
    def owl_auto(self) -> bool:
        """OWL with lambda or M chosen by `prunelab.pruning.owl_auto` rather than given."""
        return self.allocation == "owl" and AUTO in (self.owl_lambda, self.owl_m)

    def identity(self) -> dict[str, Any]:
        """The settings that identify a result (a sweep point's hashed config): every field, except the
        `LATER_FIELDS` still at their default, so adding a setting keeps older ids valid."""
        out = self.model_dump()
        for name in LATER_FIELDS:
            if out[name] == PruneConfig.model_fields[name].get_default(call_default_factory=True):
                del out[name]
        return out

    def recipe(self) -> dict[str, Any]:
        """Everything needed to redo this prune, grouped: the method with its options, the pattern, the allocation,
        the calibration and each stage with the settings it reads (prune reports record it)."""
        allocation: dict[str, Any] = {"scheme": self.allocation}
        if self.allocation == "owl":
            allocation.update(owl_lambda=self.owl_lambda, owl_m=self.owl_m)
        elif self.allocation == "alpha":
            allocation.update(alpha_eps=self.alpha_eps)
        return {
            "method": self.method,
            "options": dict(self.options),
            "pattern": self.pattern,
            "sparsity": self.sparsity,
            "targets": self.targets,
            "ignore": list(self.ignore),
            "allocation": allocation,
            "calibration": self.calibration_record(),
            "stages": [{"name": s, **{f: getattr(self, f) for f in STAGE_SETTINGS.get(s, ())}} for s in self.stages],
        }

    @property
    def pattern_obj(self) -> Pattern:
        return parse_pattern(self.pattern)

    def calibration_record(self) -> dict[str, Any]:
        """Where the calibration data came from, as prune reports record it."""
        return {"source": self.calib, "samples": self.calib_samples, "seqlen": self.calib_seqlen, "seed": self.seed}

    def calib_batch(self, device_type: str) -> int:
        """Windows per calibration forward: as asked, else 1 on a CPU (measured: batching there only adds memory
        traffic) and 8 on an accelerator."""
        return self.calib_batch_size or (1 if device_type == "cpu" else 8)

    def resolved_sparsity(self) -> float:
        """The sparsity to apply, reconciling --sparsity with an N:M pattern."""
        pattern = self.pattern_obj
        if pattern.is_nm:
            implied = pattern.sparsity
            assert implied is not None
            if self.sparsity is not None and abs(self.sparsity - implied) > 1e-9:
                raise PrunelabError(
                    f"pattern {pattern} implies sparsity {implied:g}, but sparsity {self.sparsity:g} was given"
                )
            return implied
        if self.sparsity is None:
            raise PrunelabError("sparsity is required for unstructured pruning (e.g. --sparsity 0.5)")
        return self.sparsity
