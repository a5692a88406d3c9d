"""The exported GGUF in the real consumer, llama.cpp: same next tokens and perplexity as torch on the same token
windows, same token ids as the Hugging Face tokenizer, no degraded-tokenizer warning, llama.cpp's quantizer, greedy
generation, the bench's JSON shape, and bad input. Skipped only where llama-cpp-python is not installed (CI
installs it: `pip install -e '.[llamacpp]'`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prunelab import PruneConfig, prune
from prunelab.data import eval_windows
from prunelab.errors import PrunelabError
from prunelab.evaluation.perplexity import perplexity as torch_perplexity
from prunelab.export import export_gguf
from prunelab.export import tokenizer as tk
from prunelab.measurement.bench import BenchConfig
from tests.conftest import CORPUS, make_model, make_tokenizer
from tests.test_export_gguf import PRE_TOKENIZERS, STRINGS, bpe_tokenizer, per_layer_model

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed: pip install -e '.[llamacpp]'")
from prunelab.runtime import llamacpp as rt  # noqa: E402 - needs llama_cpp

SEQLEN = 64


@pytest.fixture(scope="module")
def windows() -> torch.Tensor:
    tok = make_tokenizer()
    return eval_windows(tok(CORPUS, return_tensors="pt").input_ids[0], SEQLEN, 4)


def structured_model() -> torch.nn.Module:
    model = make_model("llama")
    calib = torch.randint(0, 320, (4, 32), generator=torch.Generator().manual_seed(1))
    prune(model, PruneConfig(method="structured", sparsity=0.3, options={"target": "mlp+heads"}), calib=calib)
    return model


MODELS = {
    "llama": lambda: make_model("llama"),
    "mistral": lambda: make_model("mistral"),
    "qwen2": lambda: make_model("qwen2"),
    "structured": structured_model,
    "deci": per_layer_model,
}


def agreement(model: torch.nn.Module, path, windows: torch.Tensor) -> tuple[float, float]:
    """(teacher-forced next-token agreement, max |logit difference|) of llama.cpp vs torch float32."""
    llm = rt.load(path, n_ctx=SEQLEN, threads=2, logits_all=True)
    same, worst = [], 0.0
    try:
        with torch.no_grad():
            for w in windows:
                ref = model(input_ids=w[None]).logits[0].numpy()
                got = rt.logits(llm, w.tolist())
                same.append((ref.argmax(-1) == got.argmax(-1)).mean())
                worst = max(worst, float(np.abs(ref - got).max()))
    finally:
        llm.close()
    return float(np.mean(same)), worst


@pytest.mark.parametrize("name", list(MODELS))
def test_llamacpp_matches_torch_next_tokens_and_perplexity(name, tokenizer, windows, tmp_path) -> None:
    model = MODELS[name]()
    out = tmp_path / f"{name}.gguf"
    assert export_gguf(model, tokenizer, out)["arch"] == {"qwen2": "qwen2", "deci": "deci"}.get(name, "llama")
    agree, worst = agreement(model, out, windows)
    # A wrong q/k permutation, head count or tensor name drops agreement to chance (~1/320) and moves logits O(1).
    assert agree >= 0.98
    assert worst < 0.1  # f16 weights + llama.cpp kernels vs float32 torch; logits have a spread of ~1.6 here
    ours = rt.perplexity(out, windows, threads=2)
    ref = torch_perplexity(model, windows)
    assert (ours.windows, ours.seqlen, ours.tokens) == (ref.windows, ref.seqlen, ref.tokens)
    assert abs(ours.perplexity / ref.perplexity - 1) < 0.01


def test_wrong_permutation_is_caught_by_llamacpp(tokenizer, windows, tmp_path, monkeypatch) -> None:
    """Negative control for the agreement check: the same model exported without the q/k permutation."""
    from prunelab.export import gguf as gg

    monkeypatch.setattr(gg, "permute_rows", lambda w, n_head: w)
    model = make_model("llama")
    export_gguf(model, tokenizer, tmp_path / "bad.gguf")
    agree, worst = agreement(model, tmp_path / "bad.gguf", windows)
    assert worst > 0.3 and agree < 0.95


@pytest.mark.parametrize("name", list(PRE_TOKENIZERS))
def test_llamacpp_tokenizes_like_the_hf_tokenizer(name, tmp_path) -> None:
    tok = bpe_tokenizer(PRE_TOKENIZERS[name]())
    out = tmp_path / "t.gguf"
    assert export_gguf(make_model("llama"), tok, out)["tokenizer_pre"] == name
    llm = rt.load(out, n_ctx=64, threads=1)
    try:
        for s in [*STRINGS, "<|im_start|>user\nhi<|im_end|>", "x" * 50, "2024-01-01: 1,000,000 €"]:
            assert rt.tokenize(llm, s) == tok(s).input_ids, s
    finally:
        llm.close()


def test_the_tokenizer_check_can_fail(tmp_path) -> None:
    """Digit handling differs between the splits: a GPT-2 split tokenizer labelled as SmolLM's (digits one by one)
    tokenizes numbers differently in llama.cpp."""
    tok = bpe_tokenizer(PRE_TOKENIZERS["gpt-2"]())
    assert len(tok("6789").input_ids) < 4  # the merges join digits
    orig = tk.pre_tokenizer_name
    out = tmp_path / "wrong.gguf"
    try:
        tk.pre_tokenizer_name = lambda pre: "smollm"  # lie about the split
        export_gguf(make_model("llama"), tok, out)
    finally:
        tk.pre_tokenizer_name = orig
    llm = rt.load(out, n_ctx=64, threads=1)
    try:
        assert rt.tokenize(llm, "in 6789 ways") != tok("in 6789 ways").input_ids
    finally:
        llm.close()


def test_no_degraded_tokenizer_warning(tokenizer, tmp_path, capfd, monkeypatch) -> None:
    out = tmp_path / "ok.gguf"
    export_gguf(make_model("llama"), tokenizer, out)
    capfd.readouterr()
    llama_cpp.Llama(str(out), vocab_only=True, verbose=True).close()
    assert "GENERATION QUALITY WILL BE DEGRADED" not in capfd.readouterr().err
    # Control: the same file without tokenizer.ggml.pre makes llama.cpp warn, and prunelab's loader refuses it.
    orig = tk.from_hf

    def without_pre(tok, vocab):
        meta = orig(tok, vocab)
        meta.entries = [e for e in meta.entries if e[0] != "tokenizer.ggml.pre"]
        return meta

    monkeypatch.setattr(tk, "from_hf", without_pre)
    bad = tmp_path / "nopre.gguf"
    export_gguf(make_model("llama"), tokenizer, bad)
    llama_cpp.Llama(str(bad), vocab_only=True, verbose=True).close()
    assert "GENERATION QUALITY WILL BE DEGRADED" in capfd.readouterr().err
    with pytest.raises(PrunelabError, match=r"no tokenizer\.ggml\.pre"):
        rt.load(bad)


def relative_error(model: torch.nn.Module, path, windows: torch.Tensor) -> float:
    llm = rt.load(path, n_ctx=SEQLEN, threads=2, logits_all=True)
    try:
        with torch.no_grad():
            errs = [
                np.linalg.norm((ref := model(input_ids=w[None]).logits[0].numpy()) - rt.logits(llm, w.tolist()))
                / np.linalg.norm(ref)
                for w in windows
            ]
    finally:
        llm.close()
    return float(np.mean(errs))


def test_llamacpp_quantizer_types_load_and_order_by_precision(tokenizer, windows, tmp_path) -> None:
    """q4_0 / q4_k_m go through llama.cpp's quantizer. On this random 64-wide model (rows too short for K-quants'
    256-blocks, so llama.cpp falls back to Q5_0/Q8_0 for q4_k_m) the logits' relative error grows as bits shrink:
    measured f16 0.25%, q8_0 4.8%, q4_k_m 33%, q4_0 55%; next-token agreement stays far above chance (1/320)."""
    model = make_model("llama")
    sizes, errors = {}, {}
    for quant in ["f16", "q8_0", "q4_k_m", "q4_0"]:
        out = tmp_path / f"{quant}.gguf"
        report = export_gguf(model, tokenizer, out, quant=quant, threads=1)
        assert report["quant"] == quant
        sizes[quant], errors[quant] = report["file_bytes"], relative_error(model, out, windows)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert report["tensor_types"]["Q4_0"] == 15  # llama.cpp's q4_0 keeps output.weight at Q8_0 (its rule)
    assert sizes["f16"] > sizes["q8_0"] > sizes["q4_k_m"] > sizes["q4_0"]
    assert errors["f16"] < 0.01 < errors["q8_0"] < 0.1 < errors["q4_k_m"] < errors["q4_0"] < 0.8
    assert agreement(model, tmp_path / "q4_0.gguf", windows)[0] > 0.2


def test_greedy_generation_runs_and_starts_like_torch(tokenizer, tmp_path) -> None:
    model = make_model("llama")
    out = tmp_path / "g.gguf"
    export_gguf(model, tokenizer, out)
    prompt = tokenizer("To be, or not to be").input_ids
    llm = rt.load(out, n_ctx=64, threads=2)
    try:
        clock: list[float] = []
        got = rt.greedy(llm, prompt, 12, clock)
    finally:
        llm.close()
    assert len(got) == 12 == len(clock) and all(0 <= t < 320 for t in got)
    assert clock == sorted(clock)
    with torch.no_grad():
        first = int(model(input_ids=torch.tensor([prompt])).logits[0, -1].argmax())
    assert got[0] == first


def test_bench_has_the_torch_bench_shape(tokenizer, tmp_path) -> None:
    out = tmp_path / "b.gguf"
    export_gguf(make_model("llama"), tokenizer, out)
    cfg = BenchConfig(prompt_lens=[8, 16], gen_len=4, batches=[1, 8], repeats=2, warmup=0, threads=1, energy="estimate")
    res = rt.bench(out, cfg)  # a shape test, not a timing: the numbers are not looked at
    assert set(res) >= {"latency", "memory", "size", "energy", "carbon", "hardware", "notes", "config"}
    lat = res["latency"]
    assert set(lat["prefill_ms"]) == {"8", "16"} and lat["prefill_ms"]["8"]["n"] == 2
    assert lat["decode_tokens_per_s"]["median"] > 0 and set(lat["throughput_tokens_per_s"]) == {"1"}
    assert lat["protocol"]["runtime"] == "llama.cpp" and lat["protocol"]["threads"] == 1
    assert res["size"]["file_bytes"] == out.stat().st_size and res["memory"]["peak_rss_mb"] > 0
    assert res["energy"]["energy_source"] == "estimate-cpu-model" and res["energy"]["is_estimate"] is True
    assert any("batch 1 only" in n for n in res["notes"])


def test_bad_files_raise_one_line(tmp_path) -> None:
    with pytest.raises(PrunelabError, match="does not exist"):
        rt.load(tmp_path / "none.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"junk" * 100)
    with pytest.raises(PrunelabError, match="not a GGUF file"):
        rt.perplexity(junk, [[1, 2, 3]])
    truncated = tmp_path / "trunc.gguf"
    truncated.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 8)
    with pytest.raises(PrunelabError, match=r"llama\.cpp could not load") as e:
        rt.load(truncated)
    assert "\n" not in str(e.value)
    with pytest.raises(PrunelabError, match="same length"):
        rt._windows([[1, 2, 3], [1, 2]])
