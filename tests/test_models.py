"""Architecture support, layer discovery, save -> plain transformers reload."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from prunelab import PruneConfig, prune
from prunelab.errors import PrunelabError
from prunelab.models import block_linears, find_blocks, load_model, prunable_layers, save_model, weight_2d

from .conftest import ARCHS

EXPECTED_LAYERS = {  # prunable layers per block
    "llama": 7,
    "mistral": 7,
    "qwen2": 7,
    "phi3": 4,
    "opt": 6,
    "gpt2": 4,
}


@pytest.mark.parametrize("arch", ARCHS)
def test_blocks_and_layers_found(arch: str, model_factory) -> None:
    model = model_factory(arch)
    name, blocks = find_blocks(model)
    assert len(blocks) == 2
    layers = block_linears(blocks[0], f"{name}.0")
    assert len(layers) == EXPECTED_LAYERS[arch], list(layers)
    assert all("lm_head" not in n and "embed" not in n for n in prunable_layers(model))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_every_arch_prunes_and_reloads(arch: str, method: str, model_factory, calib, tmp_path) -> None:
    model = model_factory(arch)
    pattern = "2:4" if method == "wanda" else "unstructured"
    result = prune(model, PruneConfig(method=method, sparsity=0.5, pattern=pattern), calib=calib)
    assert result.achieved_sparsity == pytest.approx(0.5, abs=0.01)
    save_model(model, None, tmp_path / "out", {"method": method}, overwrite=False)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        a = model(input_ids=calib).logits
        b = reloaded(input_ids=calib).logits
    assert torch.equal(a, b)
    for (n1, m1), (n2, m2) in zip(prunable_layers(model).items(), prunable_layers(reloaded).items(), strict=True):
        assert n1 == n2
        assert torch.equal(weight_2d(m1) == 0, weight_2d(m2) == 0)
    assert json.loads((tmp_path / "out" / "prunelab.json").read_text())["method"] == method


def test_gpt2_conv1d_is_pruned_along_inputs(model_factory, calib) -> None:
    model = model_factory("gpt2")
    layers = prunable_layers(model)
    conv = next(m for m in layers.values() if isinstance(m, Conv1D))
    assert weight_2d(conv).shape == (conv.weight.shape[1], conv.weight.shape[0])  # (out, in)
    prune(model, PruneConfig(method="wanda", pattern="2:4"), calib=calib)
    w = weight_2d(conv)
    groups = (w.reshape(w.shape[0], -1, 4) != 0).sum(-1)
    assert (groups <= 2).all()


def test_save_refuses_existing_and_keeps_it(model_factory, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(PrunelabError, match=r"already exists"):
        save_model(model_factory("llama"), None, out, {}, overwrite=False)
    assert (out / "keep.txt").read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary left behind
    save_model(model_factory("llama"), None, out, {}, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "config.json").exists()


def test_load_errors(tmp_path) -> None:
    with pytest.raises(PrunelabError, match=r"does not exist"):
        load_model(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrunelabError, match=r"no config.json"):
        load_model(str(tmp_path / "empty"))
    (tmp_path / "x.bin").write_text("x")
    with pytest.raises(PrunelabError, match=r"not a .gguf"):
        load_model(str(tmp_path / "x.bin"))


def test_load_folder_without_tokenizer(model_factory, tmp_path) -> None:
    model_factory("llama").save_pretrained(tmp_path / "bare")
    lm = load_model(str(tmp_path / "bare"))
    assert lm.tokenizer is None
    result = prune(lm.model, PruneConfig(method="magnitude", sparsity=0.3))  # needs no calibration
    assert result.achieved_sparsity == pytest.approx(0.3, abs=1e-3)
    with pytest.raises(PrunelabError, match=r"tokenizer"):
        prune(lm.model, PruneConfig(method="wanda", sparsity=0.3))


def test_global_magnitude_exact_and_different_from_layerwise(model_factory) -> None:
    model = model_factory("llama")
    with torch.no_grad():  # make one layer much larger so global ranking spares it
        weight_2d(prunable_layers(model)["model.layers.0.mlp.down_proj"]).mul_(100)
    result = prune(model, PruneConfig(method="magnitude", sparsity=0.4, options={"scope": "global"}))
    total = sum(r.numel for r in result.layers.values())
    assert sum(r.zeros for r in result.layers.values()) == round(total * 0.4)
    # Normal weights x100 still have a few near zero, but far fewer than the 40% a per-layer ranking takes.
    assert result.layers["model.layers.0.mlp.down_proj"].sparsity < 0.01
    others = [r for n, r in result.layers.items() if n != "model.layers.0.mlp.down_proj"]
    assert sum(r.zeros for r in others) / sum(r.numel for r in others) > 0.4


def test_global_magnitude_ties_exact(model_factory) -> None:
    model = model_factory("llama")
    with torch.no_grad():
        for m in prunable_layers(model).values():
            weight_2d(m).fill_(1.0)  # all ties
    result = prune(model, PruneConfig(method="magnitude", sparsity=0.25, options={"scope": "global"}))
    total = sum(r.numel for r in result.layers.values())
    assert sum(r.zeros for r in result.layers.values()) == round(total * 0.25)


def test_unknown_option_rejected() -> None:
    with pytest.raises(PrunelabError, match=r"extra|not permitted|Extra"):
        prune(torch.nn.Linear(2, 2), PruneConfig(method="sparsegpt", sparsity=0.5, options={"dampning": 0.1}))


def test_atomic_writes_get_umask_permissions(tmp_path) -> None:
    import os

    from prunelab._util import write_json_atomic, write_text_atomic

    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "a.json", {"x": 1})
        write_text_atomic(tmp_path / "b.html", "<p>")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644  # mkstemp alone would give 0o600
    assert (tmp_path / "b.html").stat().st_mode & 0o777 == 0o644
