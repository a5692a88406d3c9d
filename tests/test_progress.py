"""Progress bars and once-per-run messages: `-q` and a non-terminal stderr turn bars off; a notice is said once."""

from __future__ import annotations

import io
import logging
import sys

import pytest

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
