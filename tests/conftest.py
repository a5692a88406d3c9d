"""Tiny random models built from configs (no downloads) and a tiny byte-level tokenizer trained in-process."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    Phi3Config,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

VOCAB = 320
CORPUS = (
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer the slings and arrows "
    "of outrageous fortune, or to take arms against a sea of troubles and by opposing end them. "
) * 20


def tiny_config(arch: str):
    common = dict(vocab_size=VOCAB)
    if arch == "llama":
        return LlamaConfig(
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            tie_word_embeddings=False,
            **common,
        )
    if arch == "mistral":
        return MistralConfig(
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            sliding_window=None,
            **common,
        )
    if arch == "qwen2":
        return Qwen2Config(
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            **common,
        )
    if arch == "opt":
        return OPTConfig(
            hidden_size=64,
            ffn_dim=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            word_embed_proj_dim=64,
            max_position_embeddings=256,
            **common,
        )
    if arch == "gpt2":
        return GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=256, **common)
    if arch == "phi3":
        return Phi3Config(
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=256,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            **common,
        )
    raise ValueError(arch)


ARCHS = ["llama", "mistral", "qwen2", "opt", "gpt2", "phi3"]


def make_model(arch: str = "llama", seed: int = 0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch), dtype=torch.float32)
    # Random init gives tiny, near-uniform weights; widen them so rankings are not full of near-ties.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    return model.eval()


def make_bpe(pre: Any, special_tokens: list[str], texts: list[str], **named: str) -> PreTrainedTokenizerFast:
    """A tiny byte-level BPE trained offline on `texts` with pre-tokenizer `pre`; `named` = bos/eos/unk tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=named.get("unk_token")))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **named)


def make_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import pre_tokenizers

    return make_bpe(pre_tokenizers.ByteLevel(add_prefix_space=False), ["<unk>", "<s>", "</s>"], [CORPUS],
                    unk_token="<unk>", bos_token="<s>", eos_token="</s>")  # fmt: skip


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture
def model_factory() -> Callable[..., torch.nn.Module]:
    return make_model


@pytest.fixture
def calib() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, VOCAB, (4, 32), generator=gen)


@pytest.fixture
def tiny_folder(tmp_path: Path, tokenizer) -> Path:
    """A tiny Llama saved as a Hugging Face folder with its tokenizer, plus a small text file."""
    folder = tmp_path / "tiny-llama"
    make_model("llama").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (tmp_path / "corpus.txt").write_text(CORPUS)
    return folder


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail any attempt to open a network connection."""

    def guard(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", guard)
    monkeypatch.setattr(socket, "create_connection", guard)
    yield
