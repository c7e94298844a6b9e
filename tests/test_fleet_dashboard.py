"""``edgeship fleet dashboard`` in a real browser: Debian's chromium driven by Selenium
(headless), against a real mosquitto with 20 simulated devices (tests/simulator.py, the
agent's own OTA core) and one real ``edgeship agent run`` with a drift profile, a real
``fleet serve`` and real ``fleet push`` processes started from the CLI. The screenshots of
the pages under docs/img/ are taken here.

The tests share one fleet and one browser and run in file order (each builds on the
fleet the one before left): the devices table, a rollout moving on the page without a
reload, a failing canary shown halted with its reason, a drift alert on the real agent's
row, and an action refused without the token and done with it.

The screenshots land in docs/img/ only when ``EDGESHIP_UPDATE_SHOTS=1`` (refreshing the
docs' pictures is a choice, not a side effect of every test run); otherwise in a temp dir.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Mosquitto, free_port, wait_for_port
from selenium import webdriver
from selenium.webdriver.common.by import By
from simulator import SwarmProc
from test_agent_support import AgentProc, make_keys, make_release, start_fleet_serve, write_config

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
SHOTS = (ROOT / "docs" / "img" if os.environ.get("EDGESHIP_UPDATE_SHOTS") == "1"
         else Path(tempfile.mkdtemp(prefix="edgeship-shots-")))
FLEET = "plant"
SIMS = [f"dev-{i:04d}" for i in range(20)]
BROKEN = "dev-0003"  # a faulty accelerator: every update fails its golden check
AGENT = "agent-1"
TOKEN = "s3cret-dashboard-token-for-tests"
DRIFT_TOML = "[drift]\nmax_rate = 0\nwindow = 400\nslices = 4\nmin_samples = 250\nbatch = 16\n"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@dataclass
class Fleet:
    broker: Mosquitto
    rels: dict[str, Path]
    state: Path
    url: str
    agent: AgentProc
    driver: Any


def edgeship_push(fleet: Fleet, rel: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "edgeship", "fleet", "push", str(fleet.rels[rel]), "--broker",
         fleet.broker.url, "--fleet", FLEET, "--state", str(fleet.state), "--wait", "--json",
         *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        text=True)


def profiled_release(tmp: Path, keys: Path) -> Path:
    """The cnn fixture signed with a drift profile of its eval images (what the real
    agent serves)."""
    from edgeship.sdk.monitor._profile import profile_from_file
    from edgeship.sdk.release._release import Release

    out = tmp / "releases" / "cnn-1.0.0"
    profile = profile_from_file(FIXTURES / "cnn_eval.npz", FIXTURES / "cnn.onnx")
    Release.build(FIXTURES / "cnn.onnx", version="1.0.0", keydir=keys, out=out,
                  model_name="model", profile=profile)
    return out


def browser() -> Any:
    if not (CHROMIUM and CHROMEDRIVER):  # a failure, not a skip: .ci/run installs both
        raise RuntimeError("these tests need Debian's chromium and chromium-driver "
                           "(apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,900"):
        options.add_argument(arg)
    return webdriver.Chrome(service=webdriver.ChromeService(str(CHROMEDRIVER)),
                            options=options)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("dashboard")
    keys = make_keys(tmp)
    rels = {"v1": make_release(tmp, keys, "1.0.0")}
    rels["v2"] = make_release(tmp, keys, "1.1.0", base=rels["v1"])
    rels["v3"] = make_release(tmp, keys, "1.2.0")
    rels["v4"] = make_release(tmp, keys, "1.3.0")
    rels["cnn"] = profiled_release(tmp, keys)
    broker = Mosquitto(tmp)
    broker.start()
    procs: list[Any] = []
    agent: AgentProc | None = None
    driver = None
    try:
        procs.append(start_fleet_serve(broker.url, rels["v1"], rels["v2"], rels["v3"],
                                       rels["v4"], fleet=FLEET))
        swarm = SwarmProc(broker_url=broker.url, fleet=FLEET, root=keys / "root.pub",
                          initial=rels["v1"], devices=SIMS, broken=[BROKEN], chunk_size=1024,
                          request_timeout_s=1.0)
        procs.append(swarm)
        api_port = free_port()
        cfg = write_config(tmp, broker_url=broker.url, port=api_port, root_pub=keys / "root.pub",
                           device=AGENT, fleet=FLEET, initial=rels["cnn"], extra=DRIFT_TOML)
        agent = AgentProc(cfg, api_port).start()
        (tmp / "tokens").write_text(f"# who may act\ntester:{TOKEN}\n")
        port = free_port()
        state = tmp / "fleet.sqlite"
        dash = subprocess.Popen(
            [sys.executable, "-m", "edgeship", "fleet", "dashboard", "--broker", broker.url,
             "--fleet", FLEET, "--db", str(state), "--listen", f"127.0.0.1:{port}",
             "--releases", str(tmp / "releases"), "--allow-actions", "--token-file",
             str(tmp / "tokens")], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True)
        procs.append(dash)
        wait_for_port(port, timeout=30)
        assert swarm.wait_ready() == len(SIMS)
        agent.wait_ready()
        driver = browser()
        driver.set_page_load_timeout(30)
        yield Fleet(broker=broker, rels=rels, state=state, url=f"http://127.0.0.1:{port}",
                    agent=agent, driver=driver)
    finally:
        if driver is not None:
            driver.quit()
        if agent is not None:
            agent.kill()
        for proc in reversed(procs):
            if isinstance(proc, SwarmProc):
                proc.stop()
            else:
                proc.terminate()
                proc.wait(timeout=10)
        broker.stop()


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll ``probe`` until it returns something truthy (elements may be replaced by the
    live update between finding and reading them: that counts as not yet)."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except (StaleElementReferenceException, WebDriverException) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.1)
    raise AssertionError(f"{what}: not seen within {timeout}s (last: {last!r})")


def retry(act: Callable[[], Any], tries: int = 50) -> Any:
    """Do ``act`` again when the live update replaced the element it found (stale, or
    caught between being detached and its replacement: not interactable)."""
    from selenium.common.exceptions import (
        ElementNotInteractableException,
        StaleElementReferenceException,
    )

    for _ in range(tries - 1):
        try:
            return act()
        except (StaleElementReferenceException, ElementNotInteractableException):
            time.sleep(0.05)
    return act()


def text(driver: Any, css: str) -> str:
    """The text of the first element matching ``css``, read in one script ("" when none
    does yet)."""
    return str(driver.execute_script("const e = document.querySelector(arguments[0]);"
                                     "return e ? e.innerText : '';", css))


def rows(driver: Any) -> dict[str, dict[str, str]]:
    """The devices table as the browser shows it: device -> {version, phase, drift} (read
    in one script: the live update may replace the table between two reads)."""
    cells = driver.execute_script(
        "return [...document.querySelectorAll('#devices tbody tr')].map("
        "tr => [...tr.querySelectorAll('td')].map(td => td.innerText));")
    return {c[0]: {"version": c[1], "phase": c[2], "drift": c[4]} for c in cells}


def card(driver: Any, version: str) -> dict[str, Any] | None:
    """One rollout as the rollouts page shows it (status, committed, reason, waves)."""
    got: dict[str, Any] | None = driver.execute_script(
        "const a = document.querySelector(`article.rollout[data-version='${arguments[0]}']`);"
        "if (!a) return null;"
        "const r = a.querySelector('.reason');"
        "return {status: a.querySelector('.status').innerText,"
        " committed: a.querySelector('.committed').innerText, key: a.dataset.key,"
        " reason: r ? r.innerText : '',"
        " waves: [...a.querySelectorAll('tbody tr')].map(tr => tr.cells[0].innerText)};",
        version)
    return got


def click(driver: Any, version: str, action: str) -> None:
    """Press a rollout's action button (found and clicked in one step)."""
    driver.execute_script(
        "document.querySelector(`article.rollout[data-version='${arguments[0]}'] "
        "button[data-action='${arguments[1]}']`).click();", version, action)


def mark_page(driver: Any) -> None:
    """A value that lives only as long as this page: a reload would lose it."""
    driver.execute_script("window.__notReloaded = 'yes';")


def not_reloaded(driver: Any) -> bool:
    return bool(driver.execute_script("return window.__notReloaded === 'yes';"))


def test_devices_table_shows_every_device_with_its_version(fleet: Fleet) -> None:
    d = fleet.driver
    d.get(fleet.url + "/")
    table = wait_for("21 devices in the table", lambda: (r := rows(d)) and len(r) == 21 and r)
    assert sorted(table) == sorted([*SIMS, AGENT])
    assert {table[s]["version"] for s in SIMS} == {"1.0.0"}
    assert table[AGENT]["version"] == "1.0.0"
    assert text(d, "#count") == "21"
    # the filter narrows the table on the server, as you type
    retry(lambda: d.find_element(By.ID, "q").send_keys("dev-001"))
    wait_for("filtered to dev-0010..0019", lambda: sorted(rows(d)) == SIMS[10:])
    d.get(fleet.url + "/")


def test_a_rollout_from_the_cli_progresses_on_the_page_without_a_reload(fleet: Fleet) -> None:
    d = fleet.driver
    d.get(fleet.url + "/rollouts")
    mark_page(d)
    targets = [s for s in SIMS if s != BROKEN]
    push = edgeship_push(fleet, "v2", "--devices", ",".join(targets), "--canary", "10%",
                         "--waves", "50%,100%", "--wave-timeout", "60")
    seen: list[tuple[str, int]] = []

    def progressed() -> bool:
        c = card(d, "1.1.0")
        if c is not None and (not seen or seen[-1] != (c["status"], int(c["committed"]))):
            seen.append((c["status"], int(c["committed"])))
        return c is not None and c["status"] == "completed"

    wait_for("the rollout of 1.1.0 completed on the page", progressed, timeout=90)
    out, err = push.communicate(timeout=30)
    assert push.returncode == 0, err
    assert json.loads(out)["counts"]["committed"] == len(targets)
    assert not_reloaded(d)
    assert seen[-1] == ("completed", len(targets))
    assert any(status == "running" and n < len(targets) for status, n in seen), seen
    assert card(d, "1.1.0")["waves"] == ["canary", "wave 1", "wave 2"]  # type: ignore[index]
    d.get(fleet.url + "/")
    table = wait_for("versions on the devices page", lambda: rows(d))
    assert {s for s in SIMS if table[s]["version"] == "1.1.0"} == set(targets)


def test_a_failing_canary_shows_as_halted_with_its_reason(fleet: Fleet) -> None:
    d = fleet.driver
    d.get(fleet.url + "/rollouts")
    mark_page(d)
    order = [BROKEN, *[s for s in SIMS if s != BROKEN]]
    push = edgeship_push(fleet, "v3", "--devices", ",".join(order), "--canary", "5%",
                         "--max-failure-rate", "0", "--wave-timeout", "60")
    c = wait_for("the rollout of 1.2.0 halted on the page",
                 lambda: (x := card(d, "1.2.0")) and x["status"] == "halted" and x, timeout=60)
    assert "passed the limit of 0%" in c["reason"] and "19 devices left untouched" in c["reason"]
    assert not_reloaded(d)
    out, _ = push.communicate(timeout=30)
    assert push.returncode == 3 and json.loads(out)["status"] == "halted"
    # the device's page has the failure and the device's own reason
    d.get(f"{fleet.url}/device/{BROKEN}")
    wait_for("the failure in the device history",
             lambda: d.find_elements(By.CSS_SELECTOR, "#events tr.rolled-back"))
    event = text(d, "#events tr.rolled-back")
    assert "golden output differs" in event and "1.2.0" in event


def test_a_drift_alert_on_the_real_agent_appears_on_its_row(fleet: Fleet) -> None:
    from edgeship.sdk.serving._client import AgentClient

    d = fleet.driver
    d.get(fleet.url + "/?q=agent")
    mark_page(d)
    with np.load(FIXTURES / "cnn_eval.npz") as data:
        x = data["input"]
    picks = np.random.default_rng(12).integers(0, len(x), size=400)
    client = AgentClient(fleet.agent.url)
    for i in picks:  # the eval images made brighter: the input distribution moved
        client.infer({"input": x[i: i + 1] + np.float32(0.25)})
    row = wait_for("ALERT on the agent's row", lambda: (r := rows(d).get(AGENT)) and
                   "ALERT" in r["drift"] and r, timeout=60)
    assert "input" in row["drift"]  # the worst feature
    assert not_reloaded(d)
    d.get(fleet.url + "/")
    wait_for("the whole table", lambda: len(rows(d)) == 21)
    d.save_screenshot(str(SHOTS / "dashboard-devices.png"))
    d.get(f"{fleet.url}/device/{AGENT}")
    wait_for("the drift-alert event", lambda: d.find_elements(By.CSS_SELECTOR,
                                                             "#events tr.drift-alert"))
    assert d.find_elements(By.CSS_SELECTOR, 'svg[aria-label="latency"] circle')
    d.save_screenshot(str(SHOTS / "dashboard-device.png"))


def sign_in(driver: Any, who: str, token: str) -> None:
    retry(lambda: driver.find_element(By.NAME, "who").send_keys(who))
    retry(lambda: driver.find_element(By.NAME, "token").send_keys(token))
    retry(lambda: driver.find_element(By.ID, "login").click())


def _post_without_form(fleet: Fleet, sid: str, key: str) -> int:
    req = urllib.request.Request(f"{fleet.url}/action", method="POST",
                                 data=f"action=cancel&key={key}&csrf=guess".encode(),
                                 headers={"Cookie": f"es_sid={sid}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_an_action_is_refused_without_the_token_and_done_with_it(fleet: Fleet) -> None:
    d = fleet.driver
    d.get(fleet.url + "/rollouts")
    push = edgeship_push(fleet, "v4", "--devices", "dev-0000,dev-ghost", "--wave-timeout", "120")
    try:
        wait_for("the 1.3.0 rollout running", lambda: (c := card(d, "1.3.0")) and
                 c["status"] == "running")
        click(d, "1.3.0", "pause")
        wait_for("the refusal", lambda: d.find_elements(By.ID, "refused"))
        assert "sign in with the dashboard token" in text(d, "#refused")
        d.get(fleet.url + "/rollouts")
        assert card(d, "1.3.0")["status"] == "running"  # type: ignore[index]

        sign_in(d, "alice", "not-the-token-at-all")
        wait_for("the refusal", lambda: d.find_elements(By.ID, "refused"))
        assert "wrong token" in text(d, "#refused")
        d.get(fleet.url + "/rollouts")
        sign_in(d, "alice", TOKEN)
        wait_for("signed in", lambda: "alice" in text(d, "#who"))

        # a request from elsewhere with the session cookie but not the form's CSRF token
        key = card(d, "1.3.0")["key"]  # type: ignore[index]
        assert _post_without_form(fleet, d.get_cookie("es_sid")["value"], key) == 403

        click(d, "1.3.0", "pause")
        wait_for("paused", lambda: (c := card(d, "1.3.0")) and c["status"] == "paused")
        click(d, "1.3.0", "cancel")
        out, err = push.communicate(timeout=30)
        assert push.returncode == 3, err  # the fleet's own cancel: the push ends with it
        rep = json.loads(out)
        assert rep["status"] == "cancelled" and rep["reason"].startswith("cancelled by alice (tester)")
        c = wait_for("cancelled on the page", lambda: (c := card(d, "1.3.0")) and
                     c["status"] == "cancelled" and c)
        assert "cancelled by alice (tester)" in c["reason"]
        audit = d.execute_script("return [...document.querySelectorAll('#audit tbody tr')]"
                             ".map(tr => tr.innerText);")
        assert any("pause" in a and "refused" in a and "anonymous" in a for a in audit), audit
        assert any("cancel" in a and "alice (tester)" in a and "cancelled" in a for a in audit)
        assert any("cancel" in a and "CSRF" in a for a in audit), audit
        d.get(fleet.url + "/rollouts")
        d.set_window_size(1400, 1200)  # down to the audit log
        d.save_screenshot(str(SHOTS / "dashboard-rollouts.png"))
        d.set_window_size(1400, 900)
    finally:
        if push.poll() is None:
            push.kill()
            push.communicate()


def test_the_releases_page_lists_sizes_deltas_and_profiles(fleet: Fleet) -> None:
    d = fleet.driver
    d.get(fleet.url + "/releases")
    by_version: dict[str, list[str]] = {}
    for cells in d.execute_script("return [...document.querySelectorAll('#releases tbody tr')]"
                                  ".map(tr => [...tr.cells].map(c => c.innerText));"):
        by_version.setdefault(cells[1], []).append(" | ".join(cells))
    assert sorted(by_version) == ["1.0.0", "1.1.0", "1.2.0", "1.3.0"]
    assert "from 1.0.0:" in by_version["1.1.0"][0]
    assert any(row.split(" | ")[7] == "yes" for row in by_version["1.0.0"])  # the profiled one


def test_a_shadow_is_listed_and_discarded_from_the_page(fleet: Fleet) -> None:
    d = fleet.driver  # still signed in as alice
    push = edgeship_push(fleet, "v4", "--shadow", "--devices", "dev-0010,dev-0011")
    out, err = push.communicate(timeout=60)
    assert push.returncode == 0 and json.loads(out)["counts"]["shadowing"] == 2, err
    d.get(fleet.url + "/releases")
    row = wait_for("the shadow on the releases page", lambda: d.execute_script(
        "const r = document.querySelector(\"tr[data-shadow='1.3.0']\");"
        "return r ? [...r.cells].map(c => c.innerText) : null;"))
    assert row[1] == "2" and row[2].endswith("%")
    d.save_screenshot(str(SHOTS / "dashboard-releases.png"))
    d.execute_script("document.querySelector(\"tr[data-shadow='1.3.0'] "
                     "button[data-action='discard']\").click();")
    wait_for("the flash", lambda: d.find_elements(By.ID, "flash"))
    assert "discard of shadow 1.3.0 started" in text(d, "#flash")
    wait_for("the shadow gone from the page", lambda: d.execute_script(
        "return !document.querySelector(\"tr[data-shadow='1.3.0']\");"), timeout=60)
