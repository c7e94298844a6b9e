"""``edgeship demo``: the whole loop on this machine (see edgeship/_demo.py)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from edgeship._cli._options import verbose_option


@click.command()
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("edgeship-demo"), show_default=True,
              help="Everything the demo writes goes here (replaced on the next run).")
@click.option("--broker", "broker_url", metavar="URL", default=None,
              help="Use this MQTT broker instead of starting a private mosquitto.")
@verbose_option
def demo(workdir: Path, broker_url: str | None) -> None:
    """Train, convert, sign, serve and update a model on this machine, end to end."""
    from rich.console import Console
    from rich.table import Table

    from edgeship._demo import run_demo

    if broker_url is not None:
        _check_broker(broker_url)
    console = Console(highlight=False)
    started = time.monotonic()
    result = run_demo(workdir, broker_url=broker_url, say=console.print)
    table = Table(title=f"edgeship demo ({time.monotonic() - started:.0f}s, work dir {workdir})")
    for column in ("step", "outcome", "detail"):
        table.add_column(column)
    for row in result.rows:
        table.add_row(*row)
    console.print(table)
    for check, passed in result.checks.items():
        console.print(f"{'PASS' if passed else 'FAIL'}  {check}")
    if not result.ok:
        click.echo("error: the demo did not go as expected (see FAIL lines, logs in "
                   f"{workdir / 'logs'})", err=True)
        sys.exit(1)


def _check_broker(url: str, timeout: float = 5.0) -> None:
    """Fail in seconds on a malformed or silent --broker, not minutes into the demo."""
    import socket

    from edgeship._errors import ConfigError, TransportError
    from edgeship.sdk.transport._mqtt import parse_broker_url

    try:
        host, port, _tls = parse_broker_url(url)
    except ConfigError as exc:
        raise ConfigError(f"--broker: {exc}") from exc
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise TransportError(f"--broker: nothing answers at {host}:{port} "
                             f"({exc.strerror or exc})") from exc
