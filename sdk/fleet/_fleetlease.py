"""A worker's lease on one rollout, kept alive by a heartbeat thread.

:class:`Lease` takes the rollout's row in ``leases`` (:meth:`FleetDB.take_lease`); a
worker that finds it held either stands by until the holder's lease expires (its
heartbeat stopped: the process died, or lost the database) or gives up at once. While
held, a thread renews it every third of its time to live over its own connection, so a
long publish or a slow broker never lets it lapse; once a renewal finds another holder,
``lost`` is set and the next wave decision refuses (:class:`LeaseLost`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

from edgeship.sdk.fleet._fleetdb import FleetDB, LeaseLost

from edgeship._errors import ConfigError

__all__ = ["Lease", "worker_id"]


def worker_id() -> str:
    """``host:pid:random``: who holds a lease (shown to other workers and in events)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Lease:
    """Hold rollout ``key`` in ``db`` for this worker (a context manager)."""

    def __init__(self, db: FleetDB, key: str, *, ttl_s: float = 15.0,
                 holder: str | None = None) -> None:
        if not ttl_s > 0:
            raise ConfigError("--lease must be positive")
        self.db, self.key, self.ttl_s = db, key, ttl_s
        self.holder = holder or worker_id()
        self.lost = False
        self.previous = ""  # whose expired lease this worker took over ("" if none)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, *, standby: bool,
                on_wait: Callable[[str, float], None] | None = None) -> Lease:
        """Take the lease; held by another: wait for it to expire (``standby``) or raise."""
        while True:
            taken, other, left = self.db.take_lease(self.key, self.holder, self.ttl_s)
            if taken:
                self.previous = other
                break
            if not standby:
                raise ConfigError(f"another `fleet push` ({other}) drives this rollout; its "
                                  f"lease runs {left:.0f}s more unless renewed (--wait stands "
                                  "by to take over if it dies)")
            if on_wait is not None:
                on_wait(other, left)
            time.sleep(min(max(0.1, left + 0.05), self.ttl_s / 4))
        self._thread = threading.Thread(target=self._beat, name="edgeship-lease", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        conn = self.db.reopen()
        try:
            while not self._stop.wait(self.ttl_s / 3):
                try:
                    if not conn.renew_lease(self.key, self.holder, self.ttl_s):
                        self.lost = True
                        return
                except ConfigError:  # the database is unreachable: try again next beat
                    continue
        finally:
            conn.close()

    def check(self) -> None:
        """Raise :class:`LeaseLost` once a heartbeat found another holder."""
        if self.lost:
            raise LeaseLost(f"this worker lost the lease of rollout {self.key}; stopping")

    def release(self) -> None:
        """Stop the heartbeat and free the lease (another worker need not wait it out)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if not self.lost:
            with contextlib.suppress(ConfigError):  # else it expires by itself
                self.db.release_lease(self.key, self.holder)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
