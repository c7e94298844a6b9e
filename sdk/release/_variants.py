"""Per-target artifacts of a release (the manifest's ``variants``): host-side checks and
I/O. ``edgeship release ARTIFACT --variant ethos-u55-128=model.int8.ethos-u55-128.tflite``
signs the Vela-compiled file next to the generic artifact; a device whose ``hardware`` is
``ethos-u55-128`` (and has the Ethos-U delegate) installs it, every other device the
generic artifact (see :meth:`~edgeship.sdk.release._manifest.Manifest.select`).

A variant cannot be run here (it needs its NPU), so it is checked up to that boundary:
the target is one an accelerator runs (sdk/runtime/_accel.py), the file has that
accelerator's format and structure (a TFLite with Vela's ``ethos-u`` op, an RKNN file, an
ONNX that loads, an OpenVINO IR that OpenVINO reads), and its signed size and sha256 are checked like the artifact's. In an
encrypted release (``--encrypt-for``) each variant is encrypted under the release's data
key with a nonce of its own, like a delta; a device decrypts it as it does the artifact.

An OpenVINO target's variant may be the IR the converter picked for it
(``--variant openvino-cpu=OUT/model.int8.openvino-cpu.xml``): its ``.xml`` and the ``.bin``
beside it are packed into one file, ``model.int8.openvino-cpu.ovir`` (manifest format
``ovir``, sdk/runtime/_openvino_pack.py), so a release's files stay one per artifact.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path

from edgeship.sdk._fileio import write_atomic
from edgeship.sdk.release._manifest import ArtifactInfo
from edgeship.sdk.runtime._accel import accelerator
from edgeship.sdk.runtime._openvino_pack import SUFFIX, pack_ir_files

from edgeship._errors import InputError

__all__ = ["MAX_VARIANT_SIZE", "load_variants", "parse_variant", "variant_problem",
           "write_variants"]

MAX_VARIANT_SIZE = 1 << 31
_VELA_OP = b"ethos-u"
RKNN_MAGIC = b"RKNN"


def parse_variant(text: str) -> tuple[str, Path]:
    """``--variant TARGET=FILE`` -> (target, file)."""
    target, sep, file = text.partition("=")
    if not sep or not target or not file:
        raise InputError(f"--variant {text!r}: expected TARGET=FILE, e.g. "
                         "ethos-u55-128=OUT/model.int8.ethos-u55-128.tflite")
    return target.strip(), Path(file)


def variant_problem(target: str, path: Path, data: bytes) -> str:
    """Why ``data`` is not an artifact a ``target`` device could run, or ""."""
    acc = accelerator(target)
    if acc is None:
        return (f"--variant {target}: not an accelerator target (ethos-u55-128 ... "
                "ethos-u85-256, rk3588, rk3566, rv1106 ..., openvino-cpu/-gpu/-npu)")
    suffix = path.suffix.lower().lstrip(".")
    if acc.family == "openvino" and suffix in ("ovir", "xml"):
        return _ir_problem(target, path, data)
    if suffix != acc.format:
        more = " or an OpenVINO IR (.xml)" if acc.family == "openvino" else ""
        return f"--variant {target}={path}: a {target} device runs a .{acc.format} file{more}"
    if not data:
        return f"--variant {target}={path}: the file is empty"
    if acc.family == "ethos-u" and (data[4:8] != b"TFL3" or _VELA_OP not in data):
        return (f"--variant {target}={path}: not a Vela-compiled TFLite (no 'ethos-u' op); "
                f"make it with edgeship convert --target {target}")
    if acc.family == "rknn" and not data.startswith(RKNN_MAGIC):
        return f"--variant {target}={path}: not an RKNN model (edgeship convert --target {target})"
    if acc.family == "openvino":
        from edgeship.sdk.release._artifact import load_problem

        problem = load_problem(path, data)
        if problem:
            return f"--variant {target}: {problem}"
    return ""


def _ir_problem(target: str, path: Path, data: bytes) -> str:
    """Why packed IR ``data`` is not one OpenVINO reads, or "" (with OpenVINO here it is
    read; without, its structure is checked)."""
    from edgeship.sdk.runtime._openvino_pack import unpack_ir

    from edgeship._errors import ModelLoadError

    try:
        xml, weights = unpack_ir(data)
    except ModelLoadError as exc:
        return f"--variant {target}={path}: {exc}"
    try:
        import openvino as ov
    except ImportError:
        return ""
    try:
        ov.Core().read_model(xml, weights)
    except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
        last = str(exc).strip().splitlines()[-1:] or [type(exc).__name__]
        return f"--variant {target}={path}: OpenVINO cannot read this IR: {last[0][:200]}"
    return ""


def load_variants(variants: Mapping[str, Path | str]) -> list[tuple[str, Path, bytes]]:
    """Read and check each ``target -> file`` (InputError naming the first bad one)."""
    from edgeship.sdk.release._release import read_bounded

    loaded = []
    for target, file in sorted(variants.items()):
        path = Path(file)
        if path.suffix.lower() == ".xml" and _family(target) == "openvino":
            # an IR is two files: signed, shipped and stored as one (_openvino_pack)
            data = pack_ir_files(path, MAX_VARIANT_SIZE)
            path = path.with_suffix(SUFFIX)
        else:
            data = read_bounded(path, MAX_VARIANT_SIZE, f"--variant {target}")
        problem = variant_problem(target, path, data)
        if problem:
            raise InputError(problem)
        loaded.append((target, path, data))
    return loaded


def _family(target: str) -> str:
    acc = accelerator(target)
    return acc.family if acc is not None else ""


def write_variants(out: Path, loaded: list[tuple[str, Path, bytes]], taken: set[str],
                   seal: Callable[[bytes], bytes] | None = None) -> dict[str, ArtifactInfo]:
    """Write each checked variant into the release dir ``out`` (under its own name) and
    return the manifest entries. ``taken``: file names the release already uses;
    ``seal``: an encrypted release's encryption of a payload file (the entries then sign
    the ciphertext, as for the artifact)."""
    entries: dict[str, ArtifactInfo] = {}
    for target, path, plain in loaded:
        if path.name in taken:
            raise InputError(f"--variant {target}={path}: the release already has a file "
                             f"named {path.name}")
        taken.add(path.name)
        data = plain if seal is None else seal(plain)
        write_atomic(out / path.name, data)
        entries[target] = ArtifactInfo(name=path.name, sha256=hashlib.sha256(data).hexdigest(),
                                       size=len(data), format=path.suffix.lstrip("."))
    return entries
