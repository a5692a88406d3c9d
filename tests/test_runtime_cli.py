"""Run-time sparsity from the command line: calibrate-activations, eval/bench/generate --activation-sparsity, the
compact sparse folder through load_sparse, and the one-line bad-input errors (subprocesses, exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from prunelab.cli import main
from prunelab.runtime import TABLE_FILE, ThresholdTable, save_sparse

CAL = ["--calib-samples", "4", "--calib-seqlen", "16", "--levels", "0", "0.2", "0.5"]
EVAL = ["--seqlen", "16", "--max-windows", "4"]


def cli(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "prunelab.cli", "-q", *args], capture_output=True, text=True)


@pytest.fixture
def calibrated(tiny_folder: Path, tmp_path: Path) -> Path:
    out = tmp_path / "calibrated"
    corpus = str(tmp_path / "corpus.txt")
    code = main(["-q", "calibrate-activations", "--model", str(tiny_folder), "--calib", corpus, *CAL,
                 "--output", str(out), "--json", str(tmp_path / "cal.json")])  # fmt: skip
    assert code == 0
    return out


def test_calibrate_writes_plain_folder_plus_table(calibrated: Path, tiny_folder: Path, tmp_path: Path) -> None:
    table = ThresholdTable.load(calibrated)
    assert table.levels == [0.0, 0.2, 0.5] and table.allocation == "uniform"
    assert (calibrated / TABLE_FILE).is_file()
    plain = AutoModelForCausalLM.from_pretrained(calibrated)  # plain transformers: the dense model
    orig = AutoModelForCausalLM.from_pretrained(tiny_folder)
    for (k, a), (_, b) in zip(plain.state_dict().items(), orig.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    report = json.loads((tmp_path / "cal.json").read_text())
    assert report["grid"] == "0, 0.2, 0.5" and report["layers"] == sum(len(g.layers) for g in table.groups)


def test_greedy_time_records_costs_and_a_cost_table_repeats_the_allocation(tiny_folder: Path, tmp_path: Path) -> None:
    corpus = str(tmp_path / "corpus.txt")
    search = ["--allocation", "greedy-time", "--greedy-step", "0.1", "--greedy-tokens", "32", "--greedy-lazy"]
    first, second = tmp_path / "t1", tmp_path / "t2"
    assert main(["-q", "calibrate-activations", "--model", str(tiny_folder), "--calib", corpus, *CAL, *search,
                 "--output", str(first)]) == 0  # fmt: skip
    table = ThresholdTable.load(first)
    cal = table.calibration
    assert table.allocation == "greedy-time" and cal["greedy_tokens"] == 32 and cal["greedy_step"] == 0.1
    assert cal["greedy_lazy"] is True and cal["kernel_costs"]["dense"]
    assert main(["-q", "calibrate-activations", "--model", str(tiny_folder), "--calib", corpus, *CAL, *search,
                 "--cost-table", str(first), "--output", str(second)]) == 0  # fmt: skip
    again = ThresholdTable.load(second)
    assert again.sparsity == table.sparsity and again.thresholds == table.thresholds
    proc = cli(["calibrate-activations", "--model", str(tiny_folder), "--cost-table", str(first), "--output",
                str(tmp_path / "t3")])  # fmt: skip
    assert proc.returncode == 2 and "for allocation greedy-time, not uniform" in proc.stderr


def test_eval_and_generate_at_a_level(calibrated: Path, tmp_path: Path, capsys) -> None:
    corpus = str(tmp_path / "corpus.txt")
    ppl = {}
    for level in ("0", "0.5"):
        j = tmp_path / f"eval{level}.json"
        assert main(["-q", "eval", "--model", str(calibrated), "--ppl", corpus, *EVAL,
                     "--activation-sparsity", level, "--json", str(j)]) == 0  # fmt: skip
        r = json.loads(j.read_text())
        ppl[level] = r["perplexity"][corpus]
        assert r["runtime"]["activation_sparsity"] == float(level)
    assert ppl["0"] != ppl["0.5"]  # prefill "threshold": the full-sequence perplexity sees the level
    capsys.readouterr()
    j = tmp_path / "gen.json"
    assert main(["-q", "generate", "--model", str(calibrated), "--prompt", "the", "--max-new-tokens", "5",
                 "--compare-sparsity", "0.5", "--json", str(j)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "@ activation sparsity 0]" in out and "@ activation sparsity 0.5]" in out
    runs = json.loads(j.read_text())["runs"]
    assert [r["runtime"]["activation_sparsity"] for r in runs] == [0.0, 0.5]
    assert all(r["tokens"] == 5 for r in runs)
    j2 = tmp_path / "gen2.json"
    assert main(["-q", "generate", "--model", str(calibrated), "--prompt", "the", "--max-new-tokens", "3",
                 "--compare", str(tmp_path / "tiny-llama"), "--json", str(j2)]) == 0  # fmt: skip
    runs = json.loads(j2.read_text())["runs"]
    assert [r["model"] for r in runs] == [str(calibrated), str(tmp_path / "tiny-llama")]
    assert runs[0]["text"] == runs[1]["text"]  # same weights, level 0: the same greedy continuation


def test_bench_json_has_level_and_kernels(calibrated: Path, tmp_path: Path) -> None:
    j = tmp_path / "bench.json"
    args = ["-q", "bench", "--model", str(calibrated), "--prompt-len", "8", "--gen-len", "3", "--batch", "1",
            "--repeats", "1", "--warmup", "0", "--threads", "1", "--energy", "off", "--no-size",
            "--activation-sparsity", "0.25", "--sparse-kernels", "off", "--json", str(j)]  # fmt: skip
    assert main(args) == 0
    r = json.loads(j.read_text())
    assert "median" in r["latency"]["decode_tokens_per_s"]
    assert r["activation_sparsity"] == 0.25
    assert r["kernels_by_shape"] and all(set(k.values()) == {"dense"} for k in r["kernels_by_shape"].values())


def test_compact_folder_loads_through_load_sparse(tiny_folder: Path, tmp_path: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_folder)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "layers" in name:
                p[p.abs() < p.abs().flatten().kthvalue(int(p.numel() * 0.8)).values] = 0.0
    dense, compact = tmp_path / "dense", tmp_path / "compact"
    model.save_pretrained(dense)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_folder)
    tok.save_pretrained(dense)
    save_sparse(model, compact, tokenizer=tok)
    corpus = str(tmp_path / "corpus.txt")
    ppl = {}
    for name, folder in (("dense", dense), ("compact", compact)):
        j = tmp_path / f"{name}.json"
        assert main(["-q", "eval", "--model", str(folder), "--ppl", corpus, *EVAL, "--json", str(j)]) == 0
        r = json.loads(j.read_text())
        ppl[name] = r["perplexity"][corpus]
        if name == "compact":
            assert r["runtime"]["weight_runtime"]["csr_layers"] + r["runtime"]["weight_runtime"]["dense_layers"] > 0
    assert ppl["compact"] == pytest.approx(ppl["dense"], rel=1e-5)


def test_bad_inputs_one_line_exit_2(calibrated: Path, tiny_folder: Path, tmp_path: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_folder)
    compact = tmp_path / "compact"
    save_sparse(model, compact)
    cfg = json.loads((compact / "config.json").read_text())
    cfg["intermediate_size"] += 8
    (compact / "config.json").write_text(json.dumps(cfg))
    cases = [
        (["eval", "--model", str(calibrated), "--activation-sparsity", "1.0"], "must be in [0, 1)"),
        (["bench", "--model", str(calibrated), "--activation-sparsity", "-0.1"], "must be in [0, 1)"),
        (["eval", "--model", str(calibrated), "--activation-sparsity", "0.7"],
         "above the calibrated grid (0, 0.2, 0.5)"),
        (["generate", "--model", str(tiny_folder), "--prompt", "x", "--activation-sparsity", "0.5"],
         "prunelab calibrate-activations"),
        (["eval", "--model", str(compact), "--seqlen", "16"], "does not match its config"),
        (["calibrate-activations", "--model", str(tiny_folder), "--output", str(calibrated)], "already exists"),
        (["calibrate-activations", "--model", str(tiny_folder), "--levels", "0.5", "0.99", "--output",
          str(tmp_path / "x")], "levels must lie in [0, 0.95]"),
    ]  # fmt: skip
    for args, needle in cases:
        proc = cli(args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.startswith("prunelab: error:") and proc.stderr.count("\n") == 1, proc.stderr
        assert needle in proc.stderr, proc.stderr


def test_load_sparse_is_a_lazy_top_level_name() -> None:
    import prunelab
    from prunelab.runtime import load_sparse

    assert prunelab.load_sparse is load_sparse and "load_sparse" in prunelab.__all__
