"""Streaming pruning: prune a checkpoint larger than memory, one decoder block at a time.

The layer-wise engine (`LayerwisePruner.prune_blocks`) takes its blocks from a `BlockStore`. Here the store reads
block i from the safetensors shards only when the engine asks for it, in the compute dtype, and once the block is
pruned writes it to its own output shard in the checkpoint's dtype and turns it back into a meta-device
placeholder. Between blocks only the calibration activations are carried, so peak memory is about one block plus
the activations plus the input embeddings, not the whole model. On a GPU, one block is on the device at a time.

The model itself is a skeleton built from the config on the meta device: the non-block parts are then loaded for
real, tensor by tensor, and non-persistent buffers such as rotary inverse frequencies, which no checkpoint holds,
are computed by the model's own initialiser as `from_pretrained` does. An untied lm_head is never loaded (nothing
runs past the last block; it is copied to the output as stored). Block 0 stays a placeholder during calibration
capture: the capture hook stops the forward before the block computes anything.

The masks and weights are the same as pruning the fully loaded model (tested bit for bit); only the output dtype
differs when the checkpoint is not float32: the in-memory path saves its float32 copy, this one the checkpoint's
own dtype (so SparseGPT's updated weights are rounded to it, as any bfloat16 deployment would do).
"""

from __future__ import annotations

import logging
import shutil
import time
import weakref
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab._util import atomic_dir, peak_rss_mb, write_json_atomic
from prunelab.config.prune import PruneConfig
from prunelab.errors import PrunelabError
from prunelab.models import block_linears, check_output, find_blocks, parse_dtype, weight_2d
from prunelab.pruning import make_pruner
from prunelab.pruning.base import LayerwisePruner, Pruner
from prunelab.pruning.blocks import BlockStore
from prunelab.pruning.run import calibration_windows, check_sources, describe, prune, prune_report
from prunelab.shards import INDEX_NAME, SafetensorsCheckpoint, ShardWriter

log = logging.getLogger(__name__)

# Files never copied from the source folder: weights (rewritten here), their indexes and our own record.
_NOT_COPIED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack")
_NOT_COPIED_NAMES = (INDEX_NAME, "pytorch_model.bin.index.json", "prunelab.json")


def _init_non_persistent(model: nn.Module, root: nn.Module, device: torch.device) -> None:
    """Compute the non-persistent buffers (rotary inverse frequencies...) of `root`'s modules, which no checkpoint
    holds, with the model's own `_init_weights`, as `from_pretrained` does. Only parameter-free modules qualify:
    re-initialising a module with parameters would overwrite loaded weights."""
    for name, module in root.named_modules():
        pending = [b for b in module._non_persistent_buffers_set if getattr(module, b, None) is not None]
        if not pending or not any(getattr(module, b).is_meta for b in pending):
            continue
        if any(True for _ in module.parameters(recurse=False)):
            raise PrunelabError(f"--streaming cannot rebuild the buffers of {name or type(module).__name__}")
        module.to_empty(device=device, recurse=False)
        model._init_weights(module)  # type: ignore[operator]


def _is_materialized(module: nn.Module) -> bool:
    return any(not p.is_meta for p in module.parameters())


class StreamingStore(BlockStore):
    """Blocks materialized from the shards on `load`, written out (when pruned) and freed on `release`.

    Accounting, for tests and the report: after every `load` and `release` it sums the bytes of every block
    parameter still alive (tracked by weak reference, so a block kept alive by a stray reference anywhere still
    counts) and records the peak; `peak_live_blocks` is how many blocks had live parameters at that moment.
    """

    def __init__(
        self,
        model: nn.Module,
        checkpoint: SafetensorsCheckpoint,
        device: torch.device,
        dtype: torch.dtype,
        writer: ShardWriter | None = None,
    ) -> None:
        prefix, blocks = find_blocks(model)
        super().__init__(prefix, blocks)
        self.model = model
        self.checkpoint = checkpoint
        self.device = device
        self.dtype = dtype
        self.writer = writer
        self.loads = 0
        self.peak_live_bytes = 0
        self.peak_live_blocks = 0
        self.block_bytes = [sum(p.numel() * p.element_size() for p in b.parameters()) for b in blocks]
        self.prunable_params = 0
        self.prunable_zeros = 0
        self._alive: list[tuple[int, weakref.ref[torch.Tensor], int]] = []

    def key(self, i: int, name: str) -> str:
        return f"{self.prefix}.{i}.{name}"

    def load(self, i: int) -> nn.Module:
        block = self.blocks[i]
        if _is_materialized(block):
            raise RuntimeError(f"block {i} is already loaded")
        names = list(block.state_dict().keys())
        stored = self.checkpoint.read([self.key(i, n) for n in names], self.dtype, self.device)
        block.load_state_dict({n: stored.pop(self.key(i, n)) for n in names}, strict=True, assign=True)
        _init_non_persistent(self.model, block, self.device)
        self.loads += 1
        self._alive.extend((i, weakref.ref(p), p.numel() * p.element_size()) for p in block.parameters())
        self._account()
        return block

    def _account(self) -> None:
        self._alive = [(i, ref, size) for i, ref, size in self._alive if ref() is not None]
        self.peak_live_bytes = max(self.peak_live_bytes, sum(size for _, _, size in self._alive))
        self.peak_live_blocks = max(self.peak_live_blocks, len({i for i, _, _ in self._alive}))

    def release(self, i: int, block: nn.Module, pruned: bool) -> None:
        if pruned:
            for module in block_linears(block, f"{self.prefix}.{i}").values():
                w = weight_2d(module)
                self.prunable_params += w.numel()
                self.prunable_zeros += int((w == 0).sum())
            if self.writer is not None:
                self.writer.write_block(i, {self.key(i, n): t for n, t in block.state_dict().items()})
        block.to_empty(device="meta")  # frees the tensors; the module stays as the placeholder
        self._account()


def compute_dtype(dtype: str, device: torch.device, checkpoint: SafetensorsCheckpoint) -> torch.dtype:
    """As `load_model`: "auto" is float32 on a CPU and the checkpoint's (most common) floating dtype on a GPU."""
    value = parse_dtype(dtype)
    if value is not None:
        return value
    floating = [d for d in checkpoint.dtypes.values() if d.is_floating_point]
    if device.type == "cpu" or not floating:
        return torch.float32
    return max(set(floating), key=floating.count)


def open_skeleton(
    folder: Path, checkpoint: SafetensorsCheckpoint, device: torch.device, dtype: torch.dtype
) -> nn.Module:
    """The model with its decoder blocks as meta-device placeholders and the rest loaded, except an untied lm_head:
    pruning never runs past the last block, so the output embeddings (as big as the input ones) stay meta too."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(folder))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PrunelabError(f"cannot build the model of '{folder}': {first}") from e
    model.eval()
    prefix, blocks = find_blocks(model)
    head = model.get_output_embeddings()
    head_name = next((n for n, m in model.named_modules() if m is head), None) if head is not None else None
    skipped = {f"{head_name}.{k}" for k in head.state_dict()} if head is not None else set()
    wanted = [k for k in model.state_dict() if not k.startswith(prefix + ".") and k not in skipped and k in checkpoint]
    model.load_state_dict(checkpoint.read(wanted, dtype, device), strict=False, assign=True)
    model.tie_weights()  # a tied lm_head is the input embeddings again
    for name, module in model.named_modules():
        if module is not blocks and not name.startswith(prefix + "."):
            _init_non_persistent(model, module, device)
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_meta and not name.startswith(prefix + ".") and name not in skipped:
            raise PrunelabError(f"checkpoint '{folder}' has no tensor for '{name}'")
    return model


def _local_folder(model_path: str | None) -> Path:
    if not model_path:
        raise PrunelabError("--streaming needs --model: a local Hugging Face folder with safetensors weights")
    folder = Path(model_path).expanduser()
    if not folder.is_dir():
        raise PrunelabError(f"--streaming needs --model to be a local Hugging Face folder; '{model_path}' is not one")
    if not (folder / "config.json").is_file():
        raise PrunelabError(f"model folder '{model_path}' has no config.json")
    return folder


def _tokenizer(folder: Path) -> Any | None:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as e:
        log.warning("no tokenizer in %s (%s); only calibration-free methods will work", folder, e)
        return None


def _copy_side_files(src: Path, dst: Path) -> list[str]:
    """Config, generation config, tokenizer files and anything else that is not weights."""
    copied = []
    for path in sorted(src.iterdir()):
        if path.is_file() and path.name not in _NOT_COPIED_NAMES and not path.name.endswith(_NOT_COPIED_SUFFIXES):
            shutil.copy2(path, dst / path.name)
            copied.append(path.name)
    return copied


def check_streamable(pruner: Pruner) -> LayerwisePruner:
    """Only block-local methods can stream: they must never need two blocks, or all weights, at once."""
    if not isinstance(pruner, LayerwisePruner) or not pruner.caps.block_local:
        raise PrunelabError(f"{describe(pruner.cfg)} does not prune block by block, so it cannot run with --streaming")
    return pruner


def _detail(store: StreamingStore, checkpoint: SafetensorsCheckpoint, copied: list[str]) -> dict[str, Any]:
    """What the streaming loop held and wrote (the accounting the tests check)."""
    detail: dict[str, Any] = {
        "device": str(store.device),
        "compute_dtype": str(store.dtype).removeprefix("torch."),
        "checkpoint_bytes": checkpoint.disk_bytes,
        "output_bytes": store.writer.total_size if store.writer else 0,
        "blocks": len(store),
        "block_loads": store.loads,
        "largest_block_bytes": max(store.block_bytes),
        "peak_live_block_bytes": store.peak_live_bytes,
        "peak_live_blocks": store.peak_live_blocks,
        "copied_files": copied,
    }
    if store.device.type == "cuda":
        detail["peak_gpu_mb"] = torch.cuda.max_memory_allocated(store.device) / 2**20
    return detail


def prune_streaming(
    model_path: str | None,
    cfg: PruneConfig,
    output: str | Path | None,
    overwrite: bool = False,
    device: str = "cpu",
    dtype: str = "auto",
) -> dict[str, Any]:
    """Prune the checkpoint at `model_path` block by block into `output`; returns the report (= prunelab.json).

    The output is a plain Hugging Face folder: one safetensors shard per block plus shards for the rest, the index,
    the source's config and tokenizer files, and prunelab.json with `streaming: true` and the measured peak RSS.
    """
    started = time.perf_counter()
    folder = _local_folder(model_path)
    if output is None:
        raise PrunelabError("--streaming needs --output: the pruned model is written block by block")
    check_output(output, overwrite)
    pruner = check_streamable(make_pruner(cfg))
    check_sources(pruner)
    try:
        torch_device = torch.device(device)
    except RuntimeError as e:
        raise PrunelabError(f"unknown device '{device}'") from e
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise PrunelabError(f"device '{device}' asked for, but this torch sees no CUDA GPU")
    checkpoint = SafetensorsCheckpoint(folder)
    dt = compute_dtype(dtype, torch_device, checkpoint)
    tokenizer = _tokenizer(folder) if pruner.needs_calibration else None
    if pruner.needs_calibration and tokenizer is None:
        raise PrunelabError(f"method '{cfg.method}' needs calibration text, and '{folder}' has no tokenizer")
    model = open_skeleton(folder, checkpoint, torch_device, dt)
    load_seconds = time.perf_counter() - started
    calib = calibration_windows(model, tokenizer, cfg) if pruner.needs_calibration else None
    output = Path(output)
    with atomic_dir(output, overwrite=overwrite) as tmp:
        store = StreamingStore(model, checkpoint, torch_device, dt)
        store.writer = ShardWriter(tmp, checkpoint, store.prefix, len(store))
        store.writer.write_rest()
        rss_before_prune = peak_rss_mb()
        result = prune(model, cfg, calib, store=store)
        store.writer.finish()
        copied = _copy_side_files(folder, tmp)
        # The same counts as `sparsity_report`, gathered block by block since the model is never whole.
        counts = {
            "params": sum(p.numel() for p in model.parameters()),
            "prunable_params": store.prunable_params,
            "prunable_zeros": store.prunable_zeros,
            "prunable_sparsity": store.prunable_zeros / max(store.prunable_params, 1),
        }
        report = prune_report(
            str(folder), cfg, result, pruner.needs_calibration, load_seconds, rss_before_prune, counts
        )
        report["streaming"] = True
        report["streaming_detail"] = _detail(store, checkpoint, copied)
        write_json_atomic(tmp / "prunelab.json", report)
    report["output"] = str(output)
    report["total_seconds"] = time.perf_counter() - started
    log.info("streamed %d blocks into %s (peak RSS %.0f MiB)", len(store), output, report["peak_rss_mb"])
    return report
