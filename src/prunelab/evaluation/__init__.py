"""Quality measurements of a model in memory: perplexity (and, later, zero-shot accuracy)."""

from prunelab.evaluation.perplexity import PerplexityResult, perplexity

__all__ = ["PerplexityResult", "perplexity"]
