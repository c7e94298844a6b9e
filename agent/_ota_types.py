"""The OTA state machine's data: events in, actions out (pure data); the persisted
state (:mod:`edgeship.agent._ota_state`) is re-exported.

:mod:`edgeship.agent._ota` holds the logic that maps ``(state, event, now)`` to
``(state, actions)``; this module holds what it talks about, so a shell (the daemon, a
fleet simulator) can name events and actions without the logic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeship.agent._ota_state import (
    MODES,
    PHASES,
    Job,
    OtaState,
    SlotInfo,
    decode_state,
    encode_state,
)
from edgeship.sdk.transport._transfer import ChunkRequest

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
