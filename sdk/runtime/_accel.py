"""Accelerator targets a release can carry a per-target artifact for (a manifest
``variants`` entry), and what a device needs to run one.

A hardware target name (the agent's ``hardware``, ``release --hardware``, the converter's
``--target``) maps to one :class:`Accelerator`: the artifact format its compiler writes,
the :class:`~edgeship.sdk.runtime.Model` runtime and device that run it, and what must be
installed on the device. :func:`missing_runtime` looks (once, at agent start) whether that
runtime is here; an agent that lacks it installs the generic artifact instead.

- ``ethos-u55-128`` ... (Arm Ethos-U, Vela's TFLite): LiteRT with the Ethos-U delegate
  library (``libethosu_delegate.so``, e.g. NXP i.MX93's; the path from
  ``EDGESHIP_ETHOSU_DELEGATE`` or the usual places), which hands the ``ethos-u`` custom op
  to the NPU driver. Without it the file cannot run: its NPU part is a command stream.
- ``rk3588``, ``rk3566``, ``rv1106`` ... (Rockchip, ``.rknn``): ``rknn-toolkit-lite2``
  (``rknnlite``, aarch64/armhf only) on the board's NPU driver.
- ``openvino-cpu`` / ``-gpu`` / ``-npu``: the QDQ ONNX, or the OpenVINO IR the converter
  picked packed as one ``.ovir`` (sdk/runtime/_openvino_pack.py), on OpenVINO's device. A
  CPU agent whose ``[model] runtime`` is "openvino" takes the ``openvino-cpu`` one too.

Pure table plus one small probe; imports nothing heavy.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Accelerator", "accelerator", "ethosu_delegate_path", "missing_runtime"]

ETHOSU_DELEGATE_ENV = "EDGESHIP_ETHOSU_DELEGATE"
ETHOSU_DELEGATE_PLACES = ("/usr/lib/libethosu_delegate.so", "/usr/lib64/libethosu_delegate.so",
                          "/usr/local/lib/libethosu_delegate.so")
RKNN_TARGETS = ("rk3588", "rk3576", "rk3568", "rk3566", "rk3562", "rv1106", "rv1103")
_ETHOS_U = re.compile(r"^ethos-u(55|65|85)-(32|64|128|256|512|1024|2048)\Z")


@dataclass(frozen=True, kw_only=True)
class Accelerator:
    """How a device runs the artifact compiled for one hardware target."""

    family: str  # "ethos-u" | "rknn" | "openvino"
    format: str  # the variant's file suffix: "tflite" | "rknn" | "onnx"
    runtime: str  # Model.load(runtime=...)
    device: str  # Model.load(device=...)
    needs: str  # what the device must have, in words


def accelerator(target: str) -> Accelerator | None:
    """The accelerator of hardware ``target``; None for a target without one ("cpu")."""
    if _ETHOS_U.match(target):
        return Accelerator(family="ethos-u", format="tflite", runtime="litert",
                           device="ethos-u", needs="LiteRT's Ethos-U delegate "
                           f"(libethosu_delegate.so; set {ETHOSU_DELEGATE_ENV} to its path)")
    if target in RKNN_TARGETS:
        return Accelerator(family="rknn", format="rknn", runtime="rknn", device="npu",
                           needs="rknn-toolkit-lite2 (pip install rknn-toolkit-lite2 on the "
                           "board) and Rockchip's NPU driver")
    if target in ("openvino-cpu", "openvino-gpu", "openvino-npu"):
        return Accelerator(family="openvino", format="onnx", runtime="openvino",
                           device=target.removeprefix("openvino-"),
                           needs="OpenVINO (pip install 'edgeship[openvino]')")
    return None


def ethosu_delegate_path() -> Path | None:
    """The Ethos-U delegate library: ``EDGESHIP_ETHOSU_DELEGATE`` when set (even if it
    does not exist: the load then says so), else the first usual place that has it."""
    named = os.environ.get(ETHOSU_DELEGATE_ENV)
    if named:
        return Path(named)
    return next((Path(p) for p in ETHOSU_DELEGATE_PLACES if Path(p).is_file()), None)


def missing_runtime(acc: Accelerator) -> str | None:
    """Why ``acc``'s artifact cannot run on this device (None: its runtime is here).
    Looks for the packages and libraries only; the NPU itself answers when it loads."""
    if acc.family == "ethos-u":
        if not (_has("ai_edge_litert") or _has("tflite_runtime")):
            return "no TFLite runtime (ai-edge-litert or tflite-runtime)"
        path = ethosu_delegate_path()
        if path is None or not path.is_file():
            where = path or ", ".join(ETHOSU_DELEGATE_PLACES)
            return f"no Ethos-U delegate library at {where}"
        return None
    module = {"rknn": "rknnlite", "openvino": "openvino"}[acc.family]
    return None if _has(module) else f"{acc.needs} is not installed"


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
