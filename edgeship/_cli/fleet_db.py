"""``edgeship fleet rollouts | pause | resume | cancel | record``: the fleet database.

Thin: open :class:`edgeship.sdk.fleet._fleetdb.FleetDB` (``--db``), apply the pure
changes of :mod:`edgeship.sdk.fleet._rollout_control`, print. ``record`` keeps the
devices' statuses and heartbeats ("last seen") in the database until SIGTERM.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

from edgeship._cli._options import (
    broker_options,
    db_option,
    read_password,
    topic_name,
    wait_for_signal,
)


@click.command("rollouts")
@db_option
@click.option("--fleet", "fleet_name", default=None, callback=topic_name,
              help="only this fleet's rollouts")
@click.option("--json", "as_json", is_flag=True, help="one JSON document on stdout")
def rollouts(db_url: str | None, fleet_name: str | None, as_json: bool) -> None:
    """List the recorded rollouts with their state, oldest change first."""
    from edgeship.sdk.fleet._fleetdb import FleetDB, short_id

    rows = []
    with FleetDB(db_url) as db:
        for key, _, updated in db.list(fleet_name):
            r = db.load(key)
            if r is None:
                continue
            c = r.counts()
            rows.append({"id": short_id(key), "key": key, "fleet": r.fleet, "model": r.model,
                         "version": r.version, "mode": r.mode, "status": r.status,
                         "reason": r.reason or None, "devices": len(r.outcomes),
                         "done": c["committed"] + c["shadowing"],
                         "failed": c["failed"] + c["rolled-back"] + c["timeout"],
                         "waves": len(r.waves), "wave": min(r.current + 1, len(r.waves)),
                         "updated": updated})
    if as_json:
        click.echo(json.dumps({"rollouts": rows}, indent=1))
        return
    if not rows:
        click.echo("no rollouts recorded")
    for row in rows:
        click.echo(f"{row['id']}  {row['fleet']}  {row['model']} {row['version']}"
                   f"{' (shadow)' if row['mode'] == 'shadow' else ''}  {row['status']}  "
                   f"wave {row['wave']}/{row['waves']}  {row['done']}/{row['devices']} done, "
                   f"{row['failed']} failed  "
                   f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(float(row['updated'] or 0)))}")


def _control(db_url: str | None, ref: str, action: str) -> None:
    from edgeship.sdk.fleet._fleetdb import FleetDB, short_id
    from edgeship.sdk.fleet._rollout_control import operate

    with FleetDB(db_url) as db:
        new = operate(db, db.find(ref).key, action)
    click.echo(f"rollout {short_id(new.key)} ({new.fleet} {new.model} {new.version}): "
               f"{new.status}")


@click.command("pause")
@click.argument("rollout")
@db_option
def pause(rollout: str, db_url: str | None) -> None:
    """Stop offering waves of ROLLOUT (id, key or FLEET/MODEL/VERSION); devices already
    offered go on. The worker driving it keeps watching until `fleet resume`."""
    _control(db_url, rollout, "pause")


@click.command("resume")
@click.argument("rollout")
@db_option
def resume(rollout: str, db_url: str | None) -> None:
    """Go on with a paused or halted ROLLOUT (its open wave gets a fresh timeout). A
    worker standing by (`fleet push --wait`) drives it on; else re-run the push."""
    _control(db_url, rollout, "resume")


@click.command("cancel")
@click.argument("rollout")
@db_option
def cancel(rollout: str, db_url: str | None) -> None:
    """Offer nothing more of ROLLOUT, for good (offers already made stay; pushing the
    release again starts a new rollout)."""
    _control(db_url, rollout, "cancel")


@click.command("record")
@broker_options
@click.option("--fleet", "fleet_name", required=True, callback=topic_name, help="fleet name")
@db_option
@click.option("--interval", default=5.0, show_default=True, type=click.FloatRange(0.1, 3600),
              help="seconds between writes to the database")
def record(broker_url: str, username: str, password_file: str | None, fleet_name: str,
           db_url: str | None, interval: float) -> None:
    """Record every device's status and heartbeat ("last seen") in the fleet database
    until SIGTERM, so `fleet status` answers when the broker's retained topics are gone."""
    from edgeship.sdk.fleet._fleetdb import FleetDB
    from edgeship.sdk.fleet._fleetstatus import FleetWatcher

    with FleetDB(db_url) as db:
        watcher = FleetWatcher(broker_url, fleet_name, username=username,
                               password=read_password(password_file), telemetry=True).start()
        recorded: dict[str, Any] = {}
        stop = {"now": False}

        def flush() -> None:
            statuses = watcher.raw()
            db.record_devices(fleet_name, {d: s for d, s in statuses.items()
                                           if recorded.get(d) != s})
            recorded.update(statuses)

        import threading

        def loop() -> None:
            while not stop["now"]:
                flush()
                time.sleep(interval)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        click.echo(f"recording fleet {fleet_name} every {interval:g}s", err=True)
        try:
            wait_for_signal()
        finally:
            stop["now"] = True
            thread.join(timeout=interval + 5)
            watcher.stop()
        flush()
    click.echo(f"recorded {len(recorded)} devices", err=True)
