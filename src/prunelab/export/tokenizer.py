"""The tokenizer half of a GGUF file: the `tokenizer.*` metadata llama.cpp builds its vocabulary from.

Two sources. A model that came from a GGUF file (the embedded default does) keeps that file's tokenizer metadata
byte for byte: it is the tokenizer the model was published with, and rebuilding it from the Hugging Face tokenizer
that transformers reconstructs from GGUF would lose details (SmolLM2's digit splitting, for one). Any other model
gets metadata built from its Hugging Face fast tokenizer: tokens, token types, merges, special ids, BOS/EOS
behaviour, chat template and `tokenizer.ggml.pre`.

`tokenizer.ggml.pre` names the regex llama.cpp splits text with before BPE. Without a name llama.cpp falls back to a
default split and warns "GENERATION QUALITY WILL BE DEGRADED"; we treat that as a failure and refuse. llama.cpp's
converter recognises a pre-tokenizer by hashing the ids of one fixed text, which only works for published models;
here the pre-tokenizer's *structure* in tokenizer.json is matched instead (a byte-level GPT-2 split, SmolLM's
digits-then-GPT-2, Llama-3's and Qwen2's split regexes), so a tokenizer trained locally with the same recipe maps too.
Tests check the result against llama.cpp's own tokenizer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from prunelab.errors import PrunelabError

# Split regexes as the published tokenizer.json files spell them (Llama 3 and Qwen2 families).
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
KNOWN_PRE = ("gpt-2", "smollm", "llama-bpe", "qwen2")


@dataclass
class TokenizerMeta:
    """Key/value pairs to write (key, value, value type, array element type) and where they came from."""

    source: str
    entries: list[tuple[str, Any, gguf.GGUFValueType, gguf.GGUFValueType | None]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def get(self, key: str) -> Any:
        for k, v, _, _ in self.entries:
            if k == key:
                return v
        return None

    def write(self, writer: gguf.GGUFWriter) -> None:
        for key, value, vtype, sub in self.entries:
            writer.add_key_value(key, value, vtype, sub_type=sub)


def from_gguf(path: str | Path, vocab_size: int) -> TokenizerMeta:
    """Every `tokenizer.*` field of an existing GGUF file, checked against the model's vocabulary size."""
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:
        raise PrunelabError(f"cannot read the source GGUF '{path}': {type(e).__name__}: {e}") from e
    meta = TokenizerMeta(source=f"gguf:{Path(path).name}")
    for key, f in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        if sub == gguf.GGUFValueType.ARRAY:
            raise PrunelabError(f"source GGUF field {key} is a nested array; cannot carry it over")
        meta.entries.append((key, f.contents(), vtype, sub))
    tokens = meta.get(gguf.Keys.Tokenizer.LIST)
    if tokens is None:
        raise PrunelabError(f"the source GGUF '{path}' has no tokenizer.ggml.tokens")
    if len(tokens) != vocab_size:
        raise PrunelabError(f"the source GGUF has {len(tokens)} tokens but the model's vocabulary is {vocab_size}")
    return meta


def _steps(pre: dict[str, Any] | None) -> list[dict[str, Any]]:
    if pre is None:
        return []
    if pre.get("type") == "Sequence":
        return [s for p in pre.get("pretokenizers", []) for s in _steps(p)]
    return [pre]


def _regex(step: dict[str, Any]) -> str | None:
    pattern = step.get("pattern") or {}
    return pattern.get("Regex")


def pre_tokenizer_name(pre: dict[str, Any] | None) -> str | None:
    """The llama.cpp pre-tokenizer whose split equals this tokenizer.json `pre_tokenizer`, or None."""
    steps = _steps(pre)
    kinds = [s.get("type") for s in steps]
    if not steps or kinds[-1] != "ByteLevel" or steps[-1].get("add_prefix_space", False):
        return None
    byte_regex = steps[-1].get("use_regex", True)
    if kinds == ["ByteLevel"] and byte_regex:
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and byte_regex:
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not byte_regex and steps[0].get("behavior") == "Isolated":
        if steps[0].get("invert", False):
            return None
        return {LLAMA3_REGEX: "llama-bpe", QWEN2_REGEX: "qwen2"}.get(_regex(steps[0]) or "")
    return None


def _describe(pre: dict[str, Any] | None) -> str:
    return "+".join(str(s.get("type")) for s in _steps(pre)) or "none"


def _adds(tokenizer: Any, token_id: int | None, first: bool) -> bool:
    if token_id is None:
        return False
    with_special = tokenizer("a")["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    if len(with_special) == len(without):
        return False
    return (with_special[0] if first else with_special[-1]) == token_id


def from_hf(tokenizer: Any, vocab_size: int) -> TokenizerMeta:
    """Tokenizer metadata built from a Hugging Face fast (byte-level BPE) tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise PrunelabError("GGUF export needs a fast (tokenizers) tokenizer; this model has a slow one or none")
    spec = json.loads(backend.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        kind = model.get("type", "unknown") + (" with byte fallback" if model.get("byte_fallback") else "")
        raise PrunelabError(f"GGUF export supports byte-level BPE tokenizers; this one is {kind}")
    if spec.get("normalizer") is not None:
        raise PrunelabError("GGUF export: the tokenizer has a normalizer, which llama.cpp's BPE does not apply")
    pre = pre_tokenizer_name(spec.get("pre_tokenizer"))
    if pre is None:
        raise PrunelabError(
            f"GGUF export: pre-tokenizer '{_describe(spec.get('pre_tokenizer'))}' has no known llama.cpp equivalent "
            f"(known: {', '.join(KNOWN_PRE)}); llama.cpp would warn GENERATION QUALITY WILL BE DEGRADED"
        )
    vocab: dict[str, int] = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        top = max(vocab.values())
        raise PrunelabError(f"tokenizer has ids up to {top}, beyond the model's vocabulary of {vocab_size}")
    by_id = {i: t for t, i in vocab.items()}
    added = {i: a for i, a in tokenizer.added_tokens_decoder.items()}
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    S, A = gguf.GGUFValueType, gguf.GGUFValueType.ARRAY
    K = gguf.Keys.Tokenizer
    meta = TokenizerMeta(source="hf")
    meta.entries += [
        (K.MODEL, "gpt2", S.STRING, None),
        (K.PRE, pre, S.STRING, None),
        (K.LIST, tokens, A, S.STRING),
        (K.TOKEN_TYPE, [int(t) for t in types], A, S.INT32),
        (K.MERGES, merges, A, S.STRING),
    ]
    for key, tid in (
        (K.BOS_ID, tokenizer.bos_token_id),
        (K.EOS_ID, tokenizer.eos_token_id),
        (K.UNK_ID, tokenizer.unk_token_id),
        (K.PAD_ID, tokenizer.pad_token_id),
    ):
        if tid is not None:
            meta.entries.append((key, int(tid), S.UINT32, None))
    meta.entries.append((K.ADD_BOS, _adds(tokenizer, tokenizer.bos_token_id, True), S.BOOL, None))
    meta.entries.append((K.ADD_EOS, _adds(tokenizer, tokenizer.eos_token_id, False), S.BOOL, None))
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        meta.entries.append((K.CHAT_TEMPLATE, template, S.STRING, None))
    else:
        meta.notes.append("the tokenizer has no chat template; none written")
    return meta
