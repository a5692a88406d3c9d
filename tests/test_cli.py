"""The command line: contract names, JSON fields, one-line errors with exit code 2, atomic outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from prunelab.cli import main
from prunelab.models import prunable_layers, weight_2d


def run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_methods_lists_registry(capsys) -> None:
    code, out, _ = run(["methods"], capsys)
    assert code == 0
    from prunelab import METHODS

    assert [line.split()[0] for line in out.splitlines()] == list(METHODS)
    assert [line.split()[0] for line in out.splitlines()][:3] == ["magnitude", "wanda", "sparsegpt"]


def test_prune_tiny_end_to_end(tiny_folder, tmp_path, capsys, no_network) -> None:
    out_dir = tmp_path / "pruned"
    corpus = str(tmp_path / "corpus.txt")
    code, out, err = run(
        [
            "-q",
            "prune",
            "--model",
            str(tiny_folder),
            "--method",
            "sparsegpt",
            "--pattern",
            "2:4",
            "--calib",
            corpus,
            "--calib-samples",
            "4",
            "--calib-seqlen",
            "32",
            "--ppl",
            corpus,
            "--seqlen",
            "32",
            "--output",
            str(out_dir),
            "--json",
            str(tmp_path / "r.json"),
        ],
        capsys,
    )
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    for key in ("method", "sparsity", "pattern", "achieved_sparsity", "prune_seconds", "peak_rss_mb"):
        assert key in report
    assert report["pattern"] == "2:4" and report["achieved_sparsity"] == 0.5
    assert corpus in report["perplexity"] and corpus in report["perplexity_before"]
    change = report["perplexity_change"][corpus]
    assert change == pytest.approx(report["perplexity"][corpus] / report["perplexity_before"][corpus] - 1)
    assert "perplexity [" in out
    meta = json.loads((out_dir / "prunelab.json").read_text())
    assert meta["base_model"] == str(tiny_folder)
    assert set(meta["layers"]) == set(prunable_layers(AutoModelForCausalLM.from_pretrained(tiny_folder)))
    reloaded = AutoModelForCausalLM.from_pretrained(out_dir)
    for m in prunable_layers(reloaded).values():
        assert float((weight_2d(m) == 0).float().mean()) == 0.5


def test_eval_json(tiny_folder, tmp_path, capsys) -> None:
    corpus = str(tmp_path / "corpus.txt")
    code, _, err = run(
        [
            "-q",
            "eval",
            "--model",
            str(tiny_folder),
            "--ppl",
            corpus,
            "--seqlen",
            "16",
            "--max-windows",
            "3",
            "--json",
            str(tmp_path / "e.json"),
        ],
        capsys,
    )
    assert code == 0, err
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["perplexity"][corpus] > 1
    assert report["tokens"] == 48 and report["seconds"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["prune", "--method", "wandaa"], "Did you mean 'wanda'"),
        (["prune", "--sparsity", "1.2"], "sparsity must be in (0, 1)"),
        (["prune", "--sparsity", "0"], "sparsity must be in (0, 1)"),
        (["prune", "--pattern", "2:x"], "malformed pattern"),
        (["prune", "--pattern", "2:4", "--sparsity", "0.6"], "implies sparsity 0.5"),
        (["prune", "--model", "./no/such/model"], "does not exist"),
        (["prune", "--option", "nokey"], "KEY=VALUE"),
        (["eval", "--model", "MODEL", "--ppl", "/no/such/file.txt"], "neither a known name"),
        (["eval", "--model", "MODEL", "--seqlen", "100000"], "beyond the model's context"),
        (["prune", "--model", "MODEL", "--output", "EXISTING"], "already exists"),
    ],
)
def test_bad_input_one_line_exit_2(args, message, tiny_folder, tmp_path, capsys) -> None:
    existing = tmp_path / "existing"
    existing.mkdir()
    args = [str(tiny_folder) if a == "MODEL" else str(existing) if a == "EXISTING" else a for a in args]
    code, _, err = run(args, capsys)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_unreadable_data_file(tiny_folder, tmp_path, capsys) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\xfa")
    code, _, err = run(["eval", "--model", str(tiny_folder), "--ppl", str(bad), "--seqlen", "16"], capsys)
    assert code == 2 and "cannot read" in err


def test_console_script_exit_code(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "prunelab.cli", "prune", "--method", "nope"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("prunelab: error: unknown method 'nope'")
    assert torch is not None
