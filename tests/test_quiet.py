"""The runtimes' own chatter (LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate for
CPU.", onnxruntime's warnings) stays off stderr unless -v; real errors still get through."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).parent / "fixtures"
XNNPACK_LINE = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."


def _run(*args: str | Path, verbose: bool = False) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "EDGESHIP_VERBOSE"}
    return subprocess.run([sys.executable, "-m", "edgeship", *map(str, args)],
                          capture_output=True, text=True, timeout=120, env=env)


def test_convert_release_verify_print_no_runtime_info_line(tmp_path: Path) -> None:
    conv = _run("convert", FIXTURES / "mlp.onnx", "--calib", FIXTURES / "mlp_calib.npz",
                "--eval", FIXTURES / "mlp_eval.npz", "-o", tmp_path / "out")
    assert conv.returncode == 0, conv.stderr
    assert "INFO" not in conv.stderr and conv.stderr == "", conv.stderr
    # -v shows what was filtered: the runtime really prints the line (so the check above
    # is not vacuous)
    loud = _run("convert", FIXTURES / "mlp.onnx", "--calib", FIXTURES / "mlp_calib.npz",
                "-o", tmp_path / "loud", "-v")
    assert loud.returncode == 0, loud.stderr
    assert XNNPACK_LINE in loud.stderr

    x = np.load(FIXTURES / "mlp_eval.npz")["input"][:1]
    from edgeship.sdk import Model

    y = Model.load(tmp_path / "out" / "model.int8.tflite").predict(x)
    np.savez(tmp_path / "golden.npz", input=x, output=y)
    assert _run("keys", "init", tmp_path / "keys").returncode == 0
    rel = _run("release", tmp_path / "out" / "model.int8.tflite", "--version", "1.0.0",
               "--keys", tmp_path / "keys", "-o", tmp_path / "rel",
               "--golden", tmp_path / "golden.npz")
    assert rel.returncode == 0 and rel.stderr == "", rel.stderr
    ver = _run("verify", tmp_path / "rel", "--root", tmp_path / "keys" / "root.pub")
    assert ver.returncode == 0 and ver.stderr == "", ver.stderr


_FILTER_SCRIPT = """
import os
from edgeship.sdk._quiet import runtime_chatter_filtered
with runtime_chatter_filtered():
    os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n")
    os.write(2, b"ERROR: a real problem\\n")
    os.write(2, b"VERBOSE: Replacing 3 node(s) with delegate\\n")
os.write(2, b"after\\n")
"""


def test_filter_drops_info_keeps_errors_and_honours_verbose() -> None:
    env = {k: v for k, v in os.environ.items() if k != "EDGESHIP_VERBOSE"}
    quiet = subprocess.run([sys.executable, "-c", _FILTER_SCRIPT], capture_output=True,
                           text=True, timeout=60, env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == "ERROR: a real problem\nafter\n"
    loud = subprocess.run([sys.executable, "-c", _FILTER_SCRIPT], capture_output=True,
                          text=True, timeout=60, env={**env, "EDGESHIP_VERBOSE": "1"})
    assert loud.stderr.count("\n") == 4 and "XNNPACK" in loud.stderr


def test_a_process_without_stderr_still_loads_models(tmp_path: Path) -> None:
    conv = _run("convert", FIXTURES / "mlp.onnx", "--calib", FIXTURES / "mlp_calib.npz",
                "-o", tmp_path / "out", "-q")
    assert conv.returncode == 0, conv.stderr
    script = ("import os, sys\nos.close(2)\nfrom edgeship.sdk import Model\n"
              f"m = Model.load({str(tmp_path / 'out' / 'model.int8.tflite')!r})\n"
              "print('loaded', m.runtime)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stdout == "loaded litert\n", proc
