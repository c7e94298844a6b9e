"""The fleet database: rollouts, their offers and leases, and the devices' last status.

One row per rollout (keyed by broker, fleet, model, version and release) holds the whole
:class:`~edgeship.sdk.fleet._rollout.Rollout` as JSON, replaced in one transaction; an
append-only ``events`` table keeps what happened (offers, halts, take-overs). The
engine is SQLite (one file, the default) or PostgreSQL (``--db postgresql://...``,
shared by several operators and ``fleet push`` workers); the SQL of both lives in
:mod:`edgeship.sdk.fleet._fleetsql`.

Several workers drive one rollout safely: a *lease* per rollout (:meth:`FleetDB.take_lease`,
renewed by the holder's heartbeat, taken over once it expired) says who may decide; every
wave decision (:meth:`FleetDB.decide`) is one transaction that re-reads the rollout under
a row lock, checks the lease and records the offers it makes in ``offers``, so a device
is offered a release once, whoever decided.
"""

from __future__ import annotations

import builtins
import contextlib
import glob
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from edgeship.sdk._fileio import lock_file
from edgeship.sdk.fleet._fleetsql import Engine, connect, default_url
from edgeship.sdk.fleet._rollout import Rollout
from edgeship.sdk.fleet._rollout_control import wave_attempt

from edgeship._errors import ConfigError

__all__ = ["Decision", "FleetDB", "LeaseLost", "default_state_path", "default_url", "short_id"]

MAX_STATE_BYTES = 64 * 1024 * 1024

# what a decision returns: the new rollout, devices to offer now, event name and detail
Decision = tuple[Rollout, list[str], str | None, dict[str, Any] | None]


class LeaseLost(ConfigError):
    """This worker no longer holds the rollout's lease (it expired and another took it)."""


def default_state_path() -> Path:
    """``$EDGESHIP_FLEET_STATE``, else ``~/.local/state/edgeship/fleet.sqlite``."""
    env = os.environ.get("EDGESHIP_FLEET_STATE")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "edgeship" / "fleet.sqlite"


def short_id(key: str) -> str:
    """The 8 hex digits ``fleet rollouts`` shows for a rollout key."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


class FleetDB:
    """The fleet manager's records (one database, many rollouts and fleets).

    ``where`` is a URL (``sqlite:///path``, ``postgresql://...``) or a SQLite file path.
    """

    def __init__(self, where: str | Path | None = None, *, option: str = "--db") -> None:
        url = default_url() if where is None else str(where)
        self.url = url
        self.db: Engine = connect(url, option=option)
        self.path = Path(self.db.where) if self.db.dialect == "sqlite" else None
        if self.path is not None:
            self._sweep_stale_locks()

    def reopen(self) -> FleetDB:
        """Another connection to the same database (for a heartbeat thread)."""
        return FleetDB(self.url)

    def _sweep_stale_locks(self) -> None:
        """Remove lock files no push holds (left by a killed push, or by versions that
        never removed them): taken like a lock, so one in use is left alone."""
        import fcntl

        assert self.path is not None
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
        self.db.close()

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
        if self.path is None:
            raise ConfigError("file locks exist only for a SQLite fleet database; use leases")
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        path = self.path.with_name(f"{self.path.name}.{digest}.lock")
        fd = _lock_file(path, key)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                path.unlink()
            os.close(fd)

    # -- rollouts ---------------------------------------------------------------------------
    def load(self, key: str, *, lock: bool = False) -> Rollout | None:
        """The recorded rollout ``key``, or None; ``lock`` holds its row until the
        surrounding transaction ends (PostgreSQL)."""
        rows = self.db.execute("SELECT state FROM rollouts WHERE key = ?"
                               + ("{for_update}" if lock else ""), (key,))
        if not rows:
            return None
        if len(rows[0][0]) > MAX_STATE_BYTES:
            raise ConfigError(f"{self.db.where}: rollout {key} record is too large")
        return Rollout.from_dict(json.loads(rows[0][0]))

    def save(self, rollout: Rollout, *, event: str | None = None,
             detail: dict[str, Any] | None = None) -> None:
        """Store ``rollout`` (and an event) in one transaction."""
        with self.db.transaction():
            self._write(rollout, event, detail)

    def create(self, rollout: Rollout, detail: dict[str, Any]) -> None:
        """Store a new rollout, in one transaction with forgetting the offers an earlier
        rollout of the same key made (a shadow discarded, a cancelled rollout pushed
        again): its devices are offered the release anew."""
        with self.db.transaction() as db:
            db.execute("DELETE FROM offers WHERE key = ?", (rollout.key,))
            self._write(rollout, "created", detail)

    def _write(self, rollout: Rollout, event: str | None, detail: dict[str, Any] | None
               ) -> None:
        state = json.dumps(rollout.to_dict(), sort_keys=True)
        self.db.execute(
            "INSERT INTO rollouts(key, fleet, version, status, state, updated) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
            "status = excluded.status, state = excluded.state, updated = excluded.updated",
            (rollout.key, rollout.fleet, rollout.version, rollout.status, state, time.time()))
        if event:
            self.db.execute("INSERT INTO events(key, ts, kind, detail) VALUES (?, ?, ?, ?)",
                            (rollout.key, time.time(), event, json.dumps(detail or {})))

    def events(self, key: str) -> list[tuple[float, str, dict[str, Any]]]:
        """What happened in rollout ``key``, oldest first: ``(time, kind, detail)``."""
        rows = self.db.execute("SELECT ts, kind, detail FROM events WHERE key = ? ORDER BY id",
                               (key,))
        return [(float(ts), str(kind), json.loads(detail)) for ts, kind, detail in rows]

    def list(self, fleet: str | None = None) -> list[tuple[str, str, float]]:
        """``(key, status, updated)`` of every recorded rollout (of ``fleet``)."""
        sql = "SELECT key, status, updated FROM rollouts"
        args: tuple[str, ...] = ()
        if fleet:
            sql, args = sql + " WHERE fleet = ?", (fleet,)
        rows = self.db.execute(sql + " ORDER BY updated", args)
        return [(str(k), str(s), float(u)) for k, s, u in rows]

    def find(self, ref: str) -> Rollout:
        """The rollout ``ref`` names: its key, its short id (or 4+ leading digits of it), or
        ``fleet/model/version`` when only one rollout matches."""
        keys = [k for k, _, _ in self.list()]
        found = [k for k in keys if ref == k or (len(ref) >= 4 and short_id(k).startswith(ref))]
        found = found or [k for k in keys if f"|{ref}@" in k]
        if len(found) != 1:
            what = "no rollout" if not found else f"{len(found)} rollouts"
            raise ConfigError(f"{what} match {ref!r}; `edgeship fleet rollouts` lists them")
        rollout = self.load(found[0])
        assert rollout is not None
        return rollout

    def change(self, key: str, change: Callable[[Rollout], Rollout], event: str, *,
               by: str | None = None) -> Rollout:
        """Apply ``change`` to the recorded rollout in one transaction (pause, cancel...);
        ``by``, who asked, goes into the event."""
        with self.db.transaction():
            current = self.load(key, lock=True)
            if current is None:
                raise ConfigError(f"no rollout {key} in {self.db.where}")
            new = change(current)
            detail = {"was": current.status, "now": new.status}
            self._write(new, event, detail if by is None else {**detail, "by": by})
        return new

    # -- leases: one worker drives a rollout ------------------------------------------------
    def take_lease(self, key: str, holder: str, ttl_s: float) -> tuple[bool, str, float]:
        """Take rollout ``key`` for ``holder`` unless another holds an unexpired lease:
        ``(taken, previous or current holder, seconds left of the other's lease)``."""
        with self.db.transaction() as db:
            db.execute("INSERT INTO leases(key, holder, expires) VALUES (?, '', 0) "
                       "ON CONFLICT(key) DO NOTHING", (key,))
            (current, expires, now), = db.execute(
                "SELECT holder, expires, {now} FROM leases WHERE key = ?{for_update}", (key,))
            if current and current != holder and expires > now:
                return False, str(current), float(expires - now)
            db.execute("UPDATE leases SET holder = ?, expires = {now} + ? WHERE key = ?",
                       (holder, ttl_s, key))
            if current and current != holder:
                db.execute("INSERT INTO events(key, ts, kind, detail) VALUES (?, ?, ?, ?)",
                           (key, time.time(), "taken-over",
                            json.dumps({"from": current, "by": holder,
                                        "expired_s_ago": round(now - expires, 1)})))
            return True, str(current), 0.0

    def renew_lease(self, key: str, holder: str, ttl_s: float) -> bool:
        """Extend ``holder``'s lease (the heartbeat); False once another holds it."""
        with self.db.transaction() as db:
            changed: int = db.rowcount("UPDATE leases SET expires = {now} + ? WHERE key = ? "
                                       "AND holder = ?", (ttl_s, key, holder))
        return changed > 0

    def release_lease(self, key: str, holder: str) -> None:
        """Give the rollout up (a worker that ends normally need not be waited out)."""
        with self.db.transaction() as db:
            db.execute("UPDATE leases SET holder = '', expires = 0 WHERE key = ? AND holder = ?",
                       (key, holder))

    def decide(self, key: str, holder: str, ttl_s: float,
               decide: Callable[[Rollout], Decision]) -> tuple[Rollout, builtins.list[str], int]:
        """One wave decision as one transaction: re-read the rollout under a row lock, check
        and renew ``holder``'s lease, let ``decide`` compute the new state and the devices
        to offer, drop devices already offered in this attempt (the wave's
        :func:`wave_attempt`), record the offers as ``due`` and the new state. Returns the
        new rollout, the devices to publish to and the attempt."""
        with self.db.transaction() as db:
            if db.rowcount("UPDATE leases SET expires = {now} + ? WHERE key = ? AND holder = ?",
                           (ttl_s, key, holder)) == 0:
                raise LeaseLost(f"this worker lost the lease of rollout {key} (another worker "
                                "took it over); stopping")
            current = self.load(key, lock=True)
            if current is None:
                raise ConfigError(f"rollout {key} is gone from {self.db.where}")
            new, offer, event, detail = decide(current)
            attempt = wave_attempt(new.waves[new.current]) if offer else 0
            if offer:
                done = self.offered(key, attempt)
                offer = [d for d in dict.fromkeys(offer) if d not in done]
                now = time.time()
                db.executemany("INSERT INTO offers(key, device, attempt, state, ts, holder) "
                               "VALUES (?, ?, ?, 'due', ?, ?) ON CONFLICT DO NOTHING",
                               [(key, d, attempt, now, holder) for d in offer])
            if new != current or event:
                self._write(new, event, detail)
            return new, offer, attempt

    # -- offers --------------------------------------------------------------------------
    def offered(self, key: str, attempt: int) -> dict[str, str]:
        """device -> ``due`` (decided, maybe not published) or ``sent`` (broker acked)."""
        rows = self.db.execute("SELECT device, state FROM offers WHERE key = ? AND attempt = ?",
                               (key, attempt))
        return {str(d): str(s) for d, s in rows}

    def mark_sent(self, key: str, attempt: int, devices: Sequence[str], *, holder: str = ""
                  ) -> None:
        """The broker acknowledged the offers to ``devices`` (recorded if they were not)."""
        if not devices:
            return
        now = time.time()
        with self.db.transaction() as db:
            db.executemany("INSERT INTO offers(key, device, attempt, state, ts, holder) "
                           "VALUES (?, ?, ?, 'sent', ?, ?) ON CONFLICT(key, device, attempt) "
                           "DO UPDATE SET state = 'sent'",
                           [(key, d, attempt, now, holder) for d in devices])

    def status_of(self, key: str) -> str | None:
        """The recorded status of rollout ``key`` (cheap: no state parsed)."""
        rows = self.db.execute("SELECT status FROM rollouts WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def offer_counts(self, key: str) -> dict[str, int]:
        """How many offers each device got in rollout ``key`` (over every attempt)."""
        rows = self.db.execute("SELECT device, COUNT(*) FROM offers WHERE key = ? "
                               "GROUP BY device", (key,))
        return {str(d): int(n) for d, n in rows}

    # -- devices ---------------------------------------------------------------------------
    def record_devices(self, fleet: str, statuses: Mapping[str, Mapping[str, Any]]) -> None:
        """Store the newest status of each device and when it was last heard from (its
        ``last_seen``: the newest heartbeat or status); an older ``last_seen`` never
        replaces a newer one."""
        if not statuses:
            return
        now = time.time()
        rows = []
        for dev, status in statuses.items():
            ts = status.get("ts")
            seen = status.get("last_seen", ts)
            rows.append((fleet, dev, json.dumps(dict(status), sort_keys=True, default=str),
                         ts if isinstance(ts, (int, float)) else None,
                         seen if isinstance(seen, (int, float)) else None, now))
        with self.db.transaction() as db:
            db.executemany(
                "INSERT INTO devices(fleet, device, status, status_ts, last_seen, updated) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(fleet, device) DO UPDATE SET "
                "status = excluded.status, status_ts = excluded.status_ts, "
                "updated = excluded.updated, last_seen = CASE WHEN devices.last_seen IS NULL "
                "OR excluded.last_seen > devices.last_seen THEN excluded.last_seen "
                "ELSE devices.last_seen END", rows)

    def devices(self, fleet: str) -> dict[str, dict[str, Any]]:
        """The recorded status of every device of ``fleet`` (``last_seen`` included)."""
        rows = self.db.execute("SELECT device, status, last_seen FROM devices WHERE fleet = ?",
                               (fleet,))
        out = {}
        for dev, status, seen in rows:
            doc = json.loads(status)
            if isinstance(doc, dict):
                out[str(dev)] = {**doc, "device": str(dev), "last_seen": seen}
        return out


def _lock_file(path: Path, key: str) -> int:
    """An fd holding an exclusive flock on the file that ``path`` names right now."""
    try:
        return lock_file(path)
    except BlockingIOError as exc:
        raise ConfigError(f"another `fleet push` is running this rollout ({key}); "
                          f"lock {path}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot take the rollout lock {path}: {exc.strerror or exc}") from exc
