"""Coming up after ``state.json`` was damaged: serve the newest slot the root key signed.

A device has no one to fix its files by hand, so a state file it cannot use (empty,
truncated, NUL-filled, a directory, a wrong type anywhere; see ``_state_check``) must not
stop it. The agent then:

1. keeps the damaged file aside (``state.json.damaged-<time>``) for diagnosis;
2. verifies each slot against the root key: the signed offer stored beside the model
   (``slots/<s>/offer.json``) must verify (:func:`~edgeship.sdk.release._trust.check_installed`)
   and the model's size and sha256 must be the signed ones;
3. serves the newest verified slot, drops any update in progress (it starts again
   at the next offer) and writes a fresh state;
4. never lowers the rollback floor silently: the floor read from the damaged file
   (when its ``trusted`` part still parses) is kept and raised to the newest verified
   slot; when it cannot be read, the newest verified slot's version becomes the floor;
5. logs one line (``state_damaged``) and reports it in the status ``error``.

The decisions (:func:`recovered_state`, :func:`salvaged_trusted`) are pure; the shell
(:func:`load_or_recover`) reads the files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from edgeship.agent._ota import OtaCore, OtaState, SlotInfo
from edgeship.agent._ota_release import recipient
from edgeship.agent._store import StateDamaged, Store
from edgeship.sdk.release._manifest import Manifest, parse_version
from edgeship.sdk.release._trust import Offer, TrustedState, check_installed

from edgeship._errors import EdgeshipError

__all__ = ["OfferBackfill", "VerifiedSlot", "load_or_recover", "names_slot",
           "newest_servable", "recovered_state", "salvaged_trusted"]


@dataclass(frozen=True)
class VerifiedSlot:
    """A slot whose stored offer the root key signed; ``info`` is None when the model
    beside it is not exactly what that offer names (it is not served, but the version
    still counts for the rollback floor: the device accepted it once)."""

    info: SlotInfo | None
    manifest: Manifest
    offer: Offer


def salvaged_trusted(raw: bytes) -> TrustedState | None:
    """The rollback floor (``trusted``) of a damaged state file, if that part still parses."""
    try:
        doc = json.loads(raw)
        return TrustedState.from_dict(doc["trusted"]) if isinstance(doc, dict) else None
    except (ValueError, RecursionError, KeyError, TypeError, EdgeshipError):
        return None


def recovered_state(slots: list[VerifiedSlot], trusted: TrustedState | None,
                    reason: str) -> OtaState:
    """The state to run with: the newest verified slot active, the floor never lower than
    ``trusted`` (the salvaged one) nor than any verified slot's version."""
    floor = trusted or TrustedState()
    ordered = sorted(slots, key=lambda s: s.manifest.version_tuple)
    for slot in ordered:
        floor = _raised(floor, slot)
    newest = newest_servable(slots)
    if newest is not None and (not floor.version or parse_version(floor.version)
                               <= newest.manifest.version_tuple):
        floor = floor.installed(newest.manifest)
    active = newest.info if newest else None
    return OtaState(phase="idle", active=active, trusted=floor, error=reason,
                    target=active.version if active else "")


def newest_servable(slots: list[VerifiedSlot]) -> VerifiedSlot | None:
    servable = [s for s in slots if s.info is not None]
    return max(servable, key=lambda s: s.manifest.version_tuple, default=None)


def _raised(trusted: TrustedState, slot: VerifiedSlot) -> TrustedState:
    """``trusted`` with ``slot``'s release counted as seen; a newer key set it already
    trusts stays (accept() would take the slot's, possibly older, key set)."""
    accepted = trusted.accept(slot.offer, slot.manifest)
    if trusted.keyset_version >= accepted.keyset_version and trusted.keyset_sha256:
        accepted = replace(accepted, keyset_version=trusted.keyset_version,
                           keyset_sha256=trusted.keyset_sha256)
    return accepted


def verified_slots(store: Store, core: OtaCore, known: tuple[bytes, ...] = ()
                   ) -> list[VerifiedSlot]:
    """Every slot whose stored offer verifies against the root key; servable (``info``)
    when its model file has the signed size and sha256 and this device can open it.
    A slot without a stored offer (installed by an agent older than this) is tried
    against the ``known`` offers (the initial release's) and counts only if it matches."""
    found = []
    for slot in ("a", "b"):
        raw = store.slot_offer(slot)
        for candidate in [raw] if raw is not None else known:
            verified = _verify(store, core, slot, candidate)
            if verified is not None and (raw is not None or verified.info is not None):
                found.append(verified)
                break
    return found


def _verify(store: Store, core: OtaCore, slot: str, raw: bytes) -> VerifiedSlot | None:
    try:
        offer = Offer.from_bytes(raw)
        manifest = check_installed(offer, core.root_key, model_name=core.model,
                                   hardware=core.hardware)
    except EdgeshipError:
        return None
    return VerifiedSlot(info=_servable(store, slot, manifest, core), manifest=manifest,
                        offer=offer)


def _servable(store: Store, slot: str, manifest: Manifest, core: OtaCore) -> SlotInfo | None:
    """The slot as the state names it, when it holds what this device installs of
    ``manifest`` (its per-target variant, or the generic artifact) intact."""
    installs, variant = core.select(manifest)
    found = _holds(store, slot, installs, core)
    if found is None and variant:  # installed before the accelerator's runtime was here
        installs, variant = manifest, ""
        found = _holds(store, slot, installs, core)
    return None if found is None else replace(found, variant=variant or None)


def _holds(store: Store, slot: str, manifest: Manifest, core: OtaCore) -> SlotInfo | None:
    art = manifest.artifact
    try:
        data = store.read_slot(slot, art.format, max_bytes=art.size)
        encryption = recipient(manifest, core.private_key)
    except (OSError, EdgeshipError):
        return None
    if len(data) != art.size or hashlib.sha256(data).hexdigest() != art.sha256:
        return None
    profile = manifest.profile
    return SlotInfo(slot=slot, version=manifest.version, sha256=art.sha256, size=art.size,
                    format=art.format, encryption=encryption,
                    profile=profile.to_dict() if profile is not None else None)


def load_or_recover(store: Store, core: OtaCore, log: Callable[..., None],
                    known: Callable[[], tuple[bytes, ...]] = tuple,
                    state: OtaState | None = None,
                    ) -> tuple[OtaState, dict[str, Any] | None]:
    """The persisted state, or (when it is damaged) the recovered one and what happened;
    ``known()`` gives offers to try for slots without a stored one (see verified_slots).
    ``state``: the persisted state as the caller already read it (not read again)."""
    if state is not None:
        return state, None
    try:
        return store.load_state(), None
    except StateDamaged as exc:
        damage = exc
    kept = store.set_aside_state()
    slots = verified_slots(store, core, known())
    state = recovered_state(slots, salvaged_trusted(damage.raw), "")
    active = state.active
    serving = f"serving slot {active.slot} ({active.version})" if active \
        else "no slot verifies"
    reason = (f"state.json was damaged ({damage}); kept as {kept.name if kept else 'nothing'}"
              f"; {serving}")
    state = replace(state, error=reason)
    with contextlib.suppress(OSError):
        store.truncate_download(0)  # the update in progress is lost with the state
    try:
        store.save_state(state)
    except OSError as exc:  # runs from memory; the next state write tries again
        reason += f"; the new state could not be written ({exc.strerror or exc})"
    what = {"reason": str(damage), "kept": str(kept) if kept else None,
            "slot": active.slot if active else None,
            "version": active.version if active else None,
            "floor": dict(state.trusted.seen)}
    log("state_damaged", level="error", **what)
    return state, what


def names_slot(raw: bytes, active: SlotInfo, core: OtaCore) -> bool:
    """Whether ``raw`` is a root-signed offer of exactly ``active``'s model (its version,
    size and sha256)."""
    try:
        manifest = check_installed(Offer.from_bytes(raw), core.root_key, model_name=core.model,
                                   hardware=core.hardware)
    except EdgeshipError:
        return False
    art = manifest.artifact
    return (manifest.version, art.sha256, art.size) == (active.version, active.sha256,
                                                        active.size)


class OfferBackfill:
    """An active slot installed by an agent older than stored offers has none, so a lost
    state could not verify it again (only the initial release's slot could be). The first
    root-signed offer of exactly its model that reaches the agent (the initial release's
    at start, or the retained offer the broker re-delivers at every connect) is stored
    beside it. Nothing is written for any other offer (floods must not wear the flash)."""

    def __init__(self, store: Store, core: OtaCore, log: Callable[..., None]) -> None:
        self.store, self.core, self.log = store, core, log
        self.slot: str | None = None  # the active slot still without its offer

    def check(self, active: SlotInfo | None) -> None:
        missing = active is not None and self.store.slot_offer(active.slot) is None
        self.slot = active.slot if missing and active is not None else None

    def offer(self, raw: bytes, active: SlotInfo | None) -> None:
        if self.slot is None or active is None or active.slot != self.slot:
            return
        if not names_slot(raw, active, self.core):
            return
        try:
            self.store.write_slot_offer(active.slot, raw)
        except OSError as exc:  # the next matching offer tries again
            self.log("slot_offer_not_stored", level="warning", slot=active.slot,
                     error=exc.strerror or str(exc))
            return
        self.slot = None
        self.log("slot_offer_restored", slot=active.slot, version=active.version)
