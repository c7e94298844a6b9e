"""``edgeship broker [--port 1883]``: a private mosquitto on loopback for a laptop or a demo.

The broker itself is :class:`edgeship.sdk.transport._broker.LocalBroker` (re-exported here
for the code that imported it from this module before it moved).
"""

from __future__ import annotations

import click

from edgeship._errors import TransportError
from edgeship.sdk.transport._broker import LocalBroker

__all__ = ["LocalBroker", "broker"]


@click.command()
@click.option("--port", default=1883, show_default=True, type=click.IntRange(0, 65535),
              help="port on 127.0.0.1 (0: any)")
def broker(port: int) -> None:
    """Run a private mosquitto on loopback until Ctrl-C / SIGTERM."""
    from edgeship._cli._options import wait_for_signal

    with LocalBroker(port) as local:
        click.echo(local.url)
        proc = local.proc
        wait_for_signal(alive=lambda: proc is not None and proc.poll() is None)
        if proc is not None and proc.poll() is not None:
            raise TransportError(f"mosquitto stopped on its own (exit code {proc.returncode})")
