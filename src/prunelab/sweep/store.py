"""The results store of a sweep folder: `results.sqlite` (table `points`) plus `results.csv`, crash-safe.

Why SQLite: a finished point is written in one transaction, and SQLite's journal guarantees that a process killed
at any instant (even inside that transaction) leaves either the whole row or none of it; the UNIQUE `point_id`
makes a duplicate impossible. Only finished points are stored, so resume is "skip the ids already in the table".
`results.csv` is a convenience export, rewritten atomically (temp file + rename) after every point.

The `meta` table keeps the shared settings of the sweep (model, calibration, evaluation, measurement): a folder
holds one experiment, so rerunning it with different shared settings is refused rather than silently mixed. The
grid itself may grow between runs (new points are simply added). A lock file keeps two sweeps out of one folder.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import signal
import socket
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prunelab._util import write_text_atomic
from prunelab.errors import PrunelabError
from prunelab.report.metrics import METRICS, metric
from prunelab.sweep.grid import Point

DB_NAME = "results.sqlite"
CSV_NAME = "results.csv"
CRASH_ENV = "PRUNELAB_SWEEP_TEST_CRASH"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS points (
    point_id TEXT NOT NULL UNIQUE,
    idx INTEGER NOT NULL,
    label TEXT NOT NULL,
    series TEXT NOT NULL,
    method TEXT NOT NULL,
    pattern TEXT NOT NULL,
    sparsity REAL NOT NULL,
    target TEXT,
    config TEXT NOT NULL,
    metrics TEXT NOT NULL,
    details TEXT NOT NULL,
    timings TEXT NOT NULL,
    seconds REAL NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    host TEXT NOT NULL,
    executor TEXT NOT NULL
);
"""


def crash_hook(stage: str, index: int) -> None:
    """Test hook: SIGKILL this process at `stage` of point `index` when $PRUNELAB_SWEEP_TEST_CRASH = 'stage:index'.

    Stages: `point` (mid-point, after pruning), `commit` (inside the store transaction, row inserted but not
    committed), `between` (after a point is committed and exported, before the next one starts).
    """
    if os.environ.get(CRASH_ENV) == f"{stage}:{index}":
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class PointRecord:
    """A finished point: what it was, what it measured, how long each stage took."""

    point_id: str
    index: int
    label: str
    series: str
    method: str
    pattern: str
    sparsity: float
    target: str | None
    config: dict[str, Any]
    metrics: dict[str, float | None]
    details: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    started_at: str = ""
    finished_at: str = ""
    host: str = ""
    executor: str = "local"

    @classmethod
    def build(cls, point: Point, result: dict[str, Any], executor: str) -> PointRecord:
        """From a point and the dict `run_point` returned (metrics, details, timings, seconds, started_at, host)."""
        return cls(
            point_id=point.point_id,
            index=point.index,
            label=point.label,
            series=point.series,
            method=point.method,
            pattern=point.pattern,
            sparsity=point.sparsity,
            target=point.target,
            config=point.config,
            metrics=result["metrics"],
            details=result.get("details", {}),
            timings=result.get("timings", {}),
            seconds=float(result.get("seconds", 0.0)),
            started_at=result.get("started_at", ""),
            finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
            host=result.get("host", socket.gethostname()),
            executor=executor,
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


_COLUMNS = [
    "point_id", "idx", "label", "series", "method", "pattern", "sparsity", "target", "config", "metrics", "details",
    "timings", "seconds", "started_at", "finished_at", "host", "executor",
]  # fmt: skip
_JSON_COLUMNS = {"config", "metrics", "details", "timings"}


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str, allow_nan=True)


class ResultStore:
    """`SWEEP_DIR/results.sqlite`. Use as a context manager (holds the folder's lock while open for writing)."""

    def __init__(self, folder: str | os.PathLike[str], write: bool = True) -> None:
        self.folder = Path(folder)
        self.path = self.folder / DB_NAME
        self.write = write
        self._lock_file: Any = None
        if write:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._lock()
        elif not self.path.is_file():
            raise PrunelabError(f"'{folder}' is not a sweep folder (no {DB_NAME}); run `prunelab sweep` first")
        # Readers open read-write too: after a crash mid-transaction the first connection rolls the journal back.
        self.conn = sqlite3.connect(self.path, timeout=30)
        if write:
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.executescript(_SCHEMA)
        else:
            self._check_readable()

    def _check_readable(self) -> None:
        """A damaged or truncated results.sqlite is refused in one line (sqlite3 reports it only when a page that
        is missing is read, so every page is checked now: the file holds one row per point, this is quick)."""
        try:
            ok = self.conn.execute("PRAGMA quick_check").fetchone()
            tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as e:
            self.conn.close()
            raise PrunelabError(f"'{self.path}' is not a readable sweep database: {e}") from None
        if not ok or ok[0] != "ok" or not {"meta", "points"} <= tables:
            self.conn.close()
            why = ok[0] if ok and ok[0] != "ok" else "no points/meta tables"
            raise PrunelabError(f"'{self.path}' is damaged or not a prunelab sweep database ({why})")

    def _lock(self) -> None:
        self._lock_file = open(self.folder / ".lock", "w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise PrunelabError(f"another sweep is writing to '{self.folder}'") from None

    def close(self) -> None:
        self.conn.close()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- meta -------------------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, _dumps(value)))

    def check_settings(self, settings: dict[str, Any]) -> None:
        """Record the shared settings on first use; refuse a folder made with different ones."""
        old = self.get_meta("settings")
        if old is None:
            self.set_meta("settings", settings)
            return
        new = json.loads(_dumps(settings))
        if old != new:
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise PrunelabError(
                f"'{self.folder}' holds a sweep with different {', '.join(changed)} settings; resume needs the same "
                "settings (only the grid may change): use another --out folder"
            )

    # --- points -----------------------------------------------------------------------------------------------
    def done_ids(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT point_id FROM points")}

    def add(self, record: PointRecord) -> bool:
        """Commit one finished point in one transaction. Returns False if that point was already stored."""
        values = [getattr(record, "index" if c == "idx" else c) for c in _COLUMNS]
        values = [_dumps(v) if c in _JSON_COLUMNS else v for c, v in zip(_COLUMNS, values, strict=True)]
        placeholders = ", ".join("?" for _ in _COLUMNS)
        with self.conn:  # one transaction: committed on success, rolled back on error
            cur = self.conn.execute(
                f"INSERT OR IGNORE INTO points ({', '.join(_COLUMNS)}) VALUES ({placeholders})", values
            )
            crash_hook("commit", record.index)
        return cur.rowcount == 1

    def records(self) -> list[PointRecord]:
        """All finished points in grid order."""
        rows = self.conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM points ORDER BY idx, point_id").fetchall()
        out = []
        for row in rows:
            d = {
                ("index" if c == "idx" else c): (json.loads(v) if c in _JSON_COLUMNS else v)
                for c, v in zip(_COLUMNS, row, strict=True)
            }
            out.append(PointRecord(**d))
        return out

    # --- CSV export ---------------------------------------------------------------------------------------------
    def export_csv(self) -> Path:
        """Write `results.csv` (one row per point, one column per metric) through a temp file and a rename."""
        records = self.records()
        names = {k for r in records for k in r.metrics}
        ordered = [m for m in METRICS if m in names] + sorted(n for n in names if n not in METRICS)
        head = ["point_id", "label", "method", "pattern", "sparsity", "target"]
        tail = ["energy_source", "energy_is_estimate", "seconds", "finished_at", "host", "executor"]
        target = self.folder / CSV_NAME
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(head + [f"{n} [{metric(n).unit}]" if metric(n).unit else n for n in ordered] + tail)
        for r in records:
            energy = r.details.get("energy") or {}
            writer.writerow(
                [r.point_id, r.label, r.method, r.pattern, r.sparsity, r.target or ""]
                + ["" if r.metrics.get(n) is None else r.metrics[n] for n in ordered]
                + [
                    energy.get("energy_source", ""),
                    "" if energy.get("is_estimate") is None else energy["is_estimate"],
                    f"{r.seconds:.2f}",
                    r.finished_at,
                    r.host,
                    r.executor,
                ]
            )
        write_text_atomic(target, buf.getvalue())
        return target
