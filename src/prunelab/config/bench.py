"""What `prunelab bench` (and every sweep point) measures, and how: one definition for both."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, field_validator

from prunelab.config.base import StrictModel, section

Energy = Literal["auto", "rapl", "nvml", "estimate", "off"]
ENERGY_CHOICES: tuple[str, ...] = get_args(Energy)
# The labelled estimate's last resort when the CPU is not in CodeCarbon's TDP table (watts per logical CPU at full
# load; CodeCarbon's own fallback). `cpu_watts=None` looks the CPU model up first.
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
    region: str | None = Field(
        None, description="sub-national grid (CodeCarbon's data): US-TX, CA-QC, CN-BJ, SE3, or a state with --country"
    )
    grid_intensity: float | None = Field(
        None,
        ge=0,
        allow_inf_nan=False,
        description="gCO2eq per kWh, your own number; wins over --country/--region (recorded as source 'user', "
        "the location kept)",
    )
    cpu_watts: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description=f"estimate only: watts per logical CPU (default: the CPU's TDP from CodeCarbon's table, "
        f"else {DEFAULT_CPU_WATTS:g} W)",
    )
    sparse_kernels: bool = Field(False, description="run 2:4 layers on sparse GPU kernels (sm80+)")
    size: bool = Field(True, description="write dense and compact checkpoints to a temp folder to measure them")
    seed: int = Field(0, description="seed of the random prompts")

    @field_validator("prompt_lens", "batches")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(x < 1 for x in v):
            raise ValueError(f"values must be >= 1, got {v}")
        return v


# The energy and carbon settings of any metered block of work (a training run, a recovery fine-tune): a view of
# BenchConfig's fields, so `--energy`, `--country`, `--region`, `--grid-intensity` and `--cpu-watts` mean the same
# everywhere. A grid intensity given together with a country/region wins (source "user"); the location is kept.
FOOTPRINT_FIELDS = ("energy", "country", "region", "grid_intensity", "cpu_watts")
FootprintConfig = section(
    "FootprintConfig",
    "How the energy and carbon of a block of work are measured (the bench's energy/carbon flags).",
    BenchConfig,
    {k: k for k in FOOTPRINT_FIELDS},
)


class InferenceEnergyConfig(StrictModel):
    """The short decode measured beside a training footprint (`prunelab train-aware`, recovery): the inference
    energy per generated token of the model the training produced and of the dense one, so the training's joules
    can be weighed against what each token saves. On by default: a training figure alone cannot be judged, and the
    decode is short (batch 1, a few repeats: seconds on a CPU for a small model, against minutes to hours of
    training); `prunelab bench` is the full protocol (longer prompts, batches, more repeats)."""

    inference_energy: bool = Field(
        True, description="measure a short decode of the dense and the trained model for the break-even"
    )
    inference_prompt_len: int = Field(16, ge=1, description="prompt tokens of that decode")
    inference_gen_len: int = Field(32, ge=2, description="generated tokens per run of that decode")
    inference_repeats: int = Field(3, ge=1, description="timed runs of that decode (after one warmup)")
    inference_rounds: int = Field(
        2, ge=1, description="separate measurements of each model; their spread is the noise the break-even is "
        "judged against"
    )  # fmt: skip

    def bench_config(self, footprint: StrictModel | None, context: int | None = None) -> BenchConfig:
        """The BenchConfig of that decode with `footprint`'s energy/carbon settings; prompt + generated tokens are
        shortened to fit `context` positions (a model trained at a short seqlen)."""
        prompt, gen = self.inference_prompt_len, self.inference_gen_len
        if context is not None and prompt + gen > context:
            prompt = max(1, min(prompt, context // 4))
            gen = max(2, min(gen, context - prompt))
        settings = {k: getattr(footprint, k) for k in FOOTPRINT_FIELDS} if footprint is not None else {}
        return BenchConfig(prompt_lens=[prompt], gen_len=gen, batches=[1], repeats=self.inference_repeats, warmup=1,
                           size=False, **settings)  # fmt: skip
