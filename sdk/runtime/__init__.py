"""edgeship.sdk.runtime: run an INT8 model on the device.

``Model`` loads a release's artifact and runs it on onnxruntime, LiteRT / tflite-runtime or
OpenVINO, quantizing inputs and dequantizing outputs with the model's own parameters.
Imported by device applications, the agent, the release tools (golden checks) and the
converter's LiteRT checks. Imports no other part of ``edgeship.sdk``; a runtime is imported
only when a model is loaded.
"""

from __future__ import annotations

from edgeship._lazy import attach

_EXPORTS: dict[str, str] = {
    "Model": "edgeship.sdk.runtime._model",
    "TensorSpec": "edgeship.sdk.runtime._model",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = attach(__name__, _EXPORTS)
