"""Progress bars and once-per-run messages: `-q` and a non-terminal stderr turn bars off; a notice is said once."""

from __future__ import annotations

import io
import logging
import sys

import pytest
import torch

from prunelab import _util


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_only_on_a_terminal_and_never_with_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_util.QUIET_ENV, raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file or a pipe
    assert not _util.progress_enabled()
    bar = _util.progress(range(3), desc="x")
    assert bar.disable and list(bar) == [0, 1, 2]
    assert sys.stderr.getvalue() == ""  # no carriage returns, no cursor moves

    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert _util.progress_enabled()
    monkeypatch.setenv(_util.QUIET_ENV, "1")  # what `prunelab -q` sets (Ray tasks get it passed)
    assert not _util.progress_enabled()
    assert _util.progress(range(2), file=terminal).disable


def test_set_quiet_reaches_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_util.QUIET_ENV, raising=False)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    _util.set_quiet(True)
    try:
        assert _util.is_quiet() and sys.modules["os"].environ["TQDM_DISABLE"] == "1"
    finally:
        _util.set_quiet(False)
    assert not _util.is_quiet()


def test_say_once(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("prunelab.test_progress")
    with caplog.at_level(logging.INFO, logger=log.name):
        for i in range(5):
            _util.say_once(log, logging.WARNING, "test_progress.once", "no counter (%d)", i)
    said = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert [r.getMessage() for r in said] == ["no counter (0)"]


def test_energy_estimate_notice_once_per_run(caplog: pytest.LogCaptureFixture, tmp_path) -> None:
    from prunelab.measurement import energy

    _util._said.discard("energy-estimate")
    with caplog.at_level(logging.INFO, logger=energy.log.name):
        for _ in range(5):  # five sweep points
            energy.select_meter("auto", "cpu", powercap_root=tmp_path / "no-powercap", cpu_watts=4.0)
    notices = [r for r in caplog.records if "no energy counter" in r.getMessage() and r.levelno >= logging.INFO]
    assert len(notices) == 1


def _fake_clock(monkeypatch: pytest.MonkeyPatch, step: float) -> None:
    now = [0.0]

    def clock() -> float:
        now[0] += step
        return now[0]

    monkeypatch.setattr(_util, "_clock", clock)


def _plain_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "prunelab.progress"]


def test_plain_progress_lines_in_a_log(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv(_util.QUIET_ENV, raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a CI or cluster job's log
    _fake_clock(monkeypatch, 1.0)  # each update 1 s later: every 10% is 10 s after the last line
    with caplog.at_level(logging.INFO, logger="prunelab.progress"):
        assert list(_util.progress(range(100), desc="prune", unit="block")) == list(range(100))
    lines = _plain_lines(caplog)
    assert len(lines) == 10  # 10%, 20%, ..., 90%, and the last line
    assert lines[0].startswith("prune: 10/100 block (10%)") and "s left" in lines[0]
    assert lines[-1].startswith("prune: 100/100 block (100%)") and "left" not in lines[-1]
    assert all("\r" not in line and "\x1b" not in line for line in lines)
    assert sys.stderr.getvalue() == ""  # through logging (the CLI's handler), never written by the library


def test_plain_progress_is_sparse_for_fast_and_nested_loops(monkeypatch, caplog) -> None:
    monkeypatch.delenv(_util.QUIET_ENV, raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    _fake_clock(monkeypatch, 0.01)  # a fast loop: no line at all
    with caplog.at_level(logging.INFO, logger="prunelab.progress"):
        list(_util.progress(range(50), desc="fast"))
        _fake_clock(monkeypatch, 1.0)
        list(_util.progress(range(50), desc="inner", leave=False))  # nested: silent
        bar = _util.progress(total=20, desc="train", unit="step")  # manual updates, as the training loop does
        for _ in range(20):
            bar.update(1)
            bar.set_postfix(loss="1.234")
        bar.close()
        bar.close()  # a second close says nothing more
    lines = _plain_lines(caplog)
    assert not [line for line in lines if line.startswith(("fast", "inner"))]
    assert lines[-1].startswith("train: 20/20 step (100%)") and lines[-1].endswith("loss 1.234")
    # 10% = 2 updates = 2 s here; a line at least 5 s after the last one: 30%, 60%, 90%, then the end
    assert [line.split(" (")[0] for line in lines] == ["train: 6/20 step", "train: 12/20 step", "train: 18/20 step",
                                                       "train: 20/20 step"]  # fmt: skip
    monkeypatch.setenv(_util.QUIET_ENV, "1")  # -q: nothing, not even plain lines
    assert not isinstance(_util.progress(range(3)), _util.PlainProgress)


def test_long_evaluation_says_its_estimate_first(monkeypatch, caplog) -> None:
    import importlib
    import re

    from tests.conftest import make_model

    ppl = importlib.import_module("prunelab.evaluation.perplexity")  # the package exports a function of that name

    windows = torch.randint(0, 100, (5, 8))
    model = make_model("llama")
    monkeypatch.setattr(ppl, "ESTIMATE_AFTER_S", 0.0)  # every evaluation counts as long here
    with caplog.at_level(logging.INFO, logger=ppl.log.name):
        ppl.perplexity(model, windows, batch_size=2, desc="wikitext2")
    said = [r.getMessage() for r in caplog.records if r.name == ppl.log.name]
    assert len(said) == 1, said  # once, after the first batch
    pattern = r"wikitext2: 5 windows \(3 batches of 2\) x ([0-9.e-]+) s for the first batch = about (\d+) s"
    m = re.match(pattern, said[0])
    assert m and "--max-windows" in said[0]
    assert int(m.group(2)) == round(float(m.group(1)) * 3)  # batches x first batch, not windows x first batch
    caplog.clear()
    monkeypatch.setattr(ppl, "ESTIMATE_AFTER_S", 1e9)  # a short evaluation says nothing
    with caplog.at_level(logging.INFO, logger=ppl.log.name):
        ppl.perplexity(model, windows, batch_size=2)
    assert not [r for r in caplog.records if r.name == ppl.log.name]
