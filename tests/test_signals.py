"""Interrupts: SIGINT or SIGTERM mid-run or mid-save leaves no partial output and no temp files, keeps an existing
output when --overwrite was given, and exits 130 / 143 with one `prunelab:` line.

A driver script runs the real CLI on a tiny saved model with `save_pretrained` (mid-save) or the pruning step
(mid-run) slowed down, and touches a file when it reaches that point, so the signal lands in the window every
time. Mode `cli` calls `prunelab.cli.main` (which installs the handlers); mode `wired` does by hand what main
does (`_WIRED_MAIN`), so a regression in main shows as `cli` failing while `wired` passes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prunelab import _util
from tests.conftest import CORPUS, make_model, make_tokenizer

SRC = Path(__file__).resolve().parents[1] / "src"

_DRIVER = """
import os, sys, time
from pathlib import Path

import transformers

from prunelab import _util, api, cli
from prunelab.errors import PrunelabError

ready, pause, mode = Path(os.environ["READY"]), os.environ["PAUSE"], os.environ["MODE"]


def wait_here():
    ready.write_text("now")
    time.sleep(120)


original_save = transformers.PreTrainedModel.save_pretrained


def slow_save(self, *args, **kwargs):
    result = original_save(self, *args, **kwargs)  # the temp folder now holds real files
    if pause == "save":
        wait_here()
    return result


transformers.PreTrainedModel.save_pretrained = slow_save
if pause == "run":
    import importlib

    # where api.prune_job looks the one prune path up (the package attribute `api.prune` is the function itself)
    prune_job_module = importlib.import_module("prunelab.api.prune")

    original_prune = prune_job_module.prune

    def slow_prune(*args, **kwargs):
        wait_here()
        return original_prune(*args, **kwargs)

    prune_job_module.prune = slow_prune

if mode == "cli":
    sys.exit(cli.main(sys.argv[1:]))
# _WIRED_MAIN: what prunelab.cli.main must do (install the handlers first, report interrupts by signal)
_util.install_signal_handlers()
args = cli.build_parser().parse_args(sys.argv[1:])
try:
    code = cli._run(args)
except PrunelabError as e:
    sys.stderr.write(f"prunelab: error: {e}\\n")
    code = 2
except KeyboardInterrupt as e:  # SIGINT, and SIGTERM as _util.Terminated
    sys.stderr.write(_util.interrupt_message(e) + "\\n")
    code = _util.interrupt_exit_code(e)
sys.exit(code)
"""

SIGNALS = {"SIGINT": (signal.SIGINT, 130), "SIGTERM": (signal.SIGTERM, 143)}
# `cli` only: main is wired now, and each case is a ~10 s process; add "wired" to tell a regression in main from
# one in _util (the wired driver does by hand what main does)
MODES = ("cli",)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("signals")
    folder = base / "tiny"
    make_model("llama").save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    (base / "corpus.txt").write_text(CORPUS)
    (base / "driver.py").write_text(_DRIVER)
    return folder


def _interrupt(tiny: Path, out: Path, pause: str, mode: str, sig: int, overwrite: bool) -> subprocess.CompletedProcess:
    ready = out.parent / f"ready-{out.name}"
    argv = ["prune", "--model", str(tiny), "--method", "magnitude", "--sparsity", "0.5", "--ppl"]
    argv += [str(tiny.parent / "corpus.txt"), "--seqlen", "16", "--max-windows", "1", "--output", str(out)]
    env = {**os.environ, "PYTHONPATH": str(SRC), "READY": str(ready), "PAUSE": pause, "MODE": mode}
    proc = subprocess.Popen(
        [sys.executable, str(tiny.parent / "driver.py"), "-q", *argv, *(["--overwrite"] if overwrite else [])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 240
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate()
            raise AssertionError(f"the driver never reached the {pause} window:\n{err[-3000:]}")
        time.sleep(0.05)
    ready.unlink()
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _leftovers(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}."))


def _cases() -> list:
    out = []
    for name in SIGNALS:
        for pause in ("run", "save"):
            for mode in MODES:
                out.append(pytest.param(name, pause, mode, id=f"{name}-mid-{pause}-{mode}"))
    return out


@pytest.mark.parametrize(("name", "pause", "mode"), _cases())
def test_interrupt_leaves_no_partial_output(tiny: Path, tmp_path: Path, name: str, pause: str, mode: str) -> None:
    sig, code = SIGNALS[name]
    out = tmp_path / "pruned"
    result = _interrupt(tiny, out, pause, mode, sig, overwrite=False)
    lines = [line for line in result.stderr.splitlines() if line.startswith("prunelab:")]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == code, result.stderr[-3000:]
    assert len(lines) == 1 and "interrupt" in lines[0], result.stderr[-3000:]
    assert not out.exists()
    assert _leftovers(tmp_path, "pruned") == []


@pytest.mark.parametrize(
    ("name", "mode"),
    [(name, mode) for name in SIGNALS for mode in MODES],
)
def test_interrupt_mid_save_keeps_existing_output_with_overwrite(tiny: Path, tmp_path: Path, name: str, mode: str):
    sig, code = SIGNALS[name]
    out = tmp_path / "pruned"
    out.mkdir()
    (out / "marker.txt").write_text("the old output")
    result = _interrupt(tiny, out, "save", mode, sig, overwrite=True)
    assert result.returncode == code, result.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["marker.txt"]  # untouched, not half-replaced
    assert (out / "marker.txt").read_text() == "the old output"
    assert _leftovers(tmp_path, "pruned") == []


# ---------------------------------------------------------------- in-process: the mechanism itself


def test_overwrite_of_a_file_leaves_no_old_copy(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.write_text("a file where the folder goes")
    with _util.atomic_dir(target, overwrite=True) as tmp:
        (tmp / "weights").write_text("new")
    assert (target / "weights").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no .out.old-PID


def test_signal_between_the_two_renames_waits_until_the_swap_is_done(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "v").write_text("old")
    real_replace = os.replace
    calls: list[str] = []

    def replace_then_signal(src, dst):
        real_replace(src, dst)
        calls.append(Path(dst).name)
        if len(calls) == 1:  # the old output was just moved aside: the worst moment for a SIGTERM
            os.kill(os.getpid(), signal.SIGTERM)

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    _util.install_signal_handlers()
    monkeypatch.setattr(_util.os, "replace", replace_then_signal)
    try:
        with pytest.raises(_util.Terminated), _util.atomic_dir(target, overwrite=True) as tmp:
            (tmp / "v").write_text("new")
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    assert len(calls) == 2  # both renames ran before the signal was raised
    assert (target / "v").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failure_after_moving_the_old_output_aside_puts_it_back(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "v").write_text("old")
    real_replace = os.replace
    calls: list[str] = []

    def fail_second(src, dst):
        calls.append(str(dst))
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(_util.os, "replace", fail_second)
    with pytest.raises(_util.WriteError, match="No space left"), _util.atomic_dir(target, overwrite=True) as tmp:
        (tmp / "v").write_text("new")
    assert (target / "v").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_exit_codes_and_registry_cleanup(tmp_path: Path) -> None:
    assert _util.interrupt_exit_code(_util.Terminated()) == 143
    assert _util.interrupt_exit_code(KeyboardInterrupt()) == 130
    assert "SIGTERM" in _util.interrupt_message(_util.Terminated())
    stray = _util.register_temp(tmp_path / ".x.123.tmp")
    stray.mkdir()
    (stray / "f").write_text("partial")
    _util.cleanup_temp_paths()
    assert not stray.exists()


FAILING_JOB = ["prune", "--model", "/nonexistent/dir", "--method", "wanda", "--out", "/nonexistent/out"]


@pytest.mark.parametrize("argv", [["completion", "bash"], FAILING_JOB])
def test_main_in_process_gives_back_the_callers_signal_handlers(argv: list[str], capsys) -> None:
    """main() installs its SIGTERM/SIGINT handlers for the job only: a caller that runs it in-process (a test, a
    notebook, another tool) finds its own handlers afterwards, whether the job succeeded or failed."""
    from prunelab import cli

    def mine(signum, frame):  # a caller's handler, distinct from every default
        raise AssertionError("not called")

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for s in previous:
            signal.signal(s, mine)
        cli.main(argv)
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGINT) is mine
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
