"""What the agent's child interpreters (the health check, the shadow worker) share: an
environment without the device key, and dying with the agent.

A child hung inside a runtime never reads the EOF the agent's death leaves on its pipe;
without :func:`die_with_parent` a SIGKILLed agent left it behind for good, and every
restart could add one more.
"""

from __future__ import annotations

import os
import signal

__all__ = ["PARENT_ENV", "child_env", "die_with_parent"]

PARENT_ENV = "EDGESHIP_AGENT_PID"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def child_env() -> dict[str, str]:
    """Our environment minus any PEM private key (a child needs one data key at most,
    never the key that opens them all), plus our pid for :func:`die_with_parent`."""
    env = {k: v for k, v in os.environ.items() if "PRIVATE KEY" not in v}
    env[PARENT_ENV] = str(os.getpid())
    return env


def die_with_parent() -> None:
    """In the child, first thing: ask Linux to SIGKILL it when the agent's thread that
    started it ends. ``PARENT_ENV`` closes the race of an agent that died before the
    request was made. Not Linux: the EOF on stdin is all there is."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return
    parent = os.environ.get(PARENT_ENV, "")
    if parent.isdigit() and os.getppid() != int(parent):
        os._exit(0)
