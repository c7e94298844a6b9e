"""edgeship.agent: the device daemon: A/B slots, the OTA state machine, the local
Open Inference Protocol v2 API, cloud fallback and telemetry.

``OtaCore`` / ``OtaState`` are the pure OTA state machine (no I/O: a fleet simulator can
drive it with its own shell); ``Agent`` is the daemon shell behind ``edgeship agent run``.
"""

from __future__ import annotations

from edgeship._lazy import attach

# public name -> private module that defines it (imported on first use)
_EXPORTS: dict[str, str] = {
    "Agent": "edgeship.agent._daemon",
    "AgentConfig": "edgeship.agent._config",
    "DriftTap": "edgeship.agent._drift",
    "load_config": "edgeship.agent._config",
    "OtaCore": "edgeship.agent._ota",
    "OtaState": "edgeship.agent._ota",
    "ShadowConfig": "edgeship.agent._shadow",
    "ShadowTap": "edgeship.agent._shadow",
    "Store": "edgeship.agent._store",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = attach(__name__, _EXPORTS)
