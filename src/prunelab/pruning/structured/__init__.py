"""Structured pruning: physically remove MLP channels, attention heads (GQA-aware) and decoder layers.

importance.py scores units, surgery.py removes them and keeps the config in step, method.py is the registered
method `structured`, recover.py the optional LoRA recovery.
"""

from prunelab.pruning.structured.method import Structured, StructuredOptions

__all__ = ["Structured", "StructuredOptions"]
