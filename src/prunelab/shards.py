"""Safetensors checkpoints read one tensor at a time and written one shard at a time (for `prunelab.streaming`).

Reading goes through `safetensors.safe_open`; the only subtlety is memory (see `SafetensorsCheckpoint`). Writing
produces a standard sharded checkpoint: `model-0000k-of-0000N.safetensors` files and
`model.safetensors.index.json`, which `transformers.from_pretrained` loads like any other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from prunelab._util import write_json_atomic
from prunelab.errors import PrunelabError, first_line


def _open(path: Path, device: str | None = None) -> Any:
    """`safe_open` with a damaged file (truncated, not safetensors) turned into a one-line error."""
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(str(path), framework="pt", **({"device": device} if device else {}))
    except (SafetensorError, OSError, ValueError) as e:
        raise PrunelabError(f"cannot read '{path}' (truncated or not safetensors?): {first_line(e)}") from e


INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


class SafetensorsCheckpoint:
    """The tensors of a local Hugging Face folder, read lazily, one tensor at a time.

    A tensor read through `safe_open` is backed by the shard's memory map, and every page of the map read so far
    stays resident (and counted in RSS) until both the handle and every tensor from it are gone. So each tensor
    is read through its own short-lived handle and returned as a private copy (the cast to the compute dtype is
    that copy): the map is released as soon as the tensor is read, and a shard never lingers in memory.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        index, single = folder / INDEX_NAME, folder / SINGLE_NAME
        if index.is_file():
            try:
                self.weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError) as e:
                raise PrunelabError(f"cannot read {index}: {e}") from e
        elif single.is_file():
            with _open(single) as f:
                self.weight_map = dict.fromkeys(f.keys(), SINGLE_NAME)
        else:
            raise PrunelabError(
                f"--streaming needs safetensors weights, and '{folder}' has neither {INDEX_NAME} nor {SINGLE_NAME}"
            )
        missing = sorted({f for f in self.weight_map.values() if not (folder / f).is_file()})
        if missing:
            raise PrunelabError(f"checkpoint '{folder}' lists shard '{missing[0]}', which does not exist")
        self.dtypes, self.numels = self._headers()

    def _headers(self) -> tuple[dict[str, torch.dtype], dict[str, int]]:
        """Stored dtype and element count of every tensor, from the shard headers (no tensor data is read).

        A shard whose data is shorter than its header says (a truncated copy) is refused here, before any work."""
        dtypes: dict[str, torch.dtype] = {}
        numels: dict[str, int] = {}
        for path in self.files:
            with _open(path) as f:
                for key in f.keys():
                    view = f.get_slice(key)
                    code = view.get_dtype()
                    if code not in _DTYPES:
                        raise PrunelabError(f"--streaming does not handle tensors stored as {code} ({key})")
                    dtypes[key] = _DTYPES[code]
                    numels[key] = torch.Size(view.get_shape()).numel()
        return dtypes, numels

    def __contains__(self, key: str) -> bool:
        return key in self.weight_map

    @property
    def files(self) -> list[Path]:
        return [self.folder / f for f in sorted(set(self.weight_map.values()))]

    @property
    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)

    def nbytes(self, key: str) -> int:
        return self.numels[key] * self.dtypes[key].itemsize

    def read(
        self, keys: list[str], dtype: torch.dtype | None = None, device: torch.device | None = None
    ) -> dict[str, torch.Tensor]:
        """The tensors `keys`, floating ones cast to `dtype` (None: as stored), on `device` (default CPU)."""
        from safetensors import SafetensorError

        out: dict[str, torch.Tensor] = {}
        for key in keys:
            if key not in self.weight_map:
                raise PrunelabError(f"checkpoint '{self.folder}' has no tensor '{key}'")
            path = self.folder / self.weight_map[key]
            with _open(path, "cpu") as f:
                try:
                    t = f.get_tensor(key)
                except (SafetensorError, OSError, ValueError, RuntimeError) as e:
                    raise PrunelabError(f"cannot read tensor '{key}' of '{path}': {first_line(e)}") from e
            target = dtype if dtype is not None and t.is_floating_point() else t.dtype
            out[key] = t.to(device=device or "cpu", dtype=target, copy=True)
            del t
        return out


_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class ShardWriter:
    """The output checkpoint: the non-block tensors first, in shards no bigger than a block (copied as stored),
    then one shard per pruned block, every tensor in the dtype the source stores it in; the index at the end."""

    def __init__(self, folder: Path, checkpoint: SafetensorsCheckpoint, block_prefix: str, blocks: int) -> None:
        self.folder = folder
        self.checkpoint = checkpoint
        rest = [k for k in checkpoint.weight_map if not k.startswith(block_prefix + ".")]
        budget = max(sum(checkpoint.nbytes(k) for k in checkpoint.weight_map if k.startswith(block_prefix + ".0.")), 1)
        self.rest_groups: list[list[str]] = []
        size = budget
        for key in sorted(rest, key=checkpoint.nbytes):
            if size + checkpoint.nbytes(key) > budget:
                self.rest_groups.append([])
                size = 0
            self.rest_groups[-1].append(key)
            size += checkpoint.nbytes(key)
        self.total = len(self.rest_groups) + blocks
        self.weight_map: dict[str, str] = {}
        self.total_size = 0

    def _write(self, shard: int, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        dtypes = self.checkpoint.dtypes
        out = {k: t.detach().to(device="cpu", dtype=dtypes[k]).contiguous() for k, t in tensors.items()}
        name = f"model-{shard + 1:05d}-of-{self.total:05d}.safetensors"
        save_file(out, str(self.folder / name), metadata={"format": "pt"})
        for key, t in out.items():
            self.weight_map[key] = name
            self.total_size += t.numel() * t.element_size()

    def write_rest(self) -> None:
        """Embeddings, final norm, lm_head...: never pruned, copied from the source a group at a time."""
        for shard, keys in enumerate(self.rest_groups):
            self._write(shard, self.checkpoint.read(keys))

    def write_block(self, i: int, tensors: dict[str, torch.Tensor]) -> None:
        self._write(len(self.rest_groups) + i, tensors)

    def finish(self) -> None:
        index = {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(self.weight_map.items()))}
        write_json_atomic(self.folder / INDEX_NAME, index)
