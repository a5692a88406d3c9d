"""Physical removal of MLP channels, attention heads and whole decoder blocks, with the config kept in step.

Each block is described once by a `BlockSpec`: which weight slices every unit owns. A `Part` is one weight and one
axis ("out" = rows, "in" = columns of the (out, in) view); its `segments` say where a unit's indices lie, as
(kind, offset, width): unit u of that kind owns offset + u * width ... + width - 1. That one description covers
separate projections (q/k/v/o, gate/up/down, fc1/fc2), fused ones (Phi-3's qkv_proj and gate_up_proj, GPT-2's
Conv1D c_attn) and GQA: query heads ("q") and key/value groups ("kv") are different kinds, so removing a group
removes its k/v rows while its query heads go with the "q" kind. Every remaining query head keeps its key/value
head because the kept query heads are in group order and every kept group keeps the same number of them.

Weights are sliced in place (module identity is kept), the counts the modules cache are updated, and the config
is changed so that `save_pretrained` + `from_pretrained` rebuild exactly these shapes. `check_loadable` proves it
by building the model from the new config on the meta device (no memory) and comparing every tensor shape.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from prunelab.errors import PrunelabError
from prunelab.models import find_blocks, is_prunable, weight_2d

log = logging.getLogger(__name__)

Axis = Literal["out", "in"]


@dataclass(frozen=True)
class Part:
    """The slices of one weight that units own (see the module docstring)."""

    parent: nn.Module
    attr: str
    axis: Axis
    segments: tuple[tuple[str, int, int], ...]

    @property
    def module(self) -> nn.Module:
        return getattr(self.parent, self.attr)

    def indices(self, keep: dict[str, Sequence[int]]) -> torch.Tensor:
        """Indices along `axis` that survive when only the units in `keep` (per kind) are kept, in order."""
        out: list[int] = []
        for kind, offset, width in self.segments:
            for u in keep[kind]:
                out.extend(range(offset + u * width, offset + (u + 1) * width))
        return torch.tensor(out, dtype=torch.long)

    def unit_sq_norms(self, kind: str, n_units: int) -> torch.Tensor:
        """Sum of squared weights each unit of `kind` owns in this part, shape (n_units,)."""
        w = weight_2d(self.module).float()
        if self.axis == "in":
            w = w.t()
        total = torch.zeros(n_units)
        for k, offset, width in self.segments:
            if k == kind:
                rows = w[offset : offset + n_units * width].square().sum(dim=1)
                total += rows.reshape(n_units, width).sum(dim=1).cpu()
        return total

    def params_per_unit(self, kind: str) -> int:
        """Parameters (weight and bias) removed with one unit of `kind` from this part."""
        w = weight_2d(self.module)
        bias = getattr(self.module, "bias", None)
        per_index = w.shape[1] + (1 if bias is not None else 0) if self.axis == "out" else w.shape[0]
        return sum(width * per_index for k, _, width in self.segments if k == kind)


@dataclass
class BlockSpec:
    """What one decoder block owns, by unit kind: "ch" (MLP channels), "q" (query heads), "kv" (KV groups)."""

    block: nn.Module
    mlp: list[Part]
    attn: list[Part]
    mlp_out: Part  # down_proj / fc2 / c_proj: reads the channels (activation statistics, compensation)
    attn_out: Part  # o_proj / out_proj / c_proj: reads the heads
    attn_module: nn.Module
    mlp_module: nn.Module
    n_channels: int
    n_heads: int
    n_kv: int
    head_dim: int

    @property
    def group_size(self) -> int:
        return self.n_heads // self.n_kv

    def params_per_unit(self, kind: str) -> int:
        parts = self.mlp if kind == "ch" else self.attn
        return sum(p.params_per_unit(kind) for p in parts)


# Config key holding the MLP width, by the name of the MLP's first projection.
MLP_WIDTH_KEYS = {"gate_proj": "intermediate_size", "gate_up_proj": "intermediate_size", "fc1": "ffn_dim"}


def _first(module: nn.Module, names: Sequence[str]) -> tuple[str, nn.Module] | None:
    for name in names:
        child = getattr(module, name, None)
        if isinstance(child, nn.Module):
            return name, child
    return None


def _out_dim(module: nn.Module) -> int:
    return weight_2d(module).shape[0]


def head_counts(config: Any) -> tuple[int, int, int]:
    """(query heads, key/value heads, head_dim) as the architecture derives them from its config."""
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return heads, kv, head_dim


def mlp_parts(block: nn.Module) -> tuple[nn.Module, list[Part], int] | None:
    """(MLP module, the parts owning its channels with the output projection last, channel count) of a known
    layout, or None. Shared by channel removal and by RIA's channel permutation (pruning/permute.py)."""
    mlp = getattr(block, "mlp", None) or block  # OPT keeps fc1/fc2 on the decoder layer itself
    if all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")):
        n = _out_dim(mlp.gate_proj)
        parts = [
            Part(mlp, "gate_proj", "out", (("ch", 0, 1),)),
            Part(mlp, "up_proj", "out", (("ch", 0, 1),)),
            Part(mlp, "down_proj", "in", (("ch", 0, 1),)),
        ]
    elif hasattr(mlp, "gate_up_proj"):
        n = _out_dim(mlp.gate_up_proj) // 2
        parts = [
            Part(mlp, "gate_up_proj", "out", (("ch", 0, 1), ("ch", n, 1))),
            Part(mlp, "down_proj", "in", (("ch", 0, 1),)),
        ]
    elif hasattr(mlp, "fc1") and hasattr(mlp, "fc2"):
        n = _out_dim(mlp.fc1)
        parts = [Part(mlp, "fc1", "out", (("ch", 0, 1),)), Part(mlp, "fc2", "in", (("ch", 0, 1),))]
    elif hasattr(mlp, "c_fc") and hasattr(mlp, "c_proj"):
        n = _out_dim(mlp.c_fc)
        parts = [Part(mlp, "c_fc", "out", (("ch", 0, 1),)), Part(mlp, "c_proj", "in", (("ch", 0, 1),))]
    else:
        return None
    return mlp, parts, n


def block_spec(block: nn.Module, config: Any) -> BlockSpec:
    """Describe one decoder block of a known layout (Llama/Qwen2/Mistral, Phi-3, OPT, GPT-2 and their kin)."""
    found_attn = _first(block, ("self_attn", "attn", "attention"))
    if found_attn is None:
        raise PrunelabError(f"structured pruning does not know the attention of {type(block).__name__}")
    attn = found_attn[1]
    heads, kv, d = head_counts(config)
    q_size, kv_size = heads * d, kv * d
    attn_parts: list[Part]
    if all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj")):
        out = _first(attn, ("o_proj", "out_proj", "dense"))
        assert out is not None, f"no output projection in {type(attn).__name__}"
        attn_parts = [
            Part(attn, "q_proj", "out", (("q", 0, d),)),
            Part(attn, "k_proj", "out", (("kv", 0, d),)),
            Part(attn, "v_proj", "out", (("kv", 0, d),)),
            Part(attn, out[0], "in", (("q", 0, d),)),
        ]
    elif hasattr(attn, "qkv_proj") or hasattr(attn, "c_attn"):
        fused = "qkv_proj" if hasattr(attn, "qkv_proj") else "c_attn"
        out_name = "o_proj" if hasattr(attn, "o_proj") else "c_proj"
        segs = (("q", 0, d), ("kv", q_size, d), ("kv", q_size + kv_size, d))
        attn_parts = [Part(attn, fused, "out", segs), Part(attn, out_name, "in", (("q", 0, d),))]
    else:
        raise PrunelabError(f"structured pruning does not know the projections of {type(attn).__name__}")
    if _out_dim(attn_parts[0].module) != (q_size if len(attn_parts) == 4 else q_size + 2 * kv_size):
        raise PrunelabError(f"{type(attn).__name__}: projection sizes do not match {heads} heads x {d} (config)")

    found_mlp = mlp_parts(block)
    if found_mlp is None:
        raise PrunelabError(f"structured pruning does not know the MLP of {type(block).__name__}")
    mlp, channel_parts, n = found_mlp
    return BlockSpec(
        block=block,
        mlp=channel_parts,
        attn=attn_parts,
        mlp_out=channel_parts[-1],
        attn_out=attn_parts[-1],
        attn_module=attn,
        mlp_module=mlp,
        n_channels=n,
        n_heads=heads,
        n_kv=kv,
        head_dim=d,
    )


def _slice_param(module: nn.Module, name: str, dim: int, idx: torch.Tensor) -> None:
    p = getattr(module, name)
    setattr(module, name, nn.Parameter(p.data.index_select(dim, idx.to(p.device)).clone(), p.requires_grad))


def axis_dim(module: nn.Module, axis: Axis) -> int:
    """The tensor dimension of `module.weight` that is `axis` of its (out, in) view (Conv1D stores (in, out))."""
    conv = isinstance(module, Conv1D)
    return (1 if conv else 0) if axis == "out" else (0 if conv else 1)


def slice_module(module: nn.Module, axis: Axis, idx: torch.Tensor) -> None:
    """Keep only `idx` along `axis` of a Linear or Conv1D, in place (the bias follows the output axis)."""
    if not is_prunable(module):
        raise TypeError(f"cannot slice {type(module).__name__}")
    conv = isinstance(module, Conv1D)
    dim = axis_dim(module, axis)
    _slice_param(module, "weight", dim, idx)
    if axis == "out" and getattr(module, "bias", None) is not None:
        _slice_param(module, "bias", 0, idx)
    if conv:
        module.nf, module.nx = module.weight.shape[1], module.weight.shape[0]
    else:
        module.out_features, module.in_features = module.weight.shape


def remove_channels(spec: BlockSpec, keep: Sequence[int]) -> None:
    """Keep only MLP channels `keep` (sorted) of this block."""
    for part in spec.mlp:
        slice_module(part.module, part.axis, part.indices({"ch": keep}))
    if hasattr(spec.mlp_module, "intermediate_size"):
        spec.mlp_module.intermediate_size = len(keep)
    spec.n_channels = len(keep)


def check_heads(spec: BlockSpec, keep_q: Sequence[int], keep_kv: Sequence[int]) -> None:
    """Refuse a head selection that would break GQA: every kept group keeps the same number of its query heads."""
    g = spec.group_size
    if not keep_q or not keep_kv:
        raise PrunelabError("cannot remove every attention head of a layer; remove the layer instead (--target layers)")
    per_group = {kv: sum(1 for h in keep_q if h // g == kv) for kv in keep_kv}
    if sum(per_group.values()) != len(keep_q) or len(set(per_group.values())) != 1:
        raise PrunelabError(f"head selection breaks GQA grouping: query heads kept per KV group {per_group}")


def remove_heads(spec: BlockSpec, keep_q: Sequence[int], keep_kv: Sequence[int]) -> None:
    """Keep query heads `keep_q` and key/value groups `keep_kv` (both sorted) of this block's attention."""
    check_heads(spec, keep_q, keep_kv)
    for part in spec.attn:
        slice_module(part.module, part.axis, part.indices({"q": keep_q, "kv": keep_kv}))
    attn = spec.attn_module
    for name, value in (
        ("num_heads", len(keep_q)),
        ("num_attention_heads", len(keep_q)),
        ("num_key_value_heads", len(keep_kv)),
        ("num_key_value_groups", len(keep_q) // len(keep_kv)),
    ):
        if isinstance(getattr(attn, name, None), int):
            setattr(attn, name, value)
    spec.n_heads, spec.n_kv = len(keep_q), len(keep_kv)


def remove_layers(model: nn.Module, drop: Sequence[int]) -> None:
    """Delete decoder blocks `drop`, renumber the rest (KV-cache slots) and shorten per-layer config lists."""
    _, blocks = find_blocks(model)
    n = len(blocks)
    if not drop:
        return
    if len(set(drop)) >= n:
        raise PrunelabError("cannot remove every decoder layer")
    if getattr(model.config, "scale_attn_by_inverse_layer_idx", False):
        raise PrunelabError("this model scales attention by its layer index; removing layers would change the rest")
    kept = [i for i in range(n) if i not in set(drop)]
    for i in sorted(set(drop), reverse=True):
        del blocks[i]
    for new, block in enumerate(blocks):
        for m in block.modules():
            if isinstance(getattr(m, "layer_idx", None), int):
                m.layer_idx = new
    config = model.config
    for key, value in list(vars(config).items()):
        if "layer" in key and isinstance(value, list) and len(value) == n:
            setattr(config, key, [value[i] for i in kept])
    config.num_hidden_layers = len(kept)


def update_config(model: nn.Module, spec: BlockSpec) -> None:
    """Write the (uniform) block sizes of `spec` into the model config; head_dim is made explicit."""
    config = model.config
    first = spec.mlp[0].attr
    width_key = MLP_WIDTH_KEYS.get(first, "n_inner" if first == "c_fc" else None)
    if width_key is None:
        raise PrunelabError(f"do not know the config key of the MLP width ({first})")
    setattr(config, width_key, spec.n_channels)
    config.num_attention_heads = spec.n_heads
    if hasattr(config, "num_key_value_heads"):
        config.num_key_value_heads = spec.n_kv
    elif spec.n_kv != spec.n_heads:
        raise PrunelabError("this architecture has no num_key_value_heads")
    config.head_dim = spec.head_dim


def skeleton(config: Any, model_cls: type[nn.Module], layers: int | None = None) -> nn.Module:
    """The model `config` describes, built on the meta device (shapes only, no memory); optionally fewer layers."""
    config = copy.deepcopy(config)
    if layers is not None:
        n = config.num_hidden_layers
        for key, value in list(vars(config).items()):
            if "layer" in key and isinstance(value, list) and len(value) == n:
                setattr(config, key, value[:layers])
        config.num_hidden_layers = layers
    with torch.device("meta"):
        return model_cls(config)


def check_loadable(model: nn.Module) -> None:
    """Fail loudly (a bug, not user input) if `from_pretrained` would not rebuild exactly these tensor shapes."""
    fresh = {k: tuple(v.shape) for k, v in skeleton(model.config, type(model)).state_dict().items()}
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    diff = sorted(k for k in fresh.keys() | ours.keys() if fresh.get(k) != ours.get(k))
    if diff:
        k = diff[0]
        raise RuntimeError(
            f"pruned model would not reload: {len(diff)} tensors differ, e.g. {k}: {ours.get(k)} vs {fresh.get(k)}"
        )


def heads_loadable(model: nn.Module, spec: BlockSpec, heads: int, kv: int) -> bool:
    """Whether the architecture can load `heads` query / `kv` key-value heads of spec.head_dim (probe on meta)."""
    config = copy.deepcopy(model.config)
    config.num_attention_heads = heads
    if hasattr(config, "num_key_value_heads"):
        config.num_key_value_heads = kv
    elif kv != heads:
        return False
    config.head_dim = spec.head_dim
    try:
        probe = skeleton(config, type(model), layers=1)
    except (ValueError, AssertionError, RuntimeError):
        return False
    q = getattr(find_blocks(probe)[1][0].get_submodule(_rel(spec.block, spec.attn_module)), spec.attn[0].attr)
    expected = heads * spec.head_dim + (0 if len(spec.attn) == 4 else 2 * kv * spec.head_dim)
    return _out_dim(q) == expected


def _rel(root: nn.Module, target: nn.Module) -> str:
    for name, m in root.named_modules():
        if m is target:
            return name
    raise AssertionError("module not inside block")


BIAS_SWITCHES = {"mlp": ("mlp_bias",), "attn": ("attention_bias", "bias")}


def enable_output_bias(model: nn.Module, spec: BlockSpec, which: Literal["mlp", "attn"], apply: bool) -> str | None:
    """Make the block output projection of `which` hold a bias that `from_pretrained` will load.

    Nothing to do when it has one. Otherwise try the config switches the architecture reads (Llama's mlp_bias /
    attention_bias), probed on a meta skeleton; with `apply`, set the switch and give every module that gains a
    bias a zero one (e.g. gate/up with mlp_bias), so outputs are unchanged. Returns the switch used, or raises.
    """
    part = spec.mlp_out if which == "mlp" else spec.attn_out
    if getattr(part.module, "bias", None) is not None:
        return None
    path = f"{_rel(spec.block, part.parent)}.{part.attr}".lstrip(".")
    for switch in BIAS_SWITCHES[which]:
        if not isinstance(getattr(model.config, switch, None), bool):
            continue
        config = copy.deepcopy(model.config)
        setattr(config, switch, True)
        probe_block = find_blocks(skeleton(config, type(model), layers=1))[1][0]
        if getattr(probe_block.get_submodule(path), "bias", None) is None:
            continue
        if apply:
            setattr(model.config, switch, True)
            probe = dict(probe_block.named_modules())
            for block in find_blocks(model)[1]:
                for name, m in block.named_modules():
                    if is_prunable(m) and m.bias is None and getattr(probe.get(name), "bias", None) is not None:
                        w = m.weight
                        m.bias = nn.Parameter(torch.zeros(_out_dim(m), dtype=w.dtype, device=w.device), w.requires_grad)
        return switch
    raise PrunelabError(
        f"--compensate needs a bias on {path}, and {type(model).__name__} cannot load one there "
        "(its config has no switch for it); run without --compensate"
    )
