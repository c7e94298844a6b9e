"""The pure OTA state machine, driven by an in-memory shell with real signed releases,
real deltas and a real onnxruntime golden check (no MQTT, no files)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest
from edgeship.agent._health import golden_check
from edgeship.agent._ota import (
    Chunk,
    Connected,
    Downloaded,
    Event,
    HealthChecked,
    Installed,
    LoadActive,
    Loaded,
    LocalRelease,
    OfferReceived,
    OtaCore,
    OtaState,
    Persist,
    ReadDownload,
    Report,
    RequestChunk,
    Resume,
    RunHealthCheck,
    StorageFailed,
    TruncateDownload,
    WriteChunk,
    WriteSlot,
    correlation,
    decode_state,
    encode_state,
)
from edgeship.sdk.release._release import Release
from edgeship.sdk.runtime._model import Model
from edgeship.sdk.transport._transfer import encode_chunk, serve_request
from test_agent_support import make_keys, make_release, offer_bytes

NOW = time.time()  # the releases are built now and valid for 90 days


class Crash(Exception):
    pass


class MemoryShell:
    """Performs the core's actions in memory; 'disk' = persisted state, download, slots."""

    def __init__(self, core: OtaCore, releases: list[Path]) -> None:
        self.core = core
        self.files: dict[tuple[str, str], bytes] = {}
        for reldir in releases:
            rel = Release.load(reldir)
            self.files[(rel.manifest.version, rel.manifest.artifact.name)] = rel.read_artifact()
            for d in rel.manifest.deltas:
                self.files[(rel.manifest.version, d.name)] = rel.read_delta(d)
        self.state = self.disk_state = OtaState()
        self.download = bytearray()
        self.slots: dict[str, bytes] = {}
        self.serving: str | None = None
        self.reports: list[dict[str, Any]] = []
        self.served_bytes = 0
        self.online = True
        self.budget: int | None = None  # actions left before a simulated crash

    def run(self, event: Event) -> None:
        events = [event]
        while events:
            self.state, actions = self.core.step(self.state, events.pop(0), NOW)
            for action in actions:
                if self.budget is not None:
                    if self.budget == 0:
                        raise Crash
                    self.budget -= 1
                events.extend(self.perform(action))

    def restart(self) -> None:
        self.state, self.serving, self.budget = self.disk_state, None, None
        self.run(Resume(download_size=len(self.download)))

    def perform(self, action: Any) -> list[Event]:
        if isinstance(action, Persist):
            self.disk_state = decode_state(encode_state(action.state))  # a real round trip
        elif isinstance(action, Report):
            self.reports.append(action.status)
        elif isinstance(action, TruncateDownload):
            del self.download[action.size:]
        elif isinstance(action, WriteChunk):
            self.download[action.offset:action.offset + len(action.data)] = action.data
        elif isinstance(action, RequestChunk):
            return self._serve(action)
        elif isinstance(action, ReadDownload):
            base = self.slots[action.base_slot] if action.base_slot else None
            return [Downloaded(payload=bytes(self.download), base=base)]
        elif isinstance(action, WriteSlot):
            self.slots[action.slot] = action.data
            return [Installed()]
        elif isinstance(action, RunHealthCheck):
            return [self._check(action.slot, action.golden)]
        elif isinstance(action, LoadActive):
            ok = hashlib.sha256(self.slots.get(action.slot.slot, b"")).hexdigest() == action.slot.sha256
            self.serving = action.slot.version if ok else None
            return [Loaded(action.slot.slot, ok, "" if ok else "sha256 mismatch")]
        return []

    def _serve(self, action: RequestChunk) -> list[Event]:
        if not self.online:
            return []
        req = action.request
        raw = encode_request_for(req)

        def lookup(r: Any) -> Any:
            data = self.files.get((r.version, r.file))
            return None if data is None else (len(data), lambda o, n: data[o:o + n])

        _, answer = serve_request(raw, lookup)
        self.served_bytes += len(answer)
        return [Chunk(answer, correlation=correlation(req))]  # echoed like an MQTT 5 server

    def _check(self, slot: str, golden: dict[str, Any] | None) -> HealthChecked:
        model = Model.from_bytes(self.slots[slot], ".onnx")
        reason = golden_check(model, golden)
        return HealthChecked(ok=reason is None, reason=reason or "")


def encode_request_for(req: Any) -> bytes:
    from edgeship.sdk.transport._transfer import encode_request

    return encode_request(req)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("ota")
    keys = make_keys(tmp)
    v1 = make_release(tmp, keys, "1.0.0")
    v2 = make_release(tmp, keys, "2.0.0", base=v1)
    bad = make_release(tmp, keys, "3.0.0", base=v2, bad_golden=True)
    root = (keys / "root.pub").read_bytes()
    return {"v1": v1, "v2": v2, "bad": bad, "root": root, "tmp": tmp}


def make_shell(world: dict[str, Any], chunk_size: int = 1024) -> MemoryShell:
    core = OtaCore(device="d1", model="model", root_key=world["root"], chunk_size=chunk_size)
    shell = MemoryShell(core, [world["v1"], world["v2"], world["bad"]])
    rel = Release.load(world["v1"])
    shell.run(LocalRelease(offer=offer_bytes(world["v1"]), artifact=rel.read_artifact()))
    return shell


def test_initial_release_installs_and_commits(world: dict[str, Any]) -> None:
    shell = make_shell(world)
    assert shell.state.phase == "committed"
    assert shell.state.active is not None and shell.state.active.version == "1.0.0"
    assert shell.serving == "1.0.0"
    assert shell.state.trusted.version == "1.0.0"


def test_delta_update_downloads_only_the_delta(world: dict[str, Any]) -> None:
    shell = make_shell(world)
    shell.run(OfferReceived(offer_bytes(world["v2"])))
    assert shell.state.phase == "committed", shell.reports[-1]
    assert shell.serving == "2.0.0" and shell.state.active.slot == "b"
    delta = Release.load(world["v2"]).manifest.deltas[0]
    artifact = Release.load(world["v2"]).manifest.artifact
    assert delta.size < artifact.size
    assert shell.served_bytes < artifact.size
    states = [r["state"] for r in shell.reports]
    for phase in ("offered", "downloading", "verifying", "installing", "health-checking",
                  "committed"):
        assert phase in states


def test_forged_and_replayed_offers_are_rejected(world: dict[str, Any]) -> None:
    shell = make_shell(world)
    forged = offer_bytes(world["v2"]).replace(b'"version":"2.0.0"', b'"version":"9.0.0"')
    assert forged != offer_bytes(world["v2"])
    shell.run(OfferReceived(forged))
    assert shell.state.phase == "failed" and "SignatureError" in shell.state.error
    shell.run(OfferReceived(offer_bytes(world["v2"])))
    assert shell.state.phase == "committed" and shell.serving == "2.0.0"
    shell.run(OfferReceived(offer_bytes(world["v1"])))  # replay of the old release
    assert "RollbackError" in shell.state.error
    assert shell.state.active.version == "2.0.0" and shell.serving == "2.0.0"


def test_failing_golden_check_rolls_back(world: dict[str, Any]) -> None:
    shell = make_shell(world)
    shell.run(OfferReceived(offer_bytes(world["v2"])))
    shell.run(OfferReceived(offer_bytes(world["bad"])))
    assert shell.state.phase == "rolled-back"
    assert "golden output differs" in shell.state.error
    assert shell.state.active.version == "2.0.0" and shell.serving == "2.0.0"
    assert shell.reports[-1]["state"] == "rolled-back" and shell.reports[-1]["error"]


def test_server_claiming_more_bytes_than_signed_fails(world: dict[str, Any]) -> None:
    shell = make_shell(world)
    shell.online = False
    shell.run(OfferReceived(offer_bytes(world["v2"])))
    job = shell.state.job
    assert shell.state.phase == "downloading" and job is not None
    shell.run(Chunk(encode_chunk(0, 0, job.size + 10, b"x" * job.chunk_size)))
    assert shell.state.phase == "failed" and "manifest signs" in shell.state.error
    assert shell.state.active.version == "1.0.0"


def test_stale_and_damaged_chunks_are_ignored(world: dict[str, Any]) -> None:
    shell = make_shell(world)
    shell.online = False
    shell.run(OfferReceived(offer_bytes(world["v2"])))
    job = shell.state.job
    shell.run(Chunk(encode_chunk(5, 5 * job.chunk_size, job.size, b"y" * job.chunk_size)))
    damaged = bytearray(encode_chunk(0, 0, job.size, b"z" * job.chunk_size))
    damaged[-1] ^= 1
    shell.run(Chunk(bytes(damaged)))
    assert shell.state.phase == "downloading" and shell.state.job.received == 0
    shell.online = True
    shell.run(Connected())
    assert shell.state.phase == "committed" and shell.serving == "2.0.0"


def test_crash_after_every_single_action_recovers(world: dict[str, Any]) -> None:
    """Crash after k actions for every k of an update; each restart serves a verified
    model and the update completes."""
    total = None
    k = 0
    while total is None or k <= total:
        shell = make_shell(world, chunk_size=4096)
        shell.budget = k
        try:
            shell.run(OfferReceived(offer_bytes(world["v2"])))
            total = k  # finished within budget: all crash points covered
        except Crash:
            shell.restart()
            active = shell.state.active
            assert active is not None
            assert hashlib.sha256(shell.slots[active.slot]).hexdigest() == active.sha256
            if shell.state.phase == "downloading":  # download resumes when the broker is back
                shell.run(Connected())
            if shell.state.active.version == "1.0.0":  # the offer was lost: the fleet resends
                shell.run(OfferReceived(offer_bytes(world["v2"])))
        assert shell.state.phase == "committed", (k, shell.state.phase, shell.state.error)
        assert shell.serving == "2.0.0"
        k += 1
    assert total is not None and total > 10


def test_full_artifact_when_no_delta_fits_the_installed_base(world: dict[str, Any]) -> None:
    shell = make_shell(world)  # serves v1; "bad" (3.0.0) only has a delta from 2.0.0
    shell.online = False
    shell.run(OfferReceived(offer_bytes(world["bad"])))
    job = shell.state.job
    art = Release.load(world["bad"]).manifest.artifact
    assert job is not None and not job.delta and job.file == art.name and job.size == art.size


def test_a_model_that_keeps_crashing_the_agent_on_load_is_rolled_back(
        world: dict[str, Any]) -> None:
    """Each restart mid-switch counts one load attempt; after the limit the old slot wins."""
    shell = make_shell(world)
    original = shell.perform

    def crash_on_new_model(action: Any) -> list[Event]:
        if isinstance(action, LoadActive) and action.slot.version == "2.0.0":
            raise Crash  # the runtime takes the whole process down while loading
        return original(action)

    shell.perform = crash_on_new_model  # type: ignore[method-assign]
    for attempt in range(1, 4):
        with pytest.raises(Crash):
            if attempt == 1:
                shell.run(OfferReceived(offer_bytes(world["v2"])))
            else:
                shell.restart()
        job = shell.disk_state.job
        assert job is not None and job.switched and job.switch_attempts == attempt
    shell.restart()
    assert shell.state.phase == "rolled-back" and "failed to load 3 times" in shell.state.error
    assert shell.state.active.version == "1.0.0" and shell.serving == "1.0.0"
    assert shell.state.job is None


@pytest.mark.parametrize("damage", ["corrupted", "deleted"])
def test_delta_on_a_damaged_active_slot_fetches_the_full_artifact(
        world: dict[str, Any], damage: str) -> None:
    """The delta's base is the active slot; when that file is damaged or gone on disk the
    delta cannot apply, and failing would fail every retry of this release: fetch the
    whole artifact instead."""
    shell = make_shell(world)
    active = shell.state.active
    assert active is not None
    if damage == "corrupted":
        shell.slots[active.slot] = b"\x00" + shell.slots[active.slot][1:]
    else:
        del shell.slots[active.slot]
    original = shell.perform

    def read_base_if_there(action: Any) -> list[Event]:
        if isinstance(action, ReadDownload) and action.base_slot:  # like Store: None if gone
            base = shell.slots.get(action.base_slot)
            return [Downloaded(payload=bytes(shell.download), base=base)]
        return original(action)

    shell.perform = read_base_if_there  # type: ignore[method-assign]
    shell.run(OfferReceived(offer_bytes(world["v2"])))
    assert shell.state.phase == "committed", shell.state.error
    assert shell.serving == "2.0.0"
    assert shell.served_bytes > Release.load(world["v2"]).manifest.artifact.size


@pytest.mark.parametrize("keep", [0, 20, 50])
def test_download_file_cut_by_a_power_loss_is_fetched_again(
        world: dict[str, Any], keep: int) -> None:
    """The state counts chunks the disk lost (download.part gone or short after a power
    loss): the restart re-fetches from the last chunk the file still holds, instead of
    resuming past a hole (which failed verification, and crashed the daemon on a missing
    file)."""
    shell = make_shell(world, chunk_size=16)
    shell.online = False
    shell.run(OfferReceived(offer_bytes(world["v2"])))
    job = shell.state.job
    assert job is not None and job.chunks > 4
    data = shell.files[("2.0.0", job.file)]
    for i in range(4):
        shell.run(Chunk(encode_chunk(i, i * 16, job.size, data[i * 16:(i + 1) * 16])))
    assert shell.disk_state.job is not None and shell.disk_state.job.received == 4
    del shell.download[keep:]
    shell.restart()
    assert shell.state.job is not None and shell.state.job.received == keep // 16
    assert shell.disk_state.job is not None and shell.disk_state.job.received == keep // 16
    shell.online = True
    shell.run(Connected())
    assert shell.state.phase == "committed", shell.state.error
    assert shell.serving == "2.0.0"


def test_a_late_chunk_of_the_replaced_transfer_does_not_fail_the_new_one(
        world: dict[str, Any]) -> None:
    """A newer offer arrives mid-download; a chunk answering the old transfer's request
    is still in flight and has the index the new transfer waits for. It must be dropped
    (it named another file size, so it failed the new update as a lying server)."""
    shell = make_shell(world)
    shell.online = False
    shell.run(OfferReceived(offer_bytes(world["v2"])))
    old = shell.state.job
    assert old is not None and old.delta
    stale_request = RequestChunk(shell.core._chunk_request(old))
    shell.online = True
    stale = shell._serve(stale_request)[0]
    shell.online = False
    shell.run(OfferReceived(offer_bytes(world["bad"])))  # 3.0.0: full artifact from v1
    new = shell.state.job
    assert new is not None and new.version == "3.0.0" and new.size != old.size
    shell.run(stale)
    assert shell.state.phase == "downloading", shell.state.error
    assert shell.state.job == new
    shell.online = True
    shell.run(Connected())
    assert shell.state.phase == "rolled-back" and "golden" in shell.state.error  # 3.0.0 is bad


def test_disk_full_mid_download_fails_the_update_and_a_retry_works(world: dict[str, Any]) -> None:
    """The shell reports a failed chunk write (ENOSPC): the update fails with the reason,
    the download is dropped (its space freed), v1 serves, and the offer can be retried."""
    shell = make_shell(world, chunk_size=16)
    original = shell.perform
    writes = 0

    def disk_full_at_third_chunk(action: Any) -> list[Event]:
        nonlocal writes
        if isinstance(action, WriteChunk):
            writes += 1
            if writes == 3:
                return [StorageFailed("cannot write the download: No space left on device")]
        return original(action)

    shell.perform = disk_full_at_third_chunk  # type: ignore[method-assign]
    shell.run(OfferReceived(offer_bytes(world["v2"])))
    assert shell.state.phase == "failed" and "No space left" in shell.state.error
    assert shell.state.job is None and shell.disk_state.job is None
    assert shell.download == bytearray() and shell.serving == "1.0.0"
    shell.perform = original  # type: ignore[method-assign]
    shell.run(OfferReceived(offer_bytes(world["v2"])))
    assert shell.state.phase == "committed" and shell.serving == "2.0.0"


def test_a_rolled_back_release_offered_again_is_not_retried(world: dict[str, Any]) -> None:
    """The broker re-delivers the retained offer of the release that just rolled back at
    every reconnect (clean session): the device must not download and check it again
    each time (and flip its status through downloading back to rolled-back)."""
    shell = make_shell(world)
    shell.run(OfferReceived(offer_bytes(world["v2"])))
    shell.run(OfferReceived(offer_bytes(world["bad"])))
    assert shell.state.phase == "rolled-back"
    served, reports = shell.served_bytes, len(shell.reports)
    shell.run(OfferReceived(offer_bytes(world["bad"])))
    assert shell.state.phase == "rolled-back" and shell.state.target == "3.0.0"
    assert shell.served_bytes == served and len(shell.reports) == reports
    assert shell.serving == "2.0.0"


def test_disk_full_frees_the_download_before_writing_the_state(world: dict[str, Any]) -> None:
    """On a full disk the state write itself needs room: the failed update must drop the
    download first, or the state write fails too and the agent dies at every restart."""
    shell = make_shell(world, chunk_size=16)
    original = shell.perform
    full = False

    def full_disk(action: Any) -> list[Event]:
        nonlocal full
        if isinstance(action, WriteChunk) and len(shell.download) >= 32:
            full = True
            return [StorageFailed("cannot write the download: No space left on device")]
        if isinstance(action, TruncateDownload) and action.size == 0:
            full = False
        if isinstance(action, Persist) and full and action.state.job is None:
            raise Crash  # ENOSPC on state.json escapes the loop
        return original(action)

    shell.perform = full_disk  # type: ignore[method-assign]
    shell.run(OfferReceived(offer_bytes(world["v2"])))
    assert shell.disk_state.phase == "failed" and "No space left" in shell.disk_state.error
    assert shell.serving == "1.0.0"
