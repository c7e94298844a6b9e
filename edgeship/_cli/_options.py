"""Option helpers shared by the commands that talk to a broker (fleet, broker)."""

from __future__ import annotations

import re
import signal
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def broker_options(func: F) -> F:
    """--broker URL plus optional credentials, for every command that talks MQTT."""
    func = click.option("--password-file", type=click.Path(exists=True, dir_okay=False),
                        default=None, help="file holding the broker password")(func)
    func = click.option("--username", default="", help="broker user name")(func)
    func = click.option("--broker", "broker_url", required=True, metavar="URL",
                        help="mqtt://HOST[:PORT] or mqtts://...")(func)
    return func


def db_option(func: F) -> F:
    """--db URL (or $EDGESHIP_FLEET_DB): the fleet database of every stateful fleet command."""
    return click.option("--db", "db_url", default=None, metavar="URL", envvar="EDGESHIP_FLEET_DB",
                        help="fleet database: sqlite:///PATH or postgresql://USER@HOST:PORT/DB "
                             "[env EDGESHIP_FLEET_DB; default: "
                             "sqlite:///~/.local/state/edgeship/fleet.sqlite]")(func)


_TOPIC_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def topic_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback for a fleet/group name that goes into MQTT topics: one topic level,
    no wildcards ("+" alone is the any-fleet wildcard where a command allows it)."""
    if value is None or (value == "+" and param.default == "+"):
        return value
    if not _TOPIC_NAME.match(value):
        raise click.BadParameter(f"{value!r}: use letters, digits, '.', '_' or '-' "
                                 "(no / + # $)", ctx=ctx, param=param)
    return value


def read_password(path: str | None) -> str:
    """The broker password in ``path`` (at most 4 KiB of UTF-8 text), or ""."""
    from edgeship._errors import ConfigError
    from edgeship.sdk._fileio import read_head

    if not path:
        return ""
    try:
        data = read_head(path, 4096)
        if len(data) > 4096:
            raise ConfigError(f"--password-file {path}: larger than 4096 bytes")
        return data.decode().strip()
    except OSError as exc:
        raise ConfigError(f"--password-file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--password-file {path}: not UTF-8 text") from exc


def parse_devices(text: str | None) -> list[str]:
    devices = [d.strip() for d in (text or "").split(",") if d.strip()]
    for device in devices:
        if not _TOPIC_NAME.match(device):
            raise click.BadParameter(f"{device!r}: use letters, digits, '.', '_' or '-' "
                                     "(no / + # $)", param_hint="'--devices'")
    return devices


def wait_for_signal(alive: Callable[[], bool] | None = None) -> None:
    """Block until SIGTERM or Ctrl-C (or until ``alive()`` turns false)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        if alive is not None and not alive():
            return


def _set_verbose(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        from edgeship.sdk._quiet import set_verbose

        set_verbose()  # an environment variable: the agent's child processes inherit it


def verbose_option(func: F) -> F:
    """-v: also show the runtimes' own log lines (LiteRT's INFO lines, onnxruntime's warnings)."""
    return click.option("-v", "--verbose", is_flag=True, expose_value=False, is_eager=True,
                        callback=_set_verbose,
                        help="Also show LiteRT's and onnxruntime's own log lines.")(func)
