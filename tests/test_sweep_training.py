"""Sweep points that train inside their prune (structured `recover_steps`) record that training's energy and
carbon, labelled; points that do not train record none (absent, never 0)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prunelab.report.metrics import metric
from prunelab.sweep import ResultStore, load_sweep_config, run_sweep
from tests.conftest import CORPUS, make_model, make_tokenizer

GRID = """
grid:
  - method: magnitude
    sparsities: [0.3]
  - method: structured
    sparsities: [0.25]
    structured_targets: [mlp]
    options: {importance: magnitude, recover_steps: 1, recover_lr: 0.01}
"""
MEASURE = (
    "measurement: {prompt_len: 8, gen_len: 2, repeats: 1, warmup: 0, threads: 1, energy: estimate, cpu_watts: 10}\n"
)


def test_training_points_record_their_energy_and_carbon(tmp_path: Path) -> None:
    make_model("llama").save_pretrained(tmp_path / "model")
    make_tokenizer().save_pretrained(tmp_path / "model")
    (tmp_path / "corpus.txt").write_text(CORPUS)
    config = tmp_path / "sweep.yaml"
    config.write_text(
        f"name: tiny\nmodel: {tmp_path / 'model'}\n"
        f"calibration: {{source: {tmp_path / 'corpus.txt'}, samples: 4, seqlen: 32}}\n"
        f"evaluation: {{ppl: [{tmp_path / 'corpus.txt'}], seqlen: 32, max_windows: 2}}\n" + MEASURE + GRID
    )
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        outcome = run_sweep(load_sweep_config(config), tmp_path / "out")
    finally:
        torch.set_num_threads(before)
    assert outcome.ran == 3 and not outcome.failed
    records = {r.label: r for r in ResultStore(tmp_path / "out").records()}
    [trained] = [r for label, r in records.items() if label.startswith("structured")]
    assert trained.metrics["training_energy_j"] > 0 and trained.metrics["training_g_co2eq"] > 0
    [span] = trained.details["training"]
    assert span["label"] == "lora-recovery" and span["energy"]["joules"] == trained.metrics["training_energy_j"]
    assert span["energy"]["is_estimate"] is True and span["energy"]["method"] not in (None, "off")
    assert span["carbon"]["grid_intensity"] > 0
    # grams = kWh x grid intensity (g/kWh), computed by hand from the recorded joules
    expected = trained.metrics["training_energy_j"] / 3.6e6 * span["carbon"]["grid_intensity"]
    assert trained.metrics["training_g_co2eq"] == pytest.approx(expected, rel=1e-9)
    for label in ("dense", "magnitude 30%"):
        assert "training_energy_j" not in records[label].metrics and "training" not in records[label].details
    m = metric("training_energy_j")
    assert (m.role, m.higher_is_better, m.unit) == ("cost", False, "J")


@pytest.mark.parametrize("name", ["training_energy_j", "training_g_co2eq"])
def test_training_metrics_are_lower_is_better_costs(name: str) -> None:
    m = metric(name)
    assert m.role == "cost" and m.better(1.0, 2.0)
