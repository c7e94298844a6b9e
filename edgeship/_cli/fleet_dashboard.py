"""``edgeship fleet dashboard``: the fleet in a browser (thin: options -> sdk)."""

from __future__ import annotations

from pathlib import Path

import click

from edgeship._cli._options import (
    broker_options,
    db_option,
    read_password,
    topic_name,
    wait_for_signal,
)


def _listen(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise click.BadParameter(f"{value!r}: use HOST:PORT, e.g. 127.0.0.1:8600", ctx=ctx,
                                 param=param)
    return host.strip("[]") or "127.0.0.1", int(port)


@click.command("dashboard")
@broker_options
@click.option("--fleet", "fleet_name", required=True, help="fleet name", callback=topic_name)
@db_option
@click.option("--listen", default="127.0.0.1:8600", show_default=True, callback=_listen,
              help="HOST:PORT; an address beyond loopback needs --tls-cert/--tls-key and "
                   "--token-file or --tls-client-ca")
@click.option("--releases", "releases", multiple=True,
              type=click.Path(exists=True, file_okay=False),
              help="release directory, or a directory of them, for the releases page (repeat)")
@click.option("--allow-actions", is_flag=True,
              help="offer pause/resume/cancel of rollouts and promote/discard of shadows")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="who may sign in (to act; beyond loopback, to look at all): NAME:TOKEN "
                   "(or TOKEN) per line, 16+ characters")
@click.option("--history-days", default=7.0, show_default=True, type=click.FloatRange(0.01),
              help="days of telemetry history kept in the fleet database")
@click.option("--tls-cert", type=click.Path(path_type=Path), default=None, help="Serve https.")
@click.option("--tls-key", type=click.Path(path_type=Path), default=None,
              help="Key of --tls-cert.")
@click.option("--tls-client-ca", type=click.Path(path_type=Path), default=None,
              help="Require client certificates signed by this CA (mutual TLS).")
def dashboard(broker_url: str, username: str, password_file: str | None, fleet_name: str,
              db_url: str | None, listen: tuple[str, int], releases: tuple[str, ...],
              allow_actions: bool, token_file: str | None, history_days: float,
              tls_cert: Path | None, tls_key: Path | None, tls_client_ca: Path | None) -> None:
    """A live web page of the fleet: devices, rollouts, releases, history.

    Devices and their phase, drift, shadow and latency come from the broker's status and
    telemetry topics and the fleet database's devices table (which it keeps up to date,
    like `fleet record`); rollouts and telemetry history from the fleet database
    (SQLite or PostgreSQL, --db; history older than --history-days is dropped).
    Read-only unless --allow-actions; pause/resume/cancel are `fleet pause|resume|cancel`.
    """
    from edgeship._cli.cloud import _server_tls
    from edgeship.sdk.fleet._dashboard import Dashboard, DashboardConfig
    from edgeship.sdk.fleet._dashboard_auth import read_tokens

    config = DashboardConfig(
        broker_url=broker_url, fleet=fleet_name, db=db_url, host=listen[0],
        port=listen[1], releases=releases, allow_actions=allow_actions,
        tokens=read_tokens(token_file) if token_file else {}, username=username,
        password=read_password(password_file), retention_s=history_days * 86400,
        ssl_context=_server_tls(tls_cert, tls_key, tls_client_ca),
        client_certs=tls_client_ca is not None)
    dash = Dashboard(config).start()
    click.echo(f"dashboard of fleet {fleet_name} on {dash.url}", err=True)
    try:
        wait_for_signal()
    finally:
        dash.stop()
