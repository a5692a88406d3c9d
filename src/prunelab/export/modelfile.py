"""An Ollama `Modelfile` beside an exported GGUF, so that `ollama create NAME -f Modelfile` gives a working chat model.

Ollama's TEMPLATE is a Go template, not the Jinja chat template that GGUF files carry, so the two common shapes
are translated: ChatML (`<|im_start|>role ... <|im_end|>`: SmolLM2, Qwen2) and Llama 3 (`<|start_header_id|>`).
A default system prompt written into the Jinja template (SmolLM2 has one) becomes a SYSTEM line. Any other shape
(or no template) gets no TEMPLATE line and a comment saying so: Ollama then falls back to the chat template
stored in the GGUF, which it recognises for the common model families. PARAMETER stop lists the end-of-turn
tokens of the template and the EOS token, so generation stops at the end of the assistant's turn.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import gguf

from prunelab._util import write_text_atomic
from prunelab.errors import PrunelabError

CHATML = (
    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n{{ .Response }}<|im_end|>\n"
)
LLAMA3 = (
    "{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
    "{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|>{{ end }}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{{ .Response }}<|eot_id|>"
)
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "<end_of_turn>")


def template_shape(chat_template: str | None) -> str | None:
    """'chatml', 'llama3' or None (not recognised)."""
    if not chat_template:
        return None
    if "<|im_start|>" in chat_template and "<|im_end|>" in chat_template:
        return "chatml"
    if "<|start_header_id|>" in chat_template and "<|eot_id|>" in chat_template:
        return "llama3"
    return None


def default_system(chat_template: str | None, shape: str | None) -> str | None:
    """The system prompt a ChatML template inserts when the conversation has none (a literal in the template)."""
    if shape != "chatml" or not chat_template:
        return None
    m = re.search(r"<\|im_start\|>system\\n(.+?)<\|im_end\|>", chat_template)
    if m is None or "{{" in m.group(1) or "{%" in m.group(1):
        return None
    return m.group(1)


def _quote(text: str) -> str:
    if '"""' in text:
        raise PrunelabError('chat template text contains """, which a Modelfile cannot quote')
    return f'"""{text}"""'


def modelfile_text(gguf_name: str, chat_template: str | None, eos_token: str | None, vocab: set[str]) -> str:
    """The Modelfile for a GGUF named `gguf_name` in the same folder."""
    shape = template_shape(chat_template)
    lines = ["# Ollama Modelfile written by prunelab: ollama create NAME -f Modelfile", f"FROM ./{gguf_name}"]
    if shape is None:
        lines.append(
            "# TEMPLATE: the chat template is not one prunelab translates (ChatML, Llama 3); Ollama uses "
            "the one stored in the GGUF if it recognises it"
        )
    else:
        lines.append(f"TEMPLATE {_quote(CHATML if shape == 'chatml' else LLAMA3)}")
        system = default_system(chat_template, shape)
        if system:
            lines.append(f"SYSTEM {_quote(system)}")
    stops = [t for t in END_OF_TURN if t in vocab and (chat_template or "").find(t) >= 0]
    if eos_token and eos_token not in stops:
        stops.append(eos_token)
    for stop in stops:
        lines.append(f'PARAMETER stop "{stop}"')
    return "\n".join(lines) + "\n"


def write_modelfile(gguf_path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Write `Modelfile` next to `gguf_path`, reading the chat template and tokens from the GGUF itself."""
    path = Path(gguf_path)
    target = path.with_name("Modelfile")
    if target.exists() and not overwrite:
        raise PrunelabError(f"'{target}' already exists; pass --overwrite to replace it")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:
        raise PrunelabError(f"cannot read GGUF '{path}': {type(e).__name__}: {e}") from e

    def field(key: str) -> object:
        f = reader.fields.get(key)
        return f.contents() if f is not None else None

    tokens = field(gguf.Keys.Tokenizer.LIST) or []
    eos_id = field(gguf.Keys.Tokenizer.EOS_ID)
    eos = tokens[eos_id] if isinstance(eos_id, int) and 0 <= eos_id < len(tokens) else None
    text = modelfile_text(path.name, field(gguf.Keys.Tokenizer.CHAT_TEMPLATE), eos, set(tokens))
    write_text_atomic(target, text)
    return target
