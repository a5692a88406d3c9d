"""The shape of the code base: imports point one way, `--help` imports no torch, every CLI option has choices
where the set is known, a help text that shows its default, and the default of the typed config it is built from."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prunelab.cli import build_parser, main
from prunelab.cli._base import Formatter
from prunelab.config import DTYPES, ENERGY_CHOICES, BenchConfig, PruneConfig
from prunelab.config.methods import IMPORTANCES, TARGETS
from prunelab.config.prune import ALLOCATIONS
from prunelab.config.train_aware import PRESETS
from prunelab.pruning import METHODS

ROOT = Path(__file__).resolve().parents[1]


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _options(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in p._actions for s in a.option_strings if s.startswith("--")}


def test_import_layers_are_kept() -> None:
    """import-linter's layers contract (pyproject.toml): cli -> api -> ... -> config -> errors, no cycles."""
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    proc = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]


@pytest.mark.parametrize("command", [None, *_subparsers()])
def test_help_imports_no_torch(command: str | None) -> None:
    args = ["--help"] if command is None else [command, "--help"]
    code = (
        "import sys, time\n"
        "t = time.perf_counter()\n"
        "from prunelab.cli import main\n"
        f"rc = main({args!r})\n"
        "heavy = [m for m in ('torch', 'transformers', 'lm_eval', 'ray') if m in sys.modules]\n"
        "print('HEAVY', heavy, rc, round(time.perf_counter() - t, 3))\n"
    )
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("HEAVY [] 0"), (line, proc.stderr[-2000:])
    assert time.perf_counter() - started < 20  # generous: a shared machine; typically well under a second


def test_version(capsys) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("prunelab ")


def test_every_option_shows_its_default() -> None:
    formatter = Formatter("prunelab")
    for name, p in {"prunelab": build_parser(), **_subparsers()}.items():
        for flag, action in _options(p).items():
            if flag in ("--help", "--version"):
                continue
            assert "default" in formatter._get_help_string(action), f"{name} {flag}"


def test_known_sets_are_choices() -> None:
    subs = _subparsers()
    expected = {
        ("prune", "--method"): list(METHODS),
        ("prune", "--dtype"): list(DTYPES),
        ("eval", "--dtype"): list(DTYPES),
        ("bench", "--dtype"): list(DTYPES),
        ("prune", "--allocation"): list(ALLOCATIONS),
        ("prune", "--target"): list(TARGETS),
        ("prune", "--importance"): list(IMPORTANCES),
        ("bench", "--energy"): list(ENERGY_CHOICES),
        ("bench", "--sparse-kernels"): ["auto", "off"],
        ("eval", "--sparse-kernels"): ["auto", "off"],
        ("generate", "--sparse-kernels"): ["auto", "off"],
        ("calibrate-activations", "--allocation"): ["uniform", "greedy", "greedy-time"],
        ("train-aware", "--preset"): list(PRESETS),
    }
    for (command, flag), choices in expected.items():
        assert list(_options(subs[command])[flag].choices or []) == choices, (command, flag)


def test_flag_defaults_are_the_config_defaults() -> None:
    subs = _subparsers()
    prune = {a.dest: a.default for a in subs["prune"]._actions}
    for field, info in PruneConfig.model_fields.items():
        if field != "options":
            assert prune[field] == info.get_default(call_default_factory=True), field
    from prunelab.cli.bench import FITTED

    bench = {a.dest: a.default for a in subs["bench"]._actions}
    bench_help = {a.dest: a.help or "" for a in subs["bench"]._actions}
    for field, info in BenchConfig.model_fields.items():
        default = info.get_default(call_default_factory=True)
        if field in FITTED:  # None = "not given": the config's default, shortened to a shorter model context
            shown = " ".join(map(str, default)) if isinstance(default, list) else str(default)
            assert bench[field] is None and f"default: {shown}," in bench_help[field], field
        elif field not in ("seed", "sparse_kernels"):  # bench's --sparse-kernels is RuntimeConfig's (auto|off)
            assert bench[field] == default, field
    from prunelab.config.runtime import ActivationCalibConfig, RuntimeConfig

    for command in ("eval", "generate"):
        actions = {a.dest: a.default for a in subs[command]._actions}
        for field, info in RuntimeConfig.model_fields.items():
            assert actions[field] == info.get_default(), (command, field)
    calibrate = {a.dest: a.default for a in subs["calibrate-activations"]._actions}
    for field, info in ActivationCalibConfig.model_fields.items():
        assert calibrate[field] == info.get_default(call_default_factory=True), field


def test_a_typo_in_a_choice_gets_did_you_mean(capsys) -> None:
    assert main(["prune", "--dtype", "float61"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prunelab: error: unknown dtype 'float61'. Did you mean 'float16'?") and err.count("\n") == 1
