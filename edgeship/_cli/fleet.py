"""``edgeship fleet ...``: the host side of updates (thin: parse options, call the sdk, print).

``serve`` answers the devices' chunk requests; ``push``, ``promote``, ``discard``,
``status`` and ``credentials`` live in :mod:`edgeship._cli.fleet_rollout` and share the option helpers at the top.
"""

from __future__ import annotations

import click

from edgeship._cli._options import broker_options, read_password, topic_name, wait_for_signal
from edgeship._errors import TransportError


@click.group()
def fleet() -> None:
    """Serve releases to a fleet and push updates to its devices."""


@fleet.command("serve")
@broker_options
@click.option("--releases", "releases", multiple=True, type=click.Path(exists=True,
              file_okay=False), help="release directories to serve (repeat, or list after)")
@click.argument("more", nargs=-1, type=click.Path(exists=True, file_okay=False))
@click.option("--fleet", "fleet_name", default="+", show_default=True, callback=topic_name,
              help="serve only this fleet")
@click.option("--group", default="edgeship-release-servers", show_default=True,
              callback=topic_name, help="$share group; servers in one group split the requests")
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(0.1),
              help="seconds to reach the broker at start (later outages are ridden out)")
def serve(broker_url: str, username: str, password_file: str | None, releases: tuple[str, ...],
          more: tuple[str, ...], fleet_name: str, group: str, timeout: float) -> None:
    """Answer devices' chunk requests for the files of the release dirs until SIGTERM."""
    from edgeship.sdk.fleet._release_server import ReleaseServer

    dirs = [*releases, *more]
    if not dirs:
        raise click.UsageError("give at least one release directory (--releases RELDIR)")
    from edgeship.sdk.release._release import self_check

    for reldir in dirs:  # a tampered release is refused here, not by every device
        self_check(reldir)
    server = ReleaseServer(broker_url, dirs, fleet=fleet_name, group=group,
                           username=username, password=read_password(password_file))
    server.start()
    if not server.edge.wait_connected(timeout):
        server.stop()
        raise TransportError(f"cannot reach the broker at {broker_url} (or it refused us) "
                             f"within {timeout:g}s")
    click.echo(f"serving {len(server.files)} files of {len(dirs)} release(s) on {broker_url}",
               err=True)
    try:
        wait_for_signal()
    finally:
        server.stop()
    click.echo(f"served {server.requests} chunks, {server.bytes_sent} bytes", err=True)


# Staged rollouts, fleet status and broker credentials (edgeship/_cli/fleet_rollout.py;
# without --canary/--waves its push offers the release to every named device at once).
from edgeship._cli.fleet_rollout import (  # noqa: E402
    credentials,
    discard,
    promote,
    push,
    status,
)

fleet.add_command(push)
fleet.add_command(promote)
fleet.add_command(discard)
fleet.add_command(status)
fleet.add_command(credentials)

from edgeship._cli.fleet_dashboard import dashboard  # noqa: E402

fleet.add_command(dashboard)
# The fleet database: rollouts, pause/resume/cancel, recording statuses and heartbeats
# (edgeship/_cli/fleet_db.py).
from edgeship._cli.fleet_db import cancel, pause, record, resume, rollouts  # noqa: E402

for _command in (rollouts, pause, resume, cancel, record):
    fleet.add_command(_command)
