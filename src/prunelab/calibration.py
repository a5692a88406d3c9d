"""The sequential, block-by-block calibration engine shared by every layer-wise method.

Protocol (Wanda / SparseGPT): run the model up to its first decoder block once and keep that block's inputs with
every keyword argument the model passes (attention mask, position ids, rotary embeddings, cache flags). Then, for
each block in turn: run it over the calibration inputs with forward hooks that fold each layer's inputs into a
float32 running statistic (never stored activations), let the method prune, and run the block again so the next
block sees the outputs of the *pruned* block. That is two forward passes of the decoder over the calibration
tokens, the floor this engine is measured against.

Layers that read the very same input tensor (q/k/v, gate/up) share one statistic: it is accumulated once.
Memory: the model, one block's statistics and the block inputs (hidden states of the calibration tokens).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


class _StopForward(Exception):
    """Raised by the capture hook once block 0 has its inputs: nothing past it needs to run."""


@dataclass
class BlockInputs:
    """Hidden states entering the current block, batched, with the keyword arguments of each batch."""

    hidden: list[torch.Tensor] = field(default_factory=list)
    kwargs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(h.shape[0] * h.shape[1] for h in self.hidden)


@contextlib.contextmanager
def hooks(handles: list[torch.utils.hooks.RemovableHandle]) -> Iterator[list[torch.utils.hooks.RemovableHandle]]:
    """Own a list of hook handles and remove every one of them on exit, error or not."""
    try:
        yield handles
    finally:
        for h in handles:
            h.remove()
        handles.clear()


def capture_block_inputs(
    model: nn.Module, first_block: nn.Module, samples: torch.Tensor, batch_size: int
) -> BlockInputs:
    """Run the model on `samples` (n, L) up to `first_block` and keep what it receives."""
    captured = BlockInputs()
    device = next(model.parameters()).device

    def grab(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.hidden.append(hidden.detach())
        captured.kwargs.append({k: v for k, v in kwargs.items() if k != "hidden_states"})
        raise _StopForward

    with hooks([first_block.register_forward_pre_hook(grab, with_kwargs=True)]), torch.no_grad():
        for start in range(0, samples.shape[0], batch_size):
            batch = samples[start : start + batch_size].to(device)
            with contextlib.suppress(_StopForward):
                model(input_ids=batch, use_cache=False)
    return captured


def _block_output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def module_device(module: nn.Module) -> torch.device | None:
    """Where a module's weights live (None when it has none)."""
    for t in module.parameters():
        return t.device
    return None


def to_device(obj: Any, device: torch.device | None) -> Any:
    """Move every tensor inside nested tuples, lists and dicts to `device` (a no-op for tensors already there).

    Blocks of a model spread over several GPUs (`device_map`) or loaded one at a time (streaming) live on their
    own device: their inputs, hidden states and keyword tensors alike (rotary cos/sin, masks), must follow them.
    """
    if device is None:
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        items = [to_device(v, device) for v in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)  # namedtuples take positionals
    return obj


def run_block(block: nn.Module, inputs: BlockInputs, keep_outputs: bool) -> None:
    """Run one block over every batch; with `keep_outputs` the outputs replace the inputs in place."""
    device = module_device(block)
    with torch.no_grad():
        for i, (hidden, kwargs) in enumerate(zip(inputs.hidden, inputs.kwargs, strict=True)):
            hidden, kwargs = to_device(hidden, device), to_device(kwargs, device)
            out = _block_output(block(hidden, **kwargs))
            if keep_outputs:
                inputs.hidden[i] = out.detach()
                inputs.kwargs[i] = kwargs  # carried to the block's device once, not again for every later block


class Statistic:
    """A float32 running statistic of a layer's inputs; subclasses say which."""

    def __init__(self, in_features: int, device: torch.device) -> None:
        self.in_features = in_features
        self.device = device
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:  # x: (tokens, in_features), float32
        raise NotImplementedError


class SquaredNorm(Statistic):
    """Sum over tokens of x_j^2 per input feature: ||X_j||_2^2 (Wanda, OWL)."""

    def __init__(self, in_features: int, device: torch.device) -> None:
        super().__init__(in_features, device)
        self.sum_sq = torch.zeros(in_features, dtype=torch.float32, device=device)

    def add(self, x: torch.Tensor) -> None:
        self.sum_sq += x.square().sum(dim=0)
        self.tokens += x.shape[0]

    @property
    def norm(self) -> torch.Tensor:
        """||X_j||_2 per input feature, shape (in_features,)."""
        return self.sum_sq.sqrt()


def native_bf16_matmul(device: torch.device) -> bool:
    """Whether this device multiplies bfloat16 matrices natively and faster than float32: a CPU with
    AVX512-BF16 or AMX (oneDNN says so). GPUs answer False on purpose: there the Hessian is a small part of the
    prune time, so float32 costs nothing worth saving."""
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class Hessian(Statistic):
    """Running X^T X (in_features x in_features) in float32, divided by the token count on read (SparseGPT).

    X^T X is symmetric: only the upper block triangle of a 4 x 4 grid of column blocks is multiplied (10 of 16
    products) and mirrored on read. Measured on a 2-core CPU: 1.5x faster at width 576, 1.9x at 1536.

    `matmul_dtype` bfloat16 multiplies each batch's products in bfloat16 (float32 accumulation inside the
    product, its result rounded once to bfloat16) and adds them to the float32 running sum: on a CPU with
    AVX512-BF16 about 3x faster than float32 at width 1536, where these products are about a quarter of
    SparseGPT's prune time; the relative error of the sum is ~1e-3, ten times below SparseGPT's 1% dampening.
    """

    def __init__(self, in_features: int, device: torch.device, matmul_dtype: torch.dtype = torch.float32) -> None:
        super().__init__(in_features, device)
        self.xtx = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.matmul_dtype = matmul_dtype
        self._matrix: torch.Tensor | None = None
        n = min(4, max(1, in_features // 128))
        step = -(-in_features // n)
        self._edges = [(s, min(s + step, in_features)) for s in range(0, in_features, step)]

    def add(self, x: torch.Tensor) -> None:
        self._matrix = None
        low = self.matmul_dtype != torch.float32
        if low:
            x = x.to(self.matmul_dtype)
        for i, (a, b) in enumerate(self._edges):
            xa_t = x[:, a:b].t()
            for c, d in self._edges[i:]:
                if low:
                    self.xtx[a:b, c:d] += xa_t @ x[:, c:d]
                else:
                    self.xtx[a:b, c:d].addmm_(xa_t, x[:, c:d])
        self.tokens += x.shape[0]

    @property
    def matrix(self) -> torch.Tensor:
        """The mean X^T X / tokens, symmetric, float32 (computed once after the last `add`)."""
        if self._matrix is None:
            h = self.xtx
            if len(self._edges) > 1:
                h = torch.triu(h) + torch.triu(h, diagonal=1).t()
            self._matrix = h / max(self.tokens, 1)
        return self._matrix


class Moments(Hessian):
    """The Hessian's X^T X plus the per-feature sum of x: mean, variance and second moment of a layer's inputs
    (DSnoT's expected error and its variance). A Hessian itself, so one pass serves a method that wants one.

    Always float32 products (it takes no `matmul_dtype`, so a StatisticSet whose Hessian it serves uses them): the
    variance E[x^2] - E[x]^2 cancels where a feature's mean is large against its spread, and a 1e-3 error of E[x^2]
    would then be a large one of it."""

    def __init__(self, in_features: int, device: torch.device) -> None:
        super().__init__(in_features, device)
        self.sum = torch.zeros(in_features, dtype=torch.float32, device=device)

    def add(self, x: torch.Tensor) -> None:
        self.sum += x.sum(dim=0)
        super().add(x)

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / max(self.tokens, 1)

    @property
    def var(self) -> torch.Tensor:
        """Per-feature variance E[x^2] - E[x]^2 (population), clamped at 0 against rounding."""
        return (torch.diagonal(self.matrix) - self.mean.square()).clamp_min(0.0)


STATISTICS: dict[str, type[Statistic]] = {"sq_norm": SquaredNorm, "hessian": Hessian, "moments": Moments}


class StatisticSet(Statistic):
    """Several named statistics of one layer's inputs, fed by the same pass (a method's and its stages').

    A statistic whose class extends another one asked for serves both names (Moments is a Hessian), so SparseGPT
    with a stage that wants moments still accumulates X^T X once.
    """

    def __init__(self, names: list[str], in_features: int, device: torch.device,
                 hessian_dtype: torch.dtype = torch.float32) -> None:  # fmt: skip
        super().__init__(in_features, device)
        classes = [STATISTICS[n] for n in names]
        self.parts: dict[str, Statistic] = {}
        made: dict[type[Statistic], Statistic] = {}
        for name, cls in zip(names, classes, strict=True):
            best = next((c for c in classes if issubclass(c, cls) and c is not cls), cls)
            if best not in made:
                made[best] = best(in_features, device, hessian_dtype) if best is Hessian else best(in_features, device)
            self.parts[name] = made[best]
        self._unique = list(made.values())
        hessians = [stat for stat in self._unique if isinstance(stat, Hessian)]
        # What the X^T X products really ran in (None without a Hessian): the prune report's `hessian_matmul`.
        self.hessian_matmul = str(hessians[0].matmul_dtype).removeprefix("torch.") if hessians else None

    def add(self, x: torch.Tensor) -> None:
        for stat in self._unique:
            stat.add(x)
        self.tokens += x.shape[0]

    def __getitem__(self, name: str) -> Statistic:
        return self.parts[name]


def collect_statistics(
    block: nn.Module,
    layers: dict[str, nn.Module],
    inputs: BlockInputs,
    make: Callable[[nn.Module], Statistic],
) -> dict[str, Statistic]:
    """Run `block` over the calibration inputs once, folding each layer's inputs into its statistic.

    Pre-forward hooks see each layer's input before it is used. Layers fed the same tensor in the same call
    (q/k/v, gate/up) are detected on the first batch and share one statistic, accumulated once. The first batch
    also records the call order; on later batches the block stops as soon as the last hooked layer has been
    seen, since nothing after it feeds a statistic (this skips e.g. the down projection: about a quarter of a
    Llama block). Hooks are removed on exit, even on error.
    """
    stats: dict[str, Statistic] = {}
    owner_of: dict[str, str] = {}  # follower layer -> layer whose statistic it shares
    # Inputs seen during the first batch, kept alive so their memory cannot be reused by a later tensor that
    # would then look identical by address.
    seen: list[tuple[torch.Tensor, str]] = []
    order: list[str] = []
    state = {"first": True, "stop_at": None}

    def hook_for(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            x = args[0] if args else next(iter(kwargs.values()))
            if state["first"]:
                order.append(name)
                for t, owner in seen:
                    if t.data_ptr() == x.data_ptr() and t.shape == x.shape and t.stride() == x.stride():
                        owner_of[name] = owner
                        return
                seen.append((x, name))
            elif name in owner_of:
                return
            if name not in stats:
                stats[name] = make(layers[name])
            stats[name].add(x.detach().reshape(-1, x.shape[-1]).float())
            if name == state["stop_at"]:
                raise _StopForward

        return hook

    device = module_device(block)
    handles = [m.register_forward_pre_hook(hook_for(n), with_kwargs=True) for n, m in layers.items()]
    with hooks(handles), torch.no_grad():
        for i, (hidden, kwargs) in enumerate(zip(inputs.hidden, inputs.kwargs, strict=True)):
            with contextlib.suppress(_StopForward):
                block(to_device(hidden, device), **to_device(kwargs, device))
            if i == 0:
                state["first"] = False
                seen.clear()
                # Stop early only when every layer ran exactly once (a layer called twice would lose calls).
                if order and len(order) == len(set(order)):
                    state["stop_at"] = order[-1] if order[-1] not in owner_of else None
    for follower, owner in owner_of.items():
        stats[follower] = stats[owner]
    return stats
