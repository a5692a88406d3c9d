"""Typed configuration objects: unknown keys are errors, not silently ignored settings.

One plain config object per verb; the algorithm is chosen by `method` (torchao's `quantize_` style). Method-specific
settings live in `options` and are validated by that method's own `Options` model when the method is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from prunelab.errors import PrunelabError

if TYPE_CHECKING:
    from prunelab.pruning.masks import Pattern


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=True)


class PruneConfig(StrictModel):
    """What to prune and how. `sparsity` may be omitted for N:M patterns (it is then 1 - N/M)."""

    method: str = "wanda"
    sparsity: float | None = None
    pattern: str = "unstructured"
    targets: list[str] | None = None
    ignore: list[str] = Field(default_factory=list)
    calib: str = "shakespeare"
    calib_samples: int = Field(32, ge=1)
    calib_seqlen: int = Field(512, ge=2)
    calib_batch_size: int | None = Field(None, ge=1, description="windows per forward; default 1 on CPU, 8 on GPU")
    seed: int = 0
    allocation: Literal["uniform", "owl"] = "uniform"
    owl_lambda: float = Field(0.08, ge=0.0, lt=1.0, description="OWL: max deviation of a block from the target")
    owl_m: float = Field(5.0, gt=0.0, description="OWL: a score is an outlier above M x the block's mean score")
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("sparsity")
    @classmethod
    def _sparsity_range(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 < v < 1.0:
            raise ValueError(f"sparsity must be in (0, 1), got {v}")
        return v

    @property
    def pattern_obj(self) -> Pattern:
        from prunelab.pruning.masks import parse_pattern  # masks is pure; imported late to keep config a leaf

        return parse_pattern(self.pattern)

    def calibration_record(self) -> dict[str, Any]:
        """Where the calibration data came from, as prune reports record it."""
        return {"source": self.calib, "samples": self.calib_samples, "seqlen": self.calib_seqlen, "seed": self.seed}

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


def build(model_cls: type[StrictModel], data: dict[str, Any], what: str) -> Any:
    """Validate a config dict, turning pydantic's report into one line per problem."""
    try:
        return model_cls(**data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or what}: {err['msg']}" for err in e.errors())
        raise PrunelabError(f"invalid {what}: {problems}") from e
