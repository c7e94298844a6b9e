"""What the OTA state machine persists: :class:`OtaState` with its slots and job (pure data).

Split from :mod:`edgeship.agent._ota_types` (which re-exports it) so the agent can read
its state file and serve the active slot before the OTA core, its events and the
release checks are imported (issue 16: start to first answer). The signed manifest a
job carries is parsed on first use.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgeship.sdk.release._trusted import OFFER_MODES, TrustedState

if TYPE_CHECKING:
    from edgeship.sdk.release._manifest import Manifest

__all__ = ["MODES", "PHASES", "Job", "OtaState", "SlotInfo", "decode_state", "encode_state"]

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
    from edgeship.sdk.release._manifest import Manifest
    from edgeship.sdk.release._trust import Offer

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
        from edgeship.sdk.transport._transfer import chunk_count

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


def encode_state(state: OtaState) -> bytes:
    return json.dumps(state.to_dict(), sort_keys=True).encode()


def decode_state(raw: bytes) -> OtaState:
    return OtaState.from_dict(json.loads(raw))
