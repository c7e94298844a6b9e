"""Shared fixtures: a real mosquitto broker on a free loopback port, and the committed
model fixtures under tests/fixtures (rebuilt by tests/fixtures/make_models.py), and
``run_cli`` (``edgeship convert`` in a subprocess)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeship._cli.broker import LocalBroker
from edgeship._errors import TransportError

FIXTURES = Path(__file__).parent / "fixtures"


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """``edgeship convert ARGS`` in a fresh interpreter (no debug tracebacks)."""
    env = {**os.environ, "EDGESHIP_DEBUG": ""}
    return subprocess.run(
        [sys.executable, "-m", "edgeship", "convert", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class Mosquitto(LocalBroker):
    """The product's own private broker (``edgeship broker``) on a free loopback port;
    ``stop()``/``start()`` on the same port simulate an outage."""

    def __init__(self, workdir: Path, extra_config: str = "") -> None:
        del workdir  # the broker keeps its generated config in a temp dir of its own
        super().__init__(0, extra_config=extra_config)
        self._started = False

    def start(self, timeout: float = 30.0) -> Mosquitto:
        """The first start takes another free port when the one picked was taken in the
        meantime (pick-then-bind: another process may bind it first); a restart keeps
        its port, as a broker back from an outage does."""
        for attempt in range(5):
            try:
                super().start(timeout)
            except TransportError:
                if self._started or attempt == 4:
                    raise
                self.port = free_port()
            else:
                self._started = True
                return self
        raise AssertionError("unreachable")


@pytest.fixture(autouse=True, scope="session")
def _state_outside_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Rollout state and the like go to a temp dir, never to the user's ~/.local/state
    (children started by the tests inherit it)."""
    saved = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("xdg-state"))
    yield
    if saved is None:
        os.environ.pop("XDG_STATE_HOME", None)
    else:
        os.environ["XDG_STATE_HOME"] = saved


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A fresh broker for one test (tests that stop/start the broker need their own)."""
    broker = Mosquitto(tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def shared_mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One broker for the session, for tests that only need a broker to be there."""
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


# a throwaway PostgreSQL cluster (session) and a fresh database per test: tests/pgcluster.py
from pgcluster import pg_cluster, pg_url  # noqa: E402, F401
