"""Run-time sparsity (what `eval`, `bench`, `generate` apply to a loaded model) and the calibration of activation
thresholds (`prunelab calibrate-activations`): one definition of each setting, torch-free.

The calibration source, samples, seqlen and seed are PruneConfig's calibration fields (same meaning, same
defaults), viewed through `config.base.section`.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, field_validator

from prunelab.config.base import StrictModel, section
from prunelab.config.prune import PruneConfig

# uniform: every input at the level. greedy: TEAL's block-wise greedy, raise the input with the least output error
# per skipped weight. greedy-time: the same walk, but the least error per predicted second saved (the measured
# per-shape cost of the kernel the runtime will run, `runtime/costs.py`).
ActAllocation = Literal["uniform", "greedy", "greedy-time"]
ACT_ALLOCATIONS: tuple[str, ...] = get_args(ActAllocation)
GREEDY_ALLOCATIONS: tuple[str, ...] = ("greedy", "greedy-time")
# Greedy search: calibration tokens each candidate is scored on, and the sparsity step of one raise.
GREEDY_TOKENS = 2048
GREEDY_STEP = 0.05
SparseKernels = Literal["auto", "off"]
# One saved model serves every level of this grid (0 to 0.9 by 0.05).
DEFAULT_LEVELS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(19))
# The highest sparsity calibration gives any one input (greedy allocation moves levels up to it).
MAX_LEVEL = 0.95


class RuntimeConfig(StrictModel):
    """How a loaded model runs: activation sparsity level (needs a threshold table) and sparse kernels."""

    activation_sparsity: float = Field(
        0.0, description="fraction of each Linear's input entries zeroed at run time (needs a calibrated folder)"
    )
    sparse_kernels: SparseKernels = Field(
        "auto", description="auto: measured kernels per layer shape (CSR for weight-sparse layers of a compact folder "
        "above break-even, gathered columns for activation sparsity); off: dense kernels")  # fmt: skip

    @field_validator("activation_sparsity")
    @classmethod
    def _level_range(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError(f"activation sparsity must be in [0, 1), got {v}")
        return v


_CalibFields = section(
    "_CalibFields",
    "The calibration fields of PruneConfig.",
    PruneConfig,
    {k: k for k in ("calib", "calib_samples", "calib_seqlen", "calib_batch_size", "seed")},
)


class ActivationCalibConfig(_CalibFields):  # type: ignore[misc,valid-type]
    """What `prunelab calibrate-activations` measures: |x| thresholds per Linear input for a grid of levels."""

    allocation: ActAllocation = Field(
        "uniform",
        description="per-layer levels: uniform; greedy (TEAL: more sparsity where it costs less error per skipped "
        "weight); greedy-time (less error per predicted second saved, from measured kernel costs per shape)",
    )
    greedy_tokens: int = Field(
        GREEDY_TOKENS, ge=1, description="greedy: calibration tokens each candidate raise is scored on (the first "
        "windows; fewer is faster, noisier)")  # fmt: skip
    greedy_step: float = Field(GREEDY_STEP, gt=0.0, lt=1.0, description="greedy: sparsity added by one raise")
    greedy_lazy: bool = Field(
        False, description="greedy: re-score only the best candidate of each raise (about 2 block forwards per raise "
        "instead of one per input; exact when error increases add up over inputs, else an approximation)")  # fmt: skip
    cost_table: str | None = Field(
        None, description="greedy-time: kernel costs to reuse (a calibrated folder, its table or a costs JSON) "
        "instead of measuring them; the same costs give the same allocation")  # fmt: skip
    exclude: list[str] = Field(
        default_factory=list, description="layer names or re:REGEX left dense (lm_head is never sparse)"
    )
    levels: list[float] = Field(
        default_factory=lambda: list(DEFAULT_LEVELS), min_length=1, description="calibrated activation levels"
    )

    @field_validator("levels")
    @classmethod
    def _levels_range(cls, v: list[float]) -> list[float]:
        if any(not 0.0 <= x <= MAX_LEVEL for x in v):
            raise ValueError(f"levels must lie in [0, {MAX_LEVEL:g}], got {v}")
        return v
