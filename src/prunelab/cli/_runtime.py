"""The run-time sparsity flags shared by `eval`, `bench` and `generate` (from `RuntimeConfig`)."""

from __future__ import annotations

import argparse
from typing import Any

from prunelab.cli._base import add_field
from prunelab.config.base import build
from prunelab.config.runtime import RuntimeConfig


def runtime_args(p: Any, kernels_default: Any = "auto", **kernels: Any) -> None:
    """--activation-sparsity S, --sparse-kernels auto|off."""
    add_field(p, RuntimeConfig, "activation_sparsity", metavar="S")
    add_field(p, RuntimeConfig, "sparse_kernels", default=kernels_default, **kernels)


def runtime_config(args: argparse.Namespace) -> RuntimeConfig:
    kernels = args.sparse_kernels if args.sparse_kernels is not None else "auto"
    return build(RuntimeConfig, {"activation_sparsity": args.activation_sparsity, "sparse_kernels": kernels},
                 "run-time settings")  # fmt: skip


def print_runtime(info: dict[str, Any] | str | None) -> None:
    if not isinstance(info, dict):  # "llamacpp" (the runtime's name) or absent: no torch run-time sparsity
        return
    if info.get("activation_sparsity"):
        shapes = ", ".join(f"{s} {'/'.join(sorted(set(k.values())))}" for s, k in info["kernels_by_shape"].items())
        print(f"activation sparsity {info['activation_sparsity']:g} ({info.get('allocation')}, "
              f"{info.get('layers')} layers); kernels: {shapes or 'none'}")  # fmt: skip
    w = info.get("weight_runtime")
    if w:
        print(f"compact sparse folder: {w['csr_layers']} CSR layers, {w['dense_layers']} dense ({w['weight_kernels']})")
