"""Rollout state in a local SQLite file, so ``fleet push`` resumes where it stopped.

One row per rollout (keyed ``fleet/model/version``) holds the whole
:class:`~edgeship.sdk.fleet._rollout.Rollout` as JSON, replaced in one transaction; an
append-only ``events`` table keeps what happened (offers, halts) for the record.
SQLite's journal makes each save all-or-nothing, so a kill at any instant leaves the
previous or the new state, never a mix.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgeship.sdk.fleet._rollout import Rollout

from edgeship._errors import ConfigError

__all__ = ["FleetDB", "default_state_path"]

MAX_STATE_BYTES = 64 * 1024 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rollouts (
    key TEXT PRIMARY KEY, fleet TEXT NOT NULL, version TEXT NOT NULL, status TEXT NOT NULL,
    state TEXT NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, ts REAL NOT NULL,
    kind TEXT NOT NULL, detail TEXT NOT NULL);
"""


def default_state_path() -> Path:
    """``$EDGESHIP_FLEET_STATE``, else ``~/.local/state/edgeship/fleet.sqlite``."""
    env = os.environ.get("EDGESHIP_FLEET_STATE")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "edgeship" / "fleet.sqlite"


class FleetDB:
    """The rollout records of one fleet manager (one file, many rollouts)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"--state: cannot use {self.path} as a rollout database: {exc}"
                              ) from exc
        self._sweep_stale_locks()

    def _sweep_stale_locks(self) -> None:
        """Remove lock files no push holds (left by a killed push, or by versions that
        never removed them): taken like a lock, so one in use is left alone."""
        import fcntl

        for path in self.path.parent.glob(f"{glob.escape(self.path.name)}.*.lock"):
            try:
                fd = os.open(path, os.O_RDWR)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    path.unlink()
            except OSError:  # held by a running push, or already gone
                pass
            finally:
                os.close(fd)

    def close(self) -> None:
        """Close the database."""
        self.conn.close()

    def __enter__(self) -> FleetDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold rollout ``key`` for this process: two pushes of one rollout would offer
        waves twice as fast as planned. Released when the process dies, too.

        The lock file is removed on release, so none pile up beside the database. That is
        safe because a holder removes it while still holding it, and a process that locked
        a file already removed (it opened the path just before) sees that the path no
        longer names its file and tries again on the new one."""
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        path = self.path.with_name(f"{self.path.name}.{digest}.lock")
        fd = _lock_file(path, key)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                path.unlink()
            os.close(fd)

    def load(self, key: str) -> Rollout | None:
        """The recorded rollout ``key``, or None if there is none."""
        row = self.conn.execute("SELECT state FROM rollouts WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        if len(row[0]) > MAX_STATE_BYTES:
            raise ConfigError(f"{self.path}: rollout {key} record is too large")
        return Rollout.from_dict(json.loads(row[0]))

    def save(self, rollout: Rollout, *, event: str | None = None,
             detail: dict[str, Any] | None = None) -> None:
        """Store ``rollout`` (and an event) in one transaction."""
        state = json.dumps(rollout.to_dict(), sort_keys=True)
        with self.conn:  # BEGIN ... COMMIT
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute(
                "INSERT INTO rollouts(key, fleet, version, status, state, updated) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
                "status = excluded.status, state = excluded.state, updated = excluded.updated",
                (rollout.key, rollout.fleet, rollout.version, rollout.status, state, time.time()))
            if event:
                self.conn.execute("INSERT INTO events(key, ts, kind, detail) VALUES (?, ?, ?, ?)",
                                  (rollout.key, time.time(), event, json.dumps(detail or {})))

    def events(self, key: str) -> list[tuple[float, str, dict[str, Any]]]:
        """What happened in rollout ``key``, oldest first: ``(time, kind, detail)``."""
        rows = self.conn.execute("SELECT ts, kind, detail FROM events WHERE key = ? ORDER BY id",
                                 (key,)).fetchall()
        return [(ts, kind, json.loads(detail)) for ts, kind, detail in rows]

    def list(self, fleet: str | None = None) -> list[tuple[str, str, float]]:
        """``(key, status, updated)`` of every recorded rollout (of ``fleet``)."""
        sql = "SELECT key, status, updated FROM rollouts"
        args: tuple[str, ...] = ()
        if fleet:
            sql, args = sql + " WHERE fleet = ?", (fleet,)
        rows = self.conn.execute(sql + " ORDER BY updated", args).fetchall()
        return [(str(k), str(s), float(u)) for k, s, u in rows]


def _lock_file(path: Path, key: str) -> int:
    """An fd holding an exclusive flock on the file that ``path`` names right now."""
    import fcntl

    for _ in range(100):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise ConfigError(f"another `fleet push` is running this rollout ({key}); "
                              f"lock {path}") from exc
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:  # removed by the holder we waited for
            same = False
        if same:
            return fd
        os.close(fd)
    raise ConfigError(f"cannot take the rollout lock {path} (it keeps being replaced)")
