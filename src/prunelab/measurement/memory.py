"""Peak memory of a phase (load, prune, inference), measured by the kernel or by sampling, never computed.

`ru_maxrss` only ever grows, so it cannot give the peak of a later phase that uses less than an earlier one. On
Linux the high-water mark of the resident set (`VmHWM` in /proc/self/status) can be reset by writing "5" to
/proc/self/clear_refs (kernel >= 4.0); the peak of a phase is then exact and free. Where that is not possible a
background thread samples the RSS every few milliseconds (psutil), which can miss spikes shorter than the period.
Resetting also restarts the process's `ru_maxrss` from the current RSS: a phase's peak, not the process's.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil
import torch

from prunelab.models import check_device

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
MIB = 1024 * 1024


def _status_kib(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def current_rss_mb() -> float:
    return psutil.Process().memory_info().rss / MIB


def _reset_hwm() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


class PeakMemory:
    """Context manager measuring the peak RSS (and peak CUDA memory) of the code inside it.

    with PeakMemory("inference", device) as mem:
        run()
    mem.to_dict()  # {"phase": "inference", "peak_rss_mb": ..., "start_rss_mb": ..., "method": "vmhwm-reset"}
    """

    def __init__(self, phase: str, device: str | torch.device = "cpu", interval_s: float = 0.005) -> None:
        self.phase = phase
        self.device = check_device(str(device))  # a bad name fails in one line, not in torch's
        self.interval_s = interval_s
        self.method = ""
        self.start_rss_mb = 0.0
        self.peak_rss_mb = 0.0
        self.end_rss_mb = 0.0
        self.peak_cuda_mb: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sampled_peak = 0

    def _sample(self) -> None:
        proc = psutil.Process()
        while not self._stop.is_set():
            self._sampled_peak = max(self._sampled_peak, proc.memory_info().rss)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakMemory:
        self.start_rss_mb = current_rss_mb()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        if _reset_hwm():
            self.method = "vmhwm-reset"
        else:
            self.method = "sampled"
            self._sampled_peak = psutil.Process().memory_info().rss
            self._thread = threading.Thread(target=self._sample, name="prunelab-rss-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.end_rss_mb = current_rss_mb()
        if self.method == "vmhwm-reset":
            hwm = _status_kib("VmHWM")
            self.peak_rss_mb = max(hwm / 1024 if hwm is not None else 0.0, self.end_rss_mb)
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak_rss_mb = max(self._sampled_peak / MIB, self.end_rss_mb)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_cuda_mb = torch.cuda.max_memory_allocated(self.device) / MIB

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "peak_rss_mb": self.peak_rss_mb,
            "start_rss_mb": self.start_rss_mb,
            "end_rss_mb": self.end_rss_mb,
            "peak_cuda_mb": self.peak_cuda_mb,
            "method": self.method,
        }
