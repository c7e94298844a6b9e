"""``edgeship fleet dashboard``: the fleet in a browser, live.

A small web server over :class:`~edgeship.sdk.fleet._dashboard_live.LiveFleet` (the
broker's status and telemetry topics) and the fleet database (rollouts, history). Pages
are rendered on the server (:mod:`edgeship.sdk.fleet._dashboard_html`); one small script
listens to a server-sent event stream (``/events``) and re-fetches the page's main part
when something changed, so a rollout moves on the page without a reload.

Why the standard library's :class:`~http.server.ThreadingHTTPServer`: the dashboard
serves a handful of operators' browsers, on loopback by default; each open page holds one
thread for its event stream, and every page is a few milliseconds of rendering. A thread
per connection is plenty for that and adds no dependency to install on a fleet
manager's machine. Serving beyond loopback needs TLS (the cloud server's options).
"""

from __future__ import annotations

import ipaddress
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from edgeship.sdk.fleet import _dashboard_html as html
from edgeship.sdk.fleet._dashboard_auth import ACTIONS, Session, Sessions
from edgeship.sdk.fleet._dashboard_data import (
    DeviceQuery,
    device_rows,
    make_row,
    rollout_view,
    scan_releases,
)
from edgeship.sdk.fleet._dashboard_http import DashboardHandler
from edgeship.sdk.fleet._dashboard_live import LiveFleet, Store
from edgeship.sdk.fleet._fleetstatus import summarize
from edgeship.sdk.fleet._history import Action

from edgeship._errors import ConfigError, EdgeshipError

__all__ = ["Dashboard", "DashboardConfig"]

MAX_ROLLOUTS_SHOWN = 20


@dataclass(frozen=True, kw_only=True)
class DashboardConfig:
    """What ``edgeship fleet dashboard`` was started with."""

    broker_url: str
    fleet: str
    db: str | Path | None = None  # the fleet database: a URL or a SQLite path (None: default)
    host: str = "127.0.0.1"
    port: int = 8600
    releases: Sequence[str] = ()
    allow_actions: bool = False
    tokens: Mapping[str, str] = field(default_factory=dict)  # token -> name
    username: str = ""
    password: str = ""
    retention_s: float = 7 * 86400.0
    ssl_context: ssl.SSLContext | None = None
    client_certs: bool = False  # the TLS context requires client certificates

    def __post_init__(self) -> None:
        if self.allow_actions and not self.tokens:
            raise ConfigError("--allow-actions needs --token-file (who may act)")
        if _loopback(self.host):
            return
        if self.ssl_context is None:
            raise ConfigError(f"--listen {self.host}: serving the dashboard beyond this machine "
                              "needs --tls-cert and --tls-key")
        if not self.tokens and not self.client_certs:
            raise ConfigError(f"--listen {self.host}: beyond this machine, say who may look: "
                              "--token-file (everyone signs in) or --tls-client-ca")

    @property
    def sign_in_to_view(self) -> bool:
        """Beyond loopback with tokens, every page needs a signed-in session."""
        return bool(self.tokens) and not _loopback(self.host)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Dashboard:
    """The web server and its live feed; :meth:`start` returns once both are up."""

    def __init__(self, config: DashboardConfig) -> None:
        self.config = config
        self.store = Store(config.db)
        self.live = LiveFleet(config.broker_url, config.fleet, self.store,
                              username=config.username, password=config.password,
                              retention_s=config.retention_s)
        self.sessions = Sessions(tokens=config.tokens)
        self._summary: tuple[int, dict[str, Any]] = (-1, {})
        self.stopping = threading.Event()
        handler = type("Handler", (DashboardHandler,), {"dash": self})
        try:
            self.httpd = ThreadingHTTPServer((config.host, config.port), handler)
        except OSError as exc:
            raise ConfigError(f"--listen {config.host}:{config.port}: {exc.strerror or exc}"
                              ) from exc
        self.httpd.daemon_threads = True
        if config.ssl_context is not None:  # the handshake runs in the request's thread
            self.httpd.socket = config.ssl_context.wrap_socket(
                self.httpd.socket, server_side=True, do_handshake_on_connect=False)
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="dashboard-http",
                                        daemon=True)

    @property
    def url(self) -> str:
        """Where the dashboard answers (``http://HOST:PORT``, https with TLS)."""
        host, port = str(self.httpd.server_address[0]), int(self.httpd.server_address[1])
        scheme = "https" if self.config.ssl_context else "http"
        return f"{scheme}://{host}:{port}"

    def start(self, timeout: float = 10.0) -> Dashboard:
        """Connect to the broker (TransportError after ``timeout`` s), then serve."""
        try:
            self.live.start(timeout)
        except BaseException:
            self.httpd.server_close()
            self.store.close()
            raise
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and leave the broker."""
        self.stopping.set()
        self.live.stop()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.store.close()

    # -- pages --------------------------------------------------------------------------------
    def devices(self, params: Mapping[str, str]) -> tuple[str, str]:
        """The devices page (title, main HTML) for the URL's query ``params``."""
        version = self.live.version  # before the snapshot: a summary is never newer
        statuses, figures = self.live.snapshot()
        query = DeviceQuery.from_params(params)
        rows, total, pages = device_rows(statuses, figures, query)
        seen, summary = self._summary
        if seen != version:  # every open page refreshes on a change: count the fleet once
            summary = summarize(statuses)
            self._summary = (version, summary)
        return "Devices", html.devices_page(rows, total, pages, query, summary, time.time())

    def device(self, device: str) -> tuple[str, str]:
        """One device's page: its status, charts of its heartbeats, its history."""
        statuses, figures = self.live.snapshot()
        status = statuses.get(device)
        row = make_row(status, figures.get(device)) if status else None
        with self.store.use() as (db, history):
            samples = history.samples(self.config.fleet, device)
            events = history.events(self.config.fleet, device)
            outcomes = []
            for key, _, _ in reversed(db.list(self.config.fleet)[-MAX_ROLLOUTS_SHOWN:]):
                rollout = db.load(key)
                if rollout is not None and device in rollout.outcomes:
                    outcomes.append((rollout.version, rollout.outcomes[device],
                                     rollout.errors.get(device, "")))
        return device, html.device_page(row, device, samples, events, outcomes, time.time())

    def rollouts(self, session: Session) -> tuple[str, str]:
        """The rollouts page: the fleet's newest recorded rollouts and the audit log."""
        with self.store.use() as (db, history):
            views = []
            for key, _, updated in reversed(db.list(self.config.fleet)[-MAX_ROLLOUTS_SHOWN:]):
                rollout = db.load(key)
                if rollout is not None:
                    views.append(rollout_view(rollout, updated))
            log = history.actions(20)
        return "Rollouts", html.rollouts_page(views, self.config.allow_actions, session.csrf,
                                              log, time.time())

    def releases(self, session: Session) -> tuple[str, str]:
        """The releases page: the --releases directories and the shadows on the fleet."""
        statuses, _ = self.live.snapshot()
        shadows: dict[str, list[float]] = {}
        counts: dict[str, int] = {}
        for s in statuses.values():
            if s.shadow and s.shadow.get("version"):
                v = str(s.shadow["version"])
                counts[v] = counts.get(v, 0) + 1
                if isinstance(s.shadow.get("agreement"), (int, float)):
                    shadows.setdefault(v, []).append(float(s.shadow["agreement"]))
        summary = {v: (n, sum(shadows[v]) / len(shadows[v]) if shadows.get(v) else None)
                   for v, n in counts.items()}
        return "Releases", html.releases_page(scan_releases(self.config.releases, time.time()),
                                              summary, self.config.allow_actions, session.csrf)

    # -- actions ------------------------------------------------------------------------------
    def act(self, who: str, form: Mapping[str, str]) -> str:
        """Do action ``form["action"]``; what happened, in words (EdgeshipError if refused)."""
        action = form.get("action", "")
        if action in ("pause", "resume", "cancel"):
            return self._control(who, action, form.get("key", ""))
        if action in ("promote", "discard"):
            return self._shadow(who, action, form.get("version", ""))
        raise ConfigError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")

    def _control(self, who: str, action: str, key: str) -> str:
        """The fleet's own pause / resume / cancel (what ``fleet pause|resume|cancel`` do):
        one transaction on the rollout's record, which the push driving it follows."""
        from edgeship.sdk.fleet._rollout_control import operate

        with self.store.use() as (db, _):
            rollout = db.load(key)
            if rollout is None or rollout.fleet != self.config.fleet:
                raise ConfigError(f"no rollout {key!r} of fleet {self.config.fleet} in the "
                                  "fleet database")
            new = operate(db, key, action, by=who)
        self.live.touch()
        return f"rollout of {new.version} {new.status}"

    def _shadow(self, who: str, action: str, version: str) -> str:
        from edgeship.sdk.release._manifest import parse_version

        parse_version(version)
        if action == "discard":
            target: Any = self._discard
        else:
            reldir = next((r.path for r in scan_releases(self.config.releases, time.time())
                           if r.version == version and not r.error), None)
            if reldir is None:
                raise ConfigError(f"promote {version}: no release directory of that version "
                                  "among --releases")
            target = lambda: self._promote(reldir)  # noqa: E731
        threading.Thread(target=self._background, args=(who, action, version, target),
                         daemon=True).start()
        return f"{action} of shadow {version} started"

    def _background(self, who: str, action: str, version: str, run: Any) -> None:
        try:
            result = run() if action == "promote" else run(version)
        except EdgeshipError as exc:
            result = f"failed: {exc}"
        with self.store.use() as (_, history):
            history.log_action(Action(ts=time.time(), who=who, action=f"{action} (done)",
                                      target=version, result=str(result)[:300]))
        self.live.touch()

    def _promote(self, reldir: str) -> str:
        from edgeship.sdk.fleet._fleetdb import FleetDB
        from edgeship.sdk.fleet._rollout import RolloutPolicy, shadowing_devices
        from edgeship.sdk.fleet._rollout_run import run_rollout

        c = self.config
        with FleetDB(c.db) as db:
            rollout = run_rollout(broker_url=c.broker_url, fleet=c.fleet, reldir=reldir, db=db,
                                  policy=RolloutPolicy(), wait=True, username=c.username,
                                  password=c.password, choose=shadowing_devices)
        return f"{rollout.status}: {rollout.counts().get('committed', 0)} committed"

    def _discard(self, version: str) -> str:
        from edgeship.sdk.fleet._rollout_run import discard_shadow

        c = self.config
        verdicts = discard_shadow(broker_url=c.broker_url, fleet=c.fleet, version=version,
                                  timeout=60, username=c.username, password=c.password)
        done = sum(v == "discarded" for v in verdicts.values())
        return f"{done} of {len(verdicts)} devices discarded it"
