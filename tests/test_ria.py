"""RIA: hand-computed scores, the alpha exponent, N:M channel permutation kept exact, and the CLI contract."""

from __future__ import annotations

import copy
import json
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from prunelab import PruneConfig
from prunelab.calibration import SquaredNorm
from prunelab.cli import main
from prunelab.errors import PrunelabError
from prunelab.models import find_blocks, prunable_layers, weight_2d
from prunelab.pruning import make_pruner
from prunelab.pruning.masks import Pattern, is_valid_nm, nm_mask
from prunelab.pruning.permute import (
    AttentionMirror,
    MlpMirror,
    channel_permutation,
    deal_channels,
    find_mirror,
    kept_score,
)
from prunelab.pruning.ria import ria_scores

# Column sums of |W| (over outputs) 11, 16, 12, 5; row sums (over inputs) 23, 21.
W = torch.tensor([[3.0, -9.0, 7.0, 4.0], [8.0, 7.0, -5.0, 1.0]])
# Row 0 by hand: 3/11 + 3/23 = 102/253, 9/16 + 9/23 = 351/368, 7/12 + 7/23 = 245/276, 4/5 + 4/23 = 112/115.
ROW0 = [102 / 253, 351 / 368, 245 / 276, 112 / 115]


def _stat(sq: list[float]) -> SquaredNorm:
    stat = SquaredNorm(len(sq), torch.device("cpu"))
    stat.add(torch.tensor([sq]).sqrt())  # one token whose squared values are `sq`: ||X_j||^2 = sq_j
    return stat


def _mask(options: dict, sq: list[float], pattern: str = "unstructured") -> torch.Tensor:
    sparsity = 0.5 if pattern == "unstructured" else None
    pruner = make_pruner(PruneConfig(method="ria", sparsity=sparsity, pattern=pattern, options=options))
    return pruner.prune_weight("layer", W.clone(), _stat(sq), 0.5)


def test_scores_by_hand_rank_unlike_wanda_or_one_normalisation() -> None:
    scores = ria_scores(W, torch.ones(4), 0.5)
    assert torch.allclose(scores[0], torch.tensor(ROW0))
    assert scores[1, 3].item() == pytest.approx(1 / 5 + 1 / 21)
    mask = _mask({}, [1.0] * 4)
    assert mask[0].tolist() == [True, False, True, False]  # RIA drops inputs 0 and 2 of row 0
    # Wanda (|W|, equal norms) would drop 0 and 3; the column term alone 0 and 1; the row term alone ranks as |W|.
    assert torch.equal(nm_mask(W.abs()[:1], Pattern(2, 4))[0], torch.tensor([True, False, False, True]))
    col_only = W.abs() / W.abs().sum(dim=0)
    assert torch.equal(nm_mask(col_only[:1], Pattern(2, 4))[0], torch.tensor([True, True, False, False]))
    assert mask[1].tolist() == [False, False, True, True]


def test_alpha_is_the_exponent_of_the_activation_norm() -> None:
    sq = [16.0, 1.0, 1.0, 1.0]  # ||X_0|| = 4: x2 at alpha 0.5, x4 at alpha 1
    assert ria_scores(W, _stat(sq).norm, 0.5)[0, 0].item() == pytest.approx(2 * ROW0[0])
    assert ria_scores(W, _stat(sq).norm, 1.0)[0, 0].item() == pytest.approx(4 * ROW0[0])
    # 2 x 0.403 < 0.888 keeps input 0 out of row 0's top two at alpha 0.5; 4 x 0.403 > 0.954 brings it in at 1.
    assert _mask({}, sq)[0].tolist() == [True, False, True, False]
    assert _mask({"alpha": 1.0}, sq)[0].tolist() == [False, True, True, False]
    assert _mask({"alpha": 0.0}, sq)[0].tolist() == _mask({}, [1.0] * 4)[0].tolist()


def test_scope_layer_ranks_the_whole_matrix() -> None:
    # The four lowest scores of the matrix: 26/105 (1,3), 102/253 (0,0), 55/84 (1,2), 37/48 (1,1).
    mask = _mask({"scope": "layer"}, [1.0] * 4)
    assert mask.tolist() == [[True, False, False, False], [False, True, True, True]]
    cfg = PruneConfig(method="ria", sparsity=0.5, options={"scope": "layer"})
    assert make_pruner(cfg).caps.comparison_group == "layer"


def test_nm_mask_and_bad_options() -> None:
    mask = _mask({}, [1.0] * 4, pattern="2:4")
    assert (mask.sum(dim=1) == 2).all()
    for bad in ({"alpha": -1}, {"permute": "maybe"}, {"beta": 1}):
        with pytest.raises(PrunelabError):
            make_pruner(PruneConfig(method="ria", pattern="2:4", options=bad))


def test_deal_channels_by_hand() -> None:
    # Column sums 0..7 ascending: quantiles [0,1] [2,3] [4,5] [6,7]; every other one walked backwards.
    scores = torch.arange(8.0).unsqueeze(0)
    assert deal_channels(scores, 4).tolist() == [0, 3, 4, 7, 1, 2, 5, 6]


def test_permutation_keeps_more_score_and_lsa_never_less() -> None:
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(16, 32, generator=gen) ** 4  # heavy-tailed, like real scores
    scores[:, :8] *= 5  # important channels packed together: plain 2:4 loses many of them
    pattern = Pattern(2, 4)
    plain = kept_score(scores, pattern)
    order = channel_permutation(scores, pattern)
    assert order is not None and sorted(order.tolist()) == list(range(32))
    lsa = channel_permutation(scores, pattern, lsa=True)
    assert lsa is not None and sorted(lsa.tolist()) == list(range(32))
    assert plain < kept_score(scores[:, order], pattern) <= kept_score(scores[:, lsa], pattern)
    assert channel_permutation(torch.ones(2, 8), pattern) is None  # nothing to gain: keep the stored order


def test_lsa_without_scipy_is_one_clear_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "scipy.optimize", None)
    with pytest.raises(PrunelabError, match="scipy"):
        channel_permutation(torch.rand(4, 8), Pattern(2, 4), lsa=True)


def _block_of(model: torch.nn.Module, name: str) -> torch.nn.Module:
    prefix, blocks = find_blocks(model)
    return blocks[int(name[len(prefix) + 1 :].split(".")[0])]


def _masked_pair(model_factory, layer: str, kind: type) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(model with `layer` permuted + mirrored and masked 2:4 in the permuted order, original model with that mask
    put back in the original column order)."""
    model = model_factory("llama")
    reference = copy.deepcopy(model)
    module, ref_module = model.get_submodule(layer), reference.get_submodule(layer)
    mirror = find_mirror(_block_of(model, layer), module)
    assert isinstance(mirror, kind)
    scores = torch.rand(module.weight.shape, generator=torch.Generator().manual_seed(0)) ** 4
    order = mirror.choose(scores, Pattern(2, 4), lsa=False)
    assert order is not None and sorted(order.tolist()) == list(range(scores.shape[1]))
    permuted_mask = nm_mask(scores[:, order], Pattern(2, 4))
    with torch.no_grad():
        mirror.apply(order)
        module.weight.masked_fill_(permuted_mask, 0.0)
        mask = torch.empty_like(permuted_mask)
        mask[:, order] = permuted_mask
        ref_module.weight.masked_fill_(mask, 0.0)
    assert is_valid_nm(module.weight, Pattern(2, 4)) and not is_valid_nm(ref_module.weight, Pattern(2, 4))
    return model, reference


@pytest.mark.parametrize(("layer", "kind"), [("model.layers.0.mlp.down_proj", MlpMirror),
                                             ("model.layers.1.self_attn.o_proj", AttentionMirror)])  # fmt: skip
def test_mirrored_permutation_computes_what_the_unpermuted_mask_would(layer, kind, model_factory, calib) -> None:
    """A layer masked N:M in a permuted order, its producers permuted alike (gate/up rows; the value rows of each
    GQA group for o_proj), is the same model as the original with that mask in the original column order."""
    model, reference = _masked_pair(model_factory, layer, kind)
    with torch.no_grad():
        assert torch.allclose(model(input_ids=calib).logits, reference(input_ids=calib).logits, atol=1e-5)


def test_attention_order_stays_within_heads_and_gqa_groups(model_factory) -> None:
    model = model_factory("llama")  # 4 query heads of 16, 2 key/value heads: heads 0-1 share group 0
    block = find_blocks(model)[1][0]
    mirror = find_mirror(block, block.self_attn.o_proj)
    assert find_mirror(block, block.mlp.up_proj) is None and find_mirror(block, block.self_attn.v_proj) is None
    scores = torch.rand(64, 4, 16, generator=torch.Generator().manual_seed(2))
    scores[:, :, :4] *= 5  # each head's important channels packed into its first N:M group
    order = mirror.choose(scores.reshape(64, 64), Pattern(2, 4), False)
    heads = order.view(4, 16)
    assert ((heads // 16) == torch.arange(4).unsqueeze(1)).all()  # never leaves its head
    assert torch.equal(heads[0] % 16, heads[1] % 16) and torch.equal(heads[2] % 16, heads[3] % 16)


ARCH_PERMUTE = [("llama", True), ("qwen2", True), ("phi3", True), ("opt", True), ("gpt2", True), ("llama", "lsa")]


@pytest.mark.parametrize(("arch", "permute"), ARCH_PERMUTE)
def test_pruned_model_is_nm_as_stored_and_only_masked(arch, permute, model_factory, calib, tmp_path) -> None:
    """End to end: every stored layer is 2:4, and undoing the recorded permutations gives the dense model times a
    mask with the same outputs (so the permutation changed nothing but where the mask may fall)."""
    dense = model_factory(arch)
    model = copy.deepcopy(dense)
    pruner = make_pruner(PruneConfig(method="ria", pattern="2:4", options={"permute": permute}))
    result = pruner.prune(model, calib)
    assert pruner.permutations and result.extra["ria_permuted_layers"] == list(pruner.permutations)
    for name, module in prunable_layers(model).items():
        assert is_valid_nm(weight_2d(module), Pattern(2, 4)), name
    model.save_pretrained(tmp_path / "m")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()  # plain transformers, same function
    kinds = {type(find_mirror(_block_of(model, n), model.get_submodule(n))) for n in pruner.permutations}
    assert kinds == {MlpMirror, AttentionMirror}
    unpermuted = copy.deepcopy(model)
    for name, order in pruner.permutations.items():
        find_mirror(_block_of(unpermuted, name), unpermuted.get_submodule(name)).apply(order.argsort())
    dense_state = dense.state_dict()
    for key, t in unpermuted.state_dict().items():  # weights and biases: only zeros were introduced
        assert torch.equal(t[t != 0], dense_state[key][t != 0]), key
    plain_nm = [is_valid_nm(weight_2d(m), Pattern(2, 4)) for m in prunable_layers(unpermuted).values()]
    assert not all(plain_nm)  # the permutation moved the mask off the plain groups somewhere
    with torch.no_grad():
        out = model(input_ids=calib).logits
        assert torch.allclose(out, unpermuted(input_ids=calib).logits, atol=1e-4)
        assert torch.allclose(out, reloaded(input_ids=calib).logits, atol=1e-5)


def test_permute_false_is_plain_nm(model_factory, calib) -> None:
    model = model_factory("llama")
    pruner = make_pruner(PruneConfig(method="ria", pattern="2:4", options={"permute": False}))
    result = pruner.prune(model, calib)
    assert not pruner.permutations and "ria_permuted_layers" not in result.extra


def _cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("pattern", "permute"), [("2:4", "true"), ("2:4", "false"), ("unstructured", "true")])
def test_cli_prune_ria(pattern, permute, tiny_folder, tmp_path, capsys) -> None:
    corpus = str(tmp_path / "corpus.txt")
    out_dir = tmp_path / "pruned"
    args = ["-q", "prune", "--model", str(tiny_folder), "--method", "ria", "--pattern", pattern,
            "--option", "alpha=0.5", "--option", f"permute={permute}", "--calib", corpus, "--calib-samples", "4",
            "--calib-seqlen", "32", "--ppl", corpus, "--no-eval-before", "--seqlen", "32", "--max-windows", "2",
            "--output", str(out_dir),
            "--json", str(tmp_path / "r.json")]  # fmt: skip
    code, err = _cli(args, capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["method"] == "ria" and report["achieved_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert report["config"]["options"] == {"alpha": 0.5, "permute": permute == "true"}
    assert bool(report.get("ria_permuted_layers")) == (pattern == "2:4" and permute == "true")
    reloaded = AutoModelForCausalLM.from_pretrained(out_dir)
    if pattern == "2:4":
        assert all(is_valid_nm(weight_2d(m), Pattern(2, 4)) for m in prunable_layers(reloaded).values())


def test_cli_bad_ria_option_is_one_line_exit_2(tiny_folder, tmp_path, capsys) -> None:
    out_dir = tmp_path / "pruned"
    code, err = _cli(["prune", "--model", str(tiny_folder), "--method", "ria", "--option", "alpha=-1",
                      "--output", str(out_dir)], capsys)  # fmt: skip
    assert code == 2 and err.startswith("prunelab: ") and len(err.strip().splitlines()) == 1
    assert not out_dir.exists()


def test_streaming_permutes_like_in_memory(tmp_path, tokenizer) -> None:
    """Block-by-block streaming sees the same loaded block the permutation is mirrored on: bit-identical output."""
    from prunelab import load_model, prune
    from prunelab.streaming import prune_streaming
    from tests.conftest import make_model

    (tmp_path / "corpus.txt").write_text(" ".join(["To be, or not to be, that is the question."] * 200))
    make_model("llama").save_pretrained(tmp_path / "src", max_shard_size="60KB")
    tokenizer.save_pretrained(tmp_path / "src")
    cfg = PruneConfig(method="ria", pattern="2:4", calib=str(tmp_path / "corpus.txt"), calib_samples=4,
                      calib_seqlen=32)  # fmt: skip
    lm = load_model(str(tmp_path / "src"))
    expected = prune(lm.model, cfg, tokenizer=lm.tokenizer)
    report = prune_streaming(str(tmp_path / "src"), cfg, tmp_path / "out")
    assert expected.extra["ria_permuted_layers"] and report["ria_permuted_layers"] == expected.extra[
        "ria_permuted_layers"]  # fmt: skip
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    got, want = reloaded.state_dict(), lm.model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in want.items())


def test_statistic_follows_the_permutation() -> None:
    from prunelab.pruning.permute import permute_statistic

    stat = _stat([1.0, 4.0, 9.0, 16.0])
    moved = permute_statistic(stat, torch.tensor([3, 0, 2, 1]))
    assert moved.norm.tolist() == [4.0, 1.0, 3.0, 2.0] and stat.norm.tolist() == [1.0, 2.0, 3.0, 4.0]
    stat.extra = torch.zeros(4, 3)  # a field the permutation does not know: refused, never left unpermuted
    with pytest.raises(TypeError, match="extra"):
        permute_statistic(stat, torch.arange(4))
    # (in, in) matrices (X^T X, E[xx^T]) move on both axes; a StatisticSet part by part, shared parts stay shared
    from prunelab.calibration import StatisticSet

    full = StatisticSet(["hessian", "moments"], 3, torch.device("cpu"))
    x = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 5.0]])
    full.add(x)
    order = torch.tensor([2, 0, 1])
    moved_set = permute_statistic(full, order)
    assert moved_set["hessian"] is moved_set["moments"]
    reference = StatisticSet(["hessian", "moments"], 3, torch.device("cpu"))
    reference.add(x[:, order])
    for key, value in vars(reference["moments"]).items():
        if isinstance(value, torch.Tensor):
            assert torch.allclose(getattr(moved_set["moments"], key), value), key
