"""`--owl-lambda auto` / `--owl-m auto`: the search scores real prunes on held-out calibration windows only, picks the
minimum, restores the dense model between candidates, and the final prune is the chosen lambda's prune."""

from __future__ import annotations

import json

import pytest
import torch

from prunelab import PruneConfig, prune
from prunelab.cli import main
from prunelab.config.prune import OWL_AUTO_HOLDOUT, OWL_LAMBDA_GRID
from prunelab.errors import PrunelabError
from prunelab.models import prunable_layers, weight_2d
from prunelab.pruning import owl_auto
from prunelab.sweep import expand_grid, parse_sweep_yaml
from tests.conftest import VOCAB


@pytest.fixture
def windows() -> torch.Tensor:
    gen = torch.Generator().manual_seed(2)
    return torch.randint(0, VOCAB, (8, 16), generator=gen)


def planted(model_factory):
    model = model_factory("llama")
    with torch.no_grad():  # outliers in block 1, so lambda changes the allocation
        weight_2d(prunable_layers(model)["model.layers.1.mlp.down_proj"])[:, :3] *= 40
    return model


def test_lambda_auto_picks_the_minimum_held_out_loss(model_factory, windows, monkeypatch) -> None:
    seen: list[torch.Tensor] = []
    real = owl_auto.held_out_nll
    monkeypatch.setattr(owl_auto, "held_out_nll", lambda m, w: seen.append(w) or real(m, w))
    model = planted(model_factory)
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = PruneConfig(method="wanda", sparsity=0.6, allocation="owl", owl_lambda="auto")
    result = prune(model, cfg, calib=windows)
    record = result.extra["owl_auto"]
    losses = {c["owl_lambda"]: c["held_out_nll"] for c in record["candidates"]}
    assert sorted(losses) == [lam for lam in OWL_LAMBDA_GRID if lam < 0.4]  # lambdas 0.4+ leave [0, 1) at 60%
    best = min(losses, key=losses.__getitem__)
    assert record["chosen"] == {"owl_lambda": best, "owl_m": 5.0}
    assert len(set(losses.values())) > 1  # the candidates really differ
    # only the last calibration windows were ever scored: no evaluation text, no fit window
    assert all(torch.equal(w, windows[-OWL_AUTO_HOLDOUT:]) for w in seen)
    assert record["fit_windows"] == 8 - OWL_AUTO_HOLDOUT
    # a recorded loss is that of a prune of the dense model (so the model was restored between candidates)
    again = model_factory("llama")
    again.load_state_dict(dense)
    worst = max(losses, key=losses.__getitem__)
    prune(again, cfg.model_copy(update={"owl_lambda": worst}), calib=windows[:-OWL_AUTO_HOLDOUT])
    assert real(again, windows[-OWL_AUTO_HOLDOUT:]) == pytest.approx(losses[worst], rel=1e-6)
    # the final model is the chosen lambda's prune from all the windows
    again.load_state_dict(dense)
    given = prune(again, cfg.model_copy(update={"owl_lambda": best}), calib=windows)
    assert result.extra["allocation"]["block_sparsity"] == given.extra["allocation"]["block_sparsity"]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))
    assert any("held-out calibration loss" in n for n in result.notes)


def test_both_auto_searches_m_then_lambda(model_factory, windows, monkeypatch) -> None:
    monkeypatch.setattr(owl_auto, "OWL_M_GRID", (3.0, 5.0, 10.0))  # smaller grids: a faster test, same logic
    monkeypatch.setattr(owl_auto, "OWL_LAMBDA_GRID", (0.0, 0.04, 0.08))
    cfg = PruneConfig(method="magnitude", sparsity=0.5, allocation="owl", owl_lambda="auto", owl_m="auto")
    record = prune(planted(model_factory), cfg, calib=windows).extra["owl_auto"]
    tried = [(c["owl_lambda"], c["owl_m"]) for c in record["candidates"]]
    assert tried[:3] == [(0.08, 3.0), (0.08, 5.0), (0.08, 10.0)]
    assert len(tried) == 3 + 2 and len(set(tried)) == len(tried)  # lambda 0.08 at the chosen M is not redone
    chosen = record["chosen"]
    m_losses = {m: c["held_out_nll"] for c in record["candidates"] for lam, m in [(c["owl_lambda"], c["owl_m"])]
                if lam == 0.08}  # fmt: skip
    assert chosen["owl_m"] == min(m_losses, key=m_losses.__getitem__)


def test_auto_needs_more_windows_than_it_holds_out(model_factory, calib) -> None:
    cfg = PruneConfig(method="wanda", sparsity=0.5, allocation="owl", owl_lambda="auto")
    with pytest.raises(PrunelabError, match="calib-samples must exceed"):
        prune(model_factory("llama"), cfg, calib=calib[:OWL_AUTO_HOLDOUT])


def test_auto_with_nm_stays_uniform(model_factory, calib) -> None:
    cfg = PruneConfig(method="wanda", pattern="2:4", allocation="owl", owl_lambda="auto")
    result = prune(model_factory("llama"), cfg, calib=calib)
    assert "owl_auto" not in result.extra and result.extra["allocation"]["block_sparsity"] == [0.5, 0.5]


def test_sweep_takes_auto_and_keeps_old_point_ids() -> None:
    grid = "grid:\n  - {method: wanda, allocation: owl, owl_lambda: [0.04, auto], sparsities: [0.5]}\n"
    points = expand_grid(parse_sweep_yaml(grid))
    assert [p.config["prune"]["owl_lambda"] for p in points[1:]] == [0.04, "auto"]
    # ids pinned before owl_lambda took "auto" and alpha_eps existed: a default point must keep its id
    old = "grid:\n  - {method: wanda, allocation: owl, owl_lambda: [0.04, 0.12], sparsities: [0.5, 0.7]}\n"
    ids = [p.point_id for p in expand_grid(parse_sweep_yaml(old))]
    assert ids == ["8b1c4dbc07edfc90", "0646c90b50e8730a", "ce5995d5550dff15", "a48fc70575ec4e0d", "29ad4bde31670506"]


def test_cli_owl_auto_report(tiny_folder, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(owl_auto, "OWL_LAMBDA_GRID", (0.0, 0.08))
    report = tmp_path / "r.json"
    corpus = str(tmp_path / "corpus.txt")
    argv = ["-q", "prune", "--model", str(tiny_folder), "--method", "wanda", "--sparsity", "0.5", "--allocation",
            "owl", "--owl-lambda", "auto", "--calib", corpus, "--calib-samples", "6", "--calib-seqlen", "16",
            "--ppl", corpus, "--seqlen", "16", "--max-windows", "2", "--no-eval-before",
            "--json", str(report)]  # fmt: skip
    assert main(argv) == 0
    data = json.loads(report.read_text())
    assert data["config"]["owl_lambda"] == "auto"
    assert len(data["owl_auto"]["candidates"]) == 2 and data["owl_auto"]["chosen"]["owl_lambda"] in (0.0, 0.08)
    assert data["allocation"]["scheme"] == "owl" and len(data["allocation"]["block_sparsity"]) == 2
    assert data["allocation"]["owl_lambda"] == data["owl_auto"]["chosen"]["owl_lambda"]
