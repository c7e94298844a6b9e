"""Shadow releases in the pure OTA core: install beside the active model, promote without a
download, discard, replace by another offer, crash and resume. Real signed releases, real
deltas, a real onnxruntime golden check; the in-memory shell of test_ota_core."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from edgeship.agent._ota import (
    LoadActive,
    LoadShadow,
    OfferReceived,
    OtaCore,
    OtaState,
    RequestChunk,
    UnloadShadow,
    WriteSlot,
    decode_state,
    encode_state,
)
from edgeship.agent._ota_types import Chunk, Connected, Event, LocalRelease
from edgeship.sdk.release._release import Release
from test_agent_support import make_keys, make_release, offer_bytes
from test_ota_core import Crash, MemoryShell


class ShadowShell(MemoryShell):
    """The memory shell plus a shadow 'runtime' and a log of every action."""

    def __init__(self, core: OtaCore, releases: list[Path]) -> None:
        super().__init__(core, releases)
        self.shadow: str | None = None
        self.actions: list[Any] = []

    def perform(self, action: Any) -> list[Event]:
        self.actions.append(action)
        if isinstance(action, LoadShadow):
            ok = hashlib.sha256(self.slots.get(action.slot.slot, b"")).hexdigest()
            assert ok == action.slot.sha256, "the shadow slot holds the verified artifact"
            self.shadow = action.slot.version
        elif isinstance(action, UnloadShadow):
            self.shadow = None
        return super().perform(action)

    def restart(self) -> None:
        self.shadow = None
        super().restart()


def shadow_offer(reldir: Path) -> bytes:
    doc = json.loads(offer_bytes(reldir))
    doc["mode"] = "shadow"
    return json.dumps(doc).encode()


def discard(version: str) -> bytes:
    return json.dumps({"type": "shadow-discard", "version": version}).encode()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("shadow")
    keys = make_keys(tmp)
    v1 = make_release(tmp, keys, "1.0.0")
    v2 = make_release(tmp, keys, "2.0.0", base=v1)
    v3 = make_release(tmp, keys, "3.0.0", base=v2)
    bad = make_release(tmp, keys, "2.5.0", base=v1, bad_golden=True)
    return {"v1": v1, "v2": v2, "v3": v3, "bad": bad, "root": (keys / "root.pub").read_bytes()}


def make_shell(world: dict[str, Any], chunk_size: int = 1024) -> ShadowShell:
    core = OtaCore(device="d1", model="model", root_key=world["root"], chunk_size=chunk_size)
    shell = ShadowShell(core, [world["v1"], world["v2"], world["v3"], world["bad"]])
    rel = Release.load(world["v1"])
    shell.run(LocalRelease(offer=offer_bytes(world["v1"]), artifact=rel.read_artifact()))
    assert shell.serving == "1.0.0"
    return shell


def shadowing(world: dict[str, Any]) -> ShadowShell:
    shell = make_shell(world)
    shell.run(OfferReceived(shadow_offer(world["v2"])))
    return shell


def test_shadow_offer_installs_beside_the_active_model(world: dict[str, Any]) -> None:
    shell = shadowing(world)
    state = shell.state
    assert state.phase == "shadowing", state.error
    assert state.active is not None and state.active.version == "1.0.0"
    assert state.shadow is not None and state.shadow.version == "2.0.0"
    assert state.shadow.slot == "b" and state.active.slot == "a" and state.job is None
    assert shell.serving == "1.0.0" and shell.shadow == "2.0.0"
    assert state.trusted.version == "1.0.0"  # installed (for the rollback check) is still v1
    assert not any(isinstance(a, LoadActive) and a.slot.version == "2.0.0"
                   for a in shell.actions)
    states = [r["state"] for r in shell.reports]
    for phase in ("offered", "downloading", "verifying", "installing", "health-checking",
                  "shadowing"):
        assert phase in states
    last = shell.reports[-1]
    assert last["state"] == "shadowing" and last["version"] == "1.0.0"
    assert last["target"] == "2.0.0" and last["shadow"] == {"version": "2.0.0"}
    assert shell.disk_state.shadow == state.shadow and shell.download == bytearray()
    # the delta from the active model went over the wire, not the whole artifact
    assert shell.served_bytes < Release.load(world["v2"]).manifest.artifact.size


def test_the_retained_shadow_offer_seen_again_is_ignored(world: dict[str, Any]) -> None:
    shell = shadowing(world)
    served, reports, actions = shell.served_bytes, len(shell.reports), len(shell.actions)
    shell.run(OfferReceived(shadow_offer(world["v2"])))
    assert shell.served_bytes == served and len(shell.reports) == reports
    assert len(shell.actions) == actions and shell.state.phase == "shadowing"


def test_promote_switches_to_the_shadow_without_a_download(world: dict[str, Any]) -> None:
    shell = shadowing(world)
    served = shell.served_bytes
    start = len(shell.actions)
    shell.run(OfferReceived(offer_bytes(world["v2"])))
    state = shell.state
    assert state.phase == "committed", state.error
    assert shell.served_bytes == served  # no chunk asked for
    assert not any(isinstance(a, (RequestChunk, WriteSlot)) for a in shell.actions[start:])
    assert state.active is not None and state.active.version == "2.0.0"
    assert state.active.slot == "b" and state.shadow is None and state.previous is None
    assert shell.serving == "2.0.0" and shell.shadow is None
    assert state.trusted.version == "2.0.0"
    loads = [a for a in shell.actions[start:] if isinstance(a, LoadActive)]
    assert len(loads) == 1 and loads[0].golden is not None  # golden-checked on load
    kinds = [type(a) for a in shell.actions[start:]]
    assert kinds.index(UnloadShadow) < kinds.index(LoadActive)
    assert shell.reports[-1]["state"] == "committed" and shell.reports[-1]["shadow"] is None
    reports = len(shell.reports)
    shell.run(OfferReceived(offer_bytes(world["v2"])))  # retained after a reconnect
    assert len(shell.reports) == reports and shell.serving == "2.0.0"


def test_discard_drops_the_shadow_and_is_idempotent(world: dict[str, Any]) -> None:
    shell = shadowing(world)
    shell.run(OfferReceived(discard("9.9.9")))  # another version: not ours, ignored
    assert shell.state.phase == "shadowing" and shell.shadow == "2.0.0"
    shell.run(OfferReceived(discard("2.0.0")))
    state = shell.state
    assert state.phase == "shadow-discarded" and state.shadow is None
    assert state.target == "2.0.0" and shell.shadow is None and shell.serving == "1.0.0"
    assert shell.disk_state.shadow is None and shell.disk_state.phase == "shadow-discarded"
    assert shell.reports[-1]["state"] == "shadow-discarded"
    reports = len(shell.reports)
    shell.run(OfferReceived(discard("2.0.0")))  # the retained discard after a reconnect
    assert len(shell.reports) == reports and state == shell.state
    shell.restart()  # nothing comes back after a restart either
    assert shell.shadow is None and shell.serving == "1.0.0"


def test_a_normal_offer_of_another_version_replaces_the_shadow(world: dict[str, Any]) -> None:
    shell = shadowing(world)
    start = len(shell.actions)
    shell.run(OfferReceived(offer_bytes(world["v3"])))
    state = shell.state
    assert state.phase == "committed", state.error
    assert state.active is not None and state.active.version == "3.0.0"
    assert state.active.slot == "b"  # the shadow's slot, overwritten
    assert state.shadow is None and shell.shadow is None and shell.serving == "3.0.0"
    kinds = [type(a) for a in shell.actions[start:]]
    assert kinds[0] is UnloadShadow and kinds.index(UnloadShadow) < kinds.index(WriteSlot)


def test_a_shadow_offer_of_another_version_replaces_the_shadow(world: dict[str, Any]) -> None:
    shell = shadowing(world)
    shell.run(OfferReceived(shadow_offer(world["v3"])))
    state = shell.state
    assert state.phase == "shadowing", state.error
    assert state.shadow is not None and state.shadow.version == "3.0.0"
    assert state.shadow.slot == "b" and shell.shadow == "3.0.0" and shell.serving == "1.0.0"


def test_restart_while_shadowing_loads_the_shadow_again(world: dict[str, Any]) -> None:
    shell = shadowing(world)
    shell.restart()
    assert shell.state.phase == "shadowing"
    assert shell.serving == "1.0.0" and shell.shadow == "2.0.0"
    shell.run(OfferReceived(offer_bytes(world["v2"])))  # and promote still works
    assert shell.state.phase == "committed" and shell.serving == "2.0.0"


def test_crash_after_every_action_of_a_shadow_install(world: dict[str, Any]) -> None:
    """Crash after k actions for every k; each restart serves v1 (never the shadow) and
    the shadow install completes."""
    total, k = None, 0
    while total is None or k <= total:
        shell = make_shell(world, chunk_size=4096)
        shell.budget = k
        try:
            shell.run(OfferReceived(shadow_offer(world["v2"])))
            total = k
        except Crash:
            shell.restart()
            assert shell.serving == "1.0.0"
            if shell.state.phase == "downloading":
                shell.run(Connected())
            if shell.state.shadow is None and shell.state.job is None:  # offer lost: resent
                shell.run(OfferReceived(shadow_offer(world["v2"])))
        assert shell.state.phase == "shadowing", (k, shell.state.phase, shell.state.error)
        assert shell.serving == "1.0.0" and shell.shadow == "2.0.0"
        k += 1
    assert total is not None and total > 8


def test_crash_in_the_promote_switch_finishes_it_on_restart(world: dict[str, Any]) -> None:
    for k in range(1, 4):  # after UnloadShadow, after Persist, after Report
        shell = shadowing(world)
        shell.budget = k
        with pytest.raises(Crash):
            shell.run(OfferReceived(offer_bytes(world["v2"])))
        shell.restart()
        state = shell.state
        if state.active is not None and state.active.version == "1.0.0":
            assert shell.shadow == "2.0.0"  # crashed before the switch was persisted
            shell.run(OfferReceived(offer_bytes(world["v2"])))
        assert shell.state.phase == "committed", (k, shell.state.error)
        assert shell.serving == "2.0.0" and shell.shadow is None


def test_promote_while_the_shadow_still_downloads(world: dict[str, Any]) -> None:
    shell = make_shell(world)
    shell.online = False
    shell.run(OfferReceived(shadow_offer(world["v2"])))
    assert shell.state.phase == "downloading" and shell.state.job.mode == "shadow"
    shell.run(OfferReceived(offer_bytes(world["v2"])))  # promoted before it finished
    assert shell.state.job is not None and shell.state.job.mode == "active"
    assert shell.disk_state.job is not None and shell.disk_state.job.mode == "active"
    shell.online = True
    shell.run(Connected())
    assert shell.state.phase == "committed" and shell.serving == "2.0.0"
    assert shell.shadow is None


def test_discard_while_the_shadow_still_downloads(world: dict[str, Any]) -> None:
    shell = make_shell(world, chunk_size=16)
    shell.online = False
    shell.run(OfferReceived(shadow_offer(world["v2"])))
    job = shell.state.job
    assert job is not None and job.chunks > 2
    data = shell.files[("2.0.0", job.file)]
    shell.run(Chunk(encode(0, job, data)))
    assert len(shell.download) > 0
    shell.run(OfferReceived(discard("2.0.0")))
    assert shell.state.phase == "shadow-discarded" and shell.state.job is None
    assert shell.download == bytearray() and shell.disk_state.job is None
    assert shell.serving == "1.0.0" and shell.shadow is None


def encode(index: int, job: Any, data: bytes) -> bytes:
    from edgeship.sdk.transport._transfer import encode_chunk

    size = job.chunk_size
    return encode_chunk(index, index * size, job.size, data[index * size:(index + 1) * size])


def test_a_shadow_failing_its_health_check_leaves_the_active_model(
        world: dict[str, Any]) -> None:
    shell = make_shell(world)
    shell.run(OfferReceived(shadow_offer(world["bad"])))
    state = shell.state
    assert state.phase == "rolled-back" and "golden output differs" in state.error
    assert state.target == "2.5.0" and state.shadow is None and shell.shadow is None
    assert state.active is not None and state.active.version == "1.0.0"
    assert shell.serving == "1.0.0"
    reports = len(shell.reports)
    shell.run(OfferReceived(shadow_offer(world["bad"])))  # retained: not retried
    assert len(shell.reports) == reports


def test_a_shadow_offer_with_no_active_model_is_refused(world: dict[str, Any]) -> None:
    core = OtaCore(device="d1", model="model", root_key=world["root"])
    shell = ShadowShell(core, [world["v2"]])
    shell.run(OfferReceived(shadow_offer(world["v2"])))
    assert shell.state.phase == "failed" and "needs an active model" in shell.state.error
    assert shell.state.target == "2.0.0" and shell.slots == {}


def test_an_unknown_offer_mode_is_refused(world: dict[str, Any]) -> None:
    shell = make_shell(world)
    doc = json.loads(offer_bytes(world["v2"]))
    doc["mode"] = "sideways"
    shell.run(OfferReceived(json.dumps(doc).encode()))
    assert shell.state.phase == "failed" and "sideways" in shell.state.error
    assert shell.serving == "1.0.0" and shell.state.job is None


def test_a_state_file_from_before_shadows_and_encryption_still_loads(
        world: dict[str, Any]) -> None:
    shell = shadowing(world)
    doc = json.loads(encode_state(shell.state))
    assert doc["shadow"]["version"] == "2.0.0"
    old = json.loads(encode_state(make_shell(world).state))
    del old["shadow"]
    for slot in ("active", "previous"):
        if old[slot]:
            old[slot].pop("encryption", None)
            old[slot].pop("profile", None)
    state = decode_state(json.dumps(old).encode())
    assert isinstance(state, OtaState) and state.shadow is None
    assert state.active is not None and state.active.encryption is None
    assert decode_state(encode_state(shell.state)) == shell.state
