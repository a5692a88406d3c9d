"""Structured importance beyond magnitude/activation (Taylor, Minitron) and iterative removal.

Hand-made cases where the scores must disagree: a channel with the largest weights and no effect on the loss
(magnitude keeps it, Taylor drops it) against one with small weights that the loss depends on most; channels
with large activations but a negligible output column (Minitron keeps them, the weighted activation score drops
them). Minitron's aggregate is checked on numbers worked out by hand; iterative removal must equal one-shot at
k = 1, hit the same parameter count at k > 1, re-score between steps and reload with plain transformers.
"""

from __future__ import annotations

import json

import pytest
import torch

from prunelab import PruneConfig, PrunelabError
from prunelab.cli import main
from prunelab.models import find_blocks
from prunelab.pruning import make_pruner
from prunelab.pruning.structured import importance as imp
from prunelab.pruning.structured import surgery, taylor
from tests.conftest import make_model
from tests.test_structured import BLOCK, CHANNEL, _deep, logits, reload, run

DEAD, VITAL = 7, 40  # layer-0 channels of the hand-made Taylor case


def _taylor_case() -> torch.nn.Module:
    """Layer 0: every channel's output column is tiny except VITAL's; DEAD never fires (gate row 0) but owns the
    largest weights. Removing VITAL changes the loss most, removing DEAD not at all."""
    model = make_model("llama")
    mlp = find_blocks(model)[1][0].mlp
    with torch.no_grad():
        mlp.down_proj.weight.mul_(0.01)
        mlp.down_proj.weight[:, VITAL] *= 100
        mlp.gate_proj.weight[DEAD] = 0
        mlp.up_proj.weight[DEAD] *= 10
        mlp.down_proj.weight[:, DEAD] = 1.0
    return model


def _loss(model: torch.nn.Module, ids: torch.Tensor) -> float:
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids).loss)


def test_taylor_ranks_the_unit_the_loss_depends_on_first(calib) -> None:
    model = _taylor_case()
    spec = surgery.block_spec(find_blocks(model)[1][0], model.config)
    base, change = _loss(model, calib), {}
    for c in sorted({DEAD, VITAL, *range(0, 96, 8)}):  # ground truth: the loss change of removing a channel
        w = spec.mlp_out.module.weight
        col = w[:, c].clone()
        with torch.no_grad():
            w[:, c] = 0
        change[c] = abs(_loss(model, calib) - base)
        with torch.no_grad():
            w[:, c] = col
    assert max(change, key=change.__getitem__) == VITAL and change[DEAD] == 0.0
    grads = taylor.gradients(model, calib, batch_size=1)
    for mode in ("element", "vector"):
        scores = taylor.unit_scores(spec, grads, mode)["ch"]
        assert int(scores.argmax()) == VITAL and scores[DEAD] == 0.0
    magnitude = imp.channel_scores(spec, "magnitude")
    assert int(magnitude.argmax()) == DEAD
    # Through the method: 4 channels per layer go; Taylor drops DEAD and keeps VITAL, magnitude keeps DEAD.
    for how, dead_kept in (("taylor", False), ("magnitude", True)):
        pruned = _taylor_case()
        before = find_blocks(pruned)[1][0].mlp.down_proj.weight.clone()
        run(pruned, 4 * CHANNEL / BLOCK, calib, target="mlp", importance=how)
        after = find_blocks(pruned)[1][0].mlp.down_proj.weight
        kept = [c for c in range(96) if any(torch.equal(after[:, k], before[:, c]) for k in range(after.shape[1]))]
        assert (DEAD in kept) == dead_kept and VITAL in kept


def test_taylor_gradient_is_the_full_batch_gradient_and_state_is_restored(calib) -> None:
    """Accumulated over batches of 1 = one backward of the mean loss over all windows; element and vector sums
    match a direct formula; requires_grad, mode and .grad come back as they were."""
    model = make_model("llama")
    model.train()
    model.model.embed_tokens.weight.requires_grad_(False)
    grads = taylor.gradients(model, calib, batch_size=1)
    assert model.training and not model.model.embed_tokens.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert model.model.layers[0].mlp.up_proj.weight.requires_grad
    ref = make_model("llama")
    ref(input_ids=calib, labels=calib).loss.backward()
    mlp, ref_mlp = model.model.layers[1].mlp, ref.model.layers[1].mlp
    for name in ("gate_proj", "up_proj", "down_proj"):
        g, w = grads[id(getattr(mlp, name).weight)], getattr(ref_mlp, name).weight
        assert torch.allclose(g, w.grad, atol=1e-6, rtol=1e-4)
    assert id(model.model.embed_tokens.weight) not in grads  # embeddings and lm_head get no gradient
    spec = surgery.block_spec(model.model.layers[1], model.config)
    s = {n: (getattr(ref_mlp, n).weight.grad * getattr(ref_mlp, n).weight).detach() for n in ("gate_proj", "up_proj")}
    down = (ref_mlp.down_proj.weight.grad * ref_mlp.down_proj.weight).detach()
    element = s["gate_proj"].abs().sum(1) + s["up_proj"].abs().sum(1) + down.abs().sum(0)
    vector = s["gate_proj"].sum(1).abs() + s["up_proj"].sum(1).abs() + down.sum(0).abs()
    assert torch.allclose(taylor.unit_scores(spec, grads, "element")["ch"], element, rtol=1e-4)
    assert torch.allclose(taylor.unit_scores(spec, grads, "vector")["ch"], vector, rtol=1e-4)


def test_taylor_layers_drop_the_identity_layer(calib, tmp_path) -> None:
    model = _deep("llama")
    with torch.no_grad():  # layer 2 adds nothing: no weight of it can move the loss
        find_blocks(model)[1][2].self_attn.o_proj.weight.zero_()
        find_blocks(model)[1][2].mlp.down_proj.weight.zero_()
    result = run(model, 0.25, calib, target="layers", importance="taylor")
    assert result.extra["removed_layers"] == [2] and result.extra["importance"] == "taylor"
    assert torch.equal(logits(reload(model, tmp_path), calib[:1]), logits(model, calib[:1]))


# ---- Minitron --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("seq", "batch", "expected"),
    # windows of 2 tokens, |x| of feature 0: (1, 3) and (2, 2); feature 1: (0, 4) and (0, 0)
    [("mean", "l2", [(2**2 + 2**2) ** 0.5, 2.0]), ("mean", "mean", [2.0, 1.0]),
     ("l2", "l2", [(10 + 8) ** 0.5, 4.0]), ("l2", "mean", [(10**0.5 + 8**0.5) / 2, 2.0])],
)  # fmt: skip
def test_minitron_aggregate_by_hand(seq, batch, expected) -> None:
    x = torch.tensor([[1.0, 0.0], [-3.0, 4.0], [2.0, 0.0], [-2.0, 0.0]])  # (2 windows x 2 tokens, 2 features)
    stat = imp.WindowAbs(2, torch.device("cpu"), seqlen=2, seq=seq, batch=batch)
    stat.add(x[:2])  # one window per batch, then the other: batches must not matter
    stat.add(x[2:])
    assert torch.allclose(stat.aggregate, torch.tensor(expected))
    assert torch.allclose(stat.mean, x.mean(0))  # still a MeanVar: compensation reads it


def test_minitron_head_score_is_the_l2_of_its_columns() -> None:
    model = make_model("llama")  # 4 heads of 16 in 2 KV groups
    spec = surgery.block_spec(find_blocks(model)[1][0], model.config)
    c = torch.arange(64, dtype=torch.float32) / 10
    stat = imp.WindowAbs(64, torch.device("cpu"), seqlen=3, seq="mean", batch="l2")
    stat.add(c.repeat(6, 1))  # two windows of a constant |x_j| = c_j: aggregate sqrt(2) c_j
    q, groups = imp.head_scores(spec, "minitron", stat)
    heads = (2 * c.square()).reshape(4, 16).sum(1).sqrt()
    assert torch.allclose(q, heads) and torch.allclose(groups, heads.square().reshape(2, 2).sum(1).sqrt())


def test_minitron_keeps_loud_channels_the_weighted_score_drops(calib) -> None:
    loud = [5, 30, 60, 88]  # large activations, negligible output column
    kept = {}
    for how in ("minitron", "activation"):
        model = make_model("llama")
        with torch.no_grad():
            for block in find_blocks(model)[1]:
                block.mlp.gate_proj.weight[loud] *= 3
                block.mlp.up_proj.weight[loud] *= 3
                block.mlp.down_proj.weight[:, loud] *= 1e-3
        ref = model.model.layers[0].mlp.up_proj.weight.clone()
        run(model, 4 * CHANNEL / BLOCK, calib, target="mlp", importance=how)
        up = model.model.layers[0].mlp.up_proj.weight
        kept[how] = [c for c in loud if any(torch.equal(up[k], ref[c]) for k in range(up.shape[0]))]
    assert kept == {"minitron": loud, "activation": []}


# ---- iterative -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("importance", ["taylor", "minitron", "activation"])
def test_iterative_one_step_is_one_shot(importance, calib) -> None:
    a, b = make_model("llama"), make_model("llama")
    run(a, 0.3, calib, target="mlp+heads", importance=importance)
    result = run(b, 0.3, calib, target="mlp+heads", importance=importance, iterative_steps=1)
    assert result.extra["iterative"] is None
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


@pytest.mark.parametrize(
    ("arch", "target", "importance", "compensate", "steps"),
    [("llama", "mlp+heads", "taylor", False, 3), ("llama", "mlp+heads", "minitron", True, 3),
     ("qwen2", "heads", "taylor", False, 1),  # one KV group to remove: one step, however many asked
     ("phi3", "mlp", "taylor", False, 3), ("gpt2", "mlp", "minitron", False, 3)],
)  # fmt: skip
def test_iterative_steps_reach_the_one_shot_size_and_reload(arch, target, importance, compensate, steps, calib,
                                                            tmp_path) -> None:  # fmt: skip
    one, many = make_model(arch), make_model(arch)
    opts = dict(target=target, importance=importance, compensate=compensate)
    first = run(one, 0.3, calib, **opts)
    result = run(many, 0.3, calib, **opts, iterative_steps=3)
    assert result.extra["iterative"] == {"asked": 3, "steps": steps, "between_steps": []}
    assert result.extra["params_after"] == first.extra["params_after"] < first.extra["params_before"]
    assert result.extra["structure_after"] == first.extra["structure_after"]
    assert torch.equal(logits(reload(many, tmp_path), calib), logits(many, calib))


def test_iterative_layers_keep_original_indices(calib) -> None:
    model = _deep("llama")
    with torch.no_grad():
        find_blocks(model)[1][2].mlp.down_proj.weight.zero_()
        find_blocks(model)[1][2].self_attn.o_proj.weight.zero_()
    result = run(model, 0.5, calib, target="layers", iterative_steps=2)
    assert len(result.extra["removed_layers"]) == 2 and 2 in result.extra["removed_layers"]
    assert model.config.num_hidden_layers == 2 and result.extra["iterative"]["steps"] == 2


def test_between_steps_seam_runs_and_the_next_step_rescores(calib) -> None:
    """The hook runs k - 1 times on the partly pruned model; what it changes, the next step's scores see: it
    silences the strongest remaining channel of layer 0, and magnitude re-scoring removes exactly that one."""
    cfg = PruneConfig(method="structured", sparsity=8 * CHANNEL / BLOCK,
                      options={"target": "mlp", "importance": "magnitude", "iterative_steps": 2})  # fmt: skip
    pruner, model, seen = make_pruner(cfg), make_model("llama"), []
    victim: dict[str, torch.Tensor] = {}

    def hook(m: torch.nn.Module, windows: torch.Tensor | None, step: int) -> dict[str, int]:
        mlp = find_blocks(m)[1][0].mlp
        seen.append((step, mlp.up_proj.weight.shape[0]))
        c = int(imp.channel_scores(surgery.block_spec(find_blocks(m)[1][0], m.config), "magnitude").argmax())
        with torch.no_grad():
            for w in (mlp.gate_proj.weight[c], mlp.up_proj.weight[c], mlp.down_proj.weight[:, c]):
                w.mul_(1e-3)
        victim["up"] = mlp.up_proj.weight[c].clone()
        return {"silenced": c}

    pruner.between_steps = hook
    result = pruner.prune(model, calib)
    assert seen == [(0, 92)] and result.extra["iterative"]["between_steps"][0]["silenced"] >= 0
    up = find_blocks(model)[1][0].mlp.up_proj.weight
    assert up.shape[0] == 88 and not any(torch.equal(row, victim["up"]) for row in up)


# ---- options and CLI ---------------------------------------------------------------------------------------------
def test_minitron_does_not_score_layers(calib) -> None:
    with pytest.raises(PrunelabError, match="layers use block-influence or taylor"):
        run(make_model("llama"), 0.25, calib, target="layers", importance="minitron")


def test_cli_option_importance_taylor(tiny_folder, tmp_path, capsys, no_network) -> None:
    corpus = str(tmp_path / "corpus.txt")
    args = ["-q", "prune", "--model", str(tiny_folder), "--method", "structured", "--target", "mlp+heads"]
    args += ["--sparsity", "0.25", "--option", "importance=taylor", "--option", "iterative_steps=2"]
    args += ["--calib", corpus, "--calib-samples", "2", "--calib-seqlen", "32", "--ppl", corpus, "--seqlen", "32"]
    args += ["--max-windows", "2", "--output", str(tmp_path / "out"), "--json", str(tmp_path / "r.json")]
    code = main(args)
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["config"]["options"] == {"importance": "taylor", "iterative_steps": 2, "target": "mlp+heads"}
    code = main(["prune", "--model", str(tiny_folder), "--method", "structured", "--option", "importance=fisher"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("prunelab: ") and len(err.strip().splitlines()) == 1
