"""Typed configuration, one model per concern, each default defined once.

Everything here is plain pydantic and standard library: `prunelab --help` builds its parser from these models
without importing torch. Concerns: `prune` (what to prune, calibration, allocation), `methods` (each method's own
options), `bench` (what `prunelab bench` and a sweep measure), `evaluation` (perplexity and zero-shot), `models`
(where a model comes from and runs), `train_aware` (the training-aware reproduction), `pattern` (sparsity
patterns and the one rounding rule for counts), `runtime` (activation sparsity and sparse kernels at run time,
and the calibration of activation thresholds).
"""

from prunelab.config.base import StrictModel, build, field_help
from prunelab.config.bench import DEFAULT_CPU_WATTS, ENERGY_CHOICES, BenchConfig
from prunelab.config.evaluation import EvalConfig
from prunelab.config.models import DTYPES, ModelConfig
from prunelab.config.pattern import UNSTRUCTURED, Pattern, count_to_prune, parse_pattern
from prunelab.config.prune import ALLOCATIONS, DEFAULT_SPARSITY, PruneConfig
from prunelab.config.runtime import ActivationCalibConfig, RuntimeConfig

__all__ = [
    "ALLOCATIONS",
    "DEFAULT_CPU_WATTS",
    "DEFAULT_SPARSITY",
    "DTYPES",
    "ENERGY_CHOICES",
    "UNSTRUCTURED",
    "ActivationCalibConfig",
    "BenchConfig",
    "EvalConfig",
    "ModelConfig",
    "Pattern",
    "PruneConfig",
    "RuntimeConfig",
    "StrictModel",
    "build",
    "count_to_prune",
    "field_help",
    "parse_pattern",
]
