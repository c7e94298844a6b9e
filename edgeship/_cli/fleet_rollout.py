"""``edgeship fleet push | promote | discard | status | credentials``: staged rollouts
(also of shadow releases), fleet status, broker ACL.

Thin: parse options, call :mod:`edgeship.sdk.fleet._rollout_run`, :mod:`edgeship.sdk.fleet._fleetstatus`
or :mod:`edgeship.sdk.fleet._acl`, print. ``push`` without rollout options is the plain push
(one wave, every named device at once), so this ``push`` replaces the plain one.
``push --shadow`` offers a release to run beside the active model; ``promote`` offers it
normally to the devices that shadow it; ``discard`` ends the shadow.
Exit codes of ``push``/``promote``: 0 completed, paused or still running (without ``--wait``),
3 halted; of ``discard``: 3 when a device did not confirm within ``--timeout``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from edgeship.sdk.fleet._fleetdb import FleetDB

from edgeship._cli._options import (
    broker_options,
    db_option,
    parse_devices,
    read_password,
    topic_name,
)

F = TypeVar("F", bound=Callable[..., Any])

EXIT_HALTED = 3
EXIT_UNCONFIRMED = 3


def _rollout_options(devices_help: str) -> Callable[[F], F]:
    """The options of a staged rollout (push and promote)."""

    def wrap(func: F) -> F:
        for option in reversed((
            click.argument("reldir", type=click.Path(exists=True, file_okay=False)),
            broker_options,
            click.option("--fleet", "fleet_name", required=True, help="fleet name",
                         callback=topic_name),
            click.option("--devices", default=None, metavar="ID,...", help=devices_help),
            click.option("--canary", default="0%", show_default=True, metavar="N%",
                         help="share of the devices in the canary group (at least one if > 0)"),
            click.option("--waves", default="100%", show_default=True, metavar="P%,...",
                         help="cumulative shares reached by each wave after the canary, "
                              "e.g. 10%,50%,100%"),
            click.option("--max-failure-rate", default=None, metavar="R",
                         help="halt when failed/decided devices passes R (0.2 or 20%) "
                              "[default: never]"),
            click.option("--wave-timeout", default=None, type=float, metavar="S",
                         help="seconds a wave waits for a device's verdict [default: 600]"),
            click.option("--max-concurrent", default=0, show_default=True,
                         type=click.IntRange(0, 1_000_000), metavar="N",
                         help="at most N devices updating at once (offered, no verdict "
                              "yet); a wave's other devices wait their turn (0: no limit)"),
            click.option("--wait/--no-wait", default=False,
                         help="run until the rollout completed or halted (else offer what is "
                              "due, return)"),
            click.option("--json", "as_json", is_flag=True, help="one JSON report on stdout"),
            click.option("--state", "state_file", default=None,
                         type=click.Path(dir_okay=False),
                         help="a SQLite fleet database file (the same as --db sqlite:///PATH)"),
            db_option,
            click.option("--lease", "lease_s", default=15.0, show_default=True,
                         type=click.FloatRange(1, 3600),
                         help="seconds another worker waits after this one stops renewing "
                              "its lease on the rollout (it died) before taking it over"),
        )):
            func = option(func)
        return func

    return wrap


@click.command("push")
@_rollout_options("devices to update, in rollout order (default: every device with a status)")
@click.option("--shadow", is_flag=True,
              help="install it next to the active model and run it on sampled live requests "
                   "(off the answer path); success = the device reports 'shadowing'")
@click.option("--install-window", default="", metavar="HH:MM-HH:MM",
              help="devices download now and install inside this window of their local "
                   "time (e.g. 02:00-04:00; give a --wave-timeout that covers the wait)")
@click.option("--ongoing", is_flag=True,
              help="after the last wave, keep offering the release to devices that join "
                   "the fleet or come online later (waves 'joined N'; until fleet cancel)")
@click.option("--retry-failed", is_flag=True,
              help="offer the release again to the devices of its rollout that failed or "
                   "timed out (a last wave 'retry N')")
def push(reldir: str, broker_url: str, username: str, password_file: str | None,
         fleet_name: str, devices: str | None, canary: str, waves: str,
         max_failure_rate: str | None, wave_timeout: float | None, max_concurrent: int,
         wait: bool, as_json: bool, state_file: str | None, db_url: str | None,
         lease_s: float, shadow: bool, install_window: str, ongoing: bool,
         retry_failed: bool) -> None:
    """Offer the release in RELDIR to a fleet: canary first, then growing waves.

    Re-running it continues the recorded rollout of this release (halted or
    interrupted) instead of starting over; a new --max-failure-rate or --wave-timeout
    applies from there on. With --shadow the devices run the release beside the active
    model and report agreement (see fleet status); then promote or discard it.

    Several pushes of one rollout (on one or several hosts, with a shared --db
    postgresql://...) take turns: one holds the rollout's lease; another with --wait
    stands by and takes over once the holder stops renewing it.
    """
    _rollout(reldir, broker_url, username, password_file, fleet_name, devices, canary, waves,
             max_failure_rate, wave_timeout, wait, as_json, state_file or db_url,
             db_named_by="--state" if state_file else "--db",
             mode="shadow" if shadow else "active", lease_s=lease_s, retry=retry_failed,
             ongoing=ongoing, max_concurrent=max_concurrent, install_window=install_window)


@click.command("promote")
@_rollout_options("devices to switch, in rollout order (default: every device that runs "
                  "this release as its shadow)")
def promote(reldir: str, broker_url: str, username: str, password_file: str | None,
            fleet_name: str, devices: str | None, canary: str, waves: str,
            max_failure_rate: str | None, wave_timeout: float | None, max_concurrent: int,
            wait: bool, as_json: bool, state_file: str | None, db_url: str | None,
            lease_s: float) -> None:
    """Make the shadow release in RELDIR the active model, in waves.

    The same release is offered normally; a device that shadows it switches without a
    download (golden check, then committed). Exit codes and resuming as for push.
    """
    from edgeship.sdk.fleet._rollout import shadowing_devices

    _rollout(reldir, broker_url, username, password_file, fleet_name, devices, canary, waves,
             max_failure_rate, wave_timeout, wait, as_json, state_file or db_url,
             db_named_by="--state" if state_file else "--db",
             mode="active", choose=shadowing_devices, lease_s=lease_s,
             max_concurrent=max_concurrent)


def _rollout(reldir: str, broker_url: str, username: str, password_file: str | None,
             fleet_name: str, devices: str | None, canary: str, waves: str,
             max_failure_rate: str | None, wave_timeout: float | None, wait: bool,
             as_json: bool, db_url: str | None, *, mode: str, choose: Any = None,
             db_named_by: str = "--db",
             lease_s: float = 15.0, retry: bool = False, ongoing: bool = False,
             max_concurrent: int = 0, install_window: str = "") -> None:
    from edgeship.sdk.fleet._fleetdb import FleetDB
    from edgeship.sdk.fleet._rollout import RolloutPolicy, parse_percent, parse_waves
    from edgeship.sdk.fleet._rollout_run import run_rollout
    from edgeship.sdk.release._release import self_check

    self_check(reldir)  # a tampered release is refused here, not by every device
    if install_window:
        from edgeship.sdk.release._window import parse_window

        parse_window(install_window)
    rate = parse_percent(max_failure_rate, "--max-failure-rate") if max_failure_rate else None
    policy = RolloutPolicy(canary=parse_percent(canary, "--canary"), waves=parse_waves(waves),
                           max_failure_rate=1.0 if rate is None else rate,
                           wave_timeout_s=600.0 if wave_timeout is None else wave_timeout,
                           max_concurrent=max_concurrent)
    tty = sys.stderr.isatty()
    view = _Progress(enabled=not as_json and tty, plain=not as_json and not tty)
    def standing_by(holder: str, left: float) -> None:
        if not as_json:
            view.note(f"standing by: {holder} drives this rollout (lease {left:.0f}s left)")

    with FleetDB(db_url, option=db_named_by) as db, view:
        rollout = run_rollout(broker_url=broker_url, fleet=fleet_name, reldir=reldir, db=db,
                              policy=policy, devices=parse_devices(devices) or None,
                              max_failure_rate=rate, wave_timeout_s=wave_timeout, wait=wait,
                              username=username, password=read_password(password_file),
                              on_update=view.update, mode=mode, choose=choose,
                              lease_s=lease_s, retry_failed=retry, on_standby=standing_by,
                              ongoing=ongoing, install_window=install_window)
    if as_json:
        click.echo(json.dumps(report(rollout), indent=1))
    else:
        _print_summary(rollout)
    if rollout.status in ("halted", "cancelled"):
        sys.exit(EXIT_HALTED)


def report(rollout: Any) -> dict[str, Any]:
    """The ``--json`` document of a rollout."""
    from edgeship.sdk.fleet._rollout import DONE_OUTCOMES, FAILED_OUTCOMES

    waves = []
    for w in rollout.waves:
        outcomes = [rollout.outcomes[d] for d in w.devices]
        waves.append({"name": w.name, "devices": len(w.devices), "offered_at": w.offered_at,
                      "closed_at": w.closed_at,
                      "done": sum(o in DONE_OUTCOMES for o in outcomes),
                      "failed": sum(o in FAILED_OUTCOMES for o in outcomes)})
    return {"rollout": rollout.key, "fleet": rollout.fleet, "model": rollout.model,
            "version": rollout.version, "mode": rollout.mode, "ongoing": rollout.ongoing,
            "status": rollout.status, "reason": rollout.reason or None,
            "counts": rollout.counts(), "failure_rate": round(rollout.failure_rate(), 4),
            "policy": rollout.policy.to_dict(), "waves": waves,
            "devices": {d: {"outcome": o, "error": rollout.errors.get(d)}
                        for d, o in rollout.outcomes.items()}}


def _print_summary(rollout: Any) -> None:
    c = rollout.counts()
    done = sum(1 for w in rollout.waves if w.closed_at is not None)
    shadowing = f"{c['shadowing']} shadowing, " if rollout.mode == "shadow" else ""
    line = (f"{'shadow ' if rollout.mode == 'shadow' else ''}rollout of {rollout.model} "
            f"{rollout.version} to fleet {rollout.fleet}: "
            f"{rollout.status} (wave {min(done + 1, len(rollout.waves))}/{len(rollout.waves)}); "
            f"{shadowing}{c['committed']} committed, {c['rolled-back']} rolled back, {c['failed']} failed, "
            f"{c['timeout']} timed out, {c['updating']} updating, {c['pending']} not offered")
    click.echo(line)
    if rollout.status in ("paused", "cancelled"):
        click.echo(f"{rollout.status.upper()}: {rollout.reason}")
    if rollout.status == "halted":
        click.echo(f"HALTED: {rollout.reason}")
        click.echo("re-run the same push (optionally with a new --max-failure-rate) to resume")
    for dev, err in sorted(rollout.errors.items())[:20]:
        click.echo(f"  {dev}: {err}")


class _Progress:
    """A rich live view of the waves on a terminal; silent otherwise."""

    def __init__(self, enabled: bool, plain: bool = False) -> None:
        self.enabled, self.plain = enabled, plain
        self.live: Any = None
        self._last = 0.0
        self._said: tuple[Any, ...] = ()

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.console import Console
            from rich.live import Live

            self.live = Live(console=Console(stderr=True), refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def note(self, text: str) -> None:
        """One line on stderr (at most every 5 s)."""
        if time.monotonic() - self._noted >= 5.0:
            self._noted = time.monotonic()
            click.echo(f"[{time.strftime('%H:%M:%S')}] {text}", err=True)

    _noted = 0.0

    def update(self, rollout: Any) -> None:
        if self.plain:
            self._line(rollout)
        if self.live is None or time.monotonic() - self._last < 0.2:
            return
        self._last = time.monotonic()
        self.live.update(_table(rollout))


    def _line(self, rollout: Any) -> None:
        """Without a terminal: one line on stderr when a wave opens or the status changes."""
        i = min(rollout.current, len(rollout.waves) - 1)
        wave = rollout.waves[i]
        said = (rollout.status, i, wave.offered_at is not None)
        if said == self._said:
            return
        self._said = said
        c = rollout.counts()
        click.echo(f"[{time.strftime('%H:%M:%S')}] {rollout.status}: {wave.name} "
                   f"({len(wave.devices)} devices) {'offered' if said[2] else 'waiting'}; "
                   f"{c['committed'] + c['shadowing']} done, {c['rolled-back'] + c['failed'] + c['timeout']}"
                   f" failed", err=True)


def _table(rollout: Any) -> Any:
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    data = report(rollout)
    table = Table(title=f"{rollout.model} {rollout.version} -> {rollout.fleet}: "
                  f"{rollout.status}  failure rate {data['failure_rate']:.0%} "
                  f"(limit {rollout.policy.max_failure_rate:.0%})")
    for col in ("wave", "devices", "progress", "done", "failed", "state"):
        table.add_column(col)
    for w, row in zip(rollout.waves, data["waves"], strict=True):
        state = "closed" if w.closed_at else ("running" if w.offered_at else "waiting")
        bar = ProgressBar(total=max(1, row["devices"]), completed=row["done"], width=30)
        table.add_row(w.name, str(row["devices"]), bar, str(row["done"]), str(row["failed"]),
                      state)
    return table


@click.command("status")
@broker_options
@click.option("--fleet", "fleet_name", required=True, help="fleet name",
              callback=topic_name)
@click.option("--json", "as_json", is_flag=True, help="one JSON document on stdout")
@click.option("--timeout", default=10.0, show_default=True,
              type=click.FloatRange(0, min_open=True), help="seconds to reach the broker")
@db_option
def status(broker_url: str, username: str, password_file: str | None, fleet_name: str,
           as_json: bool, timeout: float, db_url: str | None) -> None:
    """One row per device and a summary, from the retained status topics and the fleet
    database.

    The statuses read from the broker are recorded in the database; devices whose
    retained status is gone (a broker restarted without persistence, or capped) are
    shown as recorded, and with the broker unreachable the database alone answers.
    Columns: version, state, target, shadow, drift, last seen, last error. shadow = the
    shadow release, its agreement with the active model and how many requests were
    compared; drift = the drift verdict, the largest PSI and the worst feature (devices
    with a profile in their release). last seen = the newest heartbeat or status
    (heartbeats are recorded by `fleet record` and `fleet push`).
    """
    from edgeship._errors import TransportError
    from edgeship.sdk.fleet._fleetstatus import collect_status, merge_recorded, summarize

    db = _status_db(db_url)
    try:
        try:
            live = collect_status(broker_url, fleet_name, username=username,
                                  password=read_password(password_file), timeout=timeout)
        except TransportError as exc:
            if db is None or not db.devices(fleet_name):  # nothing else could answer
                raise
            click.echo(f"warning: {exc}; answering from the fleet database", err=True)
            live = {}
        statuses = dict(live)
        if db is not None:
            db.record_devices(fleet_name, {d: s.to_dict() for d, s in live.items()})
            statuses = merge_recorded(live, db.devices(fleet_name))
    finally:
        if db is not None:
            db.close()
    summary = summarize(statuses)
    if as_json:
        click.echo(json.dumps({"fleet": fleet_name, "summary": summary,
                               "devices": [s.to_dict() for _, s in sorted(statuses.items())]},
                              indent=1))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    now = time.time()
    table = Table(title=f"fleet {fleet_name}: {summary['devices']} devices")
    for col in ("device", "version", "state", "target", "shadow", "drift", "last seen",
                "last error"):
        table.add_column(col)
    for dev, s in sorted(statuses.items()):
        seen = f"{max(0.0, now - s.last_seen):.0f}s ago" if s.last_seen else "-"
        # every cell is the device's own text: '[/]' in it is no markup (it crashed the table)
        table.add_row(*(escape(cell) for cell in (
            dev, s.version or "-", s.state_text(), s.target or "-", s.shadow_text(),
            s.drift_text(), seen, (s.error or "")[:80])))
    console = Console(width=200)
    console.print(table)
    versions = ", ".join(f"{v}: {n}" for v, n in summary["versions"].items()) or "no devices"
    console.print(f"versions  {versions}", markup=False)
    if summary["shadows"]:
        console.print("shadows   " + ", ".join(f"{v}: {n}" for v, n in summary["shadows"].items()),
                      markup=False)
    if summary["drift_alerts"]:
        console.print(f"drift     {summary['drift_alerts']} device(s) alerting", markup=False)


def _status_db(db_url: str | None) -> FleetDB | None:
    """The fleet database status reads and records into: the one named (--db or
    $EDGESHIP_FLEET_DB), else the default one if it exists. A read-only look at a fleet
    creates no database in the operator's home."""
    from edgeship._errors import ConfigError
    from edgeship.sdk.fleet._fleetdb import FleetDB
    from edgeship.sdk.fleet._fleetsql import default_url, sqlite_path

    url = db_url or default_url()
    path = sqlite_path(url)
    if not db_url and path is not None and not path.exists():
        return None
    try:
        return FleetDB(url)
    except ConfigError as exc:
        if db_url:  # named: the operator wants that database
            raise
        click.echo(f"warning: {exc}; the broker alone answers", err=True)
        return None


@click.command("discard")
@click.argument("version")
@broker_options
@click.option("--fleet", "fleet_name", required=True, help="fleet name",
              callback=topic_name)
@click.option("--devices", default=None, metavar="ID,...",
              help="devices to tell (default: every device that runs or installs VERSION as "
                   "a shadow)")
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(0),
              help="seconds to wait for the devices to confirm (0: do not wait)")
@click.option("--json", "as_json", is_flag=True, help="one JSON report on stdout")
def discard(version: str, broker_url: str, username: str, password_file: str | None,
            fleet_name: str, devices: str | None, timeout: float, as_json: bool) -> None:
    """End the shadow release VERSION on a fleet's devices.

    Their answers never changed. Publishes a retained shadow-discard message on each device's offer topic (it replaces
    the shadow offer) and waits for the devices to report shadow-discarded.
    """
    from edgeship.sdk.fleet._rollout_run import discard_shadow
    from edgeship.sdk.release._manifest import parse_version

    parse_version(version)
    verdicts = discard_shadow(broker_url=broker_url, fleet=fleet_name, version=version,
                              devices=parse_devices(devices) or None, timeout=timeout,
                              username=username, password=read_password(password_file))
    counts = {v: sum(1 for x in verdicts.values() if x == v)
              for v in ("discarded", "no-shadow", "pending")}
    if as_json:
        click.echo(json.dumps({"fleet": fleet_name, "version": version, "counts": counts,
                               "devices": verdicts}, indent=1))
    else:
        click.echo(f"discard of shadow {version} on fleet {fleet_name}: {counts['discarded']} "
                   f"discarded, {counts['no-shadow']} had no such shadow, {counts['pending']} "
                   "not confirmed")
        for dev, verdict in sorted(verdicts.items()):
            if verdict == "pending":
                click.echo(f"  {dev}: no confirmation within {timeout:g}s")
    if counts["pending"] and timeout > 0:
        sys.exit(EXIT_UNCONFIRMED)


@click.command("credentials")
@click.option("--fleet", "fleet_name", required=True, help="fleet name",
              callback=topic_name)
@click.option("--devices", required=True, metavar="ID,...", help="device ids (= broker users)")
@click.option("-o", "--out", "out", required=True, type=click.Path(file_okay=False),
              help="directory for passwd, acl, mosquitto.conf and secrets/")
@click.option("--manager-user", default="edgeship-manager", show_default=True)
@click.option("--server-user", default="edgeship-server", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="describe what was written as JSON")
def credentials(fleet_name: str, devices: str, out: str, manager_user: str, server_user: str,
                as_json: bool) -> None:
    """Per-device broker passwords, a mosquitto password file and an ACL: a device reads
    only its own offer/chunk topics and publishes only its own status/telemetry and chunk
    requests; only the manager user publishes offers. Existing passwords are kept."""
    from edgeship.sdk.fleet._acl import write_credentials

    creds = write_credentials(out, fleet_name, parse_devices(devices), manager=manager_user,
                              server=server_user)
    if as_json:
        click.echo(json.dumps(creds.to_dict(), indent=1))
        return
    click.echo(f"wrote {len(creds.users)} users ({creds.hasher} hashes) to {creds.out}:")
    click.echo(f"  {creds.conf}  (include it in mosquitto.conf)")
    click.echo(f"  {creds.out / 'secrets'}/<user>.password  (the agent's broker.password_file)")
