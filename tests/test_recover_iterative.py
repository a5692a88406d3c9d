"""Iterative structured pruning with recovery between its steps (`prune --option iterative_steps=k --recover`):
k-1 short runs between the steps plus the final one share the token budget, each is recorded, and the folder
loads with plain transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from prunelab.api.recover import split_budget
from prunelab.config.recover import RecoverConfig
from tests.conftest import CORPUS, make_model, make_tokenizer


def test_split_budget_shares_the_tokens_and_keeps_the_total() -> None:
    cfg = RecoverConfig(tokens=100)
    final, between = split_budget(cfg, 3)
    assert between is not None and between.tokens == 33 and final.tokens == 34  # 2 x 33 + 34 = 100
    assert split_budget(cfg, 1) == (cfg, None)


@pytest.mark.parametrize("mode", ["distill", "lora"])
def test_prune_iterative_recovers_between_steps(tmp_path: Path, mode: str) -> None:
    from prunelab.cli import main

    dense = tmp_path / "dense"
    make_model("llama").save_pretrained(dense)
    make_tokenizer().save_pretrained(dense)
    (tmp_path / "c.txt").write_text(CORPUS)
    out = tmp_path / "p"
    # 3 steps, 96 tokens, windows of 16 x batch 2 = 32 tokens a step: 1 optimizer step in each of the 3 runs
    argv = ["prune", "--model", str(dense), "--method", "structured", "--sparsity", "0.3", "--target", "mlp",
            "--option", "iterative_steps=3", "--calib", str(tmp_path / "c.txt"), "--calib-samples", "2",
            "--calib-seqlen", "16", "--seqlen", "16", "--recover", mode, "--recover-tokens", "96",
            "--recover-data", str(tmp_path / "c.txt"), "--recover-seqlen", "16", "--recover-batch-size", "2",
            "--output", str(out)]  # fmt: skip
    assert main(argv) == 0
    meta = json.loads((out / "prunelab.json").read_text())
    between = meta["iterative"]["between_steps"]  # the structured record, per step
    assert [r["after_step"] for r in between] == [1, 2]
    assert all(r["mode"] == mode and r["tokens_trained"] == 32 and r["steps"] == 1 for r in between)
    assert [r["seed"] for r in between] == [1, 2]  # each its own data order
    rec = meta["recovery"]
    assert rec["tokens_trained"] == 32 and rec["between_steps_tokens"] == 64  # the whole budget, 96, spent once
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.intermediate_size < make_model("llama").config.intermediate_size
    assert not any("lora" in n for n, _ in model.named_parameters())
