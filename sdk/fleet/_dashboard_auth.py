"""Who may act on the dashboard, and the actions themselves.

Actions (pause, resume, cancel a rollout; promote or discard a shadow) exist only with
``--allow-actions``. Then a person signs in with a token from ``--token-file`` (one per
line, ``NAME:TOKEN`` or a bare ``TOKEN``, at least 16 characters) and gets a session
cookie (HttpOnly, SameSite=Strict, Secure over TLS). Every form carries the session's
CSRF token, and a POST whose Origin is another site is refused as well, so a page
elsewhere cannot act through a signed-in browser. Every action, refused or done, is
written to the audit log with who and when.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from edgeship._errors import ConfigError

__all__ = ["ACTIONS", "Session", "Sessions", "read_tokens"]

ACTIONS = ("pause", "resume", "cancel", "promote", "discard")
MIN_TOKEN_CHARS = 16
MAX_SESSIONS = 1000
SESSION_TTL_S = 12 * 3600.0


def read_tokens(path: str | Path) -> dict[str, str]:
    """token -> name from a token file (``NAME:TOKEN`` or ``TOKEN`` per line; ``#``
    comments)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--token-file {path}: cannot read it ({exc})") from exc
    tokens: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, token = line.rpartition(":")
        token = token.strip()
        if len(token) < MIN_TOKEN_CHARS:
            raise ConfigError(f"--token-file {path}:{n}: a token needs at least "
                              f"{MIN_TOKEN_CHARS} characters")
        tokens[token] = name.strip()[:40] or "operator"
    if not tokens:
        raise ConfigError(f"--token-file {path}: no token in it")
    return tokens


@dataclass
class Session:
    """One browser: its CSRF token, and who signed in (None before)."""

    sid: str
    csrf: str
    created: float
    who: str | None = None
    addr: str = ""


@dataclass
class Sessions:
    """The sessions of this dashboard process (in memory: a restart signs everyone out)."""

    tokens: Mapping[str, str]
    _by_id: dict[str, Session] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get_or_new(self, sid: str | None, addr: str) -> tuple[Session, bool]:
        """The session of cookie ``sid``, or a new one (True: set the cookie)."""
        now = time.time()
        with self._lock:
            s = self._by_id.get(sid or "")
            if s is not None and now - s.created < SESSION_TTL_S:
                return s, False
            if len(self._by_id) >= MAX_SESSIONS:  # forget the oldest half
                for old in sorted(self._by_id.values(), key=lambda x: x.created)[
                        :MAX_SESSIONS // 2]:
                    del self._by_id[old.sid]
            s = Session(sid=secrets.token_urlsafe(24), csrf=secrets.token_urlsafe(24),
                        created=now, addr=addr)
            self._by_id[s.sid] = s
            return s, True

    def sign_in(self, session: Session, token: str, name: str) -> bool:
        """Whether ``token`` is one of the file's; then the session acts as its name
        (``name`` given at sign-in is added for a shared token)."""
        owner = next((who for t, who in self.tokens.items()
                      if hmac.compare_digest(t.encode(), token.encode())), None)
        if owner is None:
            return False
        with self._lock:
            session.who = owner if not name or name == owner else f"{name[:40]} ({owner})"
            session.csrf = secrets.token_urlsafe(24)  # a new session state, a new form token
        return True

    @staticmethod
    def csrf_ok(session: Session, sent: str) -> bool:
        return bool(sent) and hmac.compare_digest(session.csrf.encode(), sent.encode())
