"""Quality measurements: perplexity sources and zero-shot tasks (`prunelab eval`, `prunelab prune`, sweeps)."""

from __future__ import annotations

from pydantic import Field

from prunelab.config.base import StrictModel

# `prunelab prune` and a sweep evaluate every model they make, so they cap the windows per source by default.
PRUNE_EVAL_WINDOWS = 16


class EvalConfig(StrictModel):
    """What to evaluate. `ppl[0]` is the headline perplexity of a sweep (budgets and plots)."""

    ppl: list[str] = Field(default_factory=lambda: ["shakespeare"], description="perplexity sources")
    seqlen: int = Field(512, ge=2, description="tokens per evaluation window")
    max_windows: int | None = Field(None, ge=1, description="cap on windows per source")
    batch_size: int | None = Field(None, ge=1, description="perplexity windows / zero-shot requests per forward")
    tasks: list[str] = Field(default_factory=list, description="zero-shot tasks (prunelab.evaluation.zeroshot)")
    task_data: str | None = Field(None, description="folder of local task files (offline zero-shot)")
    limit: int | None = Field(None, ge=1, description="examples per zero-shot task")
