"""The ``edgeship`` command's entry point.

``edgeship agent run --config FILE`` is what a device runs at every boot: it starts the
daemon here, without importing click and the command tree (issue 16: start to first
answer). Both it and the click CLI run behind :func:`run_guarded`, the command's one error
boundary (one line on stderr; exit 2 for an :class:`~edgeship.EdgeshipError`, 1 for
anything else, 130 when interrupted). Every other command line, ``agent run`` with any other option included, goes
to the click CLI unchanged.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["main"]


def agent_run_config(args: list[str]) -> Path | None:
    """The config of exactly ``agent run --config FILE`` (or ``--config=FILE``), else None."""
    if args[:2] != ["agent", "run"]:
        return None
    rest = args[2:]
    if len(rest) == 2 and rest[0] == "--config" and rest[1]:
        return Path(rest[1])
    if len(rest) == 1 and rest[0].startswith("--config=") and len(rest[0]) > 9:
        return Path(rest[0][9:])
    return None


def main() -> None:
    config = agent_run_config(sys.argv[1:])
    if config is None:
        from edgeship._cli.main import main as cli_main

        cli_main()
        return
    sys.exit(run_guarded(lambda: _run_agent(config)))


def run_guarded(work: Callable[[], int]) -> int:
    """``work()``'s exit code behind the CLI's one error boundary (see the module
    docstring); the click CLI and ``agent run`` both run behind it."""
    from edgeship import EdgeshipError
    from edgeship._cli import begin, end

    begin()
    try:
        return work()
    except EdgeshipError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the boundary: one line, never a traceback
        if os.environ.get("EDGESHIP_DEBUG"):
            raise
        print(f"error: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        end()


def _run_agent(config: Path) -> int:
    from edgeship.agent._boot import run_agent
    from edgeship.agent._config import load_config

    return run_agent(load_config(config))
