"""The registered method `structured`: remove MLP channels, attention heads (GQA-aware) or whole decoder layers.

`sparsity` here is the fraction of decoder-block parameters removed (embeddings and lm_head stay). Every layer
loses the same number of units (the saved config has one intermediate_size and one head count), so the request is
rounded to the nearest whole number of units per layer and the achieved reduction is reported next to it, with
the parameter counts and the ratio of per-token multiplies (every Linear, lm_head included: the decode bound).

Order of work: plan the unit counts and refuse impossible requests *before* touching the model; score units
(importance.py); cut them (surgery.py), block by block. Activation scores and bias compensation follow the
sequential protocol of the layer-wise methods: block i is scored on the outputs of the already pruned blocks.
Compensation (FLAP): the removed units' mean contribution W[:, removed] E[x_removed] goes into the bias of the
output projection. Taylor scores (taylor.py) come from one gradient pass over the whole model before the cuts.
`iterative_steps` k > 1 removes the plan in k shares (earlier steps the larger), re-scoring the partly pruned
model each time: a unit's worth changes once its neighbours are gone. `between_steps`, when a recovery module sets
it, runs between two steps (e.g. a short distillation); unset, the steps only re-score. Optional LoRA recovery
(recover.py) runs last. `check_loadable` proves the result reloads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import astuple, dataclass, replace
from typing import Any

import torch
from torch import nn

from prunelab import calibration
from prunelab._util import progress
from prunelab.config.methods import StructuredOptions
from prunelab.config.prune import PruneConfig
from prunelab.errors import PrunelabError
from prunelab.models import find_blocks, is_prunable, weight_2d
from prunelab.pruning.base import Capabilities, LayerResult, Pruner, PruneResult
from prunelab.pruning.structured import importance as imp
from prunelab.pruning.structured import surgery, taylor

log = logging.getLogger(__name__)

LAYER_IMPORTANCE = ("block-influence", "taylor")
UNIT_IMPORTANCE = ("magnitude", "activation", "taylor", "minitron")
# Called between iterative steps with (model, calibration windows, index of the step just done); returns what to
# record (or None). The seam for a recovery module: the steps never train by themselves.
StepRecovery = Callable[[nn.Module, torch.Tensor | None, int], dict[str, Any] | None]


@dataclass
class Plan:
    """Units removed in every layer: MLP channels, whole KV groups, query heads per kept group; or layers."""

    channels: int = 0
    kv_groups: int = 0
    q_per_group: int = 0
    layers: int = 0

    def split(self, k: int) -> list[Plan]:
        """k plans adding up to this one, each count spread evenly (earlier steps the larger shares); empty ones
        dropped. Heads stay GQA-consistent: every step removes whole groups and the same query heads per group."""
        shares = [[n // k + (i < n % k) for i in range(k)] for n in astuple(self)]
        return [p for p in (Plan(*col) for col in zip(*shares, strict=True)) if any(astuple(p))]


def macs_per_token(model: nn.Module) -> int:
    """Multiplies per token in every Linear/Conv1D (blocks and lm_head; attention scores not counted)."""
    return sum(weight_2d(m).numel() for m in model.modules() if is_prunable(m))


class Structured(Pruner):
    name = "structured"
    summary = "remove MLP channels, attention heads (GQA-aware) or layers; smaller, faster (FLAP/ShortGPT)"
    Options = StructuredOptions
    capabilities = Capabilities(
        changes_shapes=True, supports_nm=False, comparison_group="unit", block_local=False, layer_filters=False
    )

    between_steps: StepRecovery | None = None

    def __init__(self, cfg: PruneConfig) -> None:
        super().__init__(cfg)
        o: StructuredOptions = self.options
        if self.pattern.is_nm:
            raise PrunelabError("structured pruning removes whole units; an N:M --pattern does not apply")
        if cfg.allocation != "uniform":
            raise PrunelabError("--allocation applies to layer-wise methods; structured pruning is uniform per layer")
        if cfg.targets or cfg.ignore:
            raise PrunelabError("--targets/--ignore do not apply to structured pruning; choose units with --target")
        self.importance = o.importance or ("block-influence" if o.target == "layers" else "activation")
        if self.importance not in (LAYER_IMPORTANCE if o.target == "layers" else UNIT_IMPORTANCE):
            raise PrunelabError(
                f"importance '{self.importance}' does not apply to target '{o.target}': layers use "
                f"{' or '.join(LAYER_IMPORTANCE)}; mlp and heads use {', '.join(UNIT_IMPORTANCE)}"
            )
        if o.compensate and o.target == "layers":
            raise PrunelabError("--compensate applies to mlp/heads targets, not to removed layers")

    @property
    def caps(self) -> Capabilities:
        o: StructuredOptions = self.options
        needs = self.importance != "magnitude" or o.compensate or o.recover_steps > 0
        return replace(self.capabilities, needs_calibration=needs)

    # ---- planning -------------------------------------------------------------------------------------------
    def _plan(self, model: nn.Module, specs: list[surgery.BlockSpec], block_params: list[int]) -> Plan:
        target = self.options.target
        spec, n_layers, s, block = specs[0], len(specs), self.sparsity, block_params[0]
        per_layer = s * sum(block_params) / n_layers
        if target == "layers":
            n = round(s * n_layers)
            if n == 0:
                raise PrunelabError(f"sparsity {s:g} is too small to remove one of {n_layers} layers")
            if n >= n_layers:
                raise PrunelabError(f"sparsity {s:g} would remove all {n_layers} decoder layers")
            return Plan(layers=n)
        plan = Plan()
        c_ch, c_q, c_kv = (spec.params_per_unit(k) for k in ("ch", "q", "kv"))
        g = spec.group_size
        if target in ("heads", "mlp+heads"):
            attn_params = spec.n_kv * (c_kv + g * c_q)
            goal = per_layer if target == "heads" else s * attn_params
            options = [(k, r) for k in range(spec.n_kv + 1) for r in range(g)]
            k, r = min(options, key=lambda kr: (abs(self._head_params(spec, *kr) - goal), -kr[0], -kr[1]))
            if k == spec.n_kv:
                most = self._head_params(spec, spec.n_kv - 1, g - 1) / block
                raise PrunelabError(
                    f"sparsity {s:g} would remove every attention head (attention is "
                    f"{attn_params / block:.1%} of the decoder-block parameters; target "
                    f"'{target}' can remove at most {most:.1%} through heads)"
                )
            if target == "heads" and k == r == 0:
                raise PrunelabError(f"sparsity {s:g} is too small to remove one query head per KV group")
            if (k, r) != (0, 0):
                heads, kv = (spec.n_kv - k) * (g - r), spec.n_kv - k
                if not surgery.heads_loadable(model, spec, heads, kv):
                    raise PrunelabError(
                        f"{type(model).__name__} derives head_dim from hidden_size / num_attention_heads, so it cannot "
                        "load a model with fewer heads; use --target mlp or layers"
                    )
            plan.kv_groups, plan.q_per_group = k, r
        if target in ("mlp", "mlp+heads"):
            rest = per_layer - self._head_params(spec, plan.kv_groups, plan.q_per_group)
            n = self._round_width(spec.n_channels, max(0, round(rest / c_ch)), s)
            if n >= spec.n_channels:
                raise PrunelabError(
                    f"sparsity {s:g} would leave no MLP channel (removing {n} of {spec.n_channels} per layer); the "
                    f"MLP is {spec.n_channels * c_ch / block:.1%} of the decoder-block parameters"
                )
            if target == "mlp" and n == 0:
                raise PrunelabError(f"sparsity {s:g} is too small to remove one MLP channel per layer")
            plan.channels = n
        return plan

    def _round_width(self, width: int, n: int, s: float) -> int:
        """Channels to remove so that the kept width is the multiple of `multiple_of` nearest to width - n (ties:
        keep more). Why: llama.cpp quantizes a matrix in blocks of 32 values per row; a width that is not a
        multiple of 32 makes it keep those MLP tensors at f16, so the 'smaller' model's file can be larger."""
        m = self.options.multiple_of
        if m == 1 or n == 0:
            return n
        widths = range(m, width + 1, m)
        if not widths:
            raise PrunelabError(f"multiple_of {m} is larger than the MLP width {width}")
        kept = min(widths, key=lambda w: (abs(w - (width - n)), -w))
        if kept == width:
            raise PrunelabError(
                f"sparsity {s:g} removes {n} of {width} MLP channels, which rounds to none at multiple_of {m}; "
                "ask for more sparsity or a smaller multiple_of"
            )
        return width - kept

    @staticmethod
    def _head_params(spec: surgery.BlockSpec, k: int, r: int) -> int:
        g, c_q, c_kv = spec.group_size, spec.params_per_unit("q"), spec.params_per_unit("kv")
        return k * (c_kv + g * c_q) + (spec.n_kv - k) * r * c_q

    # ---- pruning --------------------------------------------------------------------------------------------
    def prune(self, model: nn.Module, calib: torch.Tensor | None) -> PruneResult:
        start = time.perf_counter()
        o: StructuredOptions = self.options
        if self.needs_calibration and calib is None:
            raise PrunelabError(f"method '{self.name}' with these options needs calibration data")
        prefix, blocks = find_blocks(model)
        specs = [surgery.block_spec(b, model.config) for b in blocks]
        block_params = [sum(p.numel() for p in b.parameters()) for b in blocks]
        shapes = {(s.n_channels, s.n_heads, s.n_kv, s.head_dim) for s in specs}
        if len(shapes) > 1 or len(set(block_params)) > 1:
            raise PrunelabError("structured pruning needs identical decoder blocks; this model's blocks differ")
        params_before, macs_before = sum(p.numel() for p in model.parameters()), macs_per_token(model)
        plan = self._plan(model, specs, block_params)
        do_mlp, do_heads = plan.channels > 0, plan.kv_groups + plan.q_per_group > 0
        if o.compensate:  # refuse before any change, then give the output projections a bias
            for which in ("mlp",) * do_mlp + ("attn",) * do_heads:
                surgery.enable_output_bias(model, specs[0], which, apply=False)
            for which in ("mlp",) * do_mlp + ("attn",) * do_heads:
                surgery.enable_output_bias(model, specs[0], which, apply=True)
        compensated_params = sum(p.numel() for b in blocks for p in b.parameters())
        structure_before = self._structure(specs, len(blocks))
        alive, between = list(range(len(blocks))), []  # original index of each remaining layer
        steps = plan.split(o.iterative_steps)
        for step, part in enumerate(steps):
            with torch.no_grad():
                if part.layers:
                    drop = self._drop_layers(model, blocks, calib, part.layers)
                    alive = [i for j, i in enumerate(alive) if j not in set(drop)]
                else:
                    self._prune_units(model, specs, calib, part)
                    surgery.update_config(model, specs[0])
                    specs = [surgery.block_spec(b, model.config) for b in blocks]  # offsets of fused parts moved
            if self.between_steps is not None and step + 1 < len(steps):
                between.append(self.between_steps(model, calib, step))
        dropped = [i for i in range(len(block_params)) if i not in set(alive)]
        recovery = None
        if o.recover_steps:
            from prunelab.pruning.structured.recover import lora_recover

            assert calib is not None
            with torch.enable_grad():
                recovery = lora_recover(
                    model, calib, o.recover_steps, o.recover_lr, o.recover_rank, o.recover_batch_size, self.cfg.seed
                )
        surgery.check_loadable(model)

        result = PruneResult(self.name, o.target, self.sparsity, kind="structured")
        kept = [i for i in range(len(block_params)) if i not in set(dropped)]
        after = dict(zip(kept, (sum(p.numel() for p in b.parameters()) for b in blocks), strict=True))
        for i, numel in enumerate(block_params):
            removed = numel - after[i] if i in after else numel
            result.layers[f"{prefix}.{i}"] = LayerResult(numel, max(removed, 0), self.sparsity)
        block_before, block_after = sum(block_params), sum(after.values())
        params_after, macs_after = sum(p.numel() for p in model.parameters()), macs_per_token(model)
        result.extra = {
            "target": o.target,
            "importance": self.importance,
            "compensate": o.compensate,
            "params_before": params_before,
            "params_after": params_after,
            "block_params_before": block_before,
            "block_params_after": block_after,
            "achieved_reduction": 1 - block_after / block_before,
            "bias_params_added": compensated_params - block_before,
            "flops_ratio": macs_after / macs_before,
            "decode_speedup_bound": macs_before / macs_after,
            "structure_before": structure_before,
            "structure_after": self._structure([surgery.block_spec(b, model.config) for b in blocks], len(blocks)),
            "removed_layers": dropped,
            "iterative": (
                {"asked": o.iterative_steps, "steps": len(steps), "between_steps": between}
                if o.iterative_steps > 1
                else None
            ),
            "recovery": recovery,
        }
        result.seconds = time.perf_counter() - start
        log.info(
            "structured %s: %.1f%% of block params removed (asked %.1f%%), params %d -> %d, flops x%.3f",
            o.target, 100 * result.extra["achieved_reduction"], 100 * self.sparsity, params_before, params_after,
            result.extra["flops_ratio"],
        )  # fmt: skip
        return result

    @staticmethod
    def _structure(specs: list[surgery.BlockSpec], layers: int) -> dict[str, int]:
        s = specs[0]
        return {"layers": layers, "mlp_channels": s.n_channels, "attention_heads": s.n_heads, "kv_heads": s.n_kv}

    def _batch_size(self, model: nn.Module) -> int:
        return self.cfg.calib_batch(next(model.parameters()).device.type)

    def _drop_layers(self, model: nn.Module, blocks: nn.ModuleList, calib: torch.Tensor | None, n: int) -> list[int]:
        """Drop the n least important blocks: ShortGPT's block influence on the current model's hidden states, or
        the Taylor score of each block. Returns their indices in the current numbering."""
        assert calib is not None
        if self.importance == "taylor":
            grads = taylor.gradients(model, calib, self._batch_size(model))
            scores = [taylor.layer_score(b, grads, self.options.taylor) for b in blocks]
            del grads
        else:
            inputs = calibration.capture_block_inputs(model, blocks[0], calib, self._batch_size(model))
            scores = []
            for block in progress(list(blocks), desc="block influence", unit="block"):
                before = list(inputs.hidden)
                calibration.run_block(block, inputs, keep_outputs=True)
                scores.append(imp.block_influence(calibration.BlockInputs(before, inputs.kwargs), inputs.hidden))
            del inputs
        drop = sorted(sorted(range(len(scores)), key=lambda i: (scores[i], i))[:n])
        log.info("%s %s; removing layers %s", self.importance, [round(x, 4) for x in scores], drop)
        surgery.remove_layers(model, drop)
        return drop

    def _prune_units(
        self,
        model: nn.Module,
        specs: list[surgery.BlockSpec],
        calib: torch.Tensor | None,
        plan: Plan,
    ) -> None:
        o: StructuredOptions = self.options
        do_mlp, do_heads = plan.channels > 0, plan.kv_groups + plan.q_per_group > 0
        inputs, grad_scores = None, None
        if self.importance == "taylor":  # the whole model's gradient, before any cut of this step
            assert calib is not None
            grads = taylor.gradients(model, calib, self._batch_size(model))
            grad_scores = [taylor.unit_scores(spec, grads, o.taylor) for spec in specs]
            del grads
        if self.importance in ("activation", "minitron") or o.compensate:
            assert calib is not None
            inputs = calibration.capture_block_inputs(model, specs[0].block, calib, self._batch_size(model))
        seqlen = 0 if calib is None else calib.shape[1]

        def make_stat(m: nn.Module) -> imp.MeanVar:
            n, dev = weight_2d(m).shape[1], weight_2d(m).device
            if self.importance == "minitron":
                return imp.WindowAbs(n, dev, seqlen, o.minitron_seq, o.minitron_batch)
            return imp.MeanVar(n, dev)

        for i, spec in enumerate(progress(specs, desc=f"structured {o.target}", unit="block")):
            stats: dict[str, imp.MeanVar] = {}
            if inputs is not None:
                outs = {"mlp": spec.mlp_out.module} if do_mlp else {}
                outs.update({"attn": spec.attn_out.module} if do_heads else {})
                stats = calibration.collect_statistics(spec.block, outs, inputs, make_stat)  # type: ignore[assignment]
            mean = stats if o.compensate else {}  # what _silence moves into the bias
            keep: list[int] = []
            if do_mlp:
                scores = (
                    grad_scores[i]["ch"]
                    if grad_scores is not None
                    else imp.channel_scores(spec, self.importance, stats.get("mlp"), o.compensate)
                )
                order = torch.argsort(scores, descending=True, stable=True)
                keep = sorted(order[: spec.n_channels - plan.channels].tolist())
                self._silence(spec.mlp_out, spec.mlp_out.indices({"ch": keep}), mean.get("mlp"))
            if do_heads:
                q, groups = (
                    (grad_scores[i]["q"], grad_scores[i]["kv"])
                    if grad_scores is not None
                    else imp.head_scores(spec, self.importance, stats.get("attn"), o.compensate)
                )
                keep_q, keep_kv = select_heads(q, groups, spec.group_size, plan.kv_groups, plan.q_per_group)
                surgery.check_heads(spec, keep_q, keep_kv)
                self._silence(spec.attn_out, spec.attn_out.indices({"q": keep_q}), mean.get("attn"))
            # Propagate through the block with the removed units silenced (zero output columns: the same function
            # as removing them, and the block still matches the config that some architectures read in forward).
            if inputs is not None and i + 1 < len(specs):
                calibration.run_block(spec.block, inputs, keep_outputs=True)
            if do_mlp:
                surgery.remove_channels(spec, keep)
            if do_heads:
                surgery.remove_heads(spec, keep_q, keep_kv)

    @staticmethod
    def _silence(part: surgery.Part, kept_cols: torch.Tensor, stat: imp.MeanVar | None) -> None:
        """Zero the removed input columns of an output projection; with `stat`, first move their mean output
        W[:, removed] E[x_removed] into the bias (FLAP compensation)."""
        w = weight_2d(part.module)
        removed = torch.ones(w.shape[1], dtype=torch.bool)
        removed[kept_cols] = False
        removed = removed.to(w.device)
        if stat is not None:
            shift = w[:, removed].float() @ stat.mean.to(w.device)[removed]
            part.module.bias.data += shift.to(part.module.bias.dtype)
        w[:, removed] = 0.0


def select_heads(
    q_scores: torch.Tensor, group_scores: torch.Tensor, g: int, drop_groups: int, drop_q: int
) -> tuple[list[int], list[int]]:
    """Drop the `drop_groups` lowest KV groups, then the `drop_q` lowest query heads of every kept group."""
    n_kv = group_scores.numel()
    keep_kv = sorted(torch.argsort(group_scores, descending=True, stable=True)[: n_kv - drop_groups].tolist())
    keep_q: list[int] = []
    for kv in keep_kv:
        local = torch.argsort(q_scores[kv * g : (kv + 1) * g], descending=True, stable=True)[: g - drop_q]
        keep_q.extend(sorted(kv * g + int(h) for h in local))
    return keep_q, keep_kv
