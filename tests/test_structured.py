"""Structured pruning: the right units go, the rest of the function is untouched, the saved model reloads exactly.

Hand-checked cases set weights so the answer is known (unit-norm rows scaled by known factors, dead channels,
weak KV groups, identity layers). "Removing a unit" must equal "silencing it" in the dense model (zeroing its
columns in the output projection): a wrong index order or a broken GQA grouping gives different logits.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from prunelab import PruneConfig, PrunelabError, prune
from prunelab.cli import main
from prunelab.models import find_blocks
from tests.conftest import make_model, tiny_config

# Tiny Llama: hidden 64, 4 heads of 16 (2 KV groups), MLP 96, 2 layers. Per block: q 4096, k 2048, v 2048,
# o 4096, MLP 3 x 6144, two norms 64 each.
BLOCK = 4096 + 2048 + 2048 + 4096 + 3 * 6144 + 128
CHANNEL = 3 * 64  # gate row + up row + down column
Q_HEAD = 2 * 16 * 64  # q rows + o columns
KV_GROUP = 2 * 16 * 64 + 2 * Q_HEAD  # k/v rows + its two query heads


def run(model: torch.nn.Module, sparsity: float, calib: torch.Tensor | None = None, **options):
    return prune(model, PruneConfig(method="structured", sparsity=sparsity, options=options), calib=calib)


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def reload(model: torch.nn.Module, tmp_path) -> torch.nn.Module:
    model.save_pretrained(tmp_path / "m")
    return AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()


def set_unit_rows(w: torch.Tensor, scale: torch.Tensor, dim: int) -> None:
    """Make slices of `w` along `dim` unit-norm random directions times `scale`."""
    with torch.no_grad():
        r = torch.randn_like(w)
        r /= r.norm(dim=1 - dim, keepdim=True)
        w.copy_(r * (scale.unsqueeze(1) if dim == 0 else scale.unsqueeze(0)))


def silenced_copy(arch: str, silence: dict[int, dict[str, list[int]]]) -> torch.nn.Module:
    """A fresh model (same seed) whose listed output-projection columns are zeroed: what removal must equal."""
    model = make_model(arch)
    _, blocks = find_blocks(model)
    with torch.no_grad():
        for layer, parts in silence.items():
            attn, mlp = blocks[layer].self_attn, blocks[layer].mlp
            for h in parts.get("heads", []):
                attn.o_proj.weight[:, h * 16 : (h + 1) * 16] = 0
            for c in parts.get("channels", []):
                mlp.down_proj.weight[:, c] = 0
    return model


# ---- MLP channels -------------------------------------------------------------------------------------------
def test_mlp_magnitude_removes_the_smallest_channels(calib) -> None:
    torch.manual_seed(0)
    model = make_model("llama")
    scales = torch.randperm(96).float() / 96 + 0.05  # distinct; score of channel c = 3 * scale_c^2
    for block in find_blocks(model)[1]:
        set_unit_rows(block.mlp.gate_proj.weight, scales, 0)
        set_unit_rows(block.mlp.up_proj.weight, scales, 0)
        set_unit_rows(block.mlp.down_proj.weight, scales, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dense = logits(model, calib[:1])
    result = run(model, 0.25, target="mlp", importance="magnitude")  # round(0.25 * BLOCK / CHANNEL) = 40 per layer

    keep = sorted(torch.argsort(scales, descending=True)[:56].tolist())
    for i in range(2):
        p = f"model.layers.{i}.mlp."
        assert torch.equal(model.state_dict()[p + "gate_proj.weight"], before[p + "gate_proj.weight"][keep])
        assert torch.equal(model.state_dict()[p + "up_proj.weight"], before[p + "up_proj.weight"][keep])
        assert torch.equal(model.state_dict()[p + "down_proj.weight"], before[p + "down_proj.weight"][:, keep])
    assert model.config.intermediate_size == 56
    assert result.extra["achieved_reduction"] == pytest.approx(40 * CHANNEL / BLOCK)
    assert result.achieved_sparsity == pytest.approx(40 * CHANNEL / BLOCK)
    lm_head = 320 * 64
    macs = 2 * (BLOCK - 128) + lm_head
    assert result.extra["flops_ratio"] == pytest.approx((macs - 2 * 40 * CHANNEL) / macs)
    assert result.extra["params_before"] - result.extra["params_after"] == 2 * 40 * CHANNEL
    # Removing equals silencing: the zeroed-column dense model computes the same function.
    removed = [c for c in range(96) if c not in keep]
    ref = make_model("llama")
    ref.load_state_dict(before)
    with torch.no_grad():
        for block in find_blocks(ref)[1]:
            block.mlp.down_proj.weight[:, removed] = 0
    assert torch.allclose(logits(model, calib[:1]), logits(ref, calib[:1]), atol=1e-5)
    assert not torch.allclose(logits(model, calib[:1]), dense, atol=1e-3)


def test_activation_importance_removes_dead_channels_magnitude_does_not(calib) -> None:
    dead = [3, 17, 50, 90]
    results = {}
    for how in ("activation", "magnitude"):
        model = make_model("llama")
        with torch.no_grad():
            for block in find_blocks(model)[1]:
                block.mlp.gate_proj.weight[dead] = 0  # silu(0) = 0: these channels never fire...
                block.mlp.up_proj.weight[dead] *= 5  # ...but own the largest weights
                block.mlp.down_proj.weight[:, dead] *= 5
        # 4 channels = 768 params of 30848 per block: sparsity 0.025 asks exactly 4 per layer
        run(model, 4 * CHANNEL / BLOCK, calib, target="mlp", importance=how)
        results[how] = model
    for i, block in enumerate(find_blocks(results["activation"])[1]):
        ref = make_model("llama")
        kept = [c for c in range(96) if c not in dead]
        assert torch.equal(block.mlp.gate_proj.weight, find_blocks(ref)[1][i].mlp.gate_proj.weight[kept])
    for block in find_blocks(results["magnitude"])[1]:
        assert int((block.mlp.gate_proj.weight.abs().sum(dim=1) == 0).sum()) == len(dead)  # dead ones kept


def test_compensation_moves_mean_into_a_loadable_bias(calib, tmp_path) -> None:
    model = make_model("llama")
    # Independent statistics of block 0's down_proj input on the calibration windows (the pruner sees the same).
    seen: list[torch.Tensor] = []
    down = find_blocks(model)[1][0].mlp.down_proj
    handle = down.register_forward_pre_hook(lambda _m, args: seen.append(args[0].reshape(-1, 96)))
    for row in calib:
        logits(model, row[None])
    handle.remove()
    x = torch.cat(seen).double()
    w = down.weight.detach().clone()
    fluct = w.square().sum(dim=0).double() * x.var(dim=0, unbiased=False)
    keep = sorted(torch.argsort(fluct, descending=True)[:56].tolist())
    removed = [c for c in range(96) if c not in keep]

    result = run(model, 0.25, calib, target="mlp", compensate=True)
    block0 = find_blocks(model)[1][0].mlp
    assert model.config.mlp_bias is True
    assert torch.equal(block0.down_proj.weight, w[:, keep])  # FLAP fluctuation picked these channels
    expected = (w[:, removed].double() @ x[:, removed].mean(dim=0)).float()
    assert torch.allclose(block0.down_proj.bias, expected, atol=1e-5)
    assert torch.count_nonzero(block0.gate_proj.bias) == 0 and torch.count_nonzero(block0.up_proj.bias) == 0
    assert result.extra["bias_params_added"] == 2 * (96 + 96 + 64)
    assert torch.equal(logits(reload(model, tmp_path), calib[:1]), logits(model, calib[:1]))


def test_compensation_refused_where_no_bias_can_be_loaded(calib) -> None:
    model = make_model("qwen2")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PrunelabError, match="cannot load one there"):
        run(model, 0.25, calib, target="mlp", compensate=True)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # refused before any change


# ---- attention heads (GQA) ----------------------------------------------------------------------------------
def _weaken_heads(model: torch.nn.Module, heads: list[int], groups: list[int]) -> None:
    with torch.no_grad():
        for block in find_blocks(model)[1]:
            a = block.self_attn
            for h in heads:
                a.q_proj.weight[h * 16 : (h + 1) * 16] *= 0.01
                a.o_proj.weight[:, h * 16 : (h + 1) * 16] *= 0.01
            for g in groups:
                a.k_proj.weight[g * 16 : (g + 1) * 16] *= 0.01
                a.v_proj.weight[g * 16 : (g + 1) * 16] *= 0.01


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_heads_remove_a_whole_kv_group_with_its_query_heads(arch, calib, tmp_path) -> None:
    model = make_model(arch)
    _weaken_heads(model, heads=[0, 1], groups=[0])  # group 0 = KV head 0 with query heads 0 and 1
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = run(model, 0.2, target="heads", importance="magnitude")  # nearest: one group (6144 of 30848)
    for i in range(2):
        p = f"model.layers.{i}.self_attn."
        sd = model.state_dict()
        assert torch.equal(sd[p + "q_proj.weight"], before[p + "q_proj.weight"][32:64])
        assert torch.equal(sd[p + "k_proj.weight"], before[p + "k_proj.weight"][16:32])
        assert torch.equal(sd[p + "v_proj.weight"], before[p + "v_proj.weight"][16:32])
        assert torch.equal(sd[p + "o_proj.weight"], before[p + "o_proj.weight"][:, 32:64])
        if arch == "qwen2":  # q/k/v biases follow their rows
            assert torch.equal(sd[p + "k_proj.bias"], before[p + "k_proj.bias"][16:32])
    cfg = model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (2, 1, 16)
    assert find_blocks(model)[1][0].self_attn.num_key_value_groups == 2
    bias = 128 if arch == "qwen2" else 0  # Qwen2's q/k/v biases: 64 + 32 + 32 per block, half of them go
    assert result.extra["achieved_reduction"] == pytest.approx((KV_GROUP + bias / 2) / (BLOCK + bias))
    ref = make_model(arch)
    ref.load_state_dict(before)
    with torch.no_grad():
        for block in find_blocks(ref)[1]:
            block.self_attn.o_proj.weight[:, :32] = 0
    assert torch.allclose(logits(model, calib[:1]), logits(ref, calib[:1]), atol=1e-5)
    reloaded = reload(model, tmp_path)
    assert reloaded.config.head_dim == 16
    assert torch.equal(logits(reloaded, calib[:1]), logits(model, calib[:1]))


def test_heads_remove_query_heads_inside_groups_keeping_each_with_its_kv_head(calib, tmp_path) -> None:
    model = make_model("llama")
    _weaken_heads(model, heads=[1, 2], groups=[])  # one query head in each group
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run(model, 0.13, target="heads", importance="magnitude")  # nearest: one query head per group (4096)
    sd = model.state_dict()
    q, o = before["model.layers.0.self_attn.q_proj.weight"], before["model.layers.0.self_attn.o_proj.weight"]
    assert torch.equal(sd["model.layers.0.self_attn.q_proj.weight"], torch.cat([q[0:16], q[48:64]]))
    assert torch.equal(sd["model.layers.0.self_attn.o_proj.weight"], torch.cat([o[:, 0:16], o[:, 48:64]], dim=1))
    assert torch.equal(sd["model.layers.0.self_attn.k_proj.weight"], before["model.layers.0.self_attn.k_proj.weight"])
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (2, 2)
    # Head 0 must still attend with KV head 0 and head 3 with KV head 1: equal to silencing heads 1 and 2.
    ref = silenced_copy("llama", {0: {"heads": [1, 2]}, 1: {"heads": [1, 2]}})
    _weaken_heads(ref, heads=[1, 2], groups=[])
    assert torch.allclose(logits(model, calib[:1]), logits(ref, calib[:1]), atol=1e-5)
    assert torch.equal(logits(reload(model, tmp_path), calib[:1]), logits(model, calib[:1]))


def test_activation_heads_and_generate_with_cache(calib, tmp_path) -> None:
    model = make_model("llama")
    run(model, 0.2, calib, target="heads")
    ids = calib[:1, :8]
    out = model.generate(input_ids=ids, max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    again = reload(model, tmp_path).generate(
        input_ids=ids, max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0
    )
    assert out.shape == (1, 14) and torch.equal(out, again)


# ---- layers ---------------------------------------------------------------------------------------------------
def _deep(arch: str, layers: int = 4) -> torch.nn.Module:
    config = tiny_config(arch)
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = ["full_attention"] * layers
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    return model.eval()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "opt", "gpt2"])
def test_layers_block_influence_drops_the_identity_layer(arch, calib, tmp_path) -> None:
    model = _deep(arch)
    _, blocks = find_blocks(model)
    with torch.no_grad():  # layer 2 adds nothing to the residual stream: influence 0
        for name, p in blocks[2].named_parameters():
            if any(k in name for k in ("o_proj", "out_proj", "down_proj", "fc2", "c_proj")):
                p.zero_()
    dense = logits(model, calib[:1])
    result = run(model, 0.25, calib, target="layers")
    assert result.extra["removed_layers"] == [2]
    assert result.layers[f"{find_blocks(model)[0]}.2"].sparsity == 1.0
    assert model.config.num_hidden_layers == 3
    if arch == "qwen2":
        assert len(model.config.layer_types) == 3
    idx = [(b.self_attn if hasattr(b, "self_attn") else b.attn).layer_idx for b in find_blocks(model)[1]]
    assert idx == [0, 1, 2]
    assert torch.allclose(logits(model, calib[:1]), dense, atol=1e-5)
    reloaded = reload(model, tmp_path)
    assert torch.equal(logits(reloaded, calib[:1]), logits(model, calib[:1]))
    gen = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(
        model.generate(input_ids=calib[:1, :6], **gen), reloaded.generate(input_ids=calib[:1, :6], **gen)
    )


# ---- every architecture: reload and config -------------------------------------------------------------------
CASES = [
    ("llama", "mlp", False, {"intermediate_size": 56}),  # 40 of 96 channels (see the magnitude test)
    ("llama", "mlp+heads", True, {"num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 16}),
    ("qwen2", "mlp+heads", False, {"intermediate_size": 77, "num_attention_heads": 2, "head_dim": 16}),
    ("opt", "mlp", True, {"ffn_dim": 63}),  # round(0.25 * 33472 / 129) = 65 of 128 removed
    ("gpt2", "mlp", True, {"n_inner": 159}),  # round(0.25 * 49984 / 129) = 97 of 256
]


@pytest.mark.parametrize(("arch", "target", "compensate", "fields"), CASES)
def test_save_reload_identical_logits(arch, target, compensate, fields, calib, tmp_path) -> None:
    model = make_model(arch)
    result = run(model, 0.25, calib, target=target, compensate=compensate)
    for key, value in fields.items():
        assert getattr(model.config, key) == value, key
    reloaded = reload(model, tmp_path)
    for key, value in fields.items():
        assert getattr(reloaded.config, key) == value, key
    out = logits(model, calib)
    assert torch.isfinite(out).all()
    assert torch.equal(logits(reloaded, calib), out)
    assert result.extra["achieved_reduction"] == pytest.approx(0.25, abs=0.02)
    assert result.extra["params_after"] == sum(p.numel() for p in reloaded.parameters())


# ---- refusals --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("arch", "sparsity", "options", "match"),
    [
        ("llama", 0.6, {"target": "heads", "importance": "magnitude"}, "every attention head"),
        ("llama", 0.75, {"target": "mlp", "importance": "magnitude"}, "no MLP channel"),
        ("llama", 0.01, {"target": "heads", "importance": "magnitude"}, "too small"),
        ("llama", 0.9, {"target": "layers"}, "all 2 decoder layers"),
        ("opt", 0.2, {"target": "heads", "importance": "magnitude"}, "derives head_dim"),
        ("gpt2", 0.2, {"target": "mlp+heads", "importance": "magnitude"}, "derives head_dim"),
        ("llama", 0.2, {"target": "mlp", "importance": "block-influence"}, "does not apply"),
        ("llama", 0.2, {"target": "layers", "compensate": True}, "compensate"),
        ("llama", 0.2, {"target": "neurons"}, "target"),
    ],
)
def test_bad_requests_refused_before_any_change(arch, sparsity, options, match, calib) -> None:
    model = make_model(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PrunelabError, match=match):
        run(model, sparsity, calib, **options)
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_pattern_and_filters_refused() -> None:
    with pytest.raises(PrunelabError, match="N:M"):
        prune(make_model("llama"), PruneConfig(method="structured", pattern="2:4"))
    with pytest.raises(PrunelabError, match="--target"):
        prune(make_model("llama"), PruneConfig(method="structured", sparsity=0.3, targets=["mlp"]))
    with pytest.raises(PrunelabError, match="uniform per layer"):
        prune(make_model("llama"), PruneConfig(method="structured", sparsity=0.3, allocation="owl"))


# ---- the method contract, structured edition ------------------------------------------------------------------
def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_structured_contract(calib) -> None:
    runs = []
    for _ in range(2):
        model = make_model("llama")
        embed, head = model.get_input_embeddings().weight.clone(), model.get_output_embeddings().weight.clone()
        result = run(model, 0.3, calib, target="mlp+heads", compensate=True)
        assert _hooks(model) == 0
        assert torch.equal(model.get_input_embeddings().weight, embed)
        assert torch.equal(model.get_output_embeddings().weight, head)
        assert sum(r.numel for r in result.layers.values()) == result.extra["block_params_before"] == 2 * BLOCK
        assert result.achieved_sparsity == pytest.approx(result.extra["achieved_reduction"], abs=0.01)
        assert json.dumps(result.to_dict())  # machine-readable
        runs.append(model.state_dict())
    assert runs[0].keys() == runs[1].keys() and all(torch.equal(v, runs[1][k]) for k, v in runs[0].items())


def test_magnitude_needs_no_calibration() -> None:
    from prunelab.pruning import make_pruner

    cfg = PruneConfig(method="structured", sparsity=0.2, options={"importance": "magnitude"})
    assert not make_pruner(cfg).needs_calibration
    assert make_pruner(cfg.model_copy(update={"options": {}})).needs_calibration


def test_lora_recovery_merges_into_plain_weights(calib, tmp_path) -> None:
    pytest.importorskip("peft")
    plain, recovered = make_model("llama"), make_model("llama")
    run(plain, 0.25, calib, target="mlp", importance="magnitude")
    result = run(recovered, 0.25, calib, target="mlp", importance="magnitude", recover_steps=2, recover_lr=1e-2)
    assert result.extra["recovery"]["steps"] == 2 and result.extra["recovery"]["loss_last"] is not None
    assert not [n for n, _ in recovered.named_modules() if "lora" in n.lower()]
    assert plain.state_dict().keys() == recovered.state_dict().keys()
    changed = [k for k, v in plain.state_dict().items() if not torch.equal(v, recovered.state_dict()[k])]
    assert changed and all(".layers." in k for k in changed)  # blocks only; embeddings and lm_head untouched
    assert torch.equal(logits(reload(recovered, tmp_path), calib[:1]), logits(recovered, calib[:1]))


# ---- CLI ---------------------------------------------------------------------------------------------------------
def test_cli_structured_end_to_end(tiny_folder, tmp_path, capsys, no_network) -> None:
    corpus = str(tmp_path / "corpus.txt")
    args = ["-q", "prune", "--model", str(tiny_folder), "--method", "structured", "--target", "mlp+heads"]
    args += ["--sparsity", "0.25", "--importance", "activation", "--compensate", "--calib", corpus]
    args += ["--calib-samples", "2", "--calib-seqlen", "32", "--ppl", corpus, "--seqlen", "32", "--max-windows", "2"]
    args += ["--output", str(tmp_path / "out"), "--json", str(tmp_path / "r.json")]
    code = main(args)
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["params_after"] < report["params_before"] and 0 < report["flops_ratio"] < 1
    assert report["config"]["options"] == {"target": "mlp+heads", "importance": "activation", "compensate": True}
    assert "removed 0.2" in out and "decoder-block params" in out
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert sum(p.numel() for p in reloaded.parameters()) == report["params_after"]


def test_cli_structured_flags_need_structured_method(capsys) -> None:
    code = main(["prune", "--method", "wanda", "--target", "mlp", "--recover-steps", "3"])
    err = capsys.readouterr().err
    assert code == 2 and "--target, --recover-steps only apply to --method structured" in err


@pytest.mark.parametrize(("multiple_of", "width"), [(1, 56), (32, 64), (16, 64), (8, 56), (24, 48)])
def test_multiple_of_rounds_the_kept_mlp_width(multiple_of, width, calib) -> None:
    """0.25 asks to keep 56 of 96 channels; the kept width becomes the nearest multiple of N (ties keep more), and
    the saved config and every layer's matrices agree (llama.cpp quantizes rows in blocks of 32)."""
    model = make_model("llama")
    run(model, 0.25, target="mlp", importance="magnitude", multiple_of=multiple_of)
    assert model.config.intermediate_size == width and width % multiple_of == 0
    for block in find_blocks(model)[1]:
        assert block.mlp.gate_proj.weight.shape[0] == block.mlp.down_proj.weight.shape[1] == width


def test_multiple_of_that_rounds_to_nothing_is_refused(calib) -> None:
    model = make_model("llama")
    with pytest.raises(PrunelabError, match="rounds to none at multiple_of 32"):
        run(model, 0.05, target="mlp", importance="magnitude", multiple_of=32)
    assert model.config.intermediate_size == 96
