"""Pause, resume and cancel a running rollout from outside the ``fleet push`` process.

A rollout is driven by the one process that holds its lock (``fleet push --wait``); the
dashboard (or anyone with the database) cannot write the rollout's record without racing
it. Instead it sets a *flag* row next to the record: ``paused`` or ``cancelled`` (or
none). :func:`edgeship.sdk.fleet._rollout_run.run_rollout` reads it before every step: a
paused rollout offers no new wave (devices already offered carry on; the open wave gets
a fresh timeout on resume), a cancelled one is recorded as halted with the canceller's
name as its reason and the flag is consumed, so re-running the push resumes it like any
halted rollout.

Plain SQL through :class:`~edgeship.sdk.fleet._sqlengine.SqlEngine` (one table), so the
same code serves a PostgreSQL fleet database.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from edgeship.sdk.fleet._sqlengine import SqlEngine

__all__ = ["FLAG_STATES", "Flag", "RolloutFlags"]

FLAG_STATES = ("paused", "cancelled")

_SCHEMA = ("CREATE TABLE IF NOT EXISTS rollout_flags (key TEXT PRIMARY KEY, "
           "state TEXT NOT NULL, who TEXT NOT NULL, ts DOUBLE PRECISION NOT NULL)")


@dataclass(frozen=True, kw_only=True)
class Flag:
    """Someone asked rollout ``key`` to be ``state`` (paused or cancelled) at ``ts``."""

    key: str
    state: str
    who: str
    ts: float


class RolloutFlags:
    """The flag rows in a fleet database (``engine_of(FleetDB)``)."""

    def __init__(self, engine: SqlEngine) -> None:
        self.engine = engine
        self.engine.execute(_SCHEMA)

    def get(self, key: str) -> Flag | None:
        """The flag of rollout ``key``, or None when it runs as recorded."""
        rows = self.engine.execute("SELECT state, who, ts FROM rollout_flags WHERE key = ?",
                                   (key,))
        if not rows:
            return None
        state, who, ts = rows[0]
        return Flag(key=key, state=str(state), who=str(who), ts=float(ts))

    def all(self) -> dict[str, Flag]:
        """Every flag by rollout key."""
        rows = self.engine.execute("SELECT key, state, who, ts FROM rollout_flags")
        return {str(k): Flag(key=str(k), state=str(s), who=str(w), ts=float(t))
                for k, s, w, t in rows}

    def set(self, key: str, state: str | None, who: str, now: float | None = None) -> None:
        """Ask rollout ``key`` to pause or cancel; ``state=None`` lets it run again."""
        if state is not None and state not in FLAG_STATES:
            raise ValueError(f"rollout flag {state!r} is not one of {FLAG_STATES}")
        with self.engine.transaction() as db:
            db.execute("DELETE FROM rollout_flags WHERE key = ?", (key,))
            if state is not None:
                db.execute("INSERT INTO rollout_flags(key, state, who, ts) VALUES (?, ?, ?, ?)",
                           (key, state, who, time.time() if now is None else now))
