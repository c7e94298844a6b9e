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
        rknn.config(target_platform=job["target"])
        steps: tuple[tuple[str, Callable[[], int]], ...] = (
                 ("load", lambda: rknn.load_onnx(model=job["onnx"])),
                 ("build", lambda: rknn.build(do_quantization=False)),
                 ("export", lambda: rknn.export_rknn(job["rknn"])),
                 ("simulator", lambda: rknn.init_runtime()))
        for name, step in steps:
            if step() != 0:
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
