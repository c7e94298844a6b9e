"""Maintenance windows with an injected clock: a device downloads at once, reports
``downloaded`` (with the window) while outside it, and verifies, installs and health
checks the update once a tick or a restart finds the window open. The device is the
agent's own OTA core with the simulator's in-memory shell (real signed releases, a real
delta, the real golden check); chunk requests are answered from the release files in the
release server's encoding. Windows are in the device's local time (TZ=UTC here)."""

from __future__ import annotations

import calendar
import json
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from edgeship.agent import _ota as ota
from edgeship.agent._install import answer_locally
from edgeship.sdk.release._release import Release
from edgeship.sdk.release._trust import Offer
from simulator import HealthLab, SimDevice
from test_agent_support import make_keys, make_release

from edgeship._errors import MalformedError

NOON = calendar.timegm((2026, 12, 5, 12, 0, 0))  # 12:00 UTC
HOUR = 3600.0


class ClockedDevice(SimDevice):
    """A simulated device whose clock the test sets, served from local release files."""

    def __init__(self, *, files: dict[str, bytes], window: str = "", **kw: Any) -> None:
        super().__init__(**kw)
        self.core.install_window = window
        self.files, self.now, self.statuses = files, NOON, []

    def dispatch(self, event: ota.Event) -> None:
        self.state = ota.drive(self.core, self.state, event, lambda: self.now,
                               lambda action, _: getattr(self, f"_do_{type(action).__name__}")(
                                   action))

    def _do_RequestChunk(self, action: ota.RequestChunk) -> ota.Event:  # type: ignore[override]
        return answer_locally(self.files, action)

    def _publish(self, topic: str, payload: bytes, **kw: Any) -> None:
        if topic.endswith("/status"):
            self.statuses.append(json.loads(payload))


@pytest.fixture(autouse=True)
def _utc() -> Iterator[None]:
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if saved is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = saved
    time.tzset()


@pytest.fixture(scope="module")
def rels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("window-rels")
    keys = make_keys(tmp)
    v1 = make_release(tmp, keys, "1.0.0")
    return {"v1": v1, "v2": make_release(tmp, keys, "1.1.0", base=v1),
            "root": keys / "root.pub"}


def device(rels: dict[str, Path], window: str = "") -> ClockedDevice:
    v1, v2 = Release.load(rels["v1"]), Release.load(rels["v2"])
    files = {v2.manifest.artifact.name: v2.read_artifact(),
             **{d.name: v2.read_delta(d) for d in v2.manifest.deltas}}
    dev = ClockedDevice(files=files, window=window, device="dev-1", fleet="f",
                        broker_url="mqtt://127.0.0.1:1", root_key=rels["root"].read_bytes(),
                        lab=HealthLab())
    dev.install_initial(v1.offer().to_bytes(), v1.read_artifact())
    return dev


def offer(rels: dict[str, Path], window: str = "") -> bytes:
    return replace(Release.load(rels["v2"]).offer(), install_window=window).to_bytes()


def test_offer_window_waits_then_installs_when_a_tick_finds_it_open(
        rels: dict[str, Path]) -> None:
    dev = device(rels)
    dev.dispatch(ota.OfferReceived(offer(rels, "02:00-04:00")))
    assert dev.state.phase == "downloaded" and dev.state.active.version == "1.0.0"
    assert dev.state.job is not None and dev.state.job.received == dev.state.job.chunks
    last = dev.statuses[-1]
    assert last["state"] == "downloaded" and last["window"] == "02:00-04:00"
    assert last["target"] == "1.1.0"
    dev.now = NOON + 13 * HOUR  # 01:00 next day: still closed
    dev.dispatch(ota.Tick())
    assert dev.state.phase == "downloaded"
    dev.now = NOON + 14.5 * HOUR  # 02:30: open
    dev.dispatch(ota.Tick())
    assert dev.state.phase == "committed" and dev.state.active.version == "1.1.0"
    assert [s["state"] for s in dev.statuses[-3:]][-1] == "committed"


def test_a_restart_while_waiting_keeps_waiting_then_installs_in_the_window(
        rels: dict[str, Path]) -> None:
    dev = device(rels)
    dev.dispatch(ota.OfferReceived(offer(rels, "02:00-04:00")))
    flash, download = dev.flash, bytes(dev.download)
    assert ota.decode_state(flash).phase == "downloaded"
    for now, phase in ((NOON + 13.9 * HOUR, "downloaded"), (NOON + 14.1 * HOUR, "committed")):
        dev.state = ota.decode_state(flash)  # power cycle: state and download survive
        dev.download = bytearray(download)
        dev.now = now
        dev.dispatch(ota.Resume(download_size=len(download)))
        assert dev.state.phase == phase, now


def test_device_window_crossing_midnight_and_the_offer_window_wins(
        rels: dict[str, Path]) -> None:
    dev = device(rels, window="22:00-01:00")  # [ota] install_window
    dev.dispatch(ota.OfferReceived(offer(rels)))
    assert dev.state.phase == "downloaded"
    dev.now = NOON + 12.5 * HOUR  # 00:30
    dev.dispatch(ota.Tick())
    assert dev.state.active.version == "1.1.0"
    # the offer's own window replaces the device's (here: open right now)
    dev = device(rels, window="22:00-01:00")
    dev.dispatch(ota.OfferReceived(offer(rels, "11:00-13:00")))
    assert dev.state.phase == "committed"
    # no window anywhere: installs at once, as before
    dev = device(rels)
    dev.dispatch(ota.OfferReceived(offer(rels)))
    assert dev.state.phase == "committed"


def test_bad_windows_are_refused() -> None:
    for text in ("2-4", "25:00-03:00", "02:00-02:00", "02:00"):
        with pytest.raises(MalformedError):
            Offer(manifest={}, keyset={}, install_window=text)


def test_fleet_status_says_the_device_waits_for_its_window(rels: dict[str, Path]) -> None:
    from edgeship.sdk.fleet._fleetstatus import DeviceStatus

    dev = device(rels)
    dev.dispatch(ota.OfferReceived(offer(rels, "02:00-04:00")))
    status = DeviceStatus.from_payload("dev-1", json.dumps(dev.statuses[-1]).encode())
    assert status is not None
    assert status.state_text() == "downloaded, waiting for window 02:00-04:00"
