"""A host-side sanity check of a model file before it is signed as a release.

Signing is cheap and shipping a file that is not a model is expensive (every device
downloads it, fails its health check and rolls back), so ``edgeship release`` names an
empty, truncated or mislabelled artifact up front. The check is structural only (it does
not run the model: an Edge TPU model cannot run on the host).

:func:`load_problem` goes further, for ``edgeship release``: the artifact must be a file
a runtime of this host loads (onnxruntime for ``.onnx``, LiteRT for ``.tflite``), so a
``calib.npz`` signed by mistake is refused before anything is written. A TFLite model
compiled for the Edge TPU (its ``edgetpu-custom-op`` needs the accelerator) passes on its
structure alone.
"""

from __future__ import annotations

from pathlib import Path

from edgeship._errors import InputError

__all__ = ["MODEL_SUFFIXES", "artifact_problem", "load_problem"]

_TFLITE_ID = b"TFL3"
MODEL_SUFFIXES = (".onnx", ".tflite")
_EDGETPU_OP = b"edgetpu-custom-op"


def load_problem(path: Path, data: bytes) -> str:
    """Why no runtime here can load ``data`` (read from ``path``) as a model, or ""."""
    problem = artifact_problem(path, data)
    if problem:
        return problem
    suffix = path.suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        return (f"artifact {path} is not a model file (.onnx for onnxruntime or .tflite for "
                "LiteRT)")
    if suffix == ".tflite" and _needs_edgetpu(data):
        return ""
    from edgeship.sdk.runtime._model import Model

    from edgeship._errors import ModelLoadError

    try:
        Model.load_bytes(data, format=suffix)
    except ModelLoadError as exc:
        return f"artifact {path} does not load: {exc}"
    return ""


def _needs_edgetpu(data: bytes) -> bool:
    try:
        import tflite
    except ImportError:
        return False
    model = tflite.Model.GetRootAsModel(data, 0)
    return any(model.OperatorCodes(i).CustomCode() == _EDGETPU_OP
               for i in range(model.OperatorCodesLength()))


def artifact_problem(path: Path, data: bytes) -> str:
    """Why ``data`` cannot be the model its suffix says, or "" when it may be."""
    try:
        _check_structure(path, data)
    except InputError as exc:
        return str(exc)
    return ""


def _check_structure(path: Path, data: bytes) -> None:
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        _check_onnx(path, data)
    elif suffix == ".tflite":
        _check_tflite(path, data)


def _check_onnx(path: Path, data: bytes) -> None:
    try:
        import onnx
        from google.protobuf.message import DecodeError
    except ImportError:  # a host without onnx: nothing to check with
        return
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise InputError(f"artifact {path} is not an ONNX model ({type(exc).__name__})") from exc
    if not model.graph.node or not model.opset_import:
        raise InputError(f"artifact {path} is not an ONNX model (no graph nodes or opset)")


def _check_tflite(path: Path, data: bytes) -> None:
    if len(data) < 8 or data[4:8] != _TFLITE_ID:
        raise InputError(f"artifact {path} is not a TFLite model (no TFL3 identifier)")
    try:
        import tflite
    except ImportError:
        return
    try:
        model = tflite.Model.GetRootAsModel(data, 0)
        if model.SubgraphsLength() < 1:
            raise InputError(f"artifact {path} is not a TFLite model (no subgraph)")
        for i in range(model.BuffersLength()):
            buf = model.Buffers(i)
            if buf.DataLength():
                buf.DataAsNumpy()  # raises when the vector runs past the end of the file
            if buf.Offset() and buf.Offset() + buf.Size() > len(data):
                raise InputError(f"artifact {path} is truncated (buffer {i} ends past the file)")
    except InputError:
        raise
    except Exception as exc:  # flatbuffers signals a bad offset by whatever struct/numpy raise
        raise InputError(f"artifact {path} is a truncated or corrupt TFLite model (an "
                         f"offset points past its {len(data)} bytes)") from exc
