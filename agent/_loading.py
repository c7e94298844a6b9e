"""A verified slot into a served model, in memory only (split from ``_daemon``).

The slot's bytes are checked against the sha256 the state names, decrypted with the
device key when the release is encrypted, loaded, and golden-checked in-process.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from edgeship.agent._config import ModelConfig
from edgeship.agent._ota_state import SlotInfo
from edgeship.agent._store import Store

from edgeship._errors import DecryptionError, EdgeshipError

__all__ = ["data_key", "load_serving", "model_bytes", "runtime_for", "usable_variants"]


def model_bytes(store: Store, slot: SlotInfo, device_key: Any | None) -> bytes:
    """The verified model of ``slot`` as plaintext, in memory only."""
    data = store.read_slot(slot.slot, slot.format, max_bytes=slot.size)
    if hashlib.sha256(data).hexdigest() != slot.sha256:
        raise EdgeshipError(f"slot {slot.slot} does not hold the verified {slot.version}")
    if slot.encryption is None:
        return data
    from edgeship.sdk.release._crypt import decrypt

    return decrypt(data, data_key(slot.encryption, device_key), what=f"slot {slot.slot}")


def data_key(encryption: dict[str, Any], device_key: Any | None) -> bytes:
    from edgeship.sdk.release._crypt import Encryption, unwrap_data_key

    if device_key is None:
        raise DecryptionError("the model is encrypted and this agent has no [encryption] key")
    return unwrap_data_key(Encryption.from_dict(encryption), device_key)


def usable_variants(hardware: str, log: Callable[..., None], runtime: str = "auto") -> frozenset[str]:
    """The hardware targets whose per-target artifacts this device installs: its own
    ``hardware`` when that names an accelerator whose runtime is here; on a device whose
    hardware names none, ``openvino-cpu`` when ``[model] runtime`` is "openvino" (the IR
    or ONNX the converter picked for OpenVINO on a CPU). When the runtime is missing, one
    log line says so: releases' variants for it are then passed over and the generic
    artifact installed."""
    from edgeship.sdk.runtime._accel import accelerator, missing_runtime

    target = hardware
    acc = accelerator(hardware)
    if acc is None and runtime == "openvino":
        target, acc = "openvino-cpu", accelerator("openvino-cpu")
    if acc is None:
        return frozenset()
    why = missing_runtime(acc)
    if why is not None:
        log("variant_runtime_missing", level="warning", hardware=target, reason=why,
            needs=acc.needs, installs="the generic artifact of each release")
        return frozenset()
    return frozenset({target})


def runtime_for(variant: str | None, cfg: ModelConfig) -> tuple[str, str]:
    """(runtime, device) for a slot: a variant's accelerator, else ``[model] runtime``."""
    if not variant:
        return cfg.runtime, "cpu"
    from edgeship.sdk.runtime._accel import accelerator

    acc = accelerator(variant)
    return (acc.runtime, acc.device) if acc is not None else (cfg.runtime, "cpu")


def load_serving(model: bytes, slot: SlotInfo, golden: dict[str, Any] | None,
                 cfg: ModelConfig) -> Any:
    """The model loaded (with its accelerator's runtime for a variant) and golden-checked,
    as the API's ``Serving``."""
    from edgeship.agent._api import Serving, describe
    from edgeship.sdk.runtime._model import Model

    runtime, device = runtime_for(slot.variant, cfg)
    loaded = Model.load_bytes(model, format=slot.format, runtime=runtime, device=device,
                              threads=cfg.threads)
    if golden is not None:
        from edgeship.agent._health import golden_check  # (it imports subprocess)

        reason = golden_check(loaded, golden)
        if reason:
            raise EdgeshipError(f"golden check in the agent: {reason}")
    return Serving(model=loaded, version=slot.version, sha256=slot.sha256,
                   metadata=describe(cfg.name, loaded, slot.version))
