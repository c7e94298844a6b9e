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
import mimetypes
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from edgeship.sdk.fleet import _dashboard_html as html
from edgeship.sdk.fleet._dashboard_auth import ACTIONS, Session, Sessions
from edgeship.sdk.fleet._dashboard_data import (
    DeviceQuery,
    device_rows,
    make_row,
    rollout_view,
    scan_releases,
)
from edgeship.sdk.fleet._dashboard_live import LiveFleet, Store
from edgeship.sdk.fleet._fleetstatus import summarize
from edgeship.sdk.fleet._history import Action

from edgeship._errors import ConfigError, EdgeshipError

__all__ = ["Dashboard", "DashboardConfig"]

STATIC = Path(__file__).parent / "dashboard_static"
MAX_FORM_BYTES = 8192
MAX_ROLLOUTS_SHOWN = 20
_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                       "frame-ancestors 'none'; form-action 'self'",
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
            "X-Frame-Options": "DENY", "Cache-Control": "no-store"}


@dataclass(frozen=True, kw_only=True)
class DashboardConfig:
    """What ``edgeship fleet dashboard`` was started with."""

    broker_url: str
    fleet: str
    db_path: Path
    host: str = "127.0.0.1"
    port: int = 8600
    releases: Sequence[str] = ()
    allow_actions: bool = False
    tokens: Mapping[str, str] = field(default_factory=dict)  # token -> name
    username: str = ""
    password: str = ""
    retention_s: float = 7 * 86400.0
    ssl_context: ssl.SSLContext | None = None

    def __post_init__(self) -> None:
        if self.allow_actions and not self.tokens:
            raise ConfigError("--allow-actions needs --token-file (who may act)")
        if not _loopback(self.host) and self.ssl_context is None:
            raise ConfigError(f"--listen {self.host}: serving the dashboard beyond this machine "
                              "needs --tls-cert and --tls-key")


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
        self.store = Store(config.db_path)
        self.live = LiveFleet(config.broker_url, config.fleet, self.store,
                              username=config.username, password=config.password,
                              retention_s=config.retention_s)
        self.sessions = Sessions(tokens=config.tokens)
        self.stopping = threading.Event()
        handler = type("Handler", (_Handler,), {"dash": self})
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
            raise
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and leave the broker."""
        self.stopping.set()
        self.live.stop()
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- pages --------------------------------------------------------------------------------
    def devices(self, params: Mapping[str, str]) -> tuple[str, str]:
        """The devices page (title, main HTML) for the URL's query ``params``."""
        statuses, figures = self.live.snapshot()
        query = DeviceQuery.from_params(params)
        rows, total, pages = device_rows(statuses, figures, query)
        return "Devices", html.devices_page(rows, total, pages, query, summarize(statuses),
                                            time.time())

    def device(self, device: str) -> tuple[str, str]:
        """One device's page: its status, charts of its heartbeats, its history."""
        statuses, figures = self.live.snapshot()
        status = statuses.get(device)
        row = make_row(status, figures.get(device)) if status else None
        with self.store.use() as (db, history, _):
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
        with self.store.use() as (db, history, controls):
            marks = controls.all()
            views = []
            for key, _, updated in reversed(db.list(self.config.fleet)[-MAX_ROLLOUTS_SHOWN:]):
                rollout = db.load(key)
                if rollout is not None:
                    views.append(rollout_view(rollout, updated, marks.get(key)))
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
        """Pause and resume set the control row the push reads; cancel does too while a
        push drives the rollout, else it records the rollout halted here (a row left for a
        push that is not running would halt its next re-run instead)."""
        from edgeship.sdk.fleet._rollout_run import record_cancel

        verb = {"pause": "paused", "resume": "resumed", "cancel": "cancelled"}[action]
        with self.store.use() as (db, _, controls):
            rollout = db.load(key)
            if rollout is None:
                raise ConfigError(f"no rollout {key!r} in the fleet database")
            if rollout.status != "running":
                raise ConfigError(f"the rollout of {rollout.version} is {rollout.status}; "
                                  f"only a running one can be {verb}")
            if action == "cancel":
                try:
                    with db.lock(key):  # no push holds it: nobody else writes the record
                        record_cancel(db, rollout, who, asked=time.time(), now=time.time())
                        controls.set(key, None, who)
                        self.live.touch()
                        return f"rollout of {rollout.version} cancelled (no push was running it)"
                except ConfigError:  # a push runs it: it applies the control row
                    pass
            controls.set(key, {"pause": "paused", "resume": None, "cancel": "cancelled"}[action],
                         who)
        self.live.touch()
        return f"rollout of {rollout.version} {verb} (the push applies it within a second)"

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
        with self.store.use() as (_, history, _):
            history.log_action(Action(ts=time.time(), who=who, action=f"{action} (done)",
                                      target=version, result=str(result)[:300]))
        self.live.touch()

    def _promote(self, reldir: str) -> str:
        from edgeship.sdk.fleet._fleetdb import FleetDB
        from edgeship.sdk.fleet._rollout import RolloutPolicy, shadowing_devices
        from edgeship.sdk.fleet._rollout_run import run_rollout

        c = self.config
        with FleetDB(c.db_path) as db:
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


class _Handler(BaseHTTPRequestHandler):
    dash: Dashboard
    protocol_version = "HTTP/1.1"
    server_version = "edgeship-dashboard"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the audit log says more
        pass

    # -- plumbing -----------------------------------------------------------------------------
    def _session(self) -> tuple[Session, bool]:
        cookie = SimpleCookie(self.headers.get("Cookie") or "")
        sid: str | None = cookie["es_sid"].value if "es_sid" in cookie else None
        session: tuple[Session, bool] = self.dash.sessions.get_or_new(sid,
                                                                       self.client_address[0])
        return session

    def _send(self, status: int, body: bytes, ctype: str, session: tuple[Session, bool] | None,
              extra: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in {**_HEADERS, **(extra or {})}.items():
            self.send_header(k, v)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if session is not None and session[1]:
            secure = "; Secure" if self.dash.config.ssl_context else ""
            self.send_header("Set-Cookie", f"es_sid={session[0].sid}; Path=/; HttpOnly; "
                                           f"SameSite=Strict{secure}")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _page(self, status: int, title: str, body: str, active: str,
              session: tuple[Session, bool], message: str = "") -> None:
        if self.headers.get("X-Fragment") == "1":
            text = body
        else:
            text = html.layout(title=title, active=active, fleet=self.dash.config.fleet,
                               body=body, who=session[0].who,
                               actions=self.dash.config.allow_actions, csrf=session[0].csrf,
                               message=message)
        self._send(status, text.encode(), "text/html; charset=utf-8", session)

    # -- GET ----------------------------------------------------------------------------------
    def do_GET(self) -> None:
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query))
        path = url.path
        try:
            if path.startswith("/static/"):
                return self._static(path[len("/static/"):])
            if path == "/events":
                return self._events()
            session = self._session()
            message = params.get("msg", "")[:300]
            if path == "/":
                title, body = self.dash.devices(params)
                return self._page(200, title, body, "devices", session, message)
            if path.startswith("/device/"):
                title, body = self.dash.device(unquote(path[len("/device/"):])[:128])
                return self._page(200, title, body, "devices", session, message)
            if path == "/rollouts":
                return self._page(200, *self.dash.rollouts(session[0]), "rollouts", session,
                                  message)
            if path == "/releases":
                return self._page(200, *self.dash.releases(session[0]), "releases", session,
                                  message)
            self._send(404, b"not found", "text/plain", None)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _static(self, name: str) -> None:
        path = STATIC / name
        if "/" in name or name.startswith(".") or not path.is_file():
            return self._send(404, b"not found", "text/plain", None)
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        self._send(200, path.read_bytes(), ctype, None, {"Cache-Control": "max-age=300"})

    def _events(self) -> None:
        """Server-sent events: ``change`` whenever the fleet or the database moved (at most
        a few per second), a comment every 15 s to keep proxies from closing it."""
        self.send_response(200)
        for k, v in {**_HEADERS, "Content-Type": "text/event-stream",
                     "Connection": "close"}.items():
            self.send_header(k, v)
        self.end_headers()
        self.close_connection = True
        seen = self.dash.live.version
        try:
            self.wfile.write(b"retry: 1000\n\n")
            self.wfile.flush()
            while not self.dash.stopping.is_set():
                now = self.dash.live.wait_change(seen, 15.0)
                if now == seen:
                    self.wfile.write(b": idle\n\n")
                else:
                    seen = now
                    self.wfile.write(f"event: change\ndata: {now}\n\n".encode())
                self.wfile.flush()
                # a burst of messages is one refresh; a big fleet changes all the time, and
                # every refresh renders a page: fewer of them
                time.sleep(0.25 if len(self.dash.live.statuses) < 2000 else 1.0)
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass

    # -- POST ---------------------------------------------------------------------------------
    def do_POST(self) -> None:
        url = urlsplit(self.path)
        session = self._session()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_FORM_BYTES:
            return self._send(413, b"form too large", "text/plain", None)
        form = dict(parse_qsl(self.rfile.read(length).decode("utf-8", "replace")))
        if url.path == "/login":
            return self._login(session, form)
        if url.path == "/action":
            return self._action(session, form)
        self._send(404, b"not found", "text/plain", None)

    def _same_origin(self) -> bool:
        origin = self.headers.get("Origin")
        if origin is None or origin == "null":
            return origin is None
        return urlsplit(origin).netloc == self.headers.get("Host")

    def _login(self, session: tuple[Session, bool], form: Mapping[str, str]) -> None:
        s = session[0]
        if not self.dash.config.allow_actions:
            return self._refuse(session, "actions are off (start the dashboard with "
                                         "--allow-actions)", "sign-in", "-")
        if not self._same_origin() or not Sessions.csrf_ok(s, form.get("csrf", "")):
            return self._refuse(session, "the form is stale or from another site (CSRF check)",
                                "sign-in", "-")
        if not self.dash.sessions.sign_in(s, form.get("token", ""), form.get("who", "").strip()):
            return self._refuse(session, "wrong token", "sign-in", "-")
        self._audit(f"{s.who} ({self.client_address[0]})", "sign-in", "-", f"signed in as {s.who}")
        self._redirect(session, f"signed in as {s.who}")

    def _action(self, session: tuple[Session, bool], form: Mapping[str, str]) -> None:
        s = session[0]
        action = form.get("action", "")[:20]
        target = (form.get("key") or form.get("version") or "")[:300]
        if not self.dash.config.allow_actions:
            return self._refuse(session, "actions are off (start the dashboard with "
                                         "--allow-actions)", action, target)
        if s.who is None:
            return self._refuse(session, "sign in with the dashboard token first", action,
                                target)
        if not self._same_origin() or not Sessions.csrf_ok(s, form.get("csrf", "")):
            return self._refuse(session, "the form is stale or from another site (CSRF check)",
                                action, target)
        who = f"{s.who} ({self.client_address[0]})"
        try:
            result = self.dash.act(who, form)
        except EdgeshipError as exc:
            return self._refuse(session, str(exc), action, target, status=409)
        self._audit(who, action, target, result)
        self._redirect(session, result)

    def _audit(self, who: str, action: str, target: str, result: str) -> None:
        with self.dash.store.use() as (_, history, _):
            history.log_action(Action(ts=time.time(), who=who, action=action, target=target,
                                      result=result[:300]))

    def _refuse(self, session: tuple[Session, bool], why: str, action: str, target: str,
                status: int = 403) -> None:
        who = f"{session[0].who or 'anonymous'} ({self.client_address[0]})"
        self._audit(who, action, target, f"refused: {why}")
        self.dash.live.touch()
        body = f'<p id="refused" class="bad">refused: {html._e(why)}</p>' \
               '<p><a href="/rollouts">back</a></p>'
        self._page(status, "refused", body, "", session)

    def _redirect(self, session: tuple[Session, bool], message: str) -> None:
        back = urlsplit(self.headers.get("Referer") or "/rollouts")
        path = back.path if back.path.startswith("/") else "/rollouts"
        self._send(HTTPStatus.SEE_OTHER, b"", "text/plain", session,
                   {"Location": f"{path}?msg={quote(message[:300])}"})

