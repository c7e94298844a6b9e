"""The shadow model's child process, and the pipe framing both sides speak.

``python -m edgeship.agent._shadow_worker`` is started by :class:`~edgeship.agent._shadow.ShadowTap`.
It reads frames on stdin and answers on stdout; nothing else:

1. ``{"op": "load", "fmt", "runtime", "threads", "nice"}`` + one blob, the model's bytes
   (already decrypted by the agent: the plaintext never touches a disk). Answer
   ``{"op": "ready"}``, or ``{"op": "error", "error"}`` and exit 3.
2. ``{"op": "infer", "inputs": [[name, dtype, shape], ...], "outputs": [...], "atol"}`` +
   one raw blob per input, then one per output of the *active* model. The worker runs
   the shadow and compares here (off the agent's GIL). Answer ``{"op": "result", "agree",
   "diff", "wall" (the shadow's inference), "cpu" (this request's CPU seconds)}``, or
   ``{"op": "error", "error", "cpu"}`` when the model raised (the worker stays up).
3. EOF on stdin: exit 0 (the agent stopped or died).

A frame is ``>I`` header length, the header (JSON object with ``"sizes"``: the byte length
of each blob), then the blobs. Every length read is checked against a limit first. The
child lowers its own priority (``os.nice``) and moves stray prints of the runtime off the
protocol pipe, so only frames travel on it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import sys
import time
from collections.abc import Mapping, Sequence
from typing import IO, Any

__all__ = ["MAX_BLOB", "MAX_HEADER", "decode_arrays", "encode_arrays", "pack_frame",
           "parse_header", "read_frame"]

MAX_HEADER = 64 * 1024
MAX_BLOB = 1 << 30  # a model; arrays are far smaller (the caller passes its own limit)
_LEN = struct.Struct(">I")


def pack_frame(header: Mapping[str, Any], blobs: Sequence[bytes] = ()) -> bytes:
    """One frame: header length, JSON header (with the blob sizes), blobs."""
    head = json.dumps({**header, "sizes": [len(b) for b in blobs]}).encode()
    return b"".join([_LEN.pack(len(head)), head, *blobs])


def parse_header(raw: bytes, max_blob: int) -> tuple[dict[str, Any], list[int]]:
    """The header object and its checked blob sizes (ValueError when malformed)."""
    header = json.loads(raw)
    sizes = header.get("sizes") if isinstance(header, dict) else None
    if not isinstance(sizes, list) or not all(
        type(n) is int and 0 <= n <= max_blob for n in sizes
    ) or len(sizes) > 256:
        raise ValueError("frame header without valid blob sizes")
    return header, sizes


def read_frame(stream: IO[bytes], max_blob: int = MAX_BLOB) -> tuple[dict[str, Any], list[bytes]] | None:
    """Read one frame from a blocking stream; None on a clean EOF."""
    raw = stream.read(_LEN.size)
    if not raw:
        return None
    (n,) = _LEN.unpack(_exact(stream, raw, _LEN.size))
    if n > MAX_HEADER:
        raise ValueError(f"frame header of {n} bytes")
    header, sizes = parse_header(_exact(stream, b"", n), max_blob)
    return header, [_exact(stream, b"", size) for size in sizes]


def _exact(stream: IO[bytes], got: bytes, n: int) -> bytes:
    parts = [got]
    have = len(got)
    while have < n:
        chunk = stream.read(n - have)
        if not chunk:
            raise EOFError("pipe closed mid-frame")
        parts.append(chunk)
        have += len(chunk)
    return b"".join(parts)


def encode_arrays(arrays: Mapping[str, Any]) -> tuple[list[list[Any]], list[bytes]]:
    """``([[name, dtype, shape], ...], [raw bytes, ...])``: cheap on the agent's side
    (no npy header to build), checked on the reading side by :func:`decode_arrays`."""
    import numpy as np

    specs, blobs = [], []
    for name, value in arrays.items():
        array = np.ascontiguousarray(value)
        specs.append([str(name), array.dtype.str, list(array.shape)])
        blobs.append(array.tobytes())
    return specs, blobs


def decode_arrays(specs: Any, blobs: list[bytes]) -> dict[str, Any]:
    """The arrays back; ValueError for anything but numeric arrays that fit their bytes."""
    import numpy as np

    if not isinstance(specs, list) or len(specs) != len(blobs):
        raise ValueError("array specs do not match the blobs")
    out = {}
    for spec, blob in zip(specs, blobs, strict=True):
        name, dtype, shape = spec
        kind = np.dtype(str(dtype))
        if kind.kind not in "biuf" or not all(type(d) is int and d >= 0 for d in shape):
            raise ValueError(f"array {name!r}: unsupported dtype {dtype} or shape {shape}")
        out[str(name)] = np.frombuffer(blob, dtype=kind).reshape(shape)
    return out


def _load(header: dict[str, Any], blobs: list[bytes]) -> Any:
    from edgeship.sdk.runtime._model import Model

    fmt = str(header.get("fmt", "onnx"))
    runtime = str(header.get("runtime", "auto"))
    threads = int(header.get("threads", 1))
    loader = getattr(Model, "load_bytes", None)
    if loader is not None:
        return loader(blobs[0], format=fmt, runtime=runtime, threads=threads)
    return Model.from_bytes(blobs[0], fmt, runtime=runtime, threads=threads)


def _infer(model: Any, header: dict[str, Any], blobs: list[bytes]) -> bytes:
    """Run the shadow on the request's inputs and compare with the active model's
    outputs here, in the niced child, so the agent's feeder does almost nothing."""
    from edgeship.agent._shadow import compare_outputs

    cpu0, wall0 = time.process_time(), time.perf_counter()
    try:
        specs_in = header.get("inputs")
        n = len(specs_in) if isinstance(specs_in, list) else -1
        inputs = decode_arrays(specs_in, blobs[:n])
        active = decode_arrays(header.get("outputs"), blobs[n:])
        t0 = time.perf_counter()
        outputs = model.predict_all(inputs)
        wall = time.perf_counter() - t0
        agree, diff = compare_outputs(active, outputs, float(header.get("atol", 0.0)))
    except Exception as exc:  # the shadow model failing is reported, not fatal
        return pack_frame({"op": "error", "error": f"{type(exc).__name__}: {exc}"[:500],
                           "cpu": time.process_time() - cpu0})
    return pack_frame({"op": "result", "agree": agree, "diff": diff, "wall": wall,
                       "elapsed": time.perf_counter() - wall0,
                       "cpu": time.process_time() - cpu0})


def main() -> int:
    from edgeship.agent._child import die_with_parent

    die_with_parent()
    # the agent owns this process (EOF or kill) and it dies with the agent: a stop signal
    # to the whole group (systemctl stop, Ctrl-C) is the agent's to act on, not ours
    # (it made every clean stop log a "shadow worker died" warning)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    # frames go out on a private copy of stdout; fd 1 then points at stderr, so a print
    # or a runtime's log line cannot corrupt the protocol
    proto = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    stdin = sys.stdin.buffer
    first = read_frame(stdin)
    if first is None:
        return 0
    header, blobs = first
    with contextlib.suppress(OSError, ValueError):  # best effort; the budget still holds
        os.nice(int(header.get("nice", 10)))
    try:
        if header.get("op") != "load" or len(blobs) != 1:
            raise ValueError("the first frame must load the model")
        model = _load(header, blobs)
    except Exception as exc:
        proto.write(pack_frame({"op": "error", "error": f"{type(exc).__name__}: {exc}"[:500]}))
        return 3
    del blobs, first
    proto.write(pack_frame({"op": "ready"}))
    max_blob = int(header.get("max_blob", 64 << 20))
    while True:
        frame = read_frame(stdin, max_blob)
        if frame is None:
            return 0
        proto.write(_infer(model, *frame))


if __name__ == "__main__":
    sys.exit(main())
