"""Dynamic activation sparsity at run time: one saved model, the level chosen when it is applied.

`apply_activation_sparsity(model, table, level)` swaps each calibrated Linear / Conv1D of the decoder blocks for an
`ActivationSparseLinear` that, on a decode step, zeroes the input entries with |x| <= the layer's threshold and
multiplies only the kept input channels by their rows of W^T (stored (in, out), so a channel's weights are
contiguous). What is skipped depends on each token: this is the project's dynamic pruning.

Semantics, fixed whatever kernel runs (kernels differ only in float rounding):
- a decode step (one position per sequence, any batch) sees thresholded inputs;
- a prefill (several positions in one call) stays dense by default (`prefill="dense"`, TEAL's deployment);
  `prefill="threshold"` thresholds every position too, which is what a perplexity run must use to show the quality
  a decode at that level gets (it is computed with the dense kernel: nothing to gain at many tokens);
- a threshold of 0 (level 0, or an input the allocation left dense) runs the original layer: bit-identical.

The swap keeps the original module object aside and registers its very Parameters, so state_dict keys and values
are unchanged while applied; `remove()` puts the original modules back (same objects, same parameters: the model
is bit for bit what it was). The transposed copy of each nn.Linear weight costs its size in memory while applied
(Conv1D already stores (in, out) and needs none).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from prunelab.errors import PrunelabError
from prunelab.models import is_prunable
from prunelab.runtime import fused
from prunelab.runtime import kernels as K
from prunelab.runtime.thresholds import CALIBRATE_HINT, ThresholdTable

log = logging.getLogger(__name__)

PREFILL_MODES = ("dense", "threshold")
KernelChoice = str | Callable[[int, int, int, float], str]


class _Selection:
    """The thresholded form of one input group's last input, so q/k/v (gate/up) threshold their shared input once
    and share the kept indices and gathered values too (`kernels.Picked`).

    The entry is dropped once every layer of the group has used it (a later call recomputes).
    """

    def __init__(self, readers: int) -> None:
        self.readers = readers
        self.x: torch.Tensor | None = None
        self.picked: K.Picked | None = None
        self.left = 0

    def pick(self, x: torch.Tensor, x2: torch.Tensor, threshold: float) -> K.Picked:
        if self.x is x and self.picked is not None and self.left > 0:
            self.left -= 1
            picked = self.picked
            if self.left == 0:
                self.x = self.picked = None
            return picked
        picked = K.Picked(x2, x2.abs() > threshold)
        if self.readers > 1:
            self.x, self.picked, self.left = x, picked, self.readers - 1
        return picked

    def mask(self, x: torch.Tensor, x2: torch.Tensor, threshold: float) -> torch.Tensor:
        return self.pick(x, x2, threshold).keep


class ActivationSparseLinear(nn.Module):
    """A Linear / Conv1D whose decode steps read only the weight rows of input channels above the threshold."""

    def __init__(
        self,
        original: nn.Module,
        threshold: float,
        selection: _Selection,
        prefill: str = "dense",
        kernels: dict[int, str] | None = None,
        beyond: str = "dense",
        buffer: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.__dict__["original"] = original  # kept aside, not a submodule: state_dict keys stay `...q_proj.weight`
        self.weight = original.weight
        self.register_parameter("bias", original.bias)
        self.conv1d = isinstance(original, Conv1D)
        wt = original.weight.detach() if self.conv1d else original.weight.detach().t().contiguous()
        self.register_buffer("weight_t", wt, persistent=False)
        self.in_features, self.out_features = wt.shape
        self.threshold = float(threshold)
        self.selection = selection
        self.prefill = prefill
        self.__dict__["gather_buffer"] = buffer  # shared by the layers of one shape: not this module's state
        self.set_kernels(kernels or {}, beyond)

    def set_kernels(self, kernels: dict[int, str], beyond: str = "dense") -> None:
        """rows bucket -> kernel, and the kernel for more rows than the largest bucket."""
        self.kernels = dict(kernels)
        self.beyond = beyond
        self._buckets = tuple(sorted(self.kernels.items()))  # looked up on every call: sorted once here
        # Decode steps of up to `_fused_rows` rows go straight to the compiled kernel (0: never): one dict lookup
        # and one call per layer, since at ~3 us a call the Python around it is a measurable part of a step.
        rows = 0
        for bucket, kernel in self._buckets:
            if kernel != "fused":
                break
            rows = bucket
        if self._buckets and rows == self._buckets[-1][0] and beyond == "fused":
            rows = 1 << 62
        self._fused_rows = rows if self.threshold > 0.0 else 0

    def kernel_for(self, rows: int) -> str:
        for bucket, kernel in self._buckets:
            if rows <= bucket:
                return kernel
        return self.beyond

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3 and x.shape[1] == 1 and x.shape[0] <= self._fused_rows:
            y = fused.fused_kernel(x.reshape(x.shape[0], -1), self._buffers["weight_t"], self._parameters["bias"],
                                   self.threshold)  # fmt: skip
            return y.view(x.shape[0], 1, -1)
        if self.threshold <= 0.0:
            return self.original.forward(x)
        positions = x.shape[-2] if x.dim() >= 3 else 1
        if positions > 1 and self.prefill == "dense":
            return self.original.forward(x)
        x2 = x.reshape(-1, self.in_features)
        kernel = "dense" if positions > 1 else self.kernel_for(x2.shape[0])
        if kernel == "fused":  # thresholds and gathers itself: nothing shared with the group is needed
            return fused.fused_kernel(x2, self.weight_t, self.bias, self.threshold).view(*x.shape[:-1], -1)
        picked = self.selection.pick(x, x2, self.threshold)
        if kernel == "dense":
            return self.original.forward(x.masked_fill(~picked.keep.view(x.shape), 0.0))
        y = K.SPARSE_ACT[kernel](x2, picked.keep, self.weight_t, self.bias, picked=picked, buffer=self.gather_buffer)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, threshold={self.threshold:.4g}, kernels={self.kernels}"


@dataclass
class RuntimeHandle:
    """What an apply did (kernels per shape, measurements) and how to undo it; also a context manager."""

    model: nn.Module
    swaps: list[tuple[nn.Module, str, nn.Module, nn.Module]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    removable: bool = True

    @property
    def active(self) -> bool:
        return bool(self.swaps)

    def remove(self) -> None:
        """Put every original module back (idempotent)."""
        if not self.removable and self.swaps:
            raise PrunelabError("this runtime was built without the dense weights (load_sparse); reload the model")
        for parent, attr, original, _ in reversed(self.swaps):
            setattr(parent, attr, original)
        self.swaps.clear()

    def __enter__(self) -> RuntimeHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def remove(handle: RuntimeHandle) -> None:
    handle.remove()


def swap(model: nn.Module, name: str, new: nn.Module, handle: RuntimeHandle) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    handle.swaps.append((parent, attr, getattr(parent, attr), new))
    setattr(parent, attr, new)


def check_unswapped(model: nn.Module) -> None:
    from prunelab.runtime.weights import WeightSparseLinear

    for name, mod in model.named_modules():
        if isinstance(mod, (ActivationSparseLinear, WeightSparseLinear)):
            raise PrunelabError(f"a sparse runtime is already applied ({name}); remove it first")


def _layers(model: nn.Module, table: ThresholdTable) -> dict[str, nn.Module]:
    modules = dict(model.named_modules())
    out: dict[str, nn.Module] = {}
    for g in table.groups:
        for name in g.layers:
            mod = modules.get(name)
            if mod is None or not is_prunable(mod):
                raise PrunelabError(f"threshold table does not match this model: no Linear layer '{name}'")
            width = mod.weight.shape[0] if isinstance(mod, Conv1D) else mod.weight.shape[1]
            if width != g.in_features:
                raise PrunelabError(
                    f"threshold table does not match this model: '{name}' reads {width} inputs, table says "
                    f"{g.in_features}; recalibrate"
                )
            out[name] = mod
    return out


def _choose(
    mods: dict[str, ActivationSparseLinear],
    keep_of: dict[str, float],
    choice: KernelChoice,
    rows: tuple[int, ...],
    repeats: int,
) -> dict[str, Any]:
    """Set each layer's kernel per rows bucket: measured per shape ("auto"), fixed, or from a callable."""
    by_shape: dict[tuple[int, int], list[str]] = {}
    for name, mod in mods.items():
        by_shape.setdefault((mod.in_features, mod.out_features), []).append(name)
    measured: dict[str, Any] = {}
    for (in_f, out_f), names in by_shape.items():
        keep = sum(keep_of[n] for n in names) / len(names)
        group = [mods[n] for n in names]
        if callable(choice):
            table = {r: choice(in_f, out_f, r, keep) for r in rows}
            for k in table.values():
                K.check_kernel(k, K.ACT_KERNELS, "activation kernel")
        elif choice != "auto":
            table = dict.fromkeys(rows, choice)
        elif keep >= 0.999:
            table = dict.fromkeys(rows, "dense")
        else:
            table = {}
            for r in rows:
                times = K.measure_act_kernels(
                    [m.weight_t for m in group],
                    [m.bias for m in group],
                    keep,
                    r,
                    [m.original.forward for m in group],
                    repeats=repeats,
                )
                table[r] = min(times, key=times.__getitem__)
                measured.setdefault(f"{in_f}x{out_f}", {})[r] = {k: v * 1e6 for k, v in times.items()}
        for m in group:
            m.set_kernels(table, choice if isinstance(choice, str) and choice != "auto" else "dense")
    return measured


def _check_fused(mods: dict[str, ActivationSparseLinear]) -> None:
    """A fixed or custom choice of "fused" needs the compiled kernel and a dtype it takes: say so before any swap."""
    for name, m in mods.items():
        if "fused" in (m.beyond, *m.kernels.values()):
            fused.require(m.weight_t.dtype, name)


def _share_buffers(mods: dict[str, ActivationSparseLinear]) -> int:
    """One (in, out) gather buffer per shape for the layers that may run index_select; returns how many."""
    buffers: dict[tuple[Any, ...], torch.Tensor] = {}
    for m in mods.values():
        if "index_select" in (m.beyond, *m.kernels.values()):
            wt = m.weight_t
            key = (*wt.shape, wt.dtype, wt.device)
            if key not in buffers:
                buffers[key] = torch.empty_like(wt)
            m.__dict__["gather_buffer"] = buffers[key]
    return len(buffers)


def apply_activation_sparsity(
    model: nn.Module,
    table: ThresholdTable | None,
    level: float,
    kernels: KernelChoice = "auto",
    prefill: str = "dense",
    rows: tuple[int, ...] = K.ROW_BUCKETS,
    measure_repeats: int = 5,
) -> RuntimeHandle:
    """Swap every layer of `table` for its activation-sparse form at `level`; returns the handle that undoes it.

    kernels: "auto" (measure each layer shape at this level, per batch bucket `rows`; more rows run dense),
    "off" (thresholds applied, dense kernel: same maths, full price), a kernel name from `kernels.ACT_KERNELS`
    (every batch), or a callable (in_features, out_features, rows, keep_fraction) -> kernel name.
    """
    if table is None:
        raise PrunelabError(f"activation sparsity needs a threshold table and this model has none; {CALIBRATE_HINT}")
    table.check_level(level)
    if prefill not in PREFILL_MODES:
        raise PrunelabError(f"unknown prefill mode '{prefill}'; use one of {', '.join(PREFILL_MODES)}")
    if isinstance(kernels, str) and kernels not in ("auto", "off"):
        K.check_kernel(kernels, K.ACT_KERNELS, "activation kernel")
    check_unswapped(model)
    layers = _layers(model, table)
    thresholds = table.thresholds_at(level)
    sparsity = table.sparsity_at(level)
    keep_of = {layer: 1.0 - sparsity[g.name] for g in table.groups for layer in g.layers}
    choice = "dense" if kernels == "off" else kernels
    mods: dict[str, ActivationSparseLinear] = {}
    for g in table.groups:
        selection = _Selection(len(g.layers))
        for name in g.layers:
            mods[name] = ActivationSparseLinear(layers[name], thresholds[name], selection, prefill)
    measured = _choose(mods, keep_of, choice, tuple(sorted(rows)), measure_repeats)
    _check_fused(mods)
    _share_buffers(mods)
    handle = RuntimeHandle(model)
    for name, mod in mods.items():
        swap(model, name, mod, handle)
    shapes = {f"{m.in_features}x{m.out_features}": m.kernels for m in mods.values()}
    handle.info = {
        "activation_sparsity": level,
        "model_average": table.average(level),
        "allocation": table.allocation,
        "prefill": prefill,
        "kernels": kernels if isinstance(kernels, str) else "custom",
        "kernels_by_shape": shapes,
        "measured_us_per_token": measured,
        "layers": len(mods),
    }
    log.info("activation sparsity %.2f on %d layers; kernels %s", level, len(layers), shapes)
    return handle
