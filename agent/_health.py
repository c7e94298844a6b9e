"""The golden health check: does a newly installed model answer what its release promises?

:func:`run_health_check` runs it in a separate interpreter
(``python -m edgeship.agent._health MODEL GOLDEN.json RUNTIME THREADS [device=D] [encrypted]``) with a
timeout, so a model that crashes the runtime, hangs or eats the memory takes down only
that child, never the agent serving the old model. For an encrypted slot the child reads
the 32-byte data key from its stdin pipe (never argv, environment or a file) and
decrypts the model into its own memory. :func:`golden_check` is the check itself, also used
in-process when the agent switches to the new model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from edgeship.agent._child import child_env

__all__ = ["HealthCheckInterrupted", "golden_check", "pause_seconds", "run_health_check"]


class HealthCheckInterrupted(Exception):
    """The check's child was stopped by SIGTERM/SIGINT/SIGHUP: someone is stopping the
    device (systemd, a shell), which says nothing about the model."""

_MAX_REASON = 500


def pause_seconds(point: str) -> float:
    """Tests only: how long to sleep at ``point``, from ``EDGESHIP_AGENT_PAUSE`` or the file
    named by ``EDGESHIP_AGENT_PAUSE_FILE`` (read each time, so a test can change it), both
    like ``"chunk=0.05,install=0.3"``."""
    spec = os.environ.get("EDGESHIP_AGENT_PAUSE", "")
    path = os.environ.get("EDGESHIP_AGENT_PAUSE_FILE")
    if path:
        try:
            spec = Path(path).read_text()
        except OSError:
            spec = ""
    for item in spec.replace("\n", ",").split(","):
        name, _, value = item.strip().partition("=")
        if name == point and value:
            return float(value)
    return 0.0


def golden_check(model: Any, golden: dict[str, Any] | None) -> str | None:
    """None when ``model`` reproduces the golden output within ``atol``, else the reason.

    Without golden data the model must at least run on zeros of its input shapes.
    """
    import numpy as np
    from edgeship.sdk.release._manifest import Golden

    if golden is None:
        feeds = {s.name: np.zeros([d if d > 0 else 1 for d in s.shape], dtype=s.dtype)
                 for s in model.inputs}
        model.predict_all(feeds)
        return None
    inputs, expected = Golden.from_dict(golden).arrays()
    atol = float(golden["atol"])
    if len(inputs) == 1 and len(model.inputs) == 1:  # a single input may use any key
        inputs = {model.inputs[0].name: next(iter(inputs.values()))}
    got = model.predict_all(inputs)[model.outputs[0].name]
    if got.shape != expected.shape:
        return f"output shape {list(got.shape)}, golden output is {list(expected.shape)}"
    err = float(np.max(np.abs(got.astype(np.float64) - expected))) if got.size else 0.0
    if not err <= atol:
        return f"golden output differs by {err:.4g} (atol {atol:.4g})"
    return None


def run_health_check(model_path: Path, golden: dict[str, Any] | None, *, runtime: str = "auto",
                     threads: int = 1, timeout: float = 60.0, device: str = "cpu",
                     data_key: bytes | None = None) -> tuple[bool, str]:
    """Check ``model_path`` in a child interpreter; ``(ok, reason)``. With ``data_key``
    the file is ciphertext: the key goes to the child over its stdin pipe."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(golden, handle)
        golden_path = handle.name
    cmd = [sys.executable, "-m", "edgeship.agent._health", str(model_path), golden_path,
           runtime, str(threads), *([f"device={device}"] if device != "cpu" else []),
           *(["encrypted"] if data_key is not None else [])]
    try:
        out = subprocess.run(cmd, capture_output=True, timeout=timeout,
                             input=data_key or b"", env=child_env())
    except subprocess.TimeoutExpired:
        return False, f"health check did not finish in {timeout:g}s"
    finally:
        os.unlink(golden_path)
    if out.returncode == 0:
        return True, ""
    text = (out.stdout.decode(errors="replace").strip()
            or out.stderr.decode(errors="replace").strip())
    lines = text.splitlines()
    detail = lines[-1] if lines else ""
    if -out.returncode in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        raise HealthCheckInterrupted(f"health check stopped by signal {-out.returncode}")
    if out.returncode < 0:
        detail = f"model crashed the runtime (signal {-out.returncode}) {detail}".strip()
    return False, (detail or f"health check exited with {out.returncode}")[:_MAX_REASON]


def _main(argv: list[str]) -> int:
    from edgeship.agent._child import die_with_parent
    from edgeship.sdk.runtime._model import Model

    from edgeship._errors import EdgeshipError

    die_with_parent()  # a check hung in the runtime must not outlive a killed agent
    model_path, golden_path, runtime, threads = argv[:4]
    device = next((a.removeprefix("device=") for a in argv[4:] if a.startswith("device=")), "cpu")
    data_key = sys.stdin.buffer.read(33) if "encrypted" in argv[4:] else None
    seconds = pause_seconds("health")
    if seconds:  # tests: widen the window in which the agent can be killed mid-check
        import time

        time.sleep(seconds)
    try:
        golden = json.loads(Path(golden_path).read_text())
        if data_key is None:
            model = Model.load(model_path, runtime=runtime, device=device, threads=int(threads))
        else:
            model = _load_encrypted(Path(model_path), data_key, runtime, int(threads), device)
        reason = golden_check(model, golden)
    except EdgeshipError as exc:
        reason = f"{type(exc).__name__}: {exc}"
    if reason:
        print(reason)
        return 3
    return 0


def _load_encrypted(path: Path, data_key: bytes, runtime: str, threads: int,
                    device: str = "cpu") -> Any:
    """Decrypt ``path`` into memory and load it from there (no plaintext file)."""
    from edgeship.sdk.release._crypt import DATA_KEY_SIZE, decrypt
    from edgeship.sdk.runtime._model import MAX_MODEL_BYTES, Model

    from edgeship._errors import DecryptionError

    if len(data_key) != DATA_KEY_SIZE:
        raise DecryptionError(f"health check got {len(data_key)} key bytes on stdin, "
                              f"expected {DATA_KEY_SIZE}")
    with path.open("rb") as handle:
        data = handle.read(MAX_MODEL_BYTES + 1)
    plain = decrypt(data, data_key, what=path.name)
    return Model.load_bytes(plain, format=path.suffix.lstrip("."), runtime=runtime,
                            device=device, threads=threads)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
