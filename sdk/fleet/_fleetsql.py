"""The fleet database's two engines behind one small surface: SQLite (one file, the default)
and PostgreSQL (shared by several operators and ``fleet push`` workers, via psycopg 3).

Every statement of the fleet database is written once, in SQLite's ``?`` style;
:class:`Engine` translates the few differences (placeholders, the row lock ``FOR
UPDATE``, the database clock, auto-numbered ids) so the queries in
:mod:`edgeship.sdk.fleet._fleetdb` stay in one place. A transaction is
:meth:`Engine.transaction`: SQLite takes the write lock at ``BEGIN IMMEDIATE`` (writers
queue up, which serializes wave decisions on one host); PostgreSQL runs ``READ
COMMITTED`` with ``SELECT ... FOR UPDATE`` on the rows a decision reads.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from edgeship._errors import ConfigError

__all__ = ["Engine", "connect", "default_url", "describe"]

_TABLES = (
    "CREATE TABLE IF NOT EXISTS rollouts (key TEXT PRIMARY KEY, fleet TEXT NOT NULL, "
    "version TEXT NOT NULL, status TEXT NOT NULL, state TEXT NOT NULL, updated DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE IF NOT EXISTS events (id {serial}, key TEXT NOT NULL, ts DOUBLE PRECISION NOT NULL, "
    "kind TEXT NOT NULL, detail TEXT NOT NULL)",
    # one worker drives a rollout: the holder renews ``expires`` while it runs
    "CREATE TABLE IF NOT EXISTS leases (key TEXT PRIMARY KEY, holder TEXT NOT NULL, "
    "expires DOUBLE PRECISION NOT NULL)",
    # every offer of a rollout to a device, recorded in the transaction that decided it;
    # 'due' until the broker acknowledged it ('sent'); attempt counts --retry-failed rounds
    "CREATE TABLE IF NOT EXISTS offers (key TEXT NOT NULL, device TEXT NOT NULL, "
    "attempt INTEGER NOT NULL, state TEXT NOT NULL, ts DOUBLE PRECISION NOT NULL, holder TEXT NOT NULL, "
    "PRIMARY KEY (key, device, attempt))",
    # the newest status of every device and when anything was last heard from it
    "CREATE TABLE IF NOT EXISTS devices (fleet TEXT NOT NULL, device TEXT NOT NULL, "
    "status TEXT NOT NULL, status_ts DOUBLE PRECISION, last_seen DOUBLE PRECISION, updated DOUBLE PRECISION NOT NULL, "
    "PRIMARY KEY (fleet, device))",
)


def default_url() -> str:
    """``$EDGESHIP_FLEET_DB``, else ``$EDGESHIP_FLEET_STATE`` (a path), else the SQLite file
    ``~/.local/state/edgeship/fleet.sqlite`` (under ``$XDG_STATE_HOME`` when set)."""
    env = os.environ.get("EDGESHIP_FLEET_DB")
    if env:
        return env
    path = os.environ.get("EDGESHIP_FLEET_STATE")
    if not path:
        base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
        path = str(base / "edgeship" / "fleet.sqlite")
    return f"sqlite://{Path(path).resolve()}"


def describe(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url


class Engine:
    """One connection to the fleet database, in the dialect of its engine."""

    def __init__(self, conn: Any, dialect: str, where: str) -> None:
        self.conn, self.dialect, self.where = conn, dialect, where
        self.for_update = " FOR UPDATE" if dialect == "postgresql" else ""
        self.now_sql = ("EXTRACT(EPOCH FROM clock_timestamp())::float8"
                        if dialect == "postgresql" else "((julianday('now') - 2440587.5) * 86400.0)")
        self._depth = 0

    def _sql(self, sql: str) -> str:
        sql = sql.replace("{for_update}", self.for_update).replace("{now}", self.now_sql)
        return sql.replace("?", "%s") if self.dialect == "postgresql" else sql

    def execute(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement; its rows (empty for statements without)."""
        try:
            cur = self.conn.execute(self._sql(sql), tuple(args))
            if self.dialect == "postgresql":
                return list(cur.fetchall()) if cur.description else []
            return list(cur.fetchall())
        except Exception as exc:
            if _is_db_error(exc):
                raise ConfigError(f"fleet database {self.where}: {exc}".strip()) from exc
            raise

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement once per row of arguments."""
        if not rows:
            return
        try:
            if self.dialect == "postgresql":
                with self.conn.cursor() as cur:
                    cur.executemany(self._sql(sql), [tuple(r) for r in rows])
            else:
                self.conn.executemany(self._sql(sql), [tuple(r) for r in rows])
        except Exception as exc:
            if _is_db_error(exc):
                raise ConfigError(f"fleet database {self.where}: {exc}".strip()) from exc
            raise

    def rowcount(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run one statement; how many rows it changed."""
        try:
            return int(self.conn.execute(self._sql(sql), tuple(args)).rowcount)
        except Exception as exc:
            if _is_db_error(exc):
                raise ConfigError(f"fleet database {self.where}: {exc}".strip()) from exc
            raise

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Engine]:
        """All statements inside commit together or not at all (nesting joins the outer)."""
        if self._depth:
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1
            return
        self.execute("BEGIN IMMEDIATE" if self.dialect == "sqlite" else "BEGIN")
        self._depth = 1
        try:
            yield self
        except BaseException:
            self._depth = 0
            with contextlib.suppress(Exception):
                self.conn.execute("ROLLBACK")
            raise
        self._depth = 0
        self.execute("COMMIT")

    def create(self, statements: Sequence[str]) -> None:
        """Create tables and indexes (``CREATE ... IF NOT EXISTS``; ``{serial}`` is an
        auto-numbered primary key). On PostgreSQL under a lock: two workers creating the
        same table at once would clash."""
        serial = "BIGSERIAL PRIMARY KEY" if self.dialect == "postgresql" else \
            "INTEGER PRIMARY KEY AUTOINCREMENT"
        if self.dialect != "postgresql":
            for stmt in statements:
                self.execute(stmt.replace("{serial}", serial))
            return
        with self.transaction():
            self.execute("SELECT pg_advisory_xact_lock(7317001)")
            for stmt in statements:
                self.execute(stmt.replace("{serial}", serial))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


def _is_db_error(exc: Exception) -> bool:
    if isinstance(exc, sqlite3.Error):
        return True
    return type(exc).__module__.startswith("psycopg")


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite fleet database URL: ``sqlite:///abs/path`` (and
    ``sqlite:////abs/path``, SQLAlchemy's spelling) or a plain path; None for other URLs."""
    scheme = urlsplit(url).scheme if "://" in url else ""
    if scheme == "sqlite":
        return Path("/" + unquote(url[len("sqlite://"):]).lstrip("/"))
    return Path(url) if not scheme else None


def connect(url: str, *, option: str = "--db") -> Engine:
    """Open (and create the tables of) the fleet database at ``url``:
    ``sqlite:///path``, a plain path, or ``postgresql://user:pw@host:port/db``; ``option``
    names where the user gave it, for the error."""
    scheme = urlsplit(url).scheme if "://" in url else ""
    path = sqlite_path(url)
    if scheme in ("postgresql", "postgres"):
        engine = _connect_postgres(url)
    elif path is not None:
        engine = _connect_sqlite(path, option)
    else:
        raise ConfigError(f"--db {describe(url)}: not a fleet database URL (use "
                          "sqlite:///path or postgresql://user@host:port/dbname)")
    engine.create(_TABLES)
    return engine


def _connect_sqlite(path: Path, option: str) -> Engine:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(f"{option}: cannot use {path} as a fleet database: {exc}") from exc
    return Engine(conn, "sqlite", str(path))


def _connect_postgres(url: str) -> Engine:
    try:
        import psycopg
    except ImportError as exc:
        raise ConfigError("a postgresql:// fleet database needs psycopg: "
                          "pip install 'edgeship[postgres]'") from exc
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        raise ConfigError(f"--db {describe(url)}: cannot connect: "
                          f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc}"
                          ) from exc
    return Engine(conn, "postgresql", describe(url))
