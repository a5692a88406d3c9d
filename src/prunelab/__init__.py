"""prunelab: prune Hugging Face causal LMs and measure, honestly, what the pruning buys."""

from prunelab.api import bench, bench_job, eval_job, evaluate, prune, prune_job, sparsity_report
from prunelab.config import PruneConfig
from prunelab.errors import PrunelabError
from prunelab.models import load_model
from prunelab.pruning import METHODS, get_method

__all__ = [
    "METHODS",
    "PruneConfig",
    "PrunelabError",
    "bench",
    "bench_job",
    "eval_job",
    "evaluate",
    "get_method",
    "load_model",
    "prune",
    "prune_job",
    "sparsity_report",
]
