"""A sweep's `quant` axis and `runtime` option: points exported to GGUF in their folder, measured in llama.cpp,
priced in the bytes the runtime loads (`deploy_size_mb`); mask pruning exported to GGUF says it saves nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prunelab.cli import main
from prunelab.errors import PrunelabError
from prunelab.report.metrics import DEFAULT_COSTS, metric
from prunelab.sweep import ResultStore, expand_grid, load_sweep_config, parse_sweep_yaml, run_sweep
from prunelab.sweep.grid import varying_settings
from tests.test_sweep import MEASURE, write_config

GRID = """
grid:
  - method: magnitude
    sparsities: [0.5]
    quant: [f16, q8_0]
    runtime: llamacpp
  - method: structured
    structured_targets: [mlp]
    sparsities: [0.3]
    options: {importance: magnitude, multiple_of: 32}
    quant: q8_0
    runtime: [torch, llamacpp]
"""


def test_quant_axis_expands_with_dense_baselines_and_stable_old_ids() -> None:
    points = expand_grid(parse_sweep_yaml("model: m\n" + GRID))
    assert [p.label for p in points] == [
        "dense", "dense f16 llamacpp", "dense q8_0 llamacpp", "dense q8_0",
        "magnitude 50% f16 llamacpp", "magnitude 50% q8_0 llamacpp",
        "structured (importance=magnitude, multiple_of=32) mlp 30% q8_0",
        "structured (importance=magnitude, multiple_of=32) mlp 30% q8_0 llamacpp",
    ]  # fmt: skip
    assert points[4].deploy is not None and points[4].deploy.quant == "f16" and points[0].deploy is None
    assert {"quant", "runtime"} <= set(varying_settings(points))
    plain = expand_grid(parse_sweep_yaml("model: m\ngrid:\n  - {method: magnitude, sparsities: [0.5]}\n"))
    assert "deploy" not in plain[1].config  # a point without quant keeps the id it had before the axis existed
    also = expand_grid(parse_sweep_yaml("model: m\ngrid:\n  - {method: magnitude, sparsities: [0.5], quant: f16}\n"))
    assert also[2].point_id != plain[1].point_id and also[0].point_id == plain[0].point_id


@pytest.mark.parametrize(
    ("grid", "match"),
    [
        ("  - {method: magnitude, sparsities: [0.5], runtime: llamacpp}\n", "needs? a quant|give the point a quant"),
        ("  - {method: magnitude, sparsities: [0.5], quant: q9}\n", "unknown quant type 'q9'; known: f16"),
        ("  - {method: magnitude, sparsities: [0.5], quant: f16, runtime: onnx}\n", "runtime"),
    ],
)
def test_bad_deploy_settings_are_refused_at_expansion(grid: str, match: str) -> None:
    with pytest.raises(PrunelabError, match=match):
        expand_grid(parse_sweep_yaml("grid:\n" + grid))


def test_plan_shows_the_quant_axis(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "s.yaml"
    cfg.write_text("model: m\n" + GRID)
    assert main(["sweep", str(cfg), "--out", str(tmp_path / "out"), "--plan"]) == 0
    out = capsys.readouterr().out
    assert "quant" in out.splitlines()[0] and "q8_0" in out and "llamacpp" in out


def test_deploy_size_is_the_default_cost_and_compact_says_what_it_needs() -> None:
    assert DEFAULT_COSTS[0] == "deploy_size_mb" and not metric("deploy_size_mb").higher_is_better
    assert metric("deploy_size_mb").role == "cost"
    assert "sparse-aware runtime" in metric("compact_size_mb").label


def test_sweep_exports_and_measures_in_llamacpp(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed: pip install -e '.[llamacpp]'")
    from tests.conftest import CORPUS, make_model, make_tokenizer

    root = tmp_path
    model = make_model("llama")
    model.save_pretrained(root / "model")
    make_tokenizer().save_pretrained(root / "model")
    (root / "corpus.txt").write_text(CORPUS)
    grid = GRID.replace("multiple_of: 32", "multiple_of: 16")  # tiny MLP 96: 30% keeps 64 either way
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = root / "sweep"
        outcome = run_sweep(load_sweep_config(write_config(root, grid=grid, measurement=MEASURE)), out)
    finally:
        torch.set_num_threads(before)
    assert not outcome.failed, outcome.failed
    with ResultStore(out, write=False) as store:
        records = {r.label: r for r in store.records()}
    dense = records["dense"]
    assert dense.metrics["deploy_size_mb"] == pytest.approx(dense.metrics["size_mb"])  # torch: the safetensors
    f16 = records["dense f16 llamacpp"]
    gguf = Path(f16.details["deploy"]["path"])
    assert gguf.is_file() and gguf.parent.name == f16.point_id and gguf.parent.parent == (out / "points").resolve()
    assert f16.metrics["deploy_size_mb"] == pytest.approx(gguf.stat().st_size / 1e6)
    # llama.cpp's f16 perplexity on the same windows is the torch float32 one within 1%
    assert f16.metrics["perplexity"] == pytest.approx(dense.metrics["perplexity"], rel=0.01)
    assert f16.metrics["decode_tokens_per_s"] > 0 and f16.details["latency"]["prefill_ms"]
    mag = records["magnitude 50% f16 llamacpp"]
    assert mag.metrics["deploy_size_mb"] == pytest.approx(f16.metrics["deploy_size_mb"], rel=1e-3)  # zeros stay
    assert any("GGUF stores the zeros dense" in n for n in mag.details["notes"])
    s_torch = next(r for k, r in records.items() if k.startswith("structured") and not k.endswith("llamacpp"))
    s_llama = next(r for k, r in records.items() if k.startswith("structured") and k.endswith("llamacpp"))
    q8 = records["dense q8_0"]
    assert s_torch.metrics["deploy_size_mb"] < q8.metrics["deploy_size_mb"]  # structured pruning does shrink GGUF
    assert s_torch.metrics["deploy_size_mb"] == pytest.approx(s_llama.metrics["deploy_size_mb"])
    assert not any("zeros dense" in n for n in s_torch.details.get("notes", []))
    from prunelab.api import report_job

    report = report_job(str(out), write_html=False)
    assert report["cost"] == "deploy_size_mb", report["cost"]
    assert any("stores their zeros dense" in n and mag.label in n for n in report["notes"])
