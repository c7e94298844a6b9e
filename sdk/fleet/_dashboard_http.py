"""The dashboard's HTTP side: routes, static files, the event stream, sign-in and action
forms with their CSRF and Origin checks. What a page shows comes from
:class:`~edgeship.sdk.fleet._dashboard.Dashboard`; this module only speaks HTTP."""

from __future__ import annotations

import mimetypes
import time
from collections.abc import Mapping
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from edgeship.sdk.fleet import _dashboard_html as html
from edgeship.sdk.fleet._dashboard_auth import Session, Sessions
from edgeship.sdk.fleet._history import Action

from edgeship._errors import EdgeshipError

if TYPE_CHECKING:
    from edgeship.sdk.fleet._dashboard import Dashboard

__all__ = ["DashboardHandler"]

STATIC = Path(__file__).parent / "dashboard_static"
MAX_FORM_BYTES = 8192
_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                       "frame-ancestors 'none'; form-action 'self'",
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
            "X-Frame-Options": "DENY", "Cache-Control": "no-store"}


class DashboardHandler(BaseHTTPRequestHandler):
    """One request; ``dash`` is set on a subclass per dashboard."""

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
                               message=message, can_sign_in=bool(self.dash.config.tokens))
        self._send(status, text.encode(), "text/html; charset=utf-8", session)

    # -- GET ----------------------------------------------------------------------------------
    def do_GET(self) -> None:
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query))
        path = url.path
        try:
            if path.startswith("/static/"):
                return self._static(path[len("/static/"):])
            session = self._session()
            if self.dash.config.sign_in_to_view and session[0].who is None:
                body = '<p id="signin">Sign in with your dashboard token to see the fleet.</p>'
                return self._page(401, "sign in", body, "", session)
            if path == "/events":
                return self._events()
            message = params.get("msg", "")[:300]
            if path == "/":
                title, body = self.dash.devices(params)
                return self._page(200, title, body, "devices", session, message)
            if path.startswith("/device/"):
                title, body = self.dash.device(unquote(path[len("/device/"):])[:128])
                return self._page(200, title, body, "devices", session, message)
            if path in ("/rollouts", "/releases"):
                render = self.dash.rollouts if path == "/rollouts" else self.dash.releases
                title, body = render(session[0])
                return self._page(200, title, body, path[1:], session, message)
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
        if not self.dash.config.tokens:
            return self._refuse(session, "nobody signs in here (no --token-file)", "sign-in",
                                "-")
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
        with self.dash.store.use() as (_, history):
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

