"""The daemon's request taps: drift accounting of the active model, the shadow model.

:class:`Taps` owns both and keeps ``service.taps`` in step with them (a new tuple is
assigned each time, so the answer path never sees a half-changed set). Model bytes reach
it already verified and decrypted, in memory. It also shapes what the two report:
the full figures for the heartbeat, compact ones merged into the retained status
(which must stay small: a few hundred bytes each).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from edgeship.agent._ota_state import SlotInfo

__all__ = ["Taps"]

_SHADOW_STATUS_KEYS = ("version", "state", "sampled", "compared", "agreement", "max_abs_diff",
                       "active_p50_ms", "shadow_p50_ms", "dropped", "errors")


class Taps:
    """Drift and shadow taps of one agent (used from the daemon's loop thread only)."""

    def __init__(self, service: Any, registry: Any, *, drift_config: Any = None,
                 shadow_config: Any = None, log: Callable[..., None],
                 on_drift_change: Callable[[dict[str, Any]], None] | None = None) -> None:
        # the registry, or a function that makes it (the agent's is made once it answers)
        self.service, self._registry, self.log = service, registry, log
        self.drift_config, self.shadow_config = drift_config, shadow_config
        self.on_drift_change = on_drift_change
        self.drift: Any | None = None
        self.shadow: Any | None = None
        self.drift_status: dict[str, Any] | None = None  # last compact verdict
        self.shadow_error: str | None = None  # why the OTA state's shadow does not run
        self.failed_version = ""

    @property
    def registry(self) -> Any:
        return self._registry() if callable(self._registry) else self._registry

    def _set(self, old: Any | None, new: Any | None) -> None:
        kept = tuple(t for t in self.service.taps if t is not old)
        self.service.taps = (*kept, new) if new is not None else kept

    # -- drift: follows the active model -------------------------------------------------
    def active_loaded(self, slot: SlotInfo) -> None:
        """The model of ``slot`` now answers: count drift against its profile (if any)."""
        old, self.drift, self.drift_status = self.drift, None, None
        if slot.profile is not None:
            try:
                from edgeship.agent._drift import DriftTap
                from edgeship.sdk.monitor._profile import Profile, check_model

                profile = Profile.from_dict(slot.profile)
                serving = self.service.serving
                if serving is not None and serving.version == slot.version:
                    # a signed profile of another model would fail on every request
                    check_model(profile, serving.model.inputs, serving.model.outputs)
                self.drift = DriftTap(profile, self.drift_config, self.registry,
                                      version=slot.version, log=self.log,
                                      on_change=self._drift_changed)
            except Exception as exc:  # a profile we cannot use must not stop serving
                self.log("drift_unavailable", "warning", version=slot.version,
                         error=str(exc)[:300])
        drift_module = sys.modules.get("edgeship.agent._drift")
        if self.drift is None and self._registry is not None and drift_module is not None:
            # not the previous model's figures and alert; never imported: no gauges exist
            # (importing it for nothing cost every boot ~80 ms)
            drift_module.reset_gauges(self.registry)
        self._set(old, self.drift)
        if self.drift is not None:
            self.log("drift_watching", version=slot.version)

    def _drift_changed(self, compact: dict[str, Any]) -> None:
        self.drift_status = compact
        if self.on_drift_change is not None:
            self.on_drift_change(compact)

    # -- shadow: follows OtaState.shadow -------------------------------------------------
    def start_shadow(self, slot: SlotInfo, model: bytes, *, runtime: str) -> None:
        """Run ``model`` (verified plaintext, in memory) as the shadow of ``slot``."""
        self.shadow_error = None
        if self.shadow is None:
            from edgeship.agent._shadow import ShadowTap

            self.shadow = ShadowTap(self.shadow_config, log=self.log)
        self.shadow.start(model, fmt=slot.format, version=slot.version, runtime=runtime,
                          threads=1)
        self._set(self.shadow, self.shadow)
        self.log("shadow_started", version=slot.version, slot=slot.slot)

    def shadow_failed(self, slot: SlotInfo, error: str) -> None:
        """The shadow could not be loaded (its slot unreadable, damaged, or not for this
        device's key): say so in the status instead of a shadow that looks idle."""
        self.stop_shadow()
        self.shadow_error, self.failed_version = error[:200], slot.version

    def stop_shadow(self) -> None:
        self.shadow_error = None
        if self.shadow is None:
            return
        self._set(self.shadow, None)
        version = self.shadow.version
        self.shadow.stop()
        self.shadow = None
        self.log("shadow_stopped", version=version)

    # -- reports -------------------------------------------------------------------------
    def heartbeat(self, beat: dict[str, Any]) -> None:
        """Add the full drift report and the shadow's stats to a heartbeat."""
        if self.drift is not None:
            beat["drift"] = self.drift.telemetry()  # judges the window; may flip the alert
            self.drift_status = self.drift.status()
        if self.shadow is not None:
            beat["shadow"] = self.shadow.stats()
        elif self.shadow_error is not None:
            beat["shadow"] = {"version": self.failed_version, "state": "failed",
                              "error": self.shadow_error}

    def status(self, status: dict[str, Any]) -> dict[str, Any]:
        """The core's status with the compact drift verdict and shadow stats merged in."""
        out = dict(status)
        if self.drift is not None:
            out["drift"] = self.drift_status
        if out.get("shadow") and self.shadow is not None:
            stats = self.shadow.stats()
            out["shadow"] = {**out["shadow"], **{k: stats.get(k) for k in _SHADOW_STATUS_KEYS
                                                 if k != "version"}}
        elif out.get("shadow") and self.shadow_error is not None:
            out["shadow"] = {**out["shadow"], "state": "failed", "error": self.shadow_error}
        return out

    def close(self) -> None:
        self.stop_shadow()
