"""The OTA state machine: pure logic that decides from events, persisted state and ``now``.

``step(state, event, now) -> (state, actions)`` does no I/O. The shell (the agent daemon,
or the fleet simulator) performs the returned actions *in order* and feeds their results
back as events. Order is what makes it crash safe: a chunk is written and fsynced before
the state that counts it is persisted; a slot is written before the state that names it;
the switch to a new slot is one atomic state write (``Persist``) that still remembers the
old slot until the new model has loaded and the update is committed.

Phases (``OtaState.phase``)::

    idle -> offered -> downloading -> verifying -> installing -> health-checking
         -> committed | rolled-back | failed

A *shadow* offer (``"mode": "shadow"``) takes the same path into the inactive slot but
ends in ``shadowing`` (``OtaState.shadow``, action ``LoadShadow``) instead of switching;
a ``{"type": "shadow-discard", "version"}`` message ends it (``shadow-discarded``);
a normal offer of the shadow's version promotes it without a download (the in-process
golden check and switch of a normal update, then ``committed``); a normal offer of
another version unloads the shadow and overwrites its slot.

An encrypted release (manifest ``encryption``) is refused at once unless this device's
key (``private_key``) is a recipient and unwraps the data key; slots keep ciphertext,
and ``SlotInfo.encryption`` tells the shell how to decrypt them into memory.

``offered`` is only reported: a verified offer is persisted as ``downloading``. After a
restart, :class:`Resume` picks the phase up again (resume the download at the last
verified chunk, verify and install again, re-run the health check, or finish or undo a
half-done switch). Offers are verified with exactly the sdk's ``check_offer`` and
payloads with ``check_payload``; nothing here checks a signature by itself.

To drive it (the daemon does exactly this; so can a simulator with an in-memory shell)::

    core = OtaCore(device="dev-1", model="model", root_key=root_pub_bytes)
    state = drive(core, state, OfferReceived(raw), time.time(), perform)

where ``perform(action, state)`` carries out one action and returns the event it led to
(``RequestChunk`` -> later a ``Chunk``; ``WriteSlot`` -> ``Installed``; ...) or None.
A write that fails (``WriteChunk``, ``Persist``, ``WriteSlot``: disk full) returns
:class:`StorageFailed`; the rest of that step's actions are skipped and the update fails,
freeing its download, while the active model keeps serving.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from edgeship.agent._ota_release import (
    base_opens,
    decrypting,
    peek_offer,
    recipient,
    select,
    slot_info,
)
from edgeship.agent._ota_shadow import ShadowSteps
from edgeship.agent._ota_types import (
    MODES,
    PHASES,
    Action,
    Chunk,
    Connected,
    Downloaded,
    Event,
    HealthChecked,
    Installed,
    Job,
    LoadActive,
    Loaded,
    LoadShadow,
    LocalRelease,
    OfferReceived,
    OtaState,
    Persist,
    ReadDownload,
    Rejected,
    Report,
    RequestChunk,
    Resume,
    RunHealthCheck,
    SlotInfo,
    StorageFailed,
    Tick,
    TruncateDownload,
    UnloadShadow,
    WriteChunk,
    WriteSlot,
    correlation,
    decode_state,
    encode_state,
)
from edgeship.sdk.release._manifest import Manifest
from edgeship.sdk.release._trust import Offer, check_offer, check_payload
from edgeship.sdk.transport._transfer import ChunkRequest, decode_chunk

from edgeship._errors import (
    EdgeshipError,
    LengthMismatchError,
    MalformedError,
    TransportError,
)

__all__ = [  # the types are re-exported: shells import everything from here
    "PHASES", "Action", "Chunk", "Connected", "Downloaded", "Event", "HealthChecked",
    "Installed", "Job", "LoadActive", "LoadShadow", "Loaded", "LocalRelease", "OfferReceived",
    "OtaCore", "OtaState", "Persist", "ReadDownload", "Rejected", "Report", "RequestChunk",
    "Resume", "RunHealthCheck", "SlotInfo", "StorageFailed", "Tick", "TruncateDownload",
    "UnloadShadow", "WriteChunk", "WriteSlot", "correlation", "decode_state", "drive",
    "encode_state",
]
_BUSY = ("verifying", "installing", "health-checking")

Step = tuple[OtaState, list[Action]]


class OtaCore(ShadowSteps):
    """The decisions of one device; holds only configuration, never state."""

    def __init__(self, *, device: str, model: str, root_key: bytes, hardware: str | None = "cpu",
                 chunk_size: int = 64 * 1024, max_artifact_bytes: int = 256 * 1024 * 1024,
                 max_switch_attempts: int = 3, report_every: int = 8,
                 private_key: Any | None = None, require_encryption: bool = False,
                 nonce: Callable[[], str] | None = None, stall_after_s: float = 30.0,
                 max_refusals: int = 8, install_window: str = "",
                 variants: frozenset[str] = frozenset()) -> None:
        self.device, self.model, self.root_key, self.hardware = device, model, root_key, hardware
        # hardware targets whose per-target artifact this device installs: its own, when
        # the shell found that accelerator's runtime here (else the generic artifact)
        self.variants = variants
        self.private_key = private_key  # X25519 private key of [encryption], or None
        self.require_encryption = require_encryption  # refuse plaintext releases
        self.chunk_size, self.max_artifact_bytes = chunk_size, max_artifact_bytes
        self.max_switch_attempts, self.report_every = max_switch_attempts, report_every
        # a random name per transfer for its chunk requests (the shell's entropy; None: none)
        self._nonce = nonce or (lambda: "")
        self.stall_after_s, self.max_refusals = stall_after_s, max_refusals
        self.install_window = install_window  # [ota] install_window; an offer's wins

    # -- status ---------------------------------------------------------------------------
    def status(self, state: OtaState, now: float, *, phase: str | None = None) -> dict[str, Any]:
        """The JSON published (retained) on ``.../status``."""
        job = state.job
        progress = None
        if job is not None and (phase or state.phase) == "downloading":
            progress = {"chunks": job.received, "of": job.chunks,
                        "bytes": min(job.received * job.chunk_size, job.size), "total": job.size}
        waiting = {"window": job.window} if job is not None and state.phase == "downloaded" \
            else {}
        return {**waiting, "device": self.device, "state": phase or state.phase,
                "version": state.active.version if state.active else None,
                "target": job.version if job else (state.target or None),
                "progress": progress, "error": state.error or None,
                "shadow": {"version": state.shadow.version} if state.shadow else None,
                "ts": round(now, 3)}

    def _report(self, state: OtaState, now: float, phase: str | None = None) -> Report:
        return Report(self.status(state, now, phase=phase))

    # -- dispatch -------------------------------------------------------------------------
    def step(self, state: OtaState, event: Event, now: float) -> Step:
        handler: Callable[[OtaState, Event, float], Step] = getattr(
            self, f"_on_{type(event).__name__}")
        return handler(state, event, now)

    def _on_Resume(self, state: OtaState, event: Resume, now: float) -> Step:
        load: list[Action] = [LoadActive(state.active)] if state.active else []
        if state.shadow is not None:
            load.append(LoadShadow(state.shadow))
        job = state.job
        if job is None:
            return state, [*load, self._report(state, now)]
        lost: list[Action] = []
        if state.phase in ("downloading", "downloaded", "verifying", "installing") \
                and event.download_size is not None:
            kept = _chunks_kept(job, event.download_size)
            if kept < job.received:  # a power loss took chunks the state counts: fetch again
                job = replace(job, received=kept)
                state = replace(state, phase="downloading", job=job)
                lost = [Persist(state)]
        if state.phase in ("downloading", "downloaded") and job.received >= job.chunks:
            return self._downloaded(state, now, load)
        if state.phase == "downloading":
            return state, [*load, *lost, TruncateDownload(job.received * job.chunk_size),
                           self._report(state, now), *self._request(state)]
        if state.phase in ("verifying", "installing"):
            return state, [*load, self._report(state, now), self._read(state)]
        if not job.switched:  # health check of the installed, not yet active, slot
            return state, [*load, self._report(state, now), self._health(job)]
        if job.switch_attempts >= self.max_switch_attempts:
            return self._rollback(state, now, f"new model failed to load {job.switch_attempts}"
                                  " times (crash on load?)")
        state = replace(state, job=replace(job, switch_attempts=job.switch_attempts + 1))
        assert state.active is not None
        return state, [Persist(state), self._report(state, now),
                       LoadActive(state.active, golden=self._golden(job))]

    # -- offers ---------------------------------------------------------------------------
    def _on_OfferReceived(self, state: OtaState, event: OfferReceived, now: float) -> Step:
        peek, mode = peek_offer(event.raw)
        if mode == "shadow-discard":
            return self._discard(state, peek, now)
        job = state.job
        if peek is not None and job is not None and peek == job.version:
            if mode in MODES and mode != job.mode and not job.switched:
                # the fleet changed its mind before the install ended (e.g. promoted while
                # the shadow still downloads): the latest offer's mode decides the ending
                state = replace(state, job=replace(job, mode=mode))
                return state, [Persist(state), self._report(state, now)]
            return state, []  # the same offer again (a retained offer after a reconnect)
        if peek is not None and job is None and self._seen(state, peek, mode):
            return state, []
        if state.phase in _BUSY:
            state, actions = self._refuse(state, now,
                                          f"offer of {peek} ignored: busy {state.phase}")
            return state, [Rejected("offer", f"busy {state.phase}", len(event.raw)), *actions]
        try:
            offer = Offer.from_bytes(event.raw)  # refuses a mode it does not know
            manifest = check_offer(offer, self.root_key, state.trusted, model_name=self.model,
                                   hardware=self.hardware, now=_utc(now))
            # one this device cannot decrypt (or must not take in the clear): refused now
            recipient(manifest, self.private_key, required=self.require_encryption)
            mode = offer.mode
            if mode == "shadow" and state.active is None:
                raise MalformedError("a shadow release needs an active model to run beside")
            installs, variant = self.select(manifest)
            promote = self._promotes(state, installs, mode)
            job = None if promote else self._plan(offer, manifest, state.active, mode)
        except EdgeshipError as exc:
            state, actions = self._refuse(state, now,
                                          f"offer rejected: {type(exc).__name__}: {exc}",
                                          target=peek)
            return state, [Rejected("offer", f"{type(exc).__name__}: {exc}", len(event.raw)),
                           *actions]
        trusted = state.trusted.accept(offer, manifest)
        if promote:
            return self._promote(replace(state, trusted=trusted), offer, installs, now,
                                 variant=variant)
        assert job is not None
        # the shadow's slot is the inactive one this job writes: stop and forget it first
        drop: list[Action] = [UnloadShadow()] if state.shadow is not None else []
        state = replace(state, phase="downloading", job=job, error="", target=job.version,
                        trusted=trusted, shadow=None)
        if job.size == 0:  # nothing to fetch
            state = replace(state, phase="verifying")
            return state, [*drop, Persist(state), TruncateDownload(0), self._read(state)]
        return state, [*drop, TruncateDownload(0), Persist(state),
                       self._report(state, now, "offered"), self._report(state, now),
                       *self._request(state)]

    @staticmethod
    def _seen(state: OtaState, version: str, mode: str) -> bool:
        """Whether an offer of ``version`` repeats what this device already did with it
        (the broker re-delivers retained offers at every reconnect)."""
        if state.active is not None and version == state.active.version:
            return True
        if state.shadow is not None and version == state.shadow.version and mode == "shadow":
            return True
        # the offer of a release that failed its check here once: it would fail again
        return state.phase == "rolled-back" and version == state.target

    def _on_LocalRelease(self, state: OtaState, event: LocalRelease, now: float) -> Step:
        try:
            offer = Offer.from_bytes(event.offer)
            manifest = check_offer(offer, self.root_key, state.trusted, model_name=self.model,
                                   hardware=self.hardware, now=_utc(now))
            recipient(manifest, self.private_key, required=self.require_encryption)
            job = self._plan(offer, manifest, None)
        except EdgeshipError as exc:
            return self._refuse(state, now,
                                f"initial release rejected: {type(exc).__name__}: {exc}")
        state = replace(state, phase="verifying", job=job, error="", target=job.version,
                        trusted=state.trusted.accept(offer, manifest))
        return self._on_Downloaded(state, Downloaded(payload=event.artifact, base=None), now)

    def select(self, manifest: Manifest) -> tuple[Manifest, str]:
        """``manifest`` as this device installs it and its variant ("": generic)."""
        return select(manifest, self.hardware, self.variants)

    def _plan(self, offer: Offer, manifest: Manifest, active: SlotInfo | None,
              mode: str = "active") -> Job:
        manifest, variant = self.select(manifest)
        art = manifest.artifact
        if art.size > self.max_artifact_bytes:
            raise LengthMismatchError(f"artifact of {art.size} bytes is over this device's "
                                      f"limit of {self.max_artifact_bytes}")
        opens = active is not None and base_opens(active, self.private_key)
        delta = manifest.delta_for(active.sha256) if active is not None and opens else None
        chosen = (delta.name, delta.size, delta.sha256) if delta else (art.name, art.size, art.sha256)
        slot = "b" if active is not None and active.slot == "a" else "a"
        return Job(offer=offer.to_bytes().decode(), version=manifest.version, file=chosen[0],
                   size=chosen[1], sha256=chosen[2], delta=delta is not None,
                   chunk_size=self.chunk_size, slot=slot, mode=mode, nonce=self._nonce(),
                   window=offer.install_window or self.install_window, variant=variant)

    def _refuse(self, state: OtaState, now: float, reason: str,
                target: str | None = None) -> Step:
        if state.job is not None:  # an update is under way: report, change nothing
            return state, [Report({**self.status(state, now), "error": reason})]
        # the refused offer's (unverified) version names what failed, so a fleet manager
        # never mistakes this verdict for one about another release
        refused = replace(state, phase="failed", error=reason, target=target or "")
        if refused == state:  # the same refusal again (a flood): nothing new to say
            return state, []
        # nothing the device keeps (model, floor, job) changed: reported, never written, so
        # a flood of bad offers costs no flash (after a restart the offer is judged again)
        return refused, [self._report(refused, now)]

    # -- download -------------------------------------------------------------------------
    def _request(self, state: OtaState) -> list[Action]:
        job = state.job
        if job is None or state.phase != "downloading" or job.received >= job.chunks:
            return []
        request = self._chunk_request(job)
        return [RequestChunk(request, correlation(request, job.nonce))]

    def _chunk_request(self, job: Job) -> ChunkRequest:
        return ChunkRequest(device=self.device, model=self.model, version=job.version,
                            file=job.file, index=job.received, chunk_size=job.chunk_size)

    def _on_Connected(self, state: OtaState, event: Connected, now: float) -> Step:
        return state, [self._report(state, now), *self._request(state)]

    def _on_Tick(self, state: OtaState, event: Tick, now: float) -> Step:
        if state.phase == "downloaded":  # waiting for the install window: is it open?
            job = state.job
            if job is not None and window_open(job.window, now):
                return self._downloaded(state, now, [])
            return state, []
        again = self._request(state)
        if not again or event.stalled_s < self.stall_after_s:
            return state, again
        # no server answers (gone, or none holds the file): say so, and keep asking
        stalled = f"download stalled: no chunk for {int(event.stalled_s)} s; still asking"
        return state, [Report({**self.status(state, now), "error": stalled}), *again]

    def _on_Chunk(self, state: OtaState, event: Chunk, now: float) -> Step:
        job = state.job
        size = len(event.raw)
        if job is None or state.phase != "downloading":  # late duplicate, or garbage
            return state, [Rejected("chunk", "no download in progress", size)]
        expected = correlation(self._chunk_request(job), job.nonce)
        if (event.correlation is not None or job.nonce) and event.correlation != expected:
            # an answer to another request (an older transfer, a retry answered twice)
            return state, [Rejected("chunk", "answers another request", size)]
        try:
            chunk = decode_chunk(event.raw, index=job.received, chunk_size=job.chunk_size,
                                 signed_size=job.size)
        except LengthMismatchError as exc:
            return self._fail(state, now, f"download: {exc}")
        except TransportError as exc:
            if "refused" in str(exc):
                return self._refused_chunk(state, now, str(exc), size)
            # a stale, damaged or forged chunk: the retry asks again
            return state, [Rejected("chunk", str(exc), size)]
        job = replace(job, received=job.received + 1, refusals=0)
        state = replace(state, job=job)
        if job.received >= job.chunks:  # one state write: counted and complete
            return self._downloaded(state, now, [WriteChunk(chunk.offset, chunk.data)])
        actions: list[Action] = [WriteChunk(chunk.offset, chunk.data), Persist(state)]
        if job.received % self.report_every == 0:
            actions.append(self._report(state, now))
        return state, [*actions, *self._request(state)]

    def _refused_chunk(self, state: OtaState, now: float, reason: str, size: int) -> Step:
        """A release server has no such file (or range): servers share the requests, so
        ask again (a sibling may hold it); fail only after ``max_refusals`` in a row."""
        job = state.job
        assert job is not None
        job = replace(job, refusals=job.refusals + 1)
        if job.refusals >= self.max_refusals:
            return self._fail(state, now, f"{reason} ({job.refusals} times)")
        state = replace(state, job=job)
        return state, [Rejected("chunk", reason, size), *self._request(state)]

    # -- verify, install, check, switch, commit -------------------------------------------
    def _downloaded(self, state: OtaState, now: float, first: list[Action]) -> Step:
        """The download is complete: verify and install now, or, outside the job's install
        window, wait as ``downloaded`` (a Tick inside the window goes on)."""
        job = state.job
        assert job is not None
        if not window_open(job.window, now):
            state = replace(state, phase="downloaded")
            return state, [*first, Persist(state), self._report(state, now)]
        state = replace(state, phase="verifying")
        return state, [*first, Persist(state), self._report(state, now), self._read(state)]

    def _read(self, state: OtaState) -> ReadDownload:
        job = state.job
        assert job is not None
        return ReadDownload(base_slot=state.active.slot if job.delta and state.active else None)

    def _on_Downloaded(self, state: OtaState, event: Downloaded, now: float) -> Step:
        job = state.job
        if job is None or state.phase not in ("verifying", "installing"):
            return state, []
        manifest = job.manifest()
        if job.delta and not _base_fits(event.base, state.active):
            return self._fetch_full(state, manifest, now)
        try:
            artifact = check_payload(manifest, event.payload, base=event.base,
                                     **decrypting(manifest, job, state.active, self.private_key))
        except EdgeshipError as exc:
            state = replace(state, job=None, phase="failed", error=f"verification: {exc}")
            return state, [Persist(state), TruncateDownload(0), self._report(state, now)]
        state = replace(state, phase="installing")
        return state, [Persist(state), self._report(state, now),
                       WriteSlot(job.slot, manifest.artifact.format, artifact,
                                 offer=job.offer.encode())]

    def _fetch_full(self, state: OtaState, manifest: Manifest, now: float) -> Step:
        """The delta's base (the active slot) is gone or damaged on disk: a delta cannot
        be applied, so fetch the whole artifact instead of failing every retry."""
        job = state.job
        assert job is not None
        art = manifest.artifact
        job = replace(job, file=art.name, size=art.size, sha256=art.sha256, delta=False,
                      received=0)
        state = replace(state, phase="downloading", job=job)
        return state, [TruncateDownload(0), Persist(state), self._report(state, now),
                       *self._request(state)]

    def _on_StorageFailed(self, state: OtaState, event: StorageFailed, now: float) -> Step:
        if state.job is None or state.phase not in ("downloading", "verifying", "installing"):
            return state, []
        # the old slot is untouched and keeps serving. Drop the download *before* the state
        # write, which needs the space on a full disk (a crash in between is safe: Resume
        # sees the file gone and fetches again); report first: that write may fail too
        state, _ = self._fail(state, now, f"storage: {event.reason}")
        return state, [TruncateDownload(0), self._report(state, now), Persist(state)]

    def _on_Installed(self, state: OtaState, event: Installed, now: float) -> Step:
        job = state.job
        if job is None or state.phase != "installing":
            return state, []
        state = replace(state, phase="health-checking")
        return state, [Persist(state), self._report(state, now), self._health(job)]

    def _golden(self, job: Job) -> dict[str, Any] | None:
        golden = job.manifest().golden
        return golden.to_dict() if golden else None

    def _health(self, job: Job) -> RunHealthCheck:
        manifest = job.manifest()
        return RunHealthCheck(job.slot, manifest.artifact.format, self._golden(job),
                              encryption=recipient(manifest, self.private_key),
                              variant=job.variant or None)

    def _on_HealthChecked(self, state: OtaState, event: HealthChecked, now: float) -> Step:
        job = state.job
        if job is None or state.phase != "health-checking" or job.switched:
            return state, []
        if not event.ok:
            return self._rollback(state, now, f"health check failed: {event.reason}")
        new = slot_info(job, self.private_key)
        if job.mode == "shadow":  # installed and checked: run it beside the active model
            state = replace(state, phase="shadowing", job=None, shadow=new, error="")
            return state, [Persist(state), TruncateDownload(0), LoadShadow(new),
                           self._report(state, now)]
        # the switch: one atomic state write names the new slot and still keeps the old one
        state = replace(state, active=new, previous=state.active,
                        job=replace(job, switched=True, switch_attempts=1))
        return state, [Persist(state), LoadActive(new, golden=self._golden(job))]

    def _on_Loaded(self, state: OtaState, event: Loaded, now: float) -> Step:
        job = state.job
        switching = job is not None and job.switched and state.phase == "health-checking"
        if not switching:
            if event.ok or state.active is None:
                return state, []
            if state.previous is not None:  # a committed model that no longer loads
                return self._rollback(state, now, f"active model fails to load: {event.reason}")
            if state.job is not None:  # an update is under way and may bring a good one
                return self._refuse(state, now, f"active model fails to load: {event.reason}")
            state = replace(state, phase="failed", error=f"model fails to load: {event.reason}")
            return state, [Persist(state), self._report(state, now)]
        assert job is not None
        if not event.ok:
            return self._rollback(state, now, f"new model failed to load: {event.reason}")
        manifest = job.manifest()
        state = replace(state, phase="committed", job=None, previous=None, error="",
                        trusted=state.trusted.installed(manifest))
        return state, [Persist(state), TruncateDownload(0), self._report(state, now)]

    def _rollback(self, state: OtaState, now: float, reason: str) -> Step:
        job = state.job
        switched = job is not None and job.switched
        active = state.previous if switched else state.active
        state = replace(state, phase="rolled-back", job=None, active=active, previous=None,
                        error=reason)
        actions: list[Action] = [Persist(state), TruncateDownload(0)]
        if switched and active is not None:
            actions.append(LoadActive(active))
        return state, [*actions, self._report(state, now)]

    def _fail(self, state: OtaState, now: float, reason: str) -> Step:
        state = replace(state, phase="failed", job=None, error=reason)
        return state, [Persist(state), TruncateDownload(0), self._report(state, now)]


def drive(core: OtaCore, state: OtaState, event: Event, now: float | Callable[[], float],
          perform: Callable[[Action, OtaState], Event | None]) -> OtaState:
    """Run ``event`` and every follow-up event to the end; ``perform(action, state)`` does
    one action (``state`` is the state the action belongs to) and may return the next
    event. The daemon and a fleet simulator are both just a ``perform``. ``now`` is a
    time or a clock read before each step (follow-ups can take seconds: a health check)."""
    clock = now if callable(now) else (lambda: now)
    pending = [event]
    while pending:
        state, actions = core.step(state, pending.pop(0), clock())
        for action in actions:
            follow = perform(action, state)
            if follow is not None:
                pending.append(follow)
            if isinstance(follow, StorageFailed):
                break  # the rest of this step counted on that write (a chunk, the state)
    return state


def window_open(window: str, now: float) -> bool:
    """No window, or ``now`` inside it (device-local time)."""
    if not window:
        return True
    from edgeship.sdk.release._window import in_window

    opened: bool = in_window(window, now)
    return opened


def _base_fits(base: bytes | None, active: SlotInfo | None) -> bool:
    """Whether ``base`` really is the verified active model a delta was planned against."""
    return (base is not None and active is not None
            and hashlib.sha256(base).hexdigest() == active.sha256)


def _chunks_kept(job: Job, download_size: int) -> int:
    """How many of the job's chunks a download file of ``download_size`` bytes holds."""
    if download_size >= job.size:
        return job.chunks
    return download_size // job.chunk_size


def _utc(now: float) -> datetime:
    return datetime.fromtimestamp(now, tz=timezone.utc)
