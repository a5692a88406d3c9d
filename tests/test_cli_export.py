"""`prunelab export` and `--runtime llamacpp` from the command line: bad input gives one line and exit 2 with
nothing written (real subprocesses), and the round trip export -> llama.cpp perplexity matches torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prunelab.cli import main
from tests.conftest import make_model

ROOT = Path(__file__).resolve().parents[1]


def cli(args: list[str], extra_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    paths = [str(extra_path)] if extra_path else []
    env["PYTHONPATH"] = os.pathsep.join([*paths, str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "prunelab.cli", "-q", *args], capture_output=True, text=True, env=env)


def assert_one_line(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("prunelab: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err


def written(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


def test_unsupported_architecture_names_the_supported_ones(tmp_path, tokenizer, out_dir) -> None:
    folder = tmp_path / "gpt2"
    make_model("gpt2").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    proc = cli(["export", str(folder), "--gguf", str(out_dir / "m.gguf")])
    assert_one_line(proc, "architecture 'gpt2'", "llama", "mistral", "qwen2")
    assert written(out_dir) == []


def test_unknown_quant_lists_the_known_ones(tiny_folder, out_dir) -> None:
    proc = cli(["export", str(tiny_folder), "--gguf", str(out_dir / "m.gguf"), "--quant", "q4_x"])
    assert_one_line(proc, "q4_x", "f16", "q8_0", "q4_k_m")
    assert written(out_dir) == []


def test_quant_needing_the_extra_says_which_extra(tiny_folder, out_dir, tmp_path) -> None:
    fake = tmp_path / "no_llama"
    (fake / "llama_cpp").mkdir(parents=True)
    (fake / "llama_cpp" / "__init__.py").write_text("raise ImportError('simulated: llama-cpp-python absent')\n")
    proc = cli(["export", str(tiny_folder), "--gguf", str(out_dir / "m.gguf"), "--quant", "q4_k_m"], fake)
    assert_one_line(proc, "q4_k_m", ".[llamacpp]")
    assert written(out_dir) == []


def test_existing_output_without_overwrite(tiny_folder, out_dir) -> None:
    target = out_dir / "m.gguf"
    target.write_bytes(b"keep me")
    proc = cli(["export", "--model", str(tiny_folder), "--gguf", str(target)])
    assert_one_line(proc, "already exists", "--overwrite")
    assert target.read_bytes() == b"keep me" and written(out_dir) == ["m.gguf"]


def test_existing_modelfile_is_not_clobbered(tiny_folder, out_dir) -> None:
    (out_dir / "Modelfile").write_text("mine")
    proc = cli(["export", str(tiny_folder), "--gguf", str(out_dir / "m.gguf")])
    assert_one_line(proc, "Modelfile", "--overwrite")
    assert written(out_dir) == ["Modelfile"] and (out_dir / "Modelfile").read_text() == "mine"


def test_folder_without_weights(tmp_path, out_dir) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    make_model("llama").config.save_pretrained(folder)
    proc = cli(["export", str(folder), "--gguf", str(out_dir / "m.gguf")])
    assert_one_line(proc, "no weights")
    assert written(out_dir) == []


@pytest.mark.parametrize("kind", ["gguf", "safetensors"])
def test_corrupt_input_file(kind, tiny_folder, tmp_path, out_dir) -> None:
    if kind == "gguf":
        bad = tmp_path / "bad.gguf"
        bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 40)
    else:
        bad = tiny_folder
        (bad / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    proc = cli(["export", str(bad), "--gguf", str(out_dir / "m.gguf")])
    assert_one_line(proc, str(bad.name))
    assert written(out_dir) == []


def test_llamacpp_runtime_refuses_a_non_gguf_model(tiny_folder) -> None:
    proc = cli(["eval", "--model", str(tiny_folder), "--runtime", "llamacpp", "--ppl", "shakespeare"])
    assert_one_line(proc, "prunelab export")


def test_export_then_llamacpp_perplexity_matches_torch(tiny_folder, tmp_path, capsys) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed: pip install -e '.[llamacpp]'")
    corpus = tmp_path / "corpus.txt"
    out = tmp_path / "deploy" / "tiny.gguf"
    assert main(["-q", "export", str(tiny_folder), "--gguf", str(out), "--json", str(tmp_path / "x.json")]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"wrote {out}:") and "f16" in line and "arch llama" in line and len(line.splitlines()) == 1
    assert f"\nFROM ./{out.name}\n" in (out.parent / "Modelfile").read_text()
    common = ["--ppl", str(corpus), "--seqlen", "64", "--max-windows", "4"]
    assert main(["-q", "eval", "--model", str(tiny_folder), *common, "--json", str(tmp_path / "t.json")]) == 0
    assert main(["-q", "eval", "--model", str(out), "--runtime", "llamacpp", *common,
                 "--json", str(tmp_path / "l.json")]) == 0  # fmt: skip
    torch_r, llama_r = (json.loads((tmp_path / f).read_text()) for f in ("t.json", "l.json"))
    key = str(corpus)
    assert torch_r["perplexity_eval"][key]["windows"] == llama_r["perplexity_eval"][key]["windows"] == 4
    ratio = llama_r["perplexity"][key] / torch_r["perplexity"][key]
    assert abs(ratio - 1) < 0.01, (torch_r["perplexity"], llama_r["perplexity"])
    assert llama_r["runtime"] == "llamacpp" and llama_r["file_bytes"] == out.stat().st_size


def test_bench_llamacpp_from_the_cli_has_the_torch_shape(tiny_folder, tmp_path, capsys) -> None:
    """A smoke run (tiny sizes; not a timing benchmark): same top-level JSON keys as the torch bench."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed: pip install -e '.[llamacpp]'")
    out = tmp_path / "tiny.gguf"
    assert main(["-q", "export", str(tiny_folder), "--gguf", str(out), "--no-modelfile"]) == 0
    assert not (tmp_path / "Modelfile").exists()
    small = ["--prompt-len", "8", "--gen-len", "4", "--batch", "1", "--repeats", "1", "--warmup", "0",
             "--energy", "off", "--threads", "1"]  # fmt: skip
    assert main(["-q", "bench", "--model", str(out), "--runtime", "llamacpp", *small,
                 "--json", str(tmp_path / "l.json")]) == 0  # fmt: skip
    torch_json = str(tmp_path / "t.json")
    assert main(["-q", "bench", "--model", str(tiny_folder), *small, "--no-size", "--json", torch_json]) == 0
    printed = capsys.readouterr().out
    assert "GGUF file" in printed and "decode:" in printed
    llama_r, torch_r = (json.loads((tmp_path / f).read_text()) for f in ("l.json", "t.json"))
    assert set(torch_r) - set(llama_r) == {"sparse_kernels"}
    assert set(llama_r["latency"]) == set(torch_r["latency"])


def test_export_and_runtime_flags_offer_their_known_sets() -> None:
    import argparse

    from prunelab.cli import build_parser
    from prunelab.config.export import QUANT_TYPES
    from prunelab.config.models import RUNTIMES

    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices

    def choices(command: str, flag: str) -> list[str]:
        action = next(a for a in subs[command]._actions if flag in a.option_strings)
        return list(action.choices or [])

    assert choices("export", "--quant") == list(QUANT_TYPES)
    assert choices("eval", "--runtime") == choices("bench", "--runtime") == list(RUNTIMES) == ["torch", "llamacpp"]
