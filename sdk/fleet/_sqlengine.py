"""The four calls the dashboard's tables make on the fleet database, over a plain
sqlite3 connection.

:class:`~edgeship.sdk.fleet._history.History` and
:class:`~edgeship.sdk.fleet._rollout_flags.RolloutFlags` write plain SQL (``?``
placeholders, no SQLite-only types) through the small :class:`SqlEngine` interface:
``execute`` (rows back), ``executemany``, ``rowcount`` and ``transaction``. Here it wraps
the sqlite3 connection of :class:`~edgeship.sdk.fleet._fleetdb.FleetDB`; a fleet
database that carries an engine of its own with these calls (``FleetDB.db``, the
PostgreSQL-capable one) is used as is by :func:`engine_of`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

__all__ = ["SqlEngine", "SqliteEngine", "engine_of"]


class SqlEngine(Protocol):
    """What the dashboard's tables need from a database connection."""

    def execute(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    def rowcount(self, sql: str, args: Sequence[Any] = ()) -> int: ...

    def transaction(self) -> contextlib.AbstractContextManager[Any]: ...


class SqliteEngine:
    """:class:`SqlEngine` over a sqlite3 connection in autocommit mode (FleetDB's)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self._depth = 0

    def execute(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement; its rows."""
        return list(self.conn.execute(sql, tuple(args)).fetchall())

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement once per row of arguments."""
        if rows:
            self.conn.executemany(sql, [tuple(r) for r in rows])

    def rowcount(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run one statement; how many rows it changed."""
        return max(0, int(self.conn.execute(sql, tuple(args)).rowcount))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[SqliteEngine]:
        """Everything inside commits together or not at all (nesting joins the outer)."""
        if self._depth:
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1
            return
        self.conn.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield self
        except BaseException:
            self._depth = 0
            self.conn.execute("ROLLBACK")
            raise
        self._depth = 0
        self.conn.execute("COMMIT")


def engine_of(db: Any) -> SqlEngine:
    """The engine of a fleet database: its own when it has one with these calls, else
    its sqlite3 connection wrapped."""
    own = getattr(db, "db", None)
    if own is not None and all(hasattr(own, m) for m in ("execute", "executemany",
                                                          "rowcount", "transaction")):
        return own  # type: ignore[no-any-return]
    return SqliteEngine(db.conn)
