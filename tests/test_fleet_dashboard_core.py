"""The dashboard's parts without a browser: history events from status changes, heartbeat
figures, the history tables in a real SQLite fleet database (and their pruning), the
devices table's server-side filter/sort/paging over 10 000 devices, escaping of what
devices send, token files, the loopback/TLS rule, and the CSRF checks of a real server
on a real broker."""

from __future__ import annotations

import http.client
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import Mosquitto, free_port, wait_for_port
from edgeship.sdk.fleet._dashboard import Dashboard, DashboardConfig
from edgeship.sdk.fleet._dashboard_auth import read_tokens
from edgeship.sdk.fleet._dashboard_data import DeviceQuery, device_rows
from edgeship.sdk.fleet._dashboard_html import devices_page
from edgeship.sdk.fleet._dashboard_live import Figures
from edgeship.sdk.fleet._fleetdb import FleetDB
from edgeship.sdk.fleet._fleetstatus import DeviceStatus, summarize
from edgeship.sdk.fleet._history import Action, History, changes, sample_from_telemetry

from edgeship._errors import ConfigError


def test_status_changes_become_history_events() -> None:
    before = {"state": "committed", "version": "1.0.0", "ts": 10.0,
              "drift": {"alert": False, "max_psi": 0.01}}
    assert changes("d", before, dict(before), 20.0) == []
    failed = {**before, "state": "rolled-back", "target": "1.1.0", "error": "golden differs",
              "ts": 11.0}
    (event,) = changes("d", before, failed, 20.0)
    assert (event.kind, event.version, event.detail["error"]) == \
        ("rolled-back", "1.1.0", "golden differs")
    moved = {**before, "version": "1.1.0", "drift": {"alert": True, "max_psi": 0.4,
                                                     "worst": "input"}}
    kinds = {e.kind: e for e in changes("d", before, moved, 20.0)}
    assert kinds["version"].detail == {"from": "1.0.0"}
    assert kinds["drift-alert"].detail["worst"] == "input" and kinds["drift-alert"].ts == 20.0
    cleared = changes("d", moved, {**moved, "drift": {"alert": False}}, 30.0)
    assert [e.kind for e in cleared] == ["drift-cleared"]


def test_heartbeat_figures() -> None:
    s = sample_from_telemetry("d", {"ts": 5.0, "version": "1.0.0",
                                    "latency": {"count": 3, "p50_ms": 1.5, "p99_ms": 9.0},
                                    "fallback": {"answers": {"local": 3, "cloud": 1}},
                                    "drift": {"alert": True, "max_psi": 0.3},
                                    "shadow": {"agreement": 0.97}}, now=99.0)
    assert (s.ts, s.p50_ms, s.p99_ms, s.fallback_share, s.drift_psi, s.drift_alert,
            s.shadow_agreement) == (5.0, 1.5, 9.0, 0.25, 0.3, True, 0.97)
    bare = sample_from_telemetry("d", {"latency": {"count": 0}, "fallback": "junk",
                                       "drift": {"max_psi": float("nan")}}, now=99.0)
    assert (bare.ts, bare.p50_ms, bare.fallback_share, bare.drift_psi) == (99.0, None, None, None)


def test_history_in_the_fleet_database_is_bounded_by_age(tmp_path: Path) -> None:
    with FleetDB(tmp_path / "fleet.sqlite") as db:
        history = History(db.db)
        old = sample_from_telemetry("d", {"ts": 100.0, "latency": {"p50_ms": 1, "p99_ms": 2}}, 0)
        new = sample_from_telemetry("d", {"ts": 200.0, "latency": {"p50_ms": 3, "p99_ms": 4}}, 0)
        events = changes("d", None, {"state": "committed", "version": "1.0.0", "ts": 150.0}, 0)
        history.record("f", [old, new], events)
        history.record("other", [old], [])
        history.record("f", [new], events)  # a second dashboard on the same database
        assert [s.p50_ms for s in history.samples("f", "d")] == [1.0, 3.0]
        assert [e.kind for e in history.events("f", "d")] == ["version"]
        history.log_action(Action(ts=1.0, who="alice", action="pause", target="k",
                                  result="paused"))
        assert history.prune(older_than=160.0) == 3  # two old samples, one event
        assert [s.ts for s in history.samples("f", "d")] == [200.0]
        assert history.events("f", "d") == []
        assert [a.who for a in history.actions()] == ["alice"]  # the audit log stays
    with FleetDB(tmp_path / "fleet.sqlite") as db:  # and it is all on disk
        assert History(db.db).samples("f", "d") and History(db.db).actions()


def fleet_of(n: int) -> tuple[dict[str, DeviceStatus], dict[str, Figures]]:
    statuses, figures = {}, {}
    for i in range(n):
        dev = f"dev-{i:05d}"
        statuses[dev] = DeviceStatus.from_dict({
            "device": dev, "state": "downloading" if i % 10 == 0 else "committed",
            "version": "1.1.0" if i % 2 else "1.0.0", "progress": {"chunks": 1, "of": 4},
            "drift": {"alert": i % 100 == 7, "max_psi": (i % 50) / 100, "worst": "input"}})
        if i % 3:
            figures[dev] = Figures(ts=0.0, p50_ms=float(i % 97), p99_ms=float(i % 89))
    return statuses, figures


def test_the_devices_table_is_filtered_sorted_and_paged_on_the_server() -> None:
    statuses, figures = fleet_of(10_000)
    start = time.perf_counter()
    rows, total, pages = device_rows(statuses, figures, DeviceQuery())
    took = time.perf_counter() - start
    assert (len(rows), total, pages) == (50, 10_000, 200) and rows[0].device == "dev-00000"
    assert rows[0].progress == 0.25
    assert took < 2.0, f"{took:.2f}s to page 10 000 devices"
    rows, total, _ = device_rows(statuses, figures, DeviceQuery(only="alerts"))
    assert total == 100 and all(r.drift_alert for r in rows)
    rows, total, pages = device_rows(statuses, figures,
                                     DeviceQuery(sort="p99", desc=True, page=999))
    assert pages == 200 and len(rows) == 50
    assert all(r.p99_ms is None for r in rows)  # devices without heartbeats come last
    rows, _, _ = device_rows(statuses, figures, DeviceQuery(sort="p99", desc=True))
    assert rows[0].p99_ms == 88.0
    rows, total, _ = device_rows(statuses, figures, DeviceQuery(q="dev-0999"))
    assert total == 10 and {r.device for r in rows} == {f"dev-0999{i}" for i in range(10)}


def test_what_devices_send_is_escaped() -> None:
    evil = DeviceStatus.from_dict({"device": "d<script>", "state": "<b>x</b>",
                                   "version": "\"><img src=x onerror=alert(1)>",
                                   "drift": {"alert": True, "worst": "<i>f</i>"}})
    statuses = {evil.device: evil}
    rows, total, pages = device_rows(statuses, {}, DeviceQuery())
    page = devices_page(rows, total, pages, DeviceQuery(), summarize(statuses), time.time())
    assert "<script>" not in page and "<img" not in page and "<b>x" not in page
    assert "d&lt;script&gt;" in page and "&lt;i&gt;f&lt;/i&gt;" in page


def test_token_files(tmp_path: Path) -> None:
    f = tmp_path / "tokens"
    f.write_text("# operators\nalice:0123456789abcdef0\n fedcba9876543210x \n")
    assert read_tokens(f) == {"0123456789abcdef0": "alice", "fedcba9876543210x": "operator"}
    f.write_text("bob:short\n")
    with pytest.raises(ConfigError, match="at least 16 characters"):
        read_tokens(f)
    f.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="no token"):
        read_tokens(f)


def test_beyond_loopback_needs_tls_and_actions_need_tokens(tmp_path: Path) -> None:
    base = {"broker_url": "mqtt://127.0.0.1:1", "fleet": "f", "db": tmp_path / "db"}
    with pytest.raises(ConfigError, match="needs --tls-cert"):
        DashboardConfig(**base, host="0.0.0.0")
    with pytest.raises(ConfigError, match="needs --token-file"):
        DashboardConfig(**base, allow_actions=True)
    DashboardConfig(**base, host="::1")
    DashboardConfig(**base, host="localhost")


def _post(url: str, body: str, headers: dict[str, str]) -> tuple[int, str]:
    req = urllib.request.Request(url, method="POST", data=body.encode(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_csrf_and_origin_checks_on_a_real_server(tmp_path: Path,
                                                shared_mosquitto: Mosquitto) -> None:
    token = "a-token-of-enough-length"
    dash = Dashboard(DashboardConfig(broker_url=shared_mosquitto.url, fleet="csrf",
                                     db=tmp_path / "db.sqlite", port=0,
                                     allow_actions=True, tokens={token: "ops"})).start()
    try:
        with urllib.request.urlopen(dash.url + "/rollouts", timeout=5) as resp:
            cookie = resp.headers["Set-Cookie"].split(";")[0]
            page = resp.read().decode()
            assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
        csrf = page.split('name="csrf" value="')[1].split('"')[0]
        form = f"who=eve&token={token}&csrf={csrf}"
        host = dash.url.split("//")[1]
        status, body = _post(dash.url + "/login", form, {"Cookie": cookie,
                                                         "Origin": "http://evil.example"})
        assert status == 403 and "CSRF" in body
        status, body = _post(dash.url + "/login", f"who=eve&token={token}&csrf=wrong",
                             {"Cookie": cookie, "Origin": f"http://{host}"})
        assert status == 403 and "CSRF" in body
        status, body = _post(dash.url + "/login", form, {"Cookie": cookie,
                                                         "Origin": f"http://{host}"})
        assert status == 200 and 'id="who">signed in as eve (ops)' in body  # after the 303
        status, body = _post(dash.url + "/action", "action=pause&key=nope&csrf=" + csrf,
                             {"Cookie": cookie})
        assert status == 403 and "CSRF" in body  # signing in renewed the form token
    finally:
        dash.stop()
    with FleetDB(tmp_path / "db.sqlite") as db:
        log = History(db.db).actions()
    assert [(a.action, a.result.split(":")[0]) for a in reversed(log)] == [
        ("sign-in", "refused"), ("sign-in", "refused"), ("sign-in", "signed in as eve (ops)"),
        ("pause", "refused")]


def _dashboard_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "edgeship", "fleet", "dashboard", *args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _https(url: str, context: ssl.SSLContext, data: str | None = None,
           headers: dict[str, str] | None = None) -> tuple[int, str, Any]:
    req = urllib.request.Request(url, data=None if data is None else data.encode(),
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, context=context, timeout=10) as resp:
            return resp.status, resp.read().decode(), resp.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), exc.headers


def test_beyond_loopback_the_cli_serves_https_to_signed_in_people_only(
        tmp_path: Path, shared_mosquitto: Mosquitto) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec
    from test_cloud_tls import _cert, _write

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("dashboard test CA", ca_key, None, ca=True)
    ca_file = _write(tmp_path, "ca", ca, ca_key)[0]
    cert, key_file = _write(tmp_path, "server", _cert("server", key, (ca.subject, ca_key)), key)
    common = ["--broker", shared_mosquitto.url, "--fleet", "tls", "--db",
              str(tmp_path / "db.sqlite")]
    for extra, why in (([], "needs --tls-cert and --tls-key"),
                       (["--tls-cert", cert, "--tls-key", key_file], "say who may look")):
        refused = _dashboard_cli(*common, "--listen", "0.0.0.0:0", *extra)
        _, err = refused.communicate(timeout=60)
        lines = err.strip().splitlines()
        assert refused.returncode != 0 and len(lines) == 1 and why in lines[0], err
    (tmp_path / "tokens").write_text("ops:a-token-of-enough-length\n")
    port = free_port()
    proc = _dashboard_cli(*common, "--listen", f"0.0.0.0:{port}", "--tls-cert", cert,
                          "--tls-key", key_file, "--token-file", str(tmp_path / "tokens"))
    try:
        wait_for_port(port, timeout=30)
        context = ssl.create_default_context(cafile=ca_file)
        url = f"https://127.0.0.1:{port}"
        status, page, headers = _https(url + "/", context)
        assert status == 401 and 'id="signin"' in page and 'id="count"' not in page
        assert "Secure" in headers["Set-Cookie"]
        cookie = headers["Set-Cookie"].split(";")[0]
        assert _https(url + "/events", context, headers={"Cookie": cookie})[0] == 401
        csrf = page.split('name="csrf" value="')[1].split('"')[0]
        status, page, _ = _https(url + "/login", context,
                                 f"who=&token=a-token-of-enough-length&csrf={csrf}",
                                 {"Cookie": cookie, "Origin": f"https://127.0.0.1:{port}"})
        assert status == 200 and 'id="who">signed in as ops' in page  # after the 303
        status, page, _ = _https(url + "/", context, headers={"Cookie": cookie})
        assert status == 200 and 'id="count">0<' in page
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
