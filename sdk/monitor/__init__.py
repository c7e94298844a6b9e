"""edgeship.sdk.monitor: what the data a model sees looks like.

Reference profiles of a model's inputs and outputs (built by the converter, shipped in a
release) and the drift accounting a device keeps against them. Imported by the converter,
the release tools and the agent; builds on ``sdk.runtime`` only.
"""

from __future__ import annotations

from edgeship._lazy import attach

_EXPORTS: dict[str, str] = {
    "DriftConfig": "edgeship.sdk.monitor._drift_monitor",
    "DriftMonitor": "edgeship.sdk.monitor._drift_monitor",
    "DriftReport": "edgeship.sdk.monitor._drift_monitor",
    "Profile": "edgeship.sdk.monitor._profile",
    "build_profile": "edgeship.sdk.monitor._profile",
    "profile_from_file": "edgeship.sdk.monitor._profile",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = attach(__name__, _EXPORTS)
