"""Small helpers shared across modules: atomic writes, interrupts, writability checks, peak memory, environment.

Atomic writes matter because a run can be killed at any moment: a user must find either the old result or the new
one, never half of one. Everything is written to a temporary sibling and renamed into place.

Interrupts: `install_signal_handlers()` (called by the CLI's main, which gives the caller's handlers back when it
returns) turns SIGTERM into `Terminated`, a `KeyboardInterrupt` subclass, so `kill PID` unwinds the stack like
Ctrl-C does and every `except BaseException` cleanup below runs; both exit codes follow the shell's 128 + signal
number (130 for SIGINT, 143 for SIGTERM, see `interrupt_exit_code`). Temporary paths are also kept in a registry
that is emptied at exit (`cleanup_temp_paths`), for paths whose own cleanup could not run. The two renames that
swap a new output for an old one are a critical section: a signal arriving there is held until both are done, so a
user never finds the old output moved aside and the new one not yet in place.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import logging
import os
import platform
import re
import resource
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from types import FrameType
from typing import Any

from prunelab.errors import PrunelabError

# ---------------------------------------------------------------- interrupts and temporary paths


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt (so the same cleanups run)."""

    signal_name = "SIGTERM"
    exit_code = 128 + signal.SIGTERM


_TEMP_PATHS: set[Path] = set()
_critical_depth = 0
_pending: list[int] = []
_atexit_registered = False


def interrupt_exit_code(error: BaseException) -> int:
    """130 for Ctrl-C (SIGINT), 143 for SIGTERM: the codes a shell reports for a process ended by that signal."""
    return error.exit_code if isinstance(error, Terminated) else 128 + signal.SIGINT


def interrupt_message(error: BaseException) -> str:
    """The one line the CLI prints for an interrupt: what stays behind on purpose (`keep_on_interrupt`), if
    anything, else the promise that nothing partial does."""
    name = "SIGTERM" if isinstance(error, Terminated) else "SIGINT"
    kept = getattr(error, "prunelab_kept", None)
    return f"prunelab: interrupted ({name}); {kept or 'no partial output was left'}"


def keep_on_interrupt(error: BaseException, note: str) -> None:
    """Mark an interrupt as leaving something on purpose (e.g. a resumable recovery checkpoint), described by
    `note`, so the CLI's last line says so instead of 'no partial output was left'."""
    error.prunelab_kept = note  # type: ignore[attr-defined]


def _raise_for(signum: int) -> None:
    if signum == signal.SIGTERM:
        raise Terminated()
    raise KeyboardInterrupt()


def _handler(signum: int, frame: FrameType | None) -> None:
    if _critical_depth > 0:
        _pending.append(signum)  # raised when the critical section ends
        return
    _raise_for(signum)


def install_signal_handlers() -> dict[int, Any]:
    """SIGTERM -> `Terminated`, SIGINT -> KeyboardInterrupt, both held back inside `critical_section()`; temp
    paths left registered are removed at exit. Main thread only (signal.signal's rule); a no-op elsewhere.
    Returns the handlers it replaced, for `restore_signal_handlers` (so a `main()` run inside another program,
    or a test, leaves that program's own handling of SIGTERM as it found it)."""
    global _atexit_registered
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous: dict[int, Any] = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    if not _atexit_registered:  # main() may run many times in one process (tests)
        atexit.register(cleanup_temp_paths)
        _atexit_registered = True
    return previous


def restore_signal_handlers(previous: dict[int, Any]) -> None:
    """Put back what `install_signal_handlers` replaced (a no-op for its empty answer off the main thread)."""
    for signum, handler in previous.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


@contextlib.contextmanager
def critical_section() -> Iterator[None]:
    """Hold SIGINT/SIGTERM (when our handlers are installed) until the block is done, then raise."""
    global _critical_depth
    _critical_depth += 1
    try:
        yield
    finally:
        _critical_depth -= 1
        if _critical_depth == 0 and _pending:
            signum = _pending[0]
            _pending.clear()
            _raise_for(signum)


def register_temp(path: Path) -> Path:
    """Remember a temporary path so it is removed at exit if its owner's cleanup never ran."""
    _TEMP_PATHS.add(Path(path))
    return Path(path)


def unregister_temp(path: Path) -> None:
    _TEMP_PATHS.discard(Path(path))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def cleanup_temp_paths() -> None:
    """Remove every registered temporary path (at exit; safe to call more than once)."""
    for path in list(_TEMP_PATHS):
        _remove(path)
        _TEMP_PATHS.discard(path)


# ---------------------------------------------------------------- progress bars and once-per-run messages

QUIET_ENV = "PRUNELAB_QUIET"  # "1": no progress bars (the CLI's -q); in the environment so Ray workers see it too
_said: set[str] = set()


def set_quiet(quiet: bool) -> None:
    """Record the CLI's -q for every progress bar of this process and of the workers it starts. TQDM_DISABLE
    also silences the bars of libraries (lm-eval, transformers) when set before tqdm is first imported."""
    if quiet:
        os.environ[QUIET_ENV] = "1"
        os.environ.setdefault("TQDM_DISABLE", "1")
    else:
        os.environ.pop(QUIET_ENV, None)


def is_quiet() -> bool:
    return os.environ.get(QUIET_ENV) == "1"


def progress_enabled() -> bool:
    """Bars are for a person watching a terminal: none with -q, and none when stderr is a log file or a pipe,
    where tqdm's carriage returns and cursor moves (nested bars) turn into hundreds of garbled lines. A notebook's
    widget bar (tqdm.auto outside a terminal) writes no escape codes and stays on."""
    if is_quiet():
        return False
    from tqdm.auto import tqdm

    if any(c.__module__ == "tqdm.notebook" for c in tqdm.__mro__):  # tqdm.auto chose the notebook widget
        return True
    stream = sys.stderr
    return stream is not None and hasattr(stream, "isatty") and stream.isatty()


def progress(iterable: Any = None, **kwargs: Any) -> Any:
    """`tqdm(iterable, **kwargs)` when `progress_enabled()`: the one way library code makes a bar. Without a
    terminal (a CI or cluster job's log) and without -q, plain log lines instead (`PlainProgress`)."""
    from tqdm.auto import tqdm

    if "disable" not in kwargs and not progress_enabled() and not is_quiet():
        return PlainProgress(iterable, **kwargs)
    kwargs.setdefault("disable", not progress_enabled())
    return tqdm(iterable, **kwargs)


_progress_log = logging.getLogger("prunelab.progress")


class PlainProgress:
    """Progress for a log file: one INFO line per 10% done, at most one per `min_interval` seconds, and a last
    line when the loop took that long; no carriage returns or escape codes. Nested inner loops (`leave=False`,
    e.g. the perplexity windows inside a prune+eval run) stay silent, as their bars would vanish on a terminal.
    The subset of tqdm's interface library code uses: iterate, update, set_postfix, close, `with`."""

    disable = True  # no bar is drawn
    min_interval = 5.0

    def __init__(self, iterable: Any = None, total: int | None = None, desc: str = "", unit: str = "it",
                 initial: int = 0, leave: bool = True, **_: Any) -> None:  # fmt: skip
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.unit, self.n, self.silent = total, desc, unit, initial, not leave
        self.start = self._last = _clock()
        self._logged_tenth = initial * 10 // total if total else 0
        self._postfix = ""
        self._lines = 0

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_postfix(self, **values: Any) -> None:
        self._postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.silent or not self.total:
            return
        now = _clock()
        tenth = self.n * 10 // self.total
        if tenth > self._logged_tenth and self.n < self.total:
            self._logged_tenth = tenth  # a boundary reached too soon after the last line is skipped
            if now - self._last >= self.min_interval:
                self._say(now)

    def close(self) -> None:
        if self.silent or self.total is None or self.n < self.total or self._logged_tenth > 10:
            return
        self._logged_tenth = 11  # once
        now = _clock()
        if self._lines or now - self.start >= self.min_interval:
            self._say(now)

    def _say(self, now: float) -> None:
        elapsed = now - self.start
        done = f"{self.n}/{self.total} {self.unit} ({self.n / self.total:.0%})" if self.total else f"{self.n}"
        left = elapsed / self.n * (self.total - self.n) if self.total and self.n else 0.0
        eta = f", ~{left:.0f} s left" if self.total and self.n < self.total else ""
        extra = f", {self._postfix}" if self._postfix else ""
        _progress_log.info("%s: %s, %.0f s%s%s", self.desc or "progress", done, elapsed, eta, extra)
        self._last = now
        self._lines += 1


def _clock() -> float:
    return time.monotonic()


def say_once(logger: logging.Logger, level: int, key: str, msg: str, *args: Any) -> None:
    """Log `msg` the first time `key` comes up in this process (e.g. the missing energy counter, which every
    sweep point would otherwise repeat); later calls log at DEBUG."""
    if key in _said:
        logger.debug(msg, *args)
        return
    _said.add(key)
    logger.log(level, msg, *args)


# ---------------------------------------------------------------- metered spans of work

# label, device -> a context manager yielding the dict that receives the span's energy and carbon at exit
SpanMeter = Callable[[str, str], contextlib.AbstractContextManager[dict[str, Any]]]
_SPAN_METER: ContextVar[SpanMeter | None] = ContextVar("prunelab_span_meter", default=None)


@contextlib.contextmanager
def work_span(label: str, device: str = "cpu") -> Iterator[dict[str, Any]]:
    """Mark a block of work (a training loop, a recovery fine-tune) whose energy and carbon the caller's caller may
    want. Layers that may not import `measurement` (training, pruning) mark spans; the api installs the meter
    (`measurement.footprint.metering`). Yields a dict that is filled at exit with `label`, `seconds`, `energy` and
    `carbon` when a meter is installed, and stays empty when none is."""
    meter = _SPAN_METER.get()
    if meter is None:
        yield {}
        return
    with meter(label, device) as record:
        yield record


@contextlib.contextmanager
def span_meter(meter: SpanMeter) -> Iterator[None]:
    """Meter every `work_span` entered inside this block (in this thread or context) with `meter`."""
    token = _SPAN_METER.set(meter)
    try:
        yield
    finally:
        _SPAN_METER.reset(token)


# ---------------------------------------------------------------- output paths


def check_writable(path: str | os.PathLike[str] | None, kind: str = "file", what: str = "output") -> None:
    """Fail now, in one line, if `path` could not be written later (`kind`: "file" or "folder").

    Checked: the path is not a folder when a file is wanted (nor a file when a folder is), no parent is a file,
    and the nearest existing parent folder accepts a new entry (a probe file is created and removed: permission
    bits alone do not tell, e.g. for root or read-only mounts). Nothing is left behind.
    """
    if path is None:
        return
    target = Path(path).expanduser()
    if kind == "file" and target.is_dir():
        raise PrunelabError(f"{what} '{path}' is a folder; give a file name")
    if kind == "folder" and target.exists() and not target.is_dir():
        raise PrunelabError(f"{what} '{path}' is an existing file, not a folder")
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise PrunelabError(f"{what} '{path}': '{parent}' is a file, so nothing can be created under it")
    try:
        fd, probe = tempfile.mkstemp(prefix=".prunelab-write-check.", dir=parent)
    except OSError as e:
        reason = "read-only file system" if e.errno == errno.EROFS else (e.strerror or type(e).__name__)
        raise PrunelabError(f"{what} '{path}' cannot be written: '{parent}': {reason}") from None
    os.close(fd)
    os.unlink(probe)


def check_memory(need_bytes: float, what: str, device: str = "cpu") -> None:
    """Refuse work whose memory need (a lower bound the caller computes) exceeds what is available now."""
    if device.startswith("cuda"):
        import torch

        index = int(device.partition(":")[2] or 0)
        available = float(torch.cuda.mem_get_info(index)[0])
        where = f"GPU memory on {device}"
    else:
        import psutil

        available = float(psutil.virtual_memory().available)
        where = "memory"
    if need_bytes > available:
        raise PrunelabError(
            f"{what} needs at least {need_bytes / 2**30:,.1f} GiB, but only {available / 2**30:,.1f} GiB of {where} "
            "is available; use smaller settings"
        )


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (measured by the kernel, not computed)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / 1024 / 1024 if sys.platform == "darwin" else peak / 1024


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def default_file_mode(fd: int) -> None:
    """mkstemp creates files readable by the owner only; a result file should get the usual umask permissions
    (0644 under the common umask 022), as a plain `open` or `save_pretrained` would give it."""
    os.fchmod(fd, 0o666 & ~_umask())


def default_tree_modes(root: str | os.PathLike[str]) -> None:
    """Give a folder about to become an output the usual umask permissions throughout (0755 folders, 0644 files
    under umask 022): mkdtemp makes it 0700, and safetensors' writer (so `save_pretrained`) creates its files 0600
    whatever the umask, so another user or a server process could not read the saved model."""
    umask = _umask()
    for here, _dirs, files in os.walk(root):
        os.chmod(here, 0o777 & ~umask)
        for name in files:
            path = os.path.join(here, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~umask)


# errors of the disk, not of the program: a full disk or quota, a file too large, a read-only or failing device
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})


class WriteError(PrunelabError):
    """A save that failed for lack of space (or a read-only / failing disk); nothing was left half-written."""

    def __init__(self, target: str | os.PathLike[str], reason: str) -> None:
        self.reason = reason
        super().__init__(
            f"cannot write '{target}': {reason}; nothing was left half-written (an existing output is unchanged)"
        )


def write_error(error: BaseException, target: str | os.PathLike[str]) -> WriteError | None:
    """The one-line error for a save of `target` that failed because of the disk, else None (a bug stays a bug).

    OSError says it by errno; safetensors' Rust writer raises its own SafetensorError whose text carries the OS
    error ("I/O error: No space left on device (os error 28)"), so that text is recognised too. The error's
    chain (`__cause__`, `__context__`) is searched as well: torch.save into a file object lets the OSError(ENOSPC)
    through, but its zip writer's cleanup then raises a bare RuntimeError ("unexpected pos ...") on top of it. The
    chain is followed as a traceback shows it (`raise ... from None` ends it), and an interrupt (KeyboardInterrupt,
    SystemExit) stays an interrupt even if it came while a disk error was being handled."""
    if not isinstance(error, Exception):
        return None
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        reason = _disk_reason(current)
        if reason is not None:
            return WriteError(target, reason)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return None


def _disk_reason(error: BaseException) -> str | None:
    """Why the disk refused a write, if `error` (this one exception, not its chain) says it did."""
    if isinstance(error, WriteError):  # a file inside a folder being saved: name the folder, not the temp path
        return error.reason
    if isinstance(error, OSError):
        return (error.strerror or os.strerror(error.errno or 0)) if error.errno in DISK_ERRNOS else None
    if isinstance(error, Exception):
        codes = [int(c) for c in re.findall(r"os error (\d+)", str(error))]
        disk = [c for c in codes if c in DISK_ERRNOS]
        return os.strerror(disk[0]) if disk else None
    return None


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write JSON to `path` through a temporary file in the same folder, then rename over the target."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write text to `path` through a temporary file in the same folder, then rename over the target."""
    path = Path(path)
    if path.is_dir():
        raise PrunelabError(f"cannot write '{path}': it is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise PrunelabError(f"cannot write '{path}': {e.strerror or type(e).__name__}") from None
    register_temp(Path(tmp))
    default_file_mode(fd)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:  # written as given (CSV keeps its \r\n)
            f.write(text)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        disk = write_error(e, path)
        if disk is not None:
            raise disk from None
        raise
    finally:
        unregister_temp(Path(tmp))


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to `target`; on success it replaces `target`, on error it is removed.

    With `overwrite`, an existing `target` (folder or file) is moved aside first and deleted only after the new
    folder is in place; the two renames run as a critical section (signals wait), and if anything fails between
    them the old output is put back, so an interrupted save never leaves the user without a model.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = register_temp(Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)))
    old: Path | None = None
    try:
        yield tmp
        default_tree_modes(tmp)  # the temp folder becomes the output: not mkdtemp's 0700 nor safetensors' 0600
        with critical_section():
            if target.exists() or target.is_symlink():
                if not overwrite:
                    raise PrunelabError(f"output '{target}' already exists; pass --overwrite to replace it")
                old = register_temp(target.with_name(f".{target.name}.old-{os.getpid()}"))
                os.replace(target, old)
            os.replace(tmp, target)
            unregister_temp(tmp)
        if old is not None:
            _remove(old)
            unregister_temp(old)
    except BaseException as e:
        if old is not None and old.exists():
            if target.exists():
                _remove(old)  # the new output is in place; only the old one's deletion was cut short
            else:
                os.replace(old, target)  # the new folder never arrived: the old output goes back where it was
            unregister_temp(old)
        _remove(tmp)
        unregister_temp(tmp)
        disk = write_error(e, target)  # a full disk while saving: one line naming the output, not the temp file
        if disk is not None:
            raise disk from None
        raise


def environment() -> dict[str, Any]:
    """Versions and hardware recorded with every result, so numbers can be compared honestly later."""
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        from importlib.metadata import version

        env["prunelab"] = version("prunelab")
    except Exception:  # pragma: no cover - running from a source tree without install
        env["prunelab"] = "unknown"
    return env
