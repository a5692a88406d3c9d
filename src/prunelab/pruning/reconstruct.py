"""Block-wise reconstruction (EBFT, arXiv 2402.12419; "A Free Lunch in LLM Compression", arXiv 2510.14444).

Why: a layer-wise method fixes each layer's error on its own inputs, but the errors of a block's layers compound.
A few Adam steps on the block's kept weights, with the mask fixed, so that the pruned block's outputs on the
calibration inputs match the dense block's, undo much of that, at the cost of a few block forward/backward passes;
the engine then propagates the reconstructed outputs to the next block.

Scope "block" matches the block's output; "separate" matches the output of each module holding pruned layers
(attention, then MLP, in the block's order) in turn, each with its own weights trainable, which the free-lunch
paper finds nearly as good at lower cost. The dense targets are captured before the block's layers are pruned
(`capture`). Target "block" runs the dense block on the pruned model's inputs, so each block only undoes its own
error; target "model" runs it on the dense model's own hidden states, carried block to block beside the pruned ones
(one more copy of the calibration activations, no extra forward), so a block also corrects what earlier blocks
left. Each step uses one calibration batch, in an order drawn from the seed. Pruned weights stay exactly
zero: their gradients are zeroed before each step (so Adam's moments stay zero) and the weights after it. The
optimisation runs in float32 whatever the model's dtype.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from prunelab.calibration import BlockInputs, hooks, module_device, to_device
from prunelab.pruning.stages import ReconstructStage


class _Stop(Exception):
    """Raised once the module being reconstructed has produced its output: the rest of the block is not needed."""


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _float(obj: Any) -> Any:
    """Floating tensors inside nested containers as float32 (the block is optimised in float32)."""
    if isinstance(obj, torch.Tensor):
        return obj.float() if obj.is_floating_point() else obj
    if isinstance(obj, dict):
        return {k: _float(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        items = [_float(v) for v in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    return obj


def groups(block: nn.Module, layers: dict[str, nn.Module], scope: str) -> list[tuple[nn.Module, list[nn.Module]]]:
    """(module whose output is matched, its pruned layers), in the block's order."""
    mods = list(layers.values())
    if scope == "block":
        return [(block, mods)]
    ids = {id(m) for m in mods}
    out: dict[str, list[nn.Module]] = {}
    for name, module in block.named_modules():
        if id(module) in ids:
            out.setdefault(name.rpartition(".")[0], []).append(module)
    return [(block.get_submodule(parent) if parent else block, members) for parent, members in out.items()]


class Reconstruct(ReconstructStage):
    name = "reconstruct"
    summary = "a few Adam steps on each block's kept weights to match the dense block's outputs (EBFT)"

    def capture(self, index: int, block: nn.Module, layers: dict[str, nn.Module], inputs: BlockInputs) -> None:
        model_target = self.cfg.reconstruct_target == "model"
        if model_target and index == 0:
            self._dense: list[torch.Tensor] = list(inputs.hidden)  # block 0 sees the same inputs either way
        source = self._dense if model_target else inputs.hidden
        self._groups = groups(block, layers, self.cfg.reconstruct_scope) if layers else []
        device = module_device(block)
        self._targets: list[list[torch.Tensor]] = [[] for _ in self._groups]
        seen: dict[int, torch.Tensor] = {}

        def grab(module: nn.Module, _args: Any, out: Any) -> None:
            seen[id(module)] = _first(out).detach().float()

        if not self._groups and not model_target:
            return
        subs = [m for m, _ in self._groups if m is not block]
        with hooks([m.register_forward_hook(grab) for m in subs]), torch.no_grad():
            for b, (hidden, kwargs) in enumerate(zip(source, inputs.kwargs, strict=True)):
                out = _first(block(to_device(hidden, device), **to_device(kwargs, device)))
                seen[id(block)] = out.float()
                for j, (module, _) in enumerate(self._groups):
                    self._targets[j].append(seen[id(module)])
                if model_target:
                    self._dense[b] = out.detach().to(hidden.device)  # the dense model's input to the next block

    def reconstruct(self, index: int, block: nn.Module, layers: dict[str, nn.Module], inputs: BlockInputs) -> None:
        dtype = next(block.parameters()).dtype
        flags = {p: p.requires_grad for p in block.parameters()}
        block.float()
        try:
            for p in block.parameters():
                p.requires_grad_(False)
            losses = [self._fit(index, j, block, module, members, inputs)
                      for j, (module, members) in enumerate(self._groups)]  # fmt: skip
        finally:
            for p, flag in flags.items():
                p.grad = None
                p.requires_grad_(flag)
            block.to(dtype)
            self._targets = []
        self.results.setdefault("first_last_step_loss", []).append(losses)  # per block, per group

    def _fit(
        self, index: int, j: int, block: nn.Module, module: nn.Module, members: list[nn.Module], inputs: BlockInputs
    ) -> list[float]:
        """Adam on `members`' weights so that `module`'s output matches its dense target; [first, last] loss."""
        params = [m.weight for m in members]
        masks = [p.detach() == 0 for p in params]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=self.cfg.reconstruct_lr)
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + index * 101 + j)
        n = len(inputs.hidden)
        order = torch.randperm(n, generator=gen).tolist()
        device = module_device(block)
        holder: dict[str, torch.Tensor] = {}

        def grab(_m: nn.Module, _args: Any, out: Any) -> None:
            holder["out"] = _first(out)
            raise _Stop

        first = last = float("nan")
        handles = [] if module is block else [module.register_forward_hook(grab)]
        with hooks(handles), torch.enable_grad():
            for step in range(self.cfg.reconstruct_steps):
                b = order[step % n]
                hidden = _float(to_device(inputs.hidden[b], device))
                kwargs = _float(to_device(inputs.kwargs[b], device))
                with contextlib.suppress(_Stop):
                    holder["out"] = _first(block(hidden, **kwargs))
                loss = torch.nn.functional.mse_loss(holder.pop("out"), self._targets[j][b])
                opt.zero_grad(set_to_none=False)
                loss.backward()
                for p, m in zip(params, masks, strict=True):
                    assert p.grad is not None
                    p.grad.masked_fill_(m, 0.0)
                opt.step()
                with torch.no_grad():
                    for p, m in zip(params, masks, strict=True):
                        p.masked_fill_(m, 0.0)
                first = loss.item() if step == 0 else first
                last = loss.item()
        for p in params:
            p.requires_grad_(False)
        return [first, last]
