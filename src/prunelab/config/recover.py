"""Recovery training after structured pruning: the one definition of its settings (`prunelab recover`, and
`prunelab prune --recover`, whose `--recover-*` flags are these fields under another prefix).

Why a budget in tokens and not steps: tokens are what a user pays for in time and what papers report (Minitron,
Sheared-LLaMA), and they stay comparable when batch size, sequence length or the number of processes change.
`teacher_topk` refuses `hidden_mse`: caching every block's hidden states would cost L x width per token per block,
far more than the top-k logits, and the point of the cache is not to run the teacher at all.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, model_validator

from prunelab.config.base import StrictModel

Mode = Literal["distill", "lora"]
MODES: tuple[str, ...] = get_args(Mode)
Adapter = Literal["full", "lora"]


class RecoverConfig(StrictModel):
    """How to recover a structured-pruned student: from the dense teacher (distill) or by next-token loss (lora)."""

    mode: Mode = Field("distill", description="distill: KL to the teacher's token distributions; lora: next-token "
                       "loss with LoRA adapters (no teacher)")  # fmt: skip
    tokens: int = Field(..., gt=0, description="token budget of the whole run (all processes together)")
    data: str = Field("shakespeare", description="training text: any prunelab text source (its calibration split)")
    seqlen: int = Field(256, ge=2, description="tokens per training window")
    batch_size: int = Field(4, ge=1, description="windows per process per micro-step")
    grad_accum: int = Field(1, ge=1, description="micro-steps per optimizer step")
    lr: float | None = Field(None, gt=0, description="peak learning rate; default 1e-4 full weights, 2e-4 LoRA")
    schedule: Literal["constant", "cosine"] = Field(
        "cosine", description="lr after a linear warmup over 1/20 of the steps"
    )
    adapter: Adapter | None = Field(None, description="train all weights (full) or LoRA adapters merged back; "
                                    "default full for distill, lora for lora")  # fmt: skip
    lora_rank: int = Field(8, ge=1, description="LoRA rank")
    lora_alpha: int | None = Field(None, gt=0, description="LoRA alpha; default 2 x rank")
    temperature: float = Field(1.0, gt=0, description="distillation temperature T (the loss is scaled by T^2)")
    hidden_mse: float = Field(0.0, ge=0, description="weight of the hidden-state MSE at matched blocks (0 = off)")
    teacher_topk: int = Field(0, ge=0, description="distill against the teacher's top-k log-probs, computed once "
                              "per window and cached on disk beside the checkpoint (0 = off: teacher forward "
                              "every step); k at most the vocabulary; not with hidden_mse")  # fmt: skip
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping")
    checkpoint_every: int = Field(50, ge=1, description="optimizer steps between resumable checkpoints")
    seed: int = Field(0, description="seed of the data order and of the adapters' initialisation")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="compute dtype (weights stay float32); auto = bfloat16 on a GPU, float32 on a CPU; "
        "bfloat16 autocast on a CPU with AVX512-BF16/AMX measured 1.8x the tokens/s at the same held-out loss",
    )

    @model_validator(mode="after")
    def _consistent(self) -> RecoverConfig:
        if self.mode == "lora" and self.adapter == "full":
            raise ValueError("mode lora trains LoRA adapters; use mode distill for full fine-tuning")
        if self.mode == "lora" and self.hidden_mse:
            raise ValueError("hidden_mse needs a teacher (mode distill)")
        if self.mode == "lora" and self.teacher_topk:
            raise ValueError("teacher_topk caches a teacher's logits (mode distill)")
        if self.teacher_topk and self.hidden_mse:
            raise ValueError("teacher_topk caches logits, not the hidden states hidden_mse needs; use one of them")
        return self

    @property
    def trains(self) -> Adapter:
        return self.adapter or ("full" if self.mode == "distill" else "lora")

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else (1e-4 if self.trains == "full" else 2e-4)

    def record(self) -> dict[str, object]:
        """What prunelab.json records of the request (the outcome is added by the loop)."""
        return {**self.model_dump(), "adapter": self.trains, "lr": self.peak_lr}
