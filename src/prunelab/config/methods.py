"""Each method's own options (`PruneConfig.options`, `--option KEY=VALUE`, the structured shortcuts).

Defined here, apart from the methods' maths, so the CLI can offer their choices without importing torch. A method
names its model as `Options`; unknown keys are errors.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MagnitudeOptions(NoOptions):
    scope: Literal["layer", "global"] = Field("layer", description="rank per layer or over all selected layers")


class SparseGPTOptions(NoOptions):
    dampening: float = Field(0.01, gt=0, description="fraction of the mean Hessian diagonal added to it")
    blocksize: int = Field(128, ge=1)
    max_retries: int = Field(6, ge=0, description="tenfold dampening increases tried after a failed Cholesky")
    hessian_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="precision of the X^T X products (the sum stays float32); auto = bfloat16 on a CPU "
        "that multiplies it natively (AVX512-BF16, AMX), else float32",
    )


Target = Literal["mlp", "heads", "layers", "mlp+heads"]
Importance = Literal["magnitude", "activation", "taylor", "minitron", "block-influence"]
TARGETS: tuple[str, ...] = get_args(Target)
IMPORTANCES: tuple[str, ...] = get_args(Importance)


class StructuredOptions(NoOptions):
    target: Target = Field("mlp", description="units to remove")
    importance: Importance | None = Field(
        None, description="default: activation; block-influence for layers (taylor also scores layers)"
    )
    taylor: Literal["element", "vector"] = Field(
        "element", description="taylor: sum of |grad*weight| over a unit's weights, or of |grad . weight| per vector"
    )
    minitron_seq: Literal["mean", "l2"] = Field("mean", description="minitron: reduce |activation| over a window")
    minitron_batch: Literal["l2", "mean"] = Field("l2", description="minitron: then reduce over the windows")
    iterative_steps: int = Field(1, ge=1, description="remove the target in N steps, re-scoring between them")
    compensate: bool = Field(False, description="FLAP bias compensation of the removed units' mean output")
    multiple_of: int = Field(
        1,
        ge=1,
        description="round the kept MLP width to a multiple of N (32 lets llama.cpp quantize the MLP; docs/gguf.md)",
    )
    recover_steps: int = Field(0, ge=0, description="LoRA fine-tune steps on the calibration windows (needs peft)")
    recover_lr: float = Field(2e-4, gt=0)
    recover_rank: int = Field(8, ge=1)
    recover_batch_size: int = Field(1, ge=1)


class TrajectoryOptions(NoOptions):
    tracker: str | None = Field(None, description="saved tracker (TrajectoryTracker.save); default: the attached one")
    prune_rate: float | None = Field(None, gt=0, description="threshold mode: std(|W_avg|) x prune_rate per layer")
    weights: Literal["final", "average"] = Field("final", description="keep the final weights or the averaged clone")


class RiaOptions(NoOptions):
    alpha: float = Field(0.5, ge=0, description="exponent a of the input-activation norm ||x_j||^a")
    scope: Literal["row", "layer"] = Field(
        "row",
        description="unstructured: rank within each output row (Wanda's group) or the whole layer (the "
        "reference code's default)",
    )
    permute: bool | Literal["lsa"] = Field(
        True,
        description="N:M only (ignored for unstructured): reorder input channels before the N:M mask where "
        "the producing rows can be permuted to match (MLP and attention output projections); 'lsa' adds the "
        "linear-sum-assignment refinement (needs scipy: the 'lsa' extra)",
    )
