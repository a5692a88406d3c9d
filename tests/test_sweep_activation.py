"""A sweep grid varies activation sparsity: thresholds calibrated on each pruned model (once per prune config),
perplexity and decode measured with the runtime applied; points without it keep their ids."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch

from prunelab.errors import PrunelabError
from prunelab.sweep import expand_grid, load_sweep_config, parse_sweep_yaml, run_sweep
from prunelab.sweep import point as point_mod
from tests.conftest import CORPUS, make_model, make_tokenizer

GRID = "grid:\n  - method: magnitude\n    sparsities: [0.3]\n    activation_sparsity: [0, 0.4, 0.6]\n"


def test_grid_varies_activation_sparsity_and_keeps_other_ids() -> None:
    points = expand_grid(parse_sweep_yaml(GRID))
    assert [p.runtime.activation_sparsity for p in points] == [0.0, 0.0, 0.4, 0.6]
    assert [p.label for p in points[1:]] == [f"magnitude activation_sparsity={s} 30%" for s in ("0", "0.4", "0.6")]
    plain = expand_grid(parse_sweep_yaml("grid:\n  - method: magnitude\n    sparsities: [0.3]\n"))
    assert points[1].point_id == plain[1].point_id  # level 0 is the old point, same id (resume keeps it)
    assert len({p.point_id for p in points}) == 4
    with pytest.raises(PrunelabError, match=r"activation sparsity must be in \[0, 1\)"):
        expand_grid(parse_sweep_yaml(GRID.replace("0.6", "1.0")))


def test_sweep_point_with_activation_sparsity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_model("llama").save_pretrained(tmp_path / "model")
    make_tokenizer().save_pretrained(tmp_path / "model")
    (tmp_path / "corpus.txt").write_text(CORPUS)
    corpus = tmp_path / "corpus.txt"
    (tmp_path / "s.yaml").write_text(
        f"model: {tmp_path / 'model'}\ncalibration: {{source: {corpus}, samples: 4, seqlen: 32}}\n"
        f"evaluation: {{ppl: [{corpus}], seqlen: 32, max_windows: 4}}\n"
        "measurement: {prompt_len: 8, gen_len: 4, repeats: 1, warmup: 0, threads: 1, energy: estimate, batches: [1], "
        "size: false}\n" + GRID
    )
    calls = []
    real = point_mod.calibrate_thresholds
    monkeypatch.setattr(point_mod, "calibrate_thresholds", lambda *a, **k: calls.append(1) or real(*a, **k))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        outcome = run_sweep(load_sweep_config(tmp_path / "s.yaml"), tmp_path / "out")
    finally:
        torch.set_num_threads(before)
    assert outcome.ran == 4 and not outcome.failed
    assert len(calls) == 1  # one table for the one pruned model, shared by the 0.4 and 0.6 points
    with sqlite3.connect(tmp_path / "out" / "results.sqlite") as conn:
        rows = conn.execute("SELECT label, metrics, details FROM points ORDER BY idx").fetchall()
    metrics = [json.loads(m) for _, m, _ in rows]
    ppl = [m["perplexity"] for m in metrics]
    assert ppl[1] != ppl[2] != ppl[3]  # the level changes quality: the runtime was applied to the evaluation
    assert all("decode_tokens_per_s" in m for m in metrics)
    details = json.loads(rows[2][2])
    assert details["runtime"]["activation_sparsity"] == 0.4 and details["runtime"]["kernels_by_shape"]
    assert "runtime" not in json.loads(rows[1][2])
