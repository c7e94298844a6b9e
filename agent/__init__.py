"""edgeship.agent: the device daemon: A/B slots, the OTA state machine, the local
Open Inference Protocol v2 API, cloud fallback and telemetry."""

from __future__ import annotations

import importlib
from typing import Any

# public name -> private module that defines it (imported on first use)
_EXPORTS: dict[str, str] = {}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'edgeship.agent' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value
