"""The offline outbox: messages that could not be published wait in SQLite, oldest first.

Bounded by ``max_messages`` and by ``max_bytes`` of payload (the oldest are dropped
first when either is passed, and counted): a heartbeat with drift figures is ~10 KB, and a
device offline for weeks must not fill its disk with them.
A message with a ``key`` replaces the waiting one with the same key, so only the latest
retained status waits, not every intermediate one. Used from one thread (the agent loop).
The database is opened on first use: sqlite3 is not on the agent's path to its first answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlite3

__all__ = ["Outbox", "Queued", "storage_errors"]


def storage_errors() -> tuple[type[Exception], ...]:
    """What a failed outbox write raises (an ``except`` evaluates this only when one
    propagates, so sqlite3 is imported then at the latest)."""
    import sqlite3

    return (OSError, sqlite3.Error)


@dataclass(frozen=True)
class Queued:
    id: int
    topic: str
    payload: bytes
    retain: bool


class Outbox:
    """An on-disk FIFO of MQTT messages; see the module docstring."""

    def __init__(self, path: Path, *, max_messages: int = 10_000,
                 max_bytes: int = 16 << 20) -> None:
        self.max_messages, self.max_bytes = max_messages, max_bytes
        self.dropped = 0
        self.path = path
        self._opened: sqlite3.Connection | None = None

    @property
    def _db(self) -> sqlite3.Connection:
        if self._opened is None:
            import sqlite3

            db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT,"
                " topic TEXT NOT NULL, payload BLOB NOT NULL, retain INTEGER NOT NULL, key TEXT)"
            )
            self._opened = db
        return self._opened

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def put(self, topic: str, payload: bytes, *, retain: bool = False, key: str | None = None
            ) -> None:
        with self._db:
            if key is not None:
                self._db.execute("DELETE FROM outbox WHERE key = ?", (key,))
            self._db.execute("INSERT INTO outbox (topic, payload, retain, key) VALUES (?,?,?,?)",
                             (topic, payload, int(retain), key))
            excess = len(self) - self.max_messages
            if excess > 0:
                self._db.execute("DELETE FROM outbox WHERE id IN "
                                 "(SELECT id FROM outbox ORDER BY id LIMIT ?)", (excess,))
                self.dropped += excess
            self._trim_bytes()

    def _trim_bytes(self) -> None:
        """Drop the oldest messages until the payloads fit in ``max_bytes`` (the newest
        message always stays, however large)."""
        total = int(self._db.execute("SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM outbox"
                                     ).fetchone()[0])
        if total <= self.max_bytes:
            return
        rows = self._db.execute("SELECT id, LENGTH(payload) FROM outbox ORDER BY id").fetchall()
        doomed = []
        for row_id, size in rows[:-1]:
            if total <= self.max_bytes:
                break
            doomed.append((row_id,))
            total -= int(size)
        self._db.executemany("DELETE FROM outbox WHERE id = ?", doomed)
        self.dropped += len(doomed)

    def peek(self, limit: int = 100) -> list[Queued]:
        rows = self._db.execute("SELECT id, topic, payload, retain FROM outbox ORDER BY id LIMIT ?",
                                (limit,)).fetchall()
        return [Queued(int(r[0]), str(r[1]), bytes(r[2]), bool(r[3])) for r in rows]

    def delete(self, ids: list[int]) -> None:
        if ids:
            with self._db:
                self._db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])

    def close(self) -> None:
        if self._opened is not None:
            self._opened.close()
