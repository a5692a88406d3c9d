"""Export an in-memory causal LM (dense, weight-pruned or structured-pruned) to a GGUF file that llama.cpp loads.

Why GGUF: the people who run small models on local devices run llama.cpp or Ollama, and those load GGUF; a folder
of dense safetensors is not what they deploy. Written with the `gguf` package (tensor names from its own name maps,
so they are the ones llama.cpp looks up):

- Families: Llama (SmolLM2) and Mistral as llama.cpp's `llama` architecture, Qwen2 as `qwen2`. The Llama family's
  q/k projection rows are permuted from Hugging Face's rotate-half RoPE layout to the interleaved pairs llama.cpp's
  `llama` RoPE expects (Qwen2 uses llama.cpp's NeoX RoPE, which is the Hugging Face layout: no permutation).
- Widths are read from the weights, not the config. `llama` builds every layer with one MLP width and one head
  count, so a Llama-family model whose layers differ (per-layer structured pruning) is written as `deci`, whose
  `feed_forward_length` / `head_count` / `head_count_kv` are per-layer arrays; other families are refused.
- Types: f16 / bf16 / q8_0 written directly (1-D norms and biases stay f32, as llama.cpp's converter does; a
  matrix whose rows do not fill whole Q8_0 blocks stays f16 and is named in the notes). Every other type goes
  through llama.cpp's own quantizer (`llama_model_quantize`) from an f16 temporary, which needs llama-cpp-python.
- Tokenizer: see `export.tokenizer` (carried over from a source GGUF, else built from the Hugging Face tokenizer).
- Atomic: temporary file in the target folder, renamed into place; every check runs before any tensor is converted.

GGUF stores every weight dense: the zeros of unstructured pruning cost as much as any other value (the report says
so); only structured pruning (smaller matrices) and quantization make the file smaller.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from torch import nn

from prunelab._util import default_file_mode, write_error
from prunelab.config.export import LLAMACPP_QUANTS, QUANT_TYPES, normalize_quant
from prunelab.errors import PrunelabError
from prunelab.export import tokenizer as tok_meta

log = logging.getLogger(__name__)
__all__ = ["LLAMACPP_QUANTS", "QUANT_TYPES", "check_quant", "export_gguf", "gguf_source", "tensor_types"]

Q = gguf.GGMLQuantizationType
DIRECT_QUANTS = {"f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}
FILE_TYPES = {
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}
LLAMACPP_EXTRA_HINT = "pip install -e '.[llamacpp]'"


@dataclass(frozen=True)
class Family:
    """How one Hugging Face model type maps to llama.cpp."""

    arch: gguf.MODEL_ARCH
    permute_qk: bool  # rotate-half (HF) -> interleaved (llama.cpp NORM RoPE)
    per_layer_arch: gguf.MODEL_ARCH | None  # the architecture that takes per-layer widths, if any


FAMILIES = {
    "llama": Family(gguf.MODEL_ARCH.LLAMA, True, gguf.MODEL_ARCH.DECI),
    "mistral": Family(gguf.MODEL_ARCH.LLAMA, True, gguf.MODEL_ARCH.DECI),
    "qwen2": Family(gguf.MODEL_ARCH.QWEN2, False, None),
}


@dataclass
class Geometry:
    """Per-layer widths read from the weights."""

    head_dim: int
    n_ff: list[int]
    n_head: list[int]
    n_kv: list[int]

    @property
    def uniform(self) -> bool:
        return len(set(self.n_ff)) == 1 and len(set(self.n_head)) == 1 and len(set(self.n_kv)) == 1


def check_quant(quant: str) -> str:
    """Normalise and validate a quant name; the llama.cpp types also need llama-cpp-python importable."""
    q = normalize_quant(quant)
    if q in LLAMACPP_QUANTS and not llamacpp_available():
        raise PrunelabError(
            f"quant type '{q}' is made by llama.cpp's quantizer and needs the llamacpp extra: {LLAMACPP_EXTRA_HINT}"
        )
    return q


def llamacpp_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def check_family(model_type: str) -> Family:
    """The llama.cpp mapping of a Hugging Face `model_type`, else a one-line error naming the supported ones (the
    export job calls it on config.json before loading any weights)."""
    if model_type not in FAMILIES:
        raise PrunelabError(
            f"GGUF export does not support architecture '{model_type}'; supported: {', '.join(FAMILIES)}"
        )
    return FAMILIES[model_type]


def family_of(model: nn.Module) -> tuple[str, Family]:
    model_type = getattr(model.config, "model_type", type(model).__name__)
    return model_type, check_family(model_type)


def geometry(model: nn.Module) -> Geometry:
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    n_ff, n_head, n_kv = [], [], []
    for i, layer in enumerate(model.model.layers):
        try:
            q, k = layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight
            ff = layer.mlp.gate_proj.weight.shape[0]
        except AttributeError as e:
            raise PrunelabError(f"layer {i} lacks a q/k/gate projection ({e}); cannot export it to GGUF") from e
        if q.shape[0] % head_dim or k.shape[0] % head_dim:
            raise PrunelabError(f"layer {i}: q/k rows ({q.shape[0]}, {k.shape[0]}) are not whole heads of {head_dim}")
        n_head.append(q.shape[0] // head_dim)
        n_kv.append(k.shape[0] // head_dim)
        n_ff.append(ff)
        if n_kv[-1] == 0 or n_head[-1] % n_kv[-1]:
            raise PrunelabError(f"layer {i}: {n_head[-1]} query heads do not group over {n_kv[-1]} key/value heads")
    return Geometry(head_dim, n_ff, n_head, n_kv)


def _check_config(model: nn.Module) -> dict[str, Any]:
    cfg = model.config
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise PrunelabError(f"GGUF export: activation '{cfg.hidden_act}' is not the SiLU llama.cpp uses here")
    rope = dict(getattr(cfg, "rope_parameters", None) or {})
    theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    kind = rope.get("rope_type", "default")
    if kind not in ("default", "linear"):
        raise PrunelabError(f"GGUF export: RoPE scaling '{kind}' is not supported (default and linear are)")
    return {"theta": float(theta), "kind": kind, "factor": float(rope.get("factor", 1.0))}


def permute_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rotate-half row order -> interleaved pairs, per head: rows (h, 2, d/2) become (h, d/2, 2)."""
    d = w.shape[0] // n_head
    return w.reshape(n_head, 2, d // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _tensors(model: nn.Module, fam: Family, arch: gguf.MODEL_ARCH, geo: Geometry) -> list[tuple[str, torch.Tensor]]:
    n_layers = len(geo.n_ff)
    names = gguf.get_tensor_name_map(arch, n_layers)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    out: list[tuple[str, torch.Tensor]] = []
    for name, t in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when output.weight is absent
        if name.endswith("rotary_emb.inv_freq"):
            continue
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise PrunelabError(f"GGUF export: no llama.cpp tensor name for '{name}'")
        t = t.detach().to("cpu", torch.float32)
        if fam.permute_qk and (".attn_q." in new or ".attn_k." in new):
            layer = int(new.split(".")[1])
            t = permute_rows(t, geo.n_head[layer] if ".attn_q." in new else geo.n_kv[layer])
        out.append((new, t))
    return out


def _encode(name: str, t: torch.Tensor, quant: str, notes: list[str]) -> tuple[np.ndarray, Q]:
    arr = t.numpy()
    if t.dim() < 2:
        return arr.astype(np.float32), Q.F32
    qtype = DIRECT_QUANTS[quant]
    if qtype == Q.Q8_0 and arr.shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0]:
        notes.append(f"{name}: {arr.shape[-1]} columns are not whole Q8_0 blocks; kept f16")
        qtype = Q.F16
    return gguf.quants.quantize(arr, qtype), qtype


def _write_direct(
    path: Path,
    model: nn.Module,
    model_type: str,
    fam: Family,
    geo: Geometry,
    rope: dict[str, Any],
    tokmeta: tok_meta.TokenizerMeta,
    quant: str,
    notes: list[str],
) -> tuple[str, int]:
    cfg = model.config
    arch = fam.arch if geo.uniform else fam.per_layer_arch
    assert arch is not None
    arch_name = gguf.MODEL_ARCH_NAMES[arch]
    tensors = _tensors(model, fam, arch, geo)
    w = gguf.GGUFWriter(str(path), arch_name)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(str(getattr(cfg, "_name_or_path", "") or f"prunelab-{model_type}").rsplit("/", 1)[-1] or model_type)
    w.add_context_length(int(getattr(cfg, "max_position_embeddings", 2048)))
    w.add_embedding_length(int(cfg.hidden_size))
    w.add_block_count(len(geo.n_ff))
    one = geo.uniform
    w.add_feed_forward_length(geo.n_ff[0] if one else geo.n_ff)
    w.add_head_count(geo.n_head[0] if one else geo.n_head)
    w.add_head_count_kv(geo.n_kv[0] if one else geo.n_kv)
    w.add_key_length(geo.head_dim)
    w.add_value_length(geo.head_dim)
    w.add_rope_dimension_count(geo.head_dim)
    w.add_rope_freq_base(rope["theta"])
    if rope["kind"] == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope["factor"])
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_vocab_size(int(cfg.vocab_size))
    w.add_file_type(FILE_TYPES[quant])
    if quant == "q8_0":
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    tokmeta.write(w)
    for name, t in tensors:
        data, qtype = _encode(name, t, quant, notes)
        w.add_tensor(name, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return arch_name, len(tensors)


def _quantize_llamacpp(src: Path, dst: Path, quant: str, threads: int | None) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}")
    params.nthread = threads or 0
    try:
        from llama_cpp._utils import suppress_stdout_stderr  # llama.cpp logs every tensor to stderr
    except ImportError:  # pragma: no cover - a future llama-cpp-python without it
        quiet: Any = contextlib.nullcontext()
    else:
        quiet = suppress_stdout_stderr(disable=log.isEnabledFor(logging.DEBUG))
    with quiet:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise PrunelabError(f"llama.cpp's quantizer failed on {src.name} -> {quant} (code {rc})")


def _tmp_path(folder: Path, name: str) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    default_file_mode(fd)
    os.close(fd)
    return Path(tmp)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def gguf_source(spec: str | None, folder: str | os.PathLike[str] | None = None) -> Path | None:
    """The GGUF file a model came from, if any: the embedded default, a `.gguf` spec, or a folder that prunelab
    converted from one (its prunelab-source.json) or pruned from one (prunelab.json's base_model)."""
    from prunelab import models

    if spec in (None, "", "default", models.DEFAULT_MODEL_NAME):
        return models.default_gguf_path()
    if str(spec).endswith(".gguf") and Path(str(spec)).expanduser().is_file():
        return Path(str(spec)).expanduser()
    seen = 0
    here: Path | None = Path(folder or str(spec)).expanduser()
    while here is not None and here.is_dir() and seen < 4:
        seen += 1
        src = _read_json(here / "prunelab-source.json")
        if src and isinstance(src.get("gguf"), str) and Path(src["gguf"]).is_file():
            return Path(src["gguf"])
        meta = _read_json(here / "prunelab.json") or {}
        base, local = meta.get("base_model"), meta.get("base_model_path")
        if isinstance(base, str) and (base in ("default", models.DEFAULT_MODEL_NAME) or base.endswith(".gguf")):
            found = gguf_source(base)  # pruned from the embedded default or from a GGUF file
            if found is not None:
                return found
        base = local if isinstance(local, str) else base  # the folder it was loaded from, when recorded
        here = Path(base) if isinstance(base, str) else None
    return None


def export_gguf(
    model: nn.Module,
    tokenizer: Any | None,
    out_path: str | os.PathLike[str],
    quant: str = "f16",
    source_gguf: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    threads: int | None = None,
) -> dict[str, Any]:
    """Write `model` (+ tokenizer) to `out_path` as GGUF of type `quant`; return a report of what was written.

    `source_gguf`: the GGUF the model was loaded from, whose tokenizer metadata is carried over (see
    `gguf_source`). Without it the Hugging Face `tokenizer` is converted. `threads` is for llama.cpp's quantizer.
    """
    out = Path(out_path).expanduser()
    q = check_quant(quant)
    if out.is_dir():
        raise PrunelabError(f"output '{out}' is a folder; give a file name ending in .gguf")
    if out.exists() and not overwrite:
        raise PrunelabError(f"output '{out}' already exists; pass --overwrite to replace it")
    model_type, fam = family_of(model)
    rope = _check_config(model)
    geo = geometry(model)
    notes: list[str] = []
    if not geo.uniform:
        if fam.per_layer_arch is None:
            raise PrunelabError(
                f"layers of this {model_type} model differ in width or head count; llama.cpp's "
                f"'{gguf.MODEL_ARCH_NAMES[fam.arch]}' builds every layer alike and has no per-layer variant here"
            )
        notes.append("layers differ in width or head count: written as llama.cpp's 'deci' (per-layer arrays)")
    window = (
        getattr(model.config, "sliding_window", None) if getattr(model.config, "use_sliding_window", True) else None
    )
    if window and window < int(getattr(model.config, "max_position_embeddings", 0) or 0):
        notes.append(
            f"sliding_window {window} is not applied by llama.cpp's {gguf.MODEL_ARCH_NAMES[fam.arch]} "
            "architecture: outputs match for contexts up to the window only"
        )
    vocab = int(model.get_input_embeddings().weight.shape[0])
    if source_gguf is not None:
        tokmeta = tok_meta.from_gguf(source_gguf, vocab)
    elif tokenizer is not None:
        tokmeta = tok_meta.from_hf(tokenizer, vocab)
    else:
        raise PrunelabError("GGUF export needs a tokenizer (or the GGUF the model came from); this model has none")
    notes += tokmeta.notes
    zeros = _sparsity(model)
    if zeros > 0.01:
        notes.append(f"{zeros:.0%} of the block weights are zero; GGUF stores them dense, so the zeros save no bytes")
    out.parent.mkdir(parents=True, exist_ok=True)
    written = _tmp_path(out.parent, out.name)
    extra: Path | None = None
    try:
        direct = q if q in DIRECT_QUANTS else "f16"
        with torch.no_grad():
            arch_name, count = _write_direct(written, model, model_type, fam, geo, rope, tokmeta, direct, notes)
        if q in LLAMACPP_QUANTS:
            extra = _tmp_path(out.parent, out.name)
            _quantize_llamacpp(written, extra, q, threads)
            written.unlink()
            written, extra = extra, None
        os.replace(written, out)
    except BaseException as e:
        for p in (written, extra):
            if p is not None:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
        disk = write_error(e, out)
        if disk is not None:
            raise disk from None
        raise
    types = tensor_types(out)
    notes += _block_notes(q, types, int(model.config.hidden_size), geo)
    return {
        "path": str(out),
        "arch": arch_name,
        "model_type": model_type,
        "quant": q,
        "tensors": count,
        "file_bytes": out.stat().st_size,
        "tensor_types": types,
        "layers": {"n_ff": geo.n_ff, "n_head": geo.n_head, "n_head_kv": geo.n_kv, "head_dim": geo.head_dim},
        "tokenizer_source": tokmeta.source,
        "tokenizer_pre": tokmeta.get(gguf.Keys.Tokenizer.PRE),
        "notes": notes,
    }


def _block_notes(quant: str, types: dict[str, int], hidden: int, geo: Geometry) -> list[str]:
    """Say when block quantization could not apply: rows must be whole blocks (32 values; 256 for k-quants)."""
    notes = []
    widths = sorted({hidden, *geo.n_ff})
    if quant not in ("f16", "bf16") and types.get("F16"):
        odd = [w for w in widths if w % 32]
        notes.append(
            f"{types['F16']} matrices stayed f16: their rows ({', '.join(map(str, odd)) or '?'} values) are not whole "
            f"{quant} blocks of 32, so the file is larger than {quant} promises; structured widths that are multiples "
            "of 32 (256 for k-quants) avoid it"
        )
    if "_k" in quant and any(w % 256 for w in widths):
        notes.append(
            f"widths {', '.join(str(w) for w in widths if w % 256)} are not multiples of 256: llama.cpp's {quant} "
            "falls back to 32-block types (Q5_0, Q8_0...) for those matrices"
        )
    return notes


def _sparsity(model: nn.Module) -> float:
    total = zeros = 0
    for layer in model.model.layers:
        for p in layer.parameters():
            if p.dim() == 2:
                total += p.numel()
                zeros += int((p == 0).sum())
    return zeros / total if total else 0.0


def tensor_types(path: str | os.PathLike[str]) -> dict[str, int]:
    """How many tensors of each GGML type a GGUF file holds (what llama.cpp's quantizer really chose)."""
    counts: dict[str, int] = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return dict(sorted(counts.items()))
