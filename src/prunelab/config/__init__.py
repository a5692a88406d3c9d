"""Typed configuration, one model per concern, each default defined once.

Everything here is plain pydantic and standard library: `prunelab --help` builds its parser from these models
without importing torch. Concerns: `prune` (what to prune, calibration, allocation), `methods` (each method's own
options), `bench` (what `prunelab bench` and a sweep measure), `evaluation` (perplexity and zero-shot), `models`
(where a model comes from and runs), `train_aware` (the training-aware reproduction), `pattern` (sparsity
patterns and the one rounding rule for counts).
"""

from prunelab.config.base import StrictModel, build, field_help
from prunelab.config.bench import DEFAULT_CPU_WATTS, ENERGY_CHOICES, BenchConfig
from prunelab.config.evaluation import EvalConfig
from prunelab.config.models import DTYPES, ModelConfig
from prunelab.config.pattern import UNSTRUCTURED, Pattern, count_to_prune, parse_pattern
from prunelab.config.prune import ALLOCATIONS, DEFAULT_SPARSITY, PruneConfig

__all__ = [
    "ALLOCATIONS",
    "DEFAULT_CPU_WATTS",
    "DEFAULT_SPARSITY",
    "DTYPES",
    "ENERGY_CHOICES",
    "UNSTRUCTURED",
    "BenchConfig",
    "EvalConfig",
    "ModelConfig",
    "Pattern",
    "PruneConfig",
    "StrictModel",
    "build",
    "count_to_prune",
    "field_help",
    "parse_pattern",
]
