"""Per-target artifacts of a release (the manifest's ``variants``): host-side checks and
I/O. ``edgeship release ARTIFACT --variant ethos-u55-128=model.int8.ethos-u55-128.tflite``
signs the Vela-compiled file next to the generic artifact; a device whose ``hardware`` is
``ethos-u55-128`` (and has the Ethos-U delegate) installs it, every other device the
generic artifact (see :meth:`~edgeship.sdk.release._manifest.Manifest.select`).

A variant cannot be run here (it needs its NPU), so it is checked up to that boundary:
the target is one an accelerator runs (sdk/runtime/_accel.py), the file has that
accelerator's format and structure (a TFLite with Vela's ``ethos-u`` op, an RKNN file, an
ONNX that loads), and its signed size and sha256 are checked like the artifact's. In an
encrypted release (``--encrypt-for``) each variant is encrypted under the release's data
key with a nonce of its own, like a delta; a device decrypts it as it does the artifact.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path

from edgeship.sdk._fileio import write_atomic
from edgeship.sdk.release._manifest import ArtifactInfo
from edgeship.sdk.runtime._accel import accelerator

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
    if suffix != acc.format:
        return f"--variant {target}={path}: a {target} device runs a .{acc.format} file"
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


def load_variants(variants: Mapping[str, Path | str]) -> list[tuple[str, Path, bytes]]:
    """Read and check each ``target -> file`` (InputError naming the first bad one)."""
    from edgeship.sdk.release._release import read_bounded

    loaded = []
    for target, file in sorted(variants.items()):
        path = Path(file)
        data = read_bounded(path, MAX_VARIANT_SIZE, f"--variant {target}")
        problem = variant_problem(target, path, data)
        if problem:
            raise InputError(problem)
        loaded.append((target, path, data))
    return loaded


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
