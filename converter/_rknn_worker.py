"""Runs inside rknn-toolkit2's own Python environment (it pins torch 2.4, numpy 1.26,
onnx 1.18), started by converter/_target_rknn.py as ``PYTHON _rknn_worker.py JOB.json``:
imports only the toolkit, numpy and the standard library, never edgeship.

The job: load the QDQ ONNX (already quantized: ``build(do_quantization=False)`` keeps
its scales instead of re-quantizing), build for ``target_platform``, export the
``.rknn``, then run the toolkit's x86 simulator on the samples (``samples.npz``, one
array per model input, in input order) and save its outputs. The toolkit's verbose log
(the per-op table: NPU or CPU) goes to stdout for the parent to read; the last line is
one JSON object with what happened.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable


def main(job_path: str) -> int:
    import numpy as np
    from rknn.api import RKNN

    with open(job_path) as handle:
        job = json.load(handle)
    rknn = RKNN(verbose=True)
    result: dict[str, object] = {"ok": False}
    try:
        restored = _keep_our_constant_scales(job.get("scales"))
        rknn.config(target_platform=job["target"],
                    optimization_level=int(job.get("optimization_level", 3)))
        steps: tuple[tuple[str, Callable[[], int]], ...] = (
                 ("load", lambda: rknn.load_onnx(model=job["onnx"])),
                 ("build", lambda: rknn.build(do_quantization=False)),
                 ("export", lambda: rknn.export_rknn(job["rknn"])),
                 ("simulator", lambda: rknn.init_runtime()))
        for name, step in steps:
            code = step()
            if name == "build":  # the table entries given back our scales, or why not
                result["restored_scales"] = len(restored) if isinstance(restored, list) else restored
            if code != 0:
                result["error"] = f"rknn-toolkit2 {name} failed"
                return _finish(result, 3)
        with np.load(job["samples"]) as npz:
            inputs = [npz[k] for k in job["inputs"]]
        outputs: dict[str, list[np.ndarray]] = {}
        rows = len(inputs[0]) if inputs else 0
        for i in range(rows):
            # our ONNX is NCHW: say so for 4-D inputs (the toolkit's default is NHWC)
            layout = {"data_format": "nchw"} if all(x.ndim == 4 for x in inputs) else {}
            got = rknn.inference(inputs=[x[i:i + 1] for x in inputs], **layout)
            if got is None:
                result["error"] = "rknn-toolkit2 simulator failed on a sample"
                return _finish(result, 3)
            for k, value in enumerate(got):
                outputs.setdefault(f"out{k}", []).append(np.asarray(value, np.float32))
        stacked = {k: np.concatenate(v) for k, v in outputs.items()}
        np.savez(job["outputs"], **stacked)  # type: ignore[arg-type]
        result.update(ok=True, samples=rows)
        return _finish(result, 0)
    finally:
        rknn.release()


def _keep_our_constant_scales(path: str | None) -> list[str] | str:
    """Have the toolkit keep the scales of our QDQ ONNX.

    Reading an int8 weight behind a DequantizeLinear, rknn-toolkit2 2.5 takes its range
    as the dtype's [-128, 127] x scale and, weights being symmetric, re-derives the scale
    as 128 x scale / 127: every weight is re-rounded onto a grid 0.8 % coarser (and the
    bias scales follow), so the NPU no longer computes our numbers (one step off on 2 %
    of a depthwise conv's outputs, 8 % of a first conv's). It does the same to an
    activation whose zero point is 0 (taken as symmetric: EfficientNet-Lite0's
    projection convs). Our weights stay within [-127, 127] and our activations' ranges
    are our own, so after the toolkit has read the QDQ pairs (``Quantizer.load_qat_inf``)
    each weight's and bias's entry in its quantization table gets our scale back, and
    each activation entry whose zero point is ours but whose scale is not. Returns the
    list the restored entries' names go into (filled by the build), or why it cannot
    (another toolkit version: the build goes on with the toolkit's scales)."""
    restored: list[str] = []
    if not path:
        return restored
    with open(path) as handle:
        ours: dict[str, dict[str, list[float]]] = json.load(handle)
    try:
        from rknn.api import quantizer
        original = quantizer.Quantizer.load_qat_inf
    except (ImportError, AttributeError) as exc:
        return f"not restored: {exc}"
    constants, activations = ours.get("constants", {}), ours.get("activations", {})

    def load_qat_inf(self: object, *args: object, **kwargs: object) -> object:
        done = original(self, *args, **kwargs)
        for name, entry in getattr(self, "quant_tab", {}).items():
            scales = constants.get(name)
            if scales is not None and len(entry.get("scale", ())) == len(scales):
                bound = 127 if entry.get("dtype") == "int8" else 2**31 - 1
                entry.update(scale=list(scales), min=[-bound * s for s in scales],
                             max=[bound * s for s in scales])
                restored.append(name)
                continue
            act = activations.get(name)
            if act is None or entry.get("dtype") != "int8" or len(entry.get("scale", ())) != 1:
                continue
            scale, zero = act
            if entry["zero_point"][0] == zero and entry["scale"][0] != scale:
                # the range the toolkit derives the scale from again: symmetric (zero
                # point 0) max(|min|, |max|) / 127, else (max - min) / 255
                low, high = (-127, 127) if zero == 0 else (-128 - zero, 127 - zero)
                entry.update(scale=[scale], min=[low * scale], max=[high * scale])
                restored.append(name)
        return done

    quantizer.Quantizer.load_qat_inf = load_qat_inf
    return restored


def _finish(result: dict[str, object], code: int) -> int:
    from importlib.metadata import PackageNotFoundError, version

    try:
        result["version"] = version("rknn-toolkit2")
    except PackageNotFoundError:
        result["version"] = ""
    sys.stdout.flush()
    print("\n" + json.dumps(result), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
