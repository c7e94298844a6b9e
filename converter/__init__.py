"""edgeship.converter (host side): ONNX model in; pruned, INT8-quantized QDQ ONNX and
fully-integer TFLite out, with a report of what the conversion cost."""

from __future__ import annotations

import importlib
from typing import Any

# public name -> private module that defines it (imported on first use)
_EXPORTS: dict[str, str] = {
    "ConvertOptions": "edgeship.converter._options",
    "EvalResult": "edgeship.converter._evaluate",
    "Report": "edgeship.converter._report",
    "convert": "edgeship.converter._convert",
    "default_formats": "edgeship.converter._convert",
    "EdgeTpuReport": "edgeship.converter._edgetpu",
    "TfliteInfo": "edgeship.converter._tflite",
    "check_edgetpu": "edgeship.converter._edgetpu",
    "write_tflite": "edgeship.converter._tflite",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'edgeship.converter' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value
