"""Device-loop cost of the firmware examples: input handling vs inference, per artifact.

For each example (``firmware-examples/``), on this machine, one thread:

- ``image-classifier``: per image, PNG decode (the stdlib reader) + shaping to the model
  input, then ``Model.predict`` of the digits CNN (fp32 ONNX, INT8 ONNX, INT8 TFLite);
- ``vibration-anomaly``: per 1024-sample window, the 20 features (FFT bands, kurtosis...),
  then ``Model.predict`` of its own MLP (same three forms).

Shows where a device's time goes: for models this small the input side can cost as much
as the model. Models are converted with ``edgeship convert`` (as the examples' READMEs
do) into a temp dir. Usage: ``python hw-bench/bench_examples.py``; writes
``examples.json``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EXAMPLES = ROOT / "firmware-examples"
FIXTURES = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(HERE))

from _common import print_machine, print_table, quick, timed, write_result  # noqa: E402


def _run(*argv: str | Path, cwd: Path) -> None:
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, argv))} failed:\n{proc.stderr[-2000:]}")


def _convert(model: Path, calib: Path, evaluate: Path, out: Path) -> dict[str, Path]:
    _run(sys.executable, "-m", "edgeship", "convert", model, "--calib", calib, "--eval",
         evaluate, "-o", out, "--format", "onnx,tflite", "-q", cwd=out.parent)
    return {"fp32 onnx": model, "int8 onnx": out / "model.int8.onnx",
            "int8 tflite": out / "model.int8.tflite"}


def _rows(example: str, what: str, prepare: Any, artifacts: dict[str, Path],
          n: int) -> list[dict[str, Any]]:
    """One row per artifact: input-side p50, predict p50 and their sum."""
    from edgeship.sdk import Model

    x = prepare()
    side = timed(prepare, n)
    rows = []
    for form, path in artifacts.items():
        model = Model.load(path, threads=1)
        infer = timed(lambda m=model: m.predict(x), n)
        rows.append({"example": example, "input": what, "model": form,
                     "bytes": path.stat().st_size, "input_p50_ms": side["p50_ms"],
                     "predict_p50_ms": infer["p50_ms"],
                     "loop_p50_ms": round(side["p50_ms"] + infer["p50_ms"], 4)})
    return rows


def image_classifier(tmp: Path, n: int) -> list[dict[str, Any]]:
    folder = EXAMPLES / "image-classifier"
    sys.path.insert(0, str(folder))
    import classify

    images = tmp / "images"
    _run(sys.executable, folder / "make_images.py", "--out", images, "--count", "1", "--npz",
         FIXTURES / "cnn_eval.npz", cwd=folder)
    artifacts = _convert(FIXTURES / "cnn.onnx", FIXTURES / "cnn_calib.npz",
                         FIXTURES / "cnn_eval.npz", tmp / "cnn")
    png = next(images.glob("*.png"))
    return _rows("image-classifier", "PNG decode + shape",
                 lambda: classify.to_input(classify.load_image(png), (1, 1, 8, 8)), artifacts, n)


def vibration(tmp: Path, n: int) -> list[dict[str, Any]]:
    folder = EXAMPLES / "vibration-anomaly"
    sys.path.insert(0, str(folder))
    from vibration import features, synth_window

    model_dir = tmp / "vibration"
    _run(sys.executable, folder / "train.py", "--out", model_dir, cwd=folder)
    artifacts = _convert(model_dir / "vibration.onnx", model_dir / "calib.npz",
                         model_dir / "eval.npz", model_dir / "int8")
    window = synth_window(np.random.default_rng(0), 0.8)
    return _rows("vibration-anomaly", "20 features", lambda: features(window)[np.newaxis],
                 artifacts, n)


def main() -> None:
    n = 200 if quick() else 2000
    with tempfile.TemporaryDirectory(prefix="bench-examples-") as tmp:
        rows = image_classifier(Path(tmp), n) + vibration(Path(tmp), n)
    print_machine()
    print_table(rows, title=f"firmware examples: device loop per input, p50 of {n} (ms)")
    write_result("examples", {"command": "python hw-bench/bench_examples.py", "n": n,
                              "rows": rows})


if __name__ == "__main__":
    main()
