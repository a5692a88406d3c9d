"""Size on disk: the dense safetensors checkpoint, and a compact sparse checkpoint that restores it bit for bit.

Compact format (`prunelab-compact`, version 1): one safetensors file. Each tensor is stored in whichever of three
encodings is smallest for it, so embeddings stay dense and pruned Linear weights shrink:

- `dense`: the tensor as is.
- `bitmask`: a bit per element (1 = stored; bit i of byte j is element 8j + i of the flattened tensor) plus the
  stored elements packed in order. Size: n/8 + nnz x itemsize, i.e. 56.25% of dense at 50% sparsity in float16.
- `nm`: for a tensor whose every group of M consecutive elements along the last dimension holds at most N non-zeros
  (2:4 pruning): N values per group plus the group's index pattern, stored as the rank of the chosen positions
  among the C(M, N) possible ones (ceil(log2 C(M, N)) bits per group, packed LSB-first: 3 bits for 2:4 where a
  bitmask needs 4). For 2:4 in float16 that is (4 + 3/8) / 8 = 54.7% of dense.

"Zero" means all bits zero, not `== 0`: -0.0 is stored like any other value, so the round trip is bit-exact for every
dtype (NaN payloads included). Tensors that share storage (tied embeddings) are stored once and restored under every
name. The layout is JSON in the safetensors header metadata, so the file is self-describing.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from prunelab._util import default_file_mode, write_error
from prunelab.errors import PrunelabError

FORMAT = "prunelab-compact"
VERSION = 1
NM_GROUP_SIZES = (4, 8)
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_BIT_WEIGHTS = torch.tensor([1 << i for i in range(8)], dtype=torch.uint8)


# ---------------------------------------------------------------- bit packing


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Pack a 1-D bool tensor into uint8, LSB first (bit i of byte j = element 8j + i)."""
    bits = bits.reshape(-1).to(torch.uint8)
    pad = (-bits.numel()) % 8
    if pad:
        bits = torch.cat([bits, bits.new_zeros(pad)])
    return (bits.view(-1, 8) * _BIT_WEIGHTS.to(bits.device)).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of `pack_bits`: the first `n` bits as a bool tensor."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    return ((packed.reshape(-1, 1) >> shifts) & 1).bool().reshape(-1)[:n]


def pack_uints(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack non-negative integers < 2**bits, `bits` bits each, LSB first."""
    if bits == 0:
        return torch.zeros(0, dtype=torch.uint8)
    shifts = torch.arange(bits, dtype=torch.int64, device=values.device)
    return pack_bits(((values.reshape(-1, 1).to(torch.int64) >> shifts) & 1).bool())


def unpack_uints(packed: torch.Tensor, count: int, bits: int) -> torch.Tensor:
    if bits == 0:
        return torch.zeros(count, dtype=torch.int64)
    flat = unpack_bits(packed, count * bits).view(count, bits).to(torch.int64)
    return (flat << torch.arange(bits, dtype=torch.int64, device=packed.device)).sum(dim=1)


def combinations(n: int, m: int) -> torch.Tensor:
    """All sorted position sets of n out of m, in lexicographic order: (C(m, n), n) int64; row r has rank r."""
    rows = list(itertools.combinations(range(m), n))
    return torch.tensor(rows, dtype=torch.int64).view(len(rows), n)


def pattern_bits(n: int, m: int) -> int:
    """Bits needed for the rank of one group's position set."""
    return math.ceil(math.log2(math.comb(m, n)))


def _ranks(idx: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Rank of each row's sorted position set among `combinations(n, m)`."""
    table = torch.full((1 << m,), -1, dtype=torch.int64)
    table[(1 << combinations(n, m)).sum(dim=1)] = torch.arange(math.comb(m, n))
    return table[(1 << idx).sum(dim=1)]


# ---------------------------------------------------------------- encodings


def nonzero_bits(t: torch.Tensor) -> torch.Tensor:
    """True where an element has any bit set (so -0.0 counts as stored, +0.0 as zero)."""
    t = t.contiguous()
    if t.dtype == torch.bool:
        return t
    return t.view(_INT_VIEW[t.element_size()]) != 0


@dataclass(frozen=True)
class Plan:
    encoding: str  # dense | bitmask | nm
    nbytes: int
    n: int = 0
    m: int = 0


def plan(t: torch.Tensor) -> Plan:
    """The smallest encoding of `t` and its payload size in bytes."""
    numel, isz = t.numel(), t.element_size()
    best = Plan("dense", numel * isz)
    if numel == 0:
        return best
    nz = nonzero_bits(t)
    nnz = int(nz.sum())
    bitmask = Plan("bitmask", math.ceil(numel / 8) + nnz * isz)
    if bitmask.nbytes < best.nbytes:
        best = bitmask
    for m in NM_GROUP_SIZES:
        if t.dim() == 0 or t.shape[-1] % m:
            continue
        groups = numel // m
        n = int(nz.view(groups, m).sum(dim=1).max())
        if n >= m:
            continue
        cost = groups * n * isz + math.ceil(groups * pattern_bits(n, m) / 8)
        if cost < best.nbytes:
            best = Plan("nm", cost, n, m)
    return best


def encode_tensor(name: str, t: torch.Tensor, p: Plan) -> dict[str, torch.Tensor]:
    """Stored tensors for `t` under encoding `p` (keys derived from `name`)."""
    t = t.detach().contiguous().cpu()
    if p.encoding == "dense":
        return {name: t}
    flat = t.reshape(-1)
    nz = nonzero_bits(flat)
    if p.encoding == "bitmask":
        return {f"{name}.__mask__": pack_bits(nz), f"{name}.__values__": flat[nz].contiguous()}
    groups = t.numel() // p.m
    g, gnz = flat.view(groups, p.m), nz.view(groups, p.m)
    # Keep every non-zero (stable sort puts them first, in position order), pad with zero positions up to N.
    keep = torch.argsort((~gnz).to(torch.uint8), dim=1, stable=True)[:, : p.n]
    idx = keep.sort(dim=1).values
    return {
        f"{name}.__nm_values__": g.gather(1, idx).contiguous(),
        f"{name}.__nm_pattern__": pack_uints(_ranks(idx, p.n, p.m), pattern_bits(p.n, p.m)),
    }


def decode_tensor(name: str, info: dict[str, Any], stored: Mapping[str, torch.Tensor]) -> torch.Tensor:
    shape = tuple(info["shape"])
    dtype = _dtype(info["dtype"])
    numel = math.prod(shape)
    if info["encoding"] == "dense":
        return stored[name]
    if info["encoding"] == "bitmask":
        out = torch.zeros(numel, dtype=dtype)
        out[unpack_bits(stored[f"{name}.__mask__"], numel)] = stored[f"{name}.__values__"]
        return out.view(shape)
    if info["encoding"] == "nm":
        n, m = info["n"], info["m"]
        groups = numel // m
        out = torch.zeros(groups, m, dtype=dtype)
        if n:
            ranks = unpack_uints(stored[f"{name}.__nm_pattern__"], groups, pattern_bits(n, m))
            idx = combinations(n, m)[ranks]
            out.scatter_(1, idx, stored[f"{name}.__nm_values__"].view(groups, n))
        return out.view(shape)
    raise PrunelabError(f"unknown encoding '{info['encoding']}' for tensor '{name}'")


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise PrunelabError(f"unknown dtype '{name}' in compact checkpoint")
    return dtype


# ---------------------------------------------------------------- state dicts and files


def unique_tensors(source: nn.Module | Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors stored once, alias -> stored name) for a model or state dict; shared storage is stored once."""
    sd = source.state_dict() if isinstance(source, nn.Module) else dict(source)
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[Any, ...], str] = {}
    for name, t in sd.items():
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = t
    return tensors, aliases


def _cast(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return t.to(dtype) if dtype is not None and t.is_floating_point() else t


@dataclass
class CompactReport:
    bytes: int
    dense_payload_bytes: int
    encodings: dict[str, int] = field(default_factory=dict)
    nm_patterns: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    default_file_mode(fd)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            default_file_mode(fd)  # safetensors recreates the file 0600
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        disk = write_error(e, path)
        if disk is not None:
            raise disk from None
        raise


def save_dense(
    source: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike[str], dtype: torch.dtype | None = None
) -> int:
    """Write the plain safetensors checkpoint (shared tensors once, as `save_pretrained` does); return its bytes."""
    tensors, _ = unique_tensors(source)
    _atomic_save({k: _cast(v, dtype).detach().contiguous().cpu() for k, v in tensors.items()}, Path(path), None)
    return Path(path).stat().st_size


def save_compact(
    source: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike[str], dtype: torch.dtype | None = None
) -> CompactReport:
    """Write the compact sparse checkpoint of a model or state dict (optionally cast to `dtype` first)."""
    tensors, aliases = unique_tensors(source)
    stored: dict[str, torch.Tensor] = {}
    layout: dict[str, dict[str, Any]] = {}
    report = CompactReport(0, 0)
    for name, t in tensors.items():
        t = _cast(t, dtype)
        p = plan(t)
        stored.update(encode_tensor(name, t, p))
        layout[name] = {"encoding": p.encoding, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
        if p.encoding == "nm":
            layout[name].update(n=p.n, m=p.m)
            report.nm_patterns[f"{p.n}:{p.m}"] = report.nm_patterns.get(f"{p.n}:{p.m}", 0) + 1
        report.encodings[p.encoding] = report.encodings.get(p.encoding, 0) + 1
        report.dense_payload_bytes += t.numel() * t.element_size()
    metadata = {
        "format": FORMAT,
        "version": str(VERSION),
        "layout": json.dumps(layout),
        "aliases": json.dumps(aliases),
    }
    _atomic_save(stored, Path(path), metadata)
    report.bytes = Path(path).stat().st_size
    return report


def load_compact(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a compact checkpoint back into a dense state dict (every original name, aliases included)."""
    path = Path(path)
    if not path.is_file():
        raise PrunelabError(f"compact checkpoint '{path}' does not exist")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise PrunelabError(f"'{path}' is not a {FORMAT} checkpoint")
        if int(meta.get("version", "0")) > VERSION:
            raise PrunelabError(f"'{path}' has format version {meta['version']}; this prunelab reads up to {VERSION}")
        stored = {k: f.get_tensor(k) for k in f.keys()}
    layout: dict[str, dict[str, Any]] = json.loads(meta["layout"])
    out = {name: decode_tensor(name, info, stored) for name, info in layout.items()}
    for alias, target in json.loads(meta.get("aliases", "{}")).items():
        out[alias] = out[target]
    return out


def load_compact_into(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load a compact checkpoint into a model built from the same config (strict: every key must match)."""
    model.load_state_dict(load_compact(path), strict=True)
    return model


def bit_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same shape, dtype and bits (NaN-safe, -0.0 != +0.0)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    a, b = a.detach().contiguous().cpu(), b.detach().contiguous().cpu()
    if a.dtype == torch.bool:
        return bool(torch.equal(a, b))
    view = _INT_VIEW[a.element_size()]
    return bool(torch.equal(a.view(view), b.view(view)))


def measure_sizes(model: nn.Module, dtype: torch.dtype | None = None, verify: bool = True) -> dict[str, Any]:
    """Write the dense and compact checkpoints to a temporary folder, report their sizes, check the round trip."""
    tensors, _ = unique_tensors(model)
    params = sum(t.numel() for t in tensors.values())
    nonzero = sum(int(torch.count_nonzero(t)) for t in tensors.values())
    with tempfile.TemporaryDirectory(prefix="prunelab-size-") as tmp:
        dense = save_dense(model, Path(tmp) / "dense.safetensors", dtype)
        compact = save_compact(model, Path(tmp) / "compact.safetensors", dtype)
        exact = None
        if verify:
            restored = load_compact(Path(tmp) / "compact.safetensors")
            exact = all(bit_equal(_cast(t, dtype), restored[k]) for k, t in tensors.items())
    some = next(iter(tensors.values()))
    return {
        "dtype": str(dtype or some.dtype).removeprefix("torch."),
        "params": params,
        "nonzero_params": nonzero,
        "dense_bytes": dense,
        "compact_bytes": compact.bytes,
        "compact_ratio": compact.bytes / dense if dense else None,
        "encodings": compact.encodings,
        "nm_patterns": compact.nm_patterns,
        "round_trip_bit_exact": exact,
    }
