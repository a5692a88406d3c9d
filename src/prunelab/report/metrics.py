"""The one registry of metrics a sweep records: name, unit, direction and role.

Every consumer (Pareto frontier, budget selection, plots, tables, CSV columns) reads direction and units from here,
so "is higher better?" is answered in exactly one place. Roles: `quality` (what pruning may cost), `cost` (what it
may buy: size, speed, energy), `info` (recorded, never optimised).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["quality", "cost", "info"]


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    unit: str
    higher_is_better: bool
    role: Role
    log_scale: bool = False
    fmt: str = ".4g"

    def better(self, a: float, b: float) -> bool:
        """Whether value `a` is strictly better than `b`."""
        return a > b if self.higher_is_better else a < b

    def format(self, value: float | None) -> str:
        if value is None:
            return "-"
        return format(value, self.fmt)


_ALL = [
    Metric("perplexity", "perplexity", "", False, "quality", log_scale=True, fmt=".3f"),
    Metric("zeroshot_mean", "zero-shot accuracy (mean)", "", True, "quality", fmt=".4f"),
    Metric("deploy_size_mb", "deployed size (bytes the runtime loads)", "MB", False, "cost", fmt=".1f"),
    Metric("compact_size_mb", "compact checkpoint size (needs a sparse-aware runtime)", "MB", False, "cost", fmt=".1f"),
    Metric("size_mb", "dense checkpoint size", "MB", False, "cost", fmt=".1f"),
    Metric("nonzero_params", "non-zero parameters", "", False, "cost", fmt=",.0f"),
    Metric("params", "parameters", "", False, "cost", fmt=",.0f"),
    Metric("decode_tokens_per_s", "decode speed", "tokens/s", True, "cost", fmt=".1f"),
    Metric("prefill_ms", "prefill latency", "ms", False, "cost", fmt=".1f"),
    Metric("energy_j_per_token", "energy per generated token", "J/token", False, "cost", fmt=".4g"),
    Metric("g_co2eq_per_1k_tokens", "carbon per 1k generated tokens", "gCO2eq", False, "cost", fmt=".4g"),
    # one-time costs of making the point: the training inside its prune (structured recover_steps, recovery)
    Metric("training_energy_j", "energy of the point's training", "J", False, "cost", fmt=".4g"),
    Metric("training_g_co2eq", "carbon of the point's training", "gCO2eq", False, "cost", fmt=".4g"),
    # derived by the report, never stored: training_energy_j / (dense's - the point's energy_j_per_token), the
    # generated tokens after which the point's training is repaid (measurement.footprint.break_even_tokens);
    # "never" when the point is not cheaper per token. Lower is better, but it is not optimised (info).
    Metric("training_break_even_tokens", "training repaid after", "generated tokens", False, "info", fmt=".3g"),
    Metric("achieved_sparsity", "achieved sparsity", "", False, "info", fmt=".4f"),
    Metric("prune_seconds", "pruning time", "s", False, "info", fmt=".1f"),
]
METRICS: dict[str, Metric] = {m.name: m for m in _ALL}

# `perplexity@SOURCE` (every evaluation source) and `acc@TASK` (every zero-shot task) share their base's definition.
_FAMILIES = {"perplexity": "perplexity", "acc": "zeroshot_mean"}

# The cost `--cost` defaults to: the first of these every compared point has. `deploy_size_mb` is what a runtime
# really loads: the GGUF file of a point exported at a quant, else the saved safetensors (dense: zeros cost bytes).
# The compact checkpoint falls with every kind of pruning but no common runtime loads it (a sparse-aware one must).
DEFAULT_COSTS = ("deploy_size_mb", "compact_size_mb", "nonzero_params", "size_mb")


def metric(name: str) -> Metric:
    """The definition of `name`, including the per-source/per-task families; unknown names are `info`."""
    if name in METRICS:
        return METRICS[name]
    base, sep, arg = name.partition("@")
    if sep and base in _FAMILIES:
        m = METRICS[_FAMILIES[base]]
        return Metric(name, f"{m.label if base == 'perplexity' else 'accuracy'} [{arg}]", m.unit, m.higher_is_better,
                      m.role, m.log_scale, m.fmt)  # fmt: skip
    return Metric(name, name, "", True, "info")
