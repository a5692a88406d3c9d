"""`prunelab completion bash|zsh`: the script is generated from the parser, so it knows every subcommand, option
and choice; run in a real bash, it completes them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from prunelab.cli import build_parser, main
from prunelab.cli.completion import _flags, _subparsers, script

ROOT = Path(__file__).resolve().parents[1]


def _complete(tmp_path: Path, words: list[str]) -> list[str]:
    """COMPREPLY of the generated bash function for the command line `words` (the last word being completed)."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    path = tmp_path / "prunelab.bash"
    path.write_text(script(build_parser(), "bash"))
    quoted = " ".join(f"'{w}'" for w in words)
    code = (f"source {path}; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; _prunelab; "
            'printf "%s\\n" "${COMPREPLY[@]}"')  # fmt: skip
    out = subprocess.run([bash, "--norc", "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
    return [line for line in out.stdout.splitlines() if line]


def test_bash_script_names_every_subcommand_and_option(capsys) -> None:
    assert main(["completion", "bash"]) == 0
    text = capsys.readouterr().out
    subs = _subparsers(build_parser())
    assert {"prune", "eval", "bench", "export", "sweep", "report", "train-aware", "completion"} <= set(subs)
    for name, sub in subs.items():
        assert f"\n        {name}) opts=" in text, name
        for flag in _flags(sub):
            assert flag in text, (name, flag)
    assert text.rstrip().endswith("complete -o default -F _prunelab prunelab")


def test_bash_completes_subcommands_options_and_choices(tmp_path) -> None:
    assert _complete(tmp_path, ["prunelab", "pru"]) == ["prune"]
    assert set(_complete(tmp_path, ["prunelab", ""])) >= {"prune", "eval", "bench", "completion", "--version"}
    assert _complete(tmp_path, ["prunelab", "prune", "--method", "wa"]) == ["wanda"]
    assert _complete(tmp_path, ["prunelab", "-q", "bench", "--energy", "e"]) == ["estimate"]
    assert "--recover-steps" in _complete(tmp_path, ["prunelab", "prune", "--rec"])
    assert _complete(tmp_path, ["prunelab", "completion", "z"]) == ["zsh"]
    (tmp_path / "model.gguf").write_text("")
    assert _complete(tmp_path, ["prunelab", "export", "mod"]) == ["model.gguf"]  # files elsewhere


def test_zsh_script_uses_bashcompinit_and_no_torch() -> None:
    text = script(build_parser(), "zsh")
    assert text.splitlines()[1] == "autoload -U +X bashcompinit && bashcompinit"
    assert "complete -o default -F _prunelab prunelab" in text
    code = (
        "import sys; from prunelab.cli import main; rc = main(['completion', 'zsh']); "
        "print('HEAVY', [m for m in ('torch', 'transformers') if m in sys.modules], rc, file=sys.stderr)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert "HEAVY [] 0" in proc.stderr and "bashcompinit" in proc.stdout
    assert main(["completion", "fish"]) == 2
