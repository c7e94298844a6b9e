"""The OTA state machine's data: persisted state, events in, actions out (pure data).

:mod:`edgeship.agent._ota` holds the logic that maps ``(state, event, now)`` to
``(state, actions)``; this module holds what it talks about, so a shell (the daemon, a
fleet simulator) can name events and actions without the logic.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any

from edgeship.sdk.release._manifest import Manifest
from edgeship.sdk.release._trust import OFFER_MODES, Offer, TrustedState
from edgeship.sdk.transport._transfer import ChunkRequest, chunk_count

__all__ = [
    "MODES",
    "PHASES",
    "Action",
    "Chunk",
    "Connected",
    "Downloaded",
    "Event",
    "HealthChecked",
    "Installed",
    "Job",
    "LoadActive",
    "LoadShadow",
    "Loaded",
    "LocalRelease",
    "OfferReceived",
    "OtaState",
    "Persist",
    "ReadDownload",
    "Rejected",
    "Report",
    "RequestChunk",
    "Resume",
    "RunHealthCheck",
    "SlotInfo",
    "StorageFailed",
    "Tick",
    "TruncateDownload",
    "UnloadShadow",
    "WriteChunk",
    "WriteSlot",
    "correlation",
    "decode_state",
    "encode_state",
]

PHASES = ("idle", "offered", "downloading", "downloaded", "verifying", "installing",
          "health-checking",
          "committed", "rolled-back", "failed", "shadowing", "shadow-discarded")
MODES = OFFER_MODES  # an offer's unsigned "mode": replace the model, or run beside it


@dataclass(frozen=True, kw_only=True)
class SlotInfo:
    """A verified artifact sitting in slot ``a`` or ``b``.

    ``encryption`` is the signed manifest's ``encryption`` section reduced to this
    device's recipient (None: a plaintext release); with it and the device key the
    shell decrypts the slot into memory. ``profile`` is the manifest's drift profile.
    ``variant`` names the hardware target whose per-target artifact the slot holds (run
    with that accelerator's runtime; None: the generic artifact). All three are absent
    from state files written before they existed.
    """

    slot: str
    version: str
    sha256: str
    size: int
    format: str
    encryption: dict[str, Any] | None = None
    profile: dict[str, Any] | None = None
    variant: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"slot": self.slot, "version": self.version, "sha256": self.sha256,
               "size": self.size, "format": self.format}
        if self.variant is not None:
            out["variant"] = self.variant
        if self.encryption is not None:
            out["encryption"] = self.encryption
        if self.profile is not None:
            out["profile"] = self.profile
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SlotInfo:
        return cls(slot=d["slot"], version=d["version"], sha256=d["sha256"], size=d["size"],
                   format=d["format"], encryption=d.get("encryption"), profile=d.get("profile"),
                   variant=d.get("variant"))


@functools.lru_cache(maxsize=4)
def _offer_manifest(offer: str) -> Manifest:
    """The signed manifest of a stored offer, parsed once (every OTA step asks for it; a
    frozen dataclass, so one parse serves them all)."""
    return Manifest.from_dict(Offer.from_bytes(offer.encode()).manifest["signed"])


@dataclass(frozen=True, kw_only=True)
class Job:
    """The update in progress: which file is fetched, how far, and the accepted offer."""

    offer: str  # canonical JSON of the verified offer (local storage is trusted)
    version: str
    file: str
    size: int
    sha256: str
    delta: bool
    chunk_size: int
    received: int = 0  # chunks verified and fsynced
    slot: str = ""  # slot the new artifact goes to
    switched: bool = False  # the state already names the new slot as active
    switch_attempts: int = 0
    mode: str = "active"  # "shadow": ends installed next to the active model, not switched
    nonce: str = ""  # random, names this transfer's chunk requests (see correlation)
    refusals: int = 0  # "no such file" answers to the chunk in flight (a sibling may have it)
    window: str = ""  # install window ("02:00-04:00"): a complete download waits for it
    variant: str = ""  # the hardware target whose per-target artifact is fetched ("": generic)

    @property
    def chunks(self) -> int:
        return chunk_count(self.size, self.chunk_size)

    def manifest(self) -> Manifest:
        """The offer's manifest as this job installs it (the variant as its artifact)."""
        manifest = _offer_manifest(self.offer)
        return manifest.select(self.variant) if self.variant else manifest

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Job:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass(frozen=True, kw_only=True)
class OtaState:
    """Everything the device must remember across a restart (persisted as JSON)."""

    phase: str = "idle"
    active: SlotInfo | None = None
    previous: SlotInfo | None = None  # the old slot, kept until the new one is committed
    job: Job | None = None
    trusted: TrustedState = field(default_factory=TrustedState)
    error: str = ""
    target: str = ""  # version of the last update attempt (for status)
    shadow: SlotInfo | None = None  # a release installed to run beside the active one

    def to_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "error": self.error, "target": self.target,
                "active": self.active and self.active.to_dict(),
                "previous": self.previous and self.previous.to_dict(),
                "job": self.job and self.job.to_dict(), "trusted": self.trusted.to_dict(),
                "shadow": self.shadow and self.shadow.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OtaState:
        shadow = d.get("shadow")  # state files from before shadow releases have none
        return cls(phase=d["phase"], error=d.get("error", ""), target=d.get("target", ""),
                   active=d["active"] and SlotInfo.from_dict(d["active"]),
                   previous=d["previous"] and SlotInfo.from_dict(d["previous"]),
                   job=d["job"] and Job.from_dict(d["job"]),
                   trusted=TrustedState.from_dict(d["trusted"]),
                   shadow=SlotInfo.from_dict(shadow) if shadow else None)


# ---- events (what happened) -------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    pass


@dataclass(frozen=True)
class Resume(Event):
    """The process (re)started with this persisted state; ``download_size`` is the size of
    the download file as found on disk (None: not looked at)."""

    download_size: int | None = None


@dataclass(frozen=True)
class OfferReceived(Event):
    raw: bytes


@dataclass(frozen=True)
class LocalRelease(Event):
    """A release read from disk (``[model] initial``): offer bytes plus its artifact."""

    offer: bytes
    artifact: bytes


@dataclass(frozen=True)
class Chunk(Event):
    """A chunk response; ``correlation`` is the MQTT 5 correlation data the server echoed
    from the request (None when the transport has none)."""

    raw: bytes
    correlation: bytes | None = None


@dataclass(frozen=True)
class Connected(Event):
    """The broker (re)connected: re-ask for the chunk in flight."""


@dataclass(frozen=True)
class Tick(Event):
    """Time passed with nothing else to do: re-ask for a chunk that is overdue;
    ``stalled_s``: seconds since the download last made progress."""

    stalled_s: float = 0.0


@dataclass(frozen=True)
class Downloaded(Event):
    """Result of ``ReadDownload``: the downloaded file and (for a delta) the base bytes."""

    payload: bytes
    base: bytes | None


@dataclass(frozen=True)
class Installed(Event):
    pass


@dataclass(frozen=True)
class StorageFailed(Event):
    """Writing the download or a slot failed (disk full, I/O error): ``reason`` says why."""

    reason: str


@dataclass(frozen=True)
class HealthChecked(Event):
    ok: bool
    reason: str = ""


@dataclass(frozen=True)
class Loaded(Event):
    """Result of ``LoadActive``: the model in ``slot`` serves (or could not be loaded)."""

    slot: str
    ok: bool
    reason: str = ""


# ---- actions (what the shell must do, in order) ------------------------------------------
@dataclass(frozen=True)
class Action:
    pass


@dataclass(frozen=True)
class Persist(Action):
    state: OtaState


@dataclass(frozen=True)
class Rejected(Action):
    """A message was dropped (``topic``: "offer" or "chunk") for ``reason``: the shell logs
    it, rate-limited, so a flood of garbage leaves a trace but cannot fill the disk."""

    topic: str
    reason: str
    size: int = 0


@dataclass(frozen=True)
class Report(Action):
    status: dict[str, Any]


@dataclass(frozen=True)
class RequestChunk(Action):
    """Ask for a chunk; ``correlation`` goes with it (MQTT 5) and must come back."""

    request: ChunkRequest
    correlation: bytes = b""


@dataclass(frozen=True)
class TruncateDownload(Action):
    """Cut the download file to ``size`` bytes (0 starts a new download)."""

    size: int


@dataclass(frozen=True)
class WriteChunk(Action):
    offset: int
    data: bytes


@dataclass(frozen=True)
class ReadDownload(Action):
    """Read the download file (and ``base_slot``'s artifact for a delta) -> ``Downloaded``."""

    base_slot: str | None


@dataclass(frozen=True)
class WriteSlot(Action):
    """Write ``data`` atomically into ``slot`` as ``model.<format>`` -> ``Installed``;
    ``offer`` (the signed offer) is kept beside it, to rebuild a lost state from."""

    slot: str
    format: str
    data: bytes
    offer: bytes = b""


@dataclass(frozen=True)
class RunHealthCheck(Action):
    """Check the model in ``slot`` in a separate interpreter -> ``HealthChecked``;
    ``encryption`` (this device's recipient) says the slot holds ciphertext."""

    slot: str
    format: str
    golden: dict[str, Any] | None
    encryption: dict[str, Any] | None = None
    variant: str | None = None  # run with this hardware target's accelerator runtime


@dataclass(frozen=True)
class LoadActive(Action):
    """Load (or hot-swap to) the model in ``slot``, check its sha256 -> ``Loaded``."""

    slot: SlotInfo
    golden: dict[str, Any] | None = None


@dataclass(frozen=True)
class LoadShadow(Action):
    """Start running the model in ``slot`` beside the active one (off the answer path)."""

    slot: SlotInfo


@dataclass(frozen=True)
class UnloadShadow(Action):
    """Stop the shadow model (before its slot is overwritten, promoted or discarded)."""


def correlation(request: ChunkRequest, nonce: str = "") -> bytes:
    """What names one chunk request of one transfer (sent as MQTT 5 correlation data):
    everything the device asked for, and the job's random ``nonce``, so an answer to a
    request another device made in this device's name (another chunk size) is not taken."""
    text = f"{request.version}/{request.file}/{request.index}/{request.chunk_size}"
    return f"{text}/{nonce}".encode() if nonce else text.encode()


def encode_state(state: OtaState) -> bytes:
    return json.dumps(state.to_dict(), sort_keys=True).encode()


def decode_state(raw: bytes) -> OtaState:
    return OtaState.from_dict(json.loads(raw))
