"""Run 2:4-pruned Linear layers through PyTorch's semi-structured sparse kernels (NVIDIA Ampere and newer).

Unstructured zeros in a dense matrix cost exactly as much as any other value: a dense GEMM multiplies them all.
Only hardware that understands a sparsity pattern can skip work; 2:4 sparse tensor cores (compute capability >= 8.0)
do, through `torch.sparse.to_sparse_semi_structured` (cuSPARSELt, or CUTLASS). Elsewhere this module says why it
cannot run, and the benchmark reports dense kernels.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


def semi_structured_unavailable(device: str | torch.device) -> str | None:
    """None when 2:4 semi-structured kernels can run on `device`, else the reason."""
    device = torch.device(device)
    need = "2:4 sparse kernels need an NVIDIA GPU with compute capability >= 8.0"
    if device.type != "cuda":
        return f"{need}; this run is on {device.type}"
    if not torch.cuda.is_available():
        return f"{need}; CUDA is not available in this torch build or on this machine"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        name = torch.cuda.get_device_name(device)
        return f"{name} has compute capability {major}.{minor}; 2:4 sparse kernels need >= 8.0"
    try:
        from torch.sparse import to_sparse_semi_structured  # noqa: F401
    except ImportError:
        return "this torch build has no torch.sparse.to_sparse_semi_structured"
    return None


def is_2_4(weight: torch.Tensor) -> bool:
    """Whether every group of 4 consecutive inputs of every row has at most 2 non-zeros."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    return bool(((weight != 0).view(weight.shape[0], -1, 4).sum(dim=-1) <= 2).all())


def apply_semi_structured(layers: dict[str, nn.Module]) -> dict[str, Any]:
    """Swap the weight of each 2:4 `nn.Linear` in `layers` for its semi-structured sparse form, in place.

    Layers that are not 2:4, not `nn.Linear`, or whose dtype/shape the kernels refuse stay dense; the report lists
    them with the reason, so a partial conversion is visible.
    """
    from torch.sparse import to_sparse_semi_structured

    converted: list[str] = []
    skipped: dict[str, str] = {}
    for name, module in layers.items():
        if not isinstance(module, nn.Linear):
            skipped[name] = f"{type(module).__name__} is not nn.Linear"
            continue
        weight = module.weight.detach()
        if not is_2_4(weight):
            skipped[name] = "weight is not 2:4 sparse"
            continue
        try:
            sparse = to_sparse_semi_structured(weight.contiguous())
        except (RuntimeError, ValueError) as e:
            skipped[name] = str(e).splitlines()[0]
            continue
        module.weight = nn.Parameter(sparse, requires_grad=False)
        converted.append(name)
    if skipped:
        log.warning("%d layers left dense (first: %s)", len(skipped), next(iter(skipped.items())))
    return {"converted": len(converted), "skipped": skipped}
