"""Weight-sparse execution: CSR layers against dense, apply/remove, and compact checkpoints loaded into the runtime."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from prunelab import PruneConfig, prune
from prunelab.errors import PrunelabError
from prunelab.measurement.size import save_compact
from prunelab.runtime import COMPACT_FILE, WeightSparseLinear, apply_weight_sparsity, load_sparse, save_sparse

from .conftest import VOCAB, make_model


def _ids(batch: int = 2, length: int = 8, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _pruned(arch: str = "llama", sparsity: float = 0.8) -> nn.Module:
    model = make_model(arch)
    prune(model, PruneConfig(method="magnitude", sparsity=sparsity))
    return model


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("shape", [(1, 1), (3, 1), (1, 20)])
@pytest.mark.parametrize("keep", [True, False])
def test_csr_layer_equals_dense(kind: str, shape: tuple[int, int], keep: bool) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(48, 40) if kind == "linear" else Conv1D(40, 48)
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
        layer.weight.masked_fill_(torch.rand_like(layer.weight) < 0.75, 0.0)
    sparse = WeightSparseLinear(layer, dense_rows=8, keep_original=keep)
    assert sparse.sparsity == pytest.approx(float((layer.weight == 0).float().mean()))
    x = torch.randn(*shape, 48)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), layer(x), rtol=1e-5, atol=1e-5)
        if keep and shape[1] > 8:  # many rows with the dense weights kept: the original layer, exactly
            assert torch.equal(sparse(x), layer(x))


def test_csr_uses_int32_indices_and_stays_exact() -> None:
    # int32 indices are the fast CPU path (2-3x over torch's default int64); values and products unchanged.
    from prunelab.runtime import kernels as K

    w = torch.randn(40, 48, generator=torch.Generator().manual_seed(1))
    w[torch.rand(40, 48, generator=torch.Generator().manual_seed(2)) < 0.7] = 0.0
    csr = K.to_csr(w)
    assert csr.crow_indices().dtype == torch.int32 and csr.col_indices().dtype == torch.int32
    assert torch.equal(csr.to_dense(), w)
    for rows in (1, 5):
        x = torch.randn(rows, 48, generator=torch.Generator().manual_seed(rows))
        torch.testing.assert_close(K.csr_kernel(x, csr, None), x @ w.t(), rtol=1e-5, atol=1e-5)


def test_csr_refuses_half_precision_and_auto_keeps_it_dense() -> None:
    # torch's CPU CSR products have no bfloat16 kernel: auto must not pick CSR, an explicit "csr" says why.
    model = _pruned().to(torch.bfloat16)
    handle = apply_weight_sparsity(model, kernels="auto")
    try:
        assert handle.info["csr_layers"] == 0
    finally:
        handle.remove()
    with pytest.raises(PrunelabError, match="float32 or float64"):
        apply_weight_sparsity(model, kernels="csr")


def test_apply_csr_matches_dense_and_remove_restores() -> None:
    model = _pruned()
    modules = dict(model.named_modules())
    params = {n: (p, p.detach().clone()) for n, p in model.named_parameters()}
    ids = _ids()
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        step = model(input_ids=ids[:, :1]).logits
        with apply_weight_sparsity(model, kernels="csr") as handle:
            assert handle.info["csr_layers"] == 14 and handle.info["dense_layers"] == 0
            assert isinstance(model.model.layers[1].mlp.down_proj, WeightSparseLinear)
            torch.testing.assert_close(model(input_ids=ids[:, :1]).logits, step, rtol=1e-4, atol=1e-4)
            assert torch.equal(model(input_ids=ids).logits, logits)  # 16 rows > dense_rows: dense, exact
        assert all(m is modules[n] for n, m in model.named_modules())
        for n, p in model.named_parameters():
            assert p is params[n][0] and torch.equal(p, params[n][1])
        assert torch.equal(model(input_ids=ids).logits, logits)


def test_choice_is_injectable_and_auto_skips_dense_layers() -> None:
    model = _pruned()
    handle = apply_weight_sparsity(model, kernels=lambda name, shape, s: "csr" if "mlp" in name else "dense")
    assert handle.info["csr_layers"] == 6 and handle.info["dense_layers"] == 8
    handle.remove()
    assert apply_weight_sparsity(model, kernels="off").info["csr_layers"] == 0
    dense = make_model("llama")
    auto = apply_weight_sparsity(dense, kernels="auto", measure_repeats=1)
    assert auto.info["csr_layers"] == 0 and auto.info["measured_us_per_token"] == {}  # below MIN_SPARSITY
    auto = apply_weight_sparsity(model, kernels="auto", measure_repeats=1)
    assert set(auto.info["measured_us_per_token"]) == {"64x64@0.8", "64x32@0.8", "64x96@0.8", "96x64@0.8"}
    auto.remove()
    with pytest.raises(PrunelabError, match="Did you mean 'csr'"):
        apply_weight_sparsity(model, kernels="csrr")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_compact_checkpoint_loads_into_csr_runtime_with_dense_logits(arch: str, tmp_path: Path, tokenizer) -> None:
    model = _pruned(arch)
    model.save_pretrained(tmp_path / "dense")
    folder = save_sparse(model, tmp_path / "compact", tokenizer=tokenizer)
    assert (folder / COMPACT_FILE).stat().st_size < (tmp_path / "dense" / "model.safetensors").stat().st_size
    assert json.loads((folder / "prunelab-compact.json").read_text())["file"] == COMPACT_FILE
    dense = AutoModelForCausalLM.from_pretrained(tmp_path / "dense").eval()
    loaded = load_sparse(folder, kernels="csr")
    assert loaded.tokenizer is not None and loaded.runtime["csr_layers"] > 0
    blocks = loaded.model.model.layers if arch == "llama" else loaded.model.transformer.h
    assert not any(isinstance(m, (nn.Linear, Conv1D)) for m in blocks.modules())  # dense copies dropped
    ids = _ids()
    with torch.no_grad():
        for batch in (ids[:1, :1], ids[:, :1], ids):  # decode batch 1 and 2, and a prefill (CSR too: no dense copy)
            torch.testing.assert_close(
                loaded.model(input_ids=batch).logits, dense(input_ids=batch).logits, rtol=1e-4, atol=1e-4
            )
        out = loaded.model.generate(input_ids=ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
        assert torch.equal(out, dense.generate(input_ids=ids, max_new_tokens=3, do_sample=False, pad_token_id=0))


def test_compact_checkpoint_that_does_not_match_its_config(tmp_path: Path) -> None:
    model = _pruned()
    folder = save_sparse(model, tmp_path / "compact")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["intermediate_size"] = 128
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PrunelabError) as e:
        load_sparse(folder, kernels="off")
    assert "does not match its config" in str(e.value) and "\n" not in str(e.value)
    cfg["intermediate_size"], cfg["num_hidden_layers"] = 96, 3
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PrunelabError, match=r"missing tensor model\.layers\.2"):
        load_sparse(folder, kernels="off")
    (tmp_path / "bare").mkdir()
    save_compact(model, tmp_path / "bare" / COMPACT_FILE)
    with pytest.raises(PrunelabError, match=r"no config\.json"):
        load_sparse(tmp_path / "bare")
    with pytest.raises(PrunelabError, match="no compact checkpoint"):
        load_sparse(tmp_path)
