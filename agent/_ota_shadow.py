"""The OTA core's steps for shadow releases (split from ``_ota``; pure, no I/O).

A normal offer of exactly the release the shadow slot holds promotes it without a
download; ``shadow-discard`` drops it. :class:`~edgeship.agent._ota.OtaCore` inherits
these; they use its ``chunk_size``, ``_report`` and ``_golden``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from edgeship.agent._ota_types import (
    Action,
    Job,
    LoadActive,
    OtaState,
    Persist,
    Report,
    TruncateDownload,
    UnloadShadow,
)
from edgeship.sdk.release._manifest import Manifest
from edgeship.sdk.release._trust import Offer
from edgeship.sdk.transport._transfer import chunk_count

__all__ = ["ShadowSteps"]

Step = tuple[OtaState, list[Action]]


class ShadowSteps:
    """Mixin of :class:`~edgeship.agent._ota.OtaCore`."""

    chunk_size: int

    def _report(self, state: OtaState, now: float, phase: str | None = None) -> Report:
        raise NotImplementedError

    def _golden(self, job: Job) -> dict[str, Any] | None:
        raise NotImplementedError

    @staticmethod
    def _promotes(state: OtaState, manifest: Manifest, mode: str) -> bool:
        """A normal offer of exactly the release the shadow slot holds: switch to it."""
        shadow = state.shadow
        return (mode == "active" and shadow is not None and state.active is not None
                and shadow.version == manifest.version
                and shadow.sha256 == manifest.artifact.sha256)

    def _promote(self, state: OtaState, offer: Offer, manifest: Manifest, now: float, *,
                 variant: str = "") -> Step:
        """The shadow slot becomes active with no download: the same switch as after a
        passed health check (the new model is golden-checked in-process when it loads,
        the old slot kept as ``previous`` until then)."""
        shadow = state.shadow
        assert shadow is not None
        art = manifest.artifact
        job = Job(offer=offer.to_bytes().decode(), version=manifest.version, file=art.name,
                  size=art.size, sha256=art.sha256, delta=False, chunk_size=self.chunk_size,
                  received=chunk_count(art.size, self.chunk_size), slot=shadow.slot,
                  switched=True, switch_attempts=1, variant=variant)
        state = replace(state, phase="health-checking", job=job, active=shadow,
                        previous=state.active, shadow=None, error="", target=manifest.version)
        return state, [UnloadShadow(), Persist(state), self._report(state, now),
                       LoadActive(shadow, golden=self._golden(job))]

    def _discard(self, state: OtaState, version: str | None, now: float) -> Step:
        """``shadow-discard``: drop the shadow of ``version`` (or its install under way).
        Anything else (the retained discard seen again, another version) is ignored."""
        job = state.job
        if state.shadow is not None and state.shadow.version == version:
            state = replace(state, phase="shadow-discarded", shadow=None, target=version,
                            error="")
            return state, [UnloadShadow(), Persist(state), self._report(state, now)]
        if job is not None and job.mode == "shadow" and job.version == version:
            state = replace(state, phase="shadow-discarded", job=None, target=version, error="")
            return state, [Persist(state), TruncateDownload(0), self._report(state, now)]
        return state, []

