"""Sparse weight execution: weight-pruned layers above their measured break-even run as CSR products.

A dense GEMM multiplies zeros at full price; a CSR matrix-vector product reads only the stored values plus their
column indices (4 + 4 bytes each in float32 with the int32 indices `kernels.to_csr` makes). For one token it
wins from about 50% sparsity (1.7-2.6x at 50% on SmolLM2's shapes, 2 threads); for many rows (prefill) it loses.
The break-even depends on the shape, the threads and the cache, so it is measured per (shape, sparsity tenth) over the
model's own layers (`kernels="auto"`); below `MIN_SPARSITY` nothing is measured (CSR cannot win there).

`load_sparse(DIR)` loads the compact checkpoint of `measurement/size.py` (its reader, not a second one) straight
into this runtime, so the compact size is the size of something that really runs. Without `keep_dense` the dense
copies of CSR layers are dropped: memory is the CSR form, and long prefills run through CSR too (slower than dense;
`keep_dense=True` keeps both and prefills densely). `save_sparse` writes such a folder: config, tokenizer and
`model.compact.safetensors` (plain transformers cannot read it: that is what `save_model` is for).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab._util import atomic_dir, write_json_atomic
from prunelab.errors import PrunelabError
from prunelab.measurement.size import load_compact, save_compact
from prunelab.models import LoadedModel, prunable_layers, weight_2d
from prunelab.runtime import kernels as K
from prunelab.runtime.sparse import RuntimeHandle, check_unswapped, swap

log = logging.getLogger(__name__)

COMPACT_FILE = "model.compact.safetensors"
MIN_SPARSITY = 0.3
WeightChoice = str | Callable[[str, tuple[int, int], float], str]


class WeightSparseLinear(nn.Module):
    """A Linear / Conv1D run as CSR (out, in) products; with the original kept, many-row calls stay dense."""

    def __init__(self, original: nn.Module, dense_rows: int | None = 8, keep_original: bool = True) -> None:
        super().__init__()
        w = weight_2d(original)
        self.out_features, self.in_features = w.shape
        self.register_buffer("weight_csr", K.to_csr(w), persistent=False)
        if keep_original:
            self.__dict__["original"] = original
            self.weight = original.weight  # same Parameter: state_dict unchanged while applied
            self.register_parameter("bias", original.bias)
        else:
            self.__dict__["original"] = None
            self.register_parameter("bias", original.bias)
        self.dense_rows = dense_rows if keep_original else None
        self.sparsity = 1.0 - self.weight_csr.values().numel() / max(w.numel(), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        if self.original is not None and self.dense_rows is not None and x2.shape[0] > self.dense_rows:
            return self.original.forward(x)
        y = K.csr_kernel(x2.to(self.weight_csr.dtype), self.weight_csr, self.bias)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, csr, sparsity={self.sparsity:.3f}"


def _choose(
    layers: dict[str, nn.Module], choice: WeightChoice, min_sparsity: float, repeats: int
) -> tuple[dict[str, str], dict[str, Any]]:
    sparsity = {n: float((weight_2d(m) == 0).sum()) / max(weight_2d(m).numel(), 1) for n, m in layers.items()}
    if callable(choice):
        out = {n: choice(n, tuple(weight_2d(m).shape), sparsity[n]) for n, m in layers.items()}
        for k in out.values():
            K.check_kernel(k, K.WEIGHT_KERNELS, "weight kernel")
        return out, {}
    if choice in ("off", "dense"):
        return dict.fromkeys(layers, "dense"), {}
    if choice == "csr":
        odd = sorted({str(weight_2d(m).dtype) for m in layers.values() if weight_2d(m).dtype not in K.CSR_DTYPES})
        if odd:
            raise PrunelabError(f"CSR kernels need float32 or float64 weights, not {', '.join(odd)}; "
                                "load the model in float32 or use --sparse-kernels auto")  # fmt: skip
        return dict.fromkeys(layers, "csr"), {}
    buckets: dict[tuple[int, int, float], list[str]] = {}
    for n, m in layers.items():
        if sparsity[n] >= min_sparsity and weight_2d(m).dtype in K.CSR_DTYPES:
            shape = tuple(weight_2d(m).shape)
            buckets.setdefault((shape[0], shape[1], round(sparsity[n], 1)), []).append(n)
    out = dict.fromkeys(layers, "dense")
    measured: dict[str, Any] = {}
    for (o, i, s), names in buckets.items():
        csrs = [K.to_csr(weight_2d(layers[n])) for n in names]
        times = K.measure_weight_kernels([layers[n].forward for n in names], csrs, i, repeats=repeats)
        measured[f"{i}x{o}@{s:.1f}"] = {k: v * 1e6 for k, v in times.items()}
        if times["csr"] < times["dense"]:
            out.update(dict.fromkeys(names, "csr"))
    return out, measured


def apply_weight_sparsity(
    model: nn.Module,
    kernels: WeightChoice = "auto",
    keep_dense: bool = True,
    dense_rows: int | None = 8,
    min_sparsity: float = MIN_SPARSITY,
    measure_repeats: int = 5,
) -> RuntimeHandle:
    """Swap weight-sparse layers of the decoder blocks for CSR execution where it pays.

    kernels: "auto" (measure dense vs CSR per shape and sparsity tenth), "off"/"dense" (nothing swapped), "csr"
    (every layer), or a callable (name, (out, in), sparsity) -> "csr" | "dense". With `keep_dense` the original
    layers stay (remove() restores them; calls of more than `dense_rows` rows run dense); without, they are
    dropped to save memory and the handle cannot be removed.
    """
    if isinstance(kernels, str) and kernels not in ("auto", "off", *K.WEIGHT_KERNELS):
        K.check_kernel(kernels, ("auto", "off", *K.WEIGHT_KERNELS), "weight kernel")
    check_unswapped(model)
    layers = prunable_layers(model)
    chosen, measured = _choose(layers, kernels, min_sparsity, measure_repeats)
    handle = RuntimeHandle(model, removable=keep_dense)
    for name, kernel in chosen.items():
        if kernel == "csr":
            swap(model, name, WeightSparseLinear(layers[name], dense_rows, keep_dense), handle)
    handle.info = {
        "weight_kernels": kernels if isinstance(kernels, str) else "custom",
        "csr_layers": sum(k == "csr" for k in chosen.values()),
        "dense_layers": sum(k == "dense" for k in chosen.values()),
        "kernel_by_layer": chosen,
        "measured_us_per_token": measured,
    }
    if not keep_dense:
        handle.swaps.clear()  # nothing to restore: the dense weights are gone once the originals are collected
        handle.removable = False
    log.info("weight sparsity: %d CSR layers, %d dense", handle.info["csr_layers"], handle.info["dense_layers"])
    return handle


@dataclass
class SparseLoaded(LoadedModel):
    """A model loaded from a compact checkpoint into the sparse runtime, with what the runtime chose."""

    runtime: dict[str, Any] = field(default_factory=dict)


def save_sparse(
    model: nn.Module,
    output: str | os.PathLike[str],
    tokenizer: Any | None = None,
    overwrite: bool = False,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write config, tokenizer and the compact checkpoint into a folder that `load_sparse` reads (atomically)."""
    output = Path(output)
    with atomic_dir(output, overwrite=overwrite) as tmp:
        model.config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        report = save_compact(model, tmp / COMPACT_FILE, dtype)
        write_json_atomic(tmp / "prunelab-compact.json", {"file": COMPACT_FILE, **report.to_dict()})
    return output


def _compact_path(path: Path) -> tuple[Path, Path]:
    if path.is_dir():
        folder, file = path, path / COMPACT_FILE
    else:
        folder, file = path.parent, path
    if not file.is_file():
        raise PrunelabError(f"'{path}' has no compact checkpoint ({COMPACT_FILE}); write one with save_sparse")
    if not (folder / "config.json").is_file():
        raise PrunelabError(f"compact checkpoint '{file}' has no config.json beside it")
    return folder, file


def load_sparse(
    path: str | os.PathLike[str], kernels: WeightChoice = "auto", keep_dense: bool = False, measure_repeats: int = 5
) -> SparseLoaded:
    """Load a compact checkpoint folder into a model whose sparse layers run as CSR (see the module docstring)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.initialization import no_init_weights

    folder, file = _compact_path(Path(path))
    try:
        config = AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError) as e:
        raise PrunelabError(f"cannot read the config of '{folder}': {str(e).splitlines()[0]}") from e
    state = load_compact(file)
    dtype = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        what = f"missing tensor {missing[0]}" if missing else f"unexpected tensor {unexpected[0]}"
        more = len(missing) + len(unexpected) - 1
        raise PrunelabError(
            f"compact checkpoint '{file}' does not match its config: {what}" + (f" (+{more} more)" if more else "")
        )
    for name, t in state.items():
        if tuple(t.shape) != tuple(expected[name].shape):
            raise PrunelabError(
                f"compact checkpoint '{file}' does not match its config: {name} has shape {tuple(t.shape)}, "
                f"the config says {tuple(expected[name].shape)}"
            )
    model.load_state_dict(state, strict=True, assign=True)
    del state, expected
    model.eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError):
        tokenizer = None
    handle = apply_weight_sparsity(model, kernels, keep_dense=keep_dense, measure_repeats=measure_repeats)
    return SparseLoaded(model=model, tokenizer=tokenizer, source=str(folder), runtime=handle.info)
