"""``edgeship fleet ...``: the host side of updates (thin: parse options, call the sdk, print).

``serve`` answers the devices' chunk requests; ``push`` offers one release to named
devices. Shared option helpers sit at the top so that more commands (rollouts, status)
reuse them.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path
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


def read_password(path: str | None) -> str:
    return Path(path).read_text().strip() if path else ""


def parse_devices(text: str | None) -> list[str]:
    return [d.strip() for d in (text or "").split(",") if d.strip()]


def wait_for_signal() -> None:
    """Block until SIGTERM or Ctrl-C."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass


@click.group()
def fleet() -> None:
    """Serve releases to a fleet and push updates to its devices."""


@fleet.command("serve")
@broker_options
@click.option("--releases", "releases", multiple=True, type=click.Path(exists=True,
              file_okay=False), help="release directories to serve (repeat, or list after)")
@click.argument("more", nargs=-1, type=click.Path(exists=True, file_okay=False))
@click.option("--fleet", "fleet_name", default="+", show_default=True,
              help="serve only this fleet")
@click.option("--group", default="edgeship-release-servers", show_default=True,
              help="$share group; servers in one group split the requests")
def serve(broker_url: str, username: str, password_file: str | None, releases: tuple[str, ...],
          more: tuple[str, ...], fleet_name: str, group: str) -> None:
    """Answer chunk requests for the files of RELDIR... until SIGTERM / Ctrl-C."""
    from edgeship.sdk._release_server import ReleaseServer

    dirs = [*releases, *more]
    if not dirs:
        raise click.UsageError("give at least one release directory (--releases RELDIR)")
    server = ReleaseServer(broker_url, dirs, fleet=fleet_name, group=group,
                           username=username, password=read_password(password_file))
    server.start()
    click.echo(f"serving {len(server.files)} files of {len(dirs)} release(s) on {broker_url}",
               err=True)
    try:
        wait_for_signal()
    finally:
        server.stop()
    click.echo(f"served {server.requests} chunks, {server.bytes_sent} bytes", err=True)


@fleet.command("push")
@click.argument("reldir", type=click.Path(exists=True, file_okay=False))
@broker_options
@click.option("--fleet", "fleet_name", required=True, help="fleet name")
@click.option("--devices", default=None, metavar="ID,...", help="devices to offer the release to")
def push(reldir: str, broker_url: str, username: str, password_file: str | None,
         fleet_name: str, devices: str | None) -> None:
    """Offer the release in RELDIR to the named devices (retained offer, QoS 1)."""
    from edgeship.sdk._release_server import push_offer

    targets = parse_devices(devices)
    release = push_offer(broker_url, fleet_name, reldir, targets, username=username,
                         password=read_password(password_file))
    m = release.manifest
    click.echo(f"offered {m.model} {m.version} to {len(targets)} device(s) in fleet {fleet_name}")


# Staged rollouts, fleet status and broker credentials (edgeship/_cli/fleet_rollout.py).
# Its push is a superset of the plain push above (same options; without --canary/--waves
# it offers the release to every named device at once), so it takes the name "push".
from edgeship._cli.fleet_rollout import credentials, status  # noqa: E402
from edgeship._cli.fleet_rollout import push as rollout_push  # noqa: E402

fleet.add_command(rollout_push)
fleet.add_command(status)
fleet.add_command(credentials)
