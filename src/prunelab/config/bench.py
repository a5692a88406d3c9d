"""What `prunelab bench` (and every sweep point) measures, and how: one definition for both."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, field_validator

from prunelab.config.base import StrictModel

Energy = Literal["auto", "rapl", "nvml", "estimate", "off"]
ENERGY_CHOICES: tuple[str, ...] = get_args(Energy)
# A deliberately rough default for the labelled estimate (watts per logical CPU at full load).
DEFAULT_CPU_WATTS = 4.0


class BenchConfig(StrictModel):
    """What to measure and how (the `prunelab bench` flags)."""

    prompt_lens: list[int] = Field(default_factory=lambda: [128, 512], min_length=1, description="prefill lengths")
    gen_len: int = Field(64, ge=2, description="tokens generated per decode run")
    batches: list[int] = Field(default_factory=lambda: [1, 8], min_length=1, description="throughput batch sizes")
    repeats: int = Field(5, ge=1, description="timed runs per measurement")
    warmup: int = Field(1, ge=0, description="untimed runs first")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")
    energy: Energy = Field("auto", description="energy source")
    country: str | None = Field(None, description="ISO 3166-1 alpha-3 code for grid carbon intensity (WLD)")
    grid_intensity: float | None = Field(None, ge=0, description="gCO2eq per kWh, your own number")
    cpu_watts: float = Field(DEFAULT_CPU_WATTS, gt=0, description="estimate only: watts per logical CPU")
    sparse_kernels: bool = Field(False, description="run 2:4 layers on sparse GPU kernels (sm80+)")
    size: bool = Field(True, description="write dense and compact checkpoints to a temp folder to measure them")
    seed: int = Field(0, description="seed of the random prompts")

    @field_validator("prompt_lens", "batches")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(x < 1 for x in v):
            raise ValueError(f"values must be >= 1, got {v}")
        return v
