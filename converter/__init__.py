"""edgeship.converter (host side): ONNX model in; pruned, INT8-quantized QDQ ONNX and
fully-integer TFLite out, with a report of what the conversion cost."""

from __future__ import annotations

from edgeship._lazy import attach

# public name -> private module that defines it (imported on first use)
_EXPORTS: dict[str, str] = {
    "ConvertOptions": "edgeship.converter._options",
    "EvalResult": "edgeship.converter._evaluate",
    "FormatsNotWritten": "edgeship.converter._convert",
    "Report": "edgeship.converter._report",
    "TARGETS": "edgeship.converter._targets",
    "TargetResult": "edgeship.converter._targets",
    "TargetsNotCompiled": "edgeship.converter._targets",
    "convert": "edgeship.converter._convert",
    "default_formats": "edgeship.converter._convert",
    "EdgeTpuReport": "edgeship.converter._edgetpu",
    "TfliteInfo": "edgeship.converter._tflite",
    "check_edgetpu": "edgeship.converter._edgetpu",
    "write_tflite": "edgeship.converter._tflite",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = attach(__name__, _EXPORTS)
