"""Pause, resume and cancel a running rollout from outside the ``fleet push`` process.

A rollout is driven by the one process that holds its lock (``fleet push --wait``); the
dashboard (or anyone with the database) cannot write the rollout's record without racing
it. Instead it sets a *control* row next to the record: ``paused`` or ``cancelled`` (or
none). :func:`edgeship.sdk.fleet._rollout_run.run_rollout` reads it before every step: a
paused rollout offers no new wave (devices already offered carry on; the open wave gets
a fresh timeout on resume), a cancelled one is recorded as halted with the canceller's
name as its reason and the control row is consumed, so re-running the push resumes it
like any halted rollout.

Plain SQL (one table, ``?`` placeholders turned into ``%s`` for a driver that wants
them), so the same code serves a PostgreSQL fleet database.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

__all__ = ["CONTROL_STATES", "Control", "RolloutControls"]

CONTROL_STATES = ("paused", "cancelled")

_SCHEMA = ("CREATE TABLE IF NOT EXISTS rollout_controls (key TEXT PRIMARY KEY, "
           "state TEXT NOT NULL, who TEXT NOT NULL, ts DOUBLE PRECISION NOT NULL)")


@dataclass(frozen=True, kw_only=True)
class Control:
    """Someone asked rollout ``key`` to be ``state`` (paused or cancelled) at ``ts``."""

    key: str
    state: str
    who: str
    ts: float


def sql(conn: Any, query: str) -> str:
    """``query`` in the placeholder style of ``conn``'s driver (sqlite3: ``?``; psycopg:
    ``%s``)."""
    return query if type(conn).__module__.startswith("sqlite3") else query.replace("?", "%s")


class RolloutControls:
    """The control rows in a fleet database connection (``FleetDB.conn``)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.conn.execute(_SCHEMA)

    def get(self, key: str) -> Control | None:
        """The control of rollout ``key``, or None when it runs as recorded."""
        row = self.conn.execute(sql(self.conn, "SELECT state, who, ts FROM rollout_controls "
                                               "WHERE key = ?"), (key,)).fetchone()
        if row is None:
            return None
        return Control(key=key, state=str(row[0]), who=str(row[1]), ts=float(row[2]))

    def all(self) -> dict[str, Control]:
        """Every control row by rollout key."""
        rows = self.conn.execute("SELECT key, state, who, ts FROM rollout_controls").fetchall()
        return {str(k): Control(key=str(k), state=str(s), who=str(w), ts=float(t))
                for k, s, w, t in rows}

    def set(self, key: str, state: str | None, who: str, now: float | None = None) -> None:
        """Ask rollout ``key`` to pause or cancel; ``state=None`` lets it run again."""
        if state is not None and state not in CONTROL_STATES:
            raise ValueError(f"rollout control {state!r} is not one of {CONTROL_STATES}")
        self.conn.execute(sql(self.conn, "DELETE FROM rollout_controls WHERE key = ?"), (key,))
        if state is not None:
            self.conn.execute(sql(self.conn, "INSERT INTO rollout_controls(key, state, who, ts) "
                                             "VALUES (?, ?, ?, ?)"),
                              (key, state, who, time.time() if now is None else now))
        if hasattr(self.conn, "commit"):
            self.conn.commit()
