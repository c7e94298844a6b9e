"""The public surface: every package's __all__ resolves, imports stay light, the CLI
turns errors into one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

import edgeship


@pytest.mark.parametrize("package", ["edgeship", "edgeship.sdk", "edgeship.converter", "edgeship.agent"])
def test_all_names_resolve(package: str) -> None:
    module = __import__(package, fromlist=["__all__"])
    for name in module.__all__:
        assert getattr(module, name) is not None, name


def test_error_tree_has_one_root() -> None:
    for name in edgeship.__all__:
        obj = getattr(edgeship, name)
        if isinstance(obj, type):
            assert issubclass(obj, edgeship.EdgeshipError), name


def test_sdk_import_pulls_in_no_runtime() -> None:
    code = (
        "import sys, edgeship.sdk, edgeship.agent\n"
        "heavy = [m for m in ('onnx', 'onnxruntime', 'numpy', 'ai_edge_litert', 'tflite_runtime',"
        " 'edgeship.converter') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_unknown_command_is_one_line_and_nonzero() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "edgeship", "no-such-command"], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "no-such-command" in out.stderr
    assert "Traceback" not in out.stderr
