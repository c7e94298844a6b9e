"""Maintenance windows: ``"02:00-04:00"`` in the device's local time (may cross midnight).

An offer may carry one (``fleet push --install-window``; unsigned like ``mode``: a broker
attacker could only delay an install) and a device may have its own (``[ota]
install_window``); a download that completes outside the window waits, reported as
``downloaded``, and is verified and installed once the window opens.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from edgeship._errors import MalformedError

__all__ = ["in_window", "parse_window"]

_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


def parse_window(text: str) -> tuple[int, int]:
    """``"HH:MM-HH:MM"`` -> (start, end) in minutes after midnight; start == end is refused."""
    found = _WINDOW.match(text or "")
    if not found:
        raise MalformedError(f"install window {str(text)[:40]!r} is not like 02:00-04:00")
    h1, m1, h2, m2 = (int(g) for g in found.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
        raise MalformedError(f"install window {text!r}: not a time of day")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end:
        raise MalformedError(f"install window {text!r} is empty")
    return start, end


def in_window(text: str, now: float,
              localtime: Callable[[float], time.struct_time] = time.localtime) -> bool:
    """Whether ``now`` (epoch seconds) falls in the window, in the device's local time."""
    start, end = parse_window(text)
    t = localtime(now)
    minute = t.tm_hour * 60 + t.tm_min
    return start <= minute < end if start < end else (minute >= start or minute < end)
