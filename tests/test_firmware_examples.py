"""The firmware examples run as a user runs them: real subprocesses, real models converted
by ``edgeship convert``, real onnxruntime and LiteRT, real files."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "firmware-examples"
FIXTURES = ROOT / "tests" / "fixtures"
IMAGES = EXAMPLES / "image-classifier"
VIBRATION = EXAMPLES / "vibration-anomaly"
LINE = re.compile(r"^(digit_\d{4}_label(\d)\.png)  class=(\d)  confidence=([01]\.\d{3})$")


def run(*args: str | Path, cwd: Path, stdin: str | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, input=stdin, capture_output=True,
                          text=True, timeout=timeout)


def python(script: Path, *args: str | Path, stdin: str | None = None
           ) -> subprocess.CompletedProcess[str]:
    return run(sys.executable, script, *args, cwd=script.parent, stdin=stdin)


def convert(model: Path, calib: Path, evaluate: Path, out: Path) -> Path:
    proc = run(sys.executable, "-m", "edgeship", "convert", model, "--calib", calib,
               "--eval", evaluate, "-o", out, "--format", "onnx,tflite", "-q", cwd=out.parent)
    assert proc.returncode == 0, proc.stderr
    return out


# ------------------------------------------------------------------ image classifier
@pytest.fixture(scope="module")
def cnn_int8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cnn") / "int8"
    return convert(FIXTURES / "cnn.onnx", FIXTURES / "cnn_calib.npz", FIXTURES / "cnn_eval.npz",
                   out)


@pytest.fixture(scope="module")
def digit_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    proc = python(IMAGES / "make_images.py", "--out", folder, "--count", "30",
                  "--npz", FIXTURES / "cnn_eval.npz")
    assert proc.returncode == 0, proc.stderr
    return folder


@pytest.mark.parametrize("artifact", ["model.int8.onnx", "model.int8.tflite"])
def test_image_classifier_prints_class_per_image(cnn_int8: Path, digit_images: Path,
                                                 artifact: str) -> None:
    proc = python(IMAGES / "classify.py", digit_images, "--model", cnn_int8 / artifact)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    matches = [LINE.match(line) for line in lines[:30]]
    assert all(matches), lines[:30]
    names = [m.group(1) for m in matches if m]
    assert names == sorted(p.name for p in digit_images.glob("*.png"))
    right = sum(m.group(2) == m.group(3) for m in matches if m)
    assert right >= 27  # the INT8 CNN is ~99 % accurate on this held-out split
    runtime = "litert" if artifact.endswith(".tflite") else "onnxruntime"
    assert f"classified 30 images with {artifact} ({runtime})" in lines[30]
    assert lines[31] == f"accuracy {right}/30 = {right / 30:.1%} (labels from file names)"


def test_image_classifier_reads_colour_pngs_from_another_encoder(cnn_int8: Path,
                                                                 tmp_path: Path) -> None:
    from PIL import Image  # an independent encoder (matplotlib's dependency), adaptive filters

    data = np.load(FIXTURES / "cnn_eval.npz")
    for i in range(8):
        grey = np.kron(data["input"][i, 0], np.ones((6, 6))) * 255
        rgb = np.stack([grey] * 3, axis=-1).round().astype(np.uint8)
        Image.fromarray(rgb, "RGB").save(tmp_path / f"digit_{i:04d}_label{data['label'][i]}.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    proc = python(IMAGES / "classify.py", tmp_path, "--model", cnn_int8 / "model.int8.tflite")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("broken.png  error: ")
    assert "classified 8 images" in proc.stdout
    assert re.search(r"accuracy [78]/8 ", proc.stdout), proc.stdout


def test_pngio_matches_pillow_on_every_filter(tmp_path: Path) -> None:
    from PIL import Image

    sys.path.insert(0, str(IMAGES))
    try:
        import pngio
    finally:
        sys.path.remove(str(IMAGES))
    rng = np.random.default_rng(0)
    smooth = np.cumsum(rng.integers(0, 3, (37, 29, 4)), axis=1).astype(np.uint8)
    for mode, pixels in (("RGBA", smooth), ("RGB", smooth[..., :3]), ("L", smooth[..., 0])):
        Image.fromarray(pixels, mode).save(tmp_path / "x.png", optimize=True)
        width, height, channels, raw = pngio.read_png(tmp_path / "x.png")
        got = np.frombuffer(raw, np.uint8).reshape(height, width, channels)
        assert (width, height) == (29, 37)
        assert np.array_equal(got.reshape(pixels.shape), pixels), mode
    pngio.write_png_grey(tmp_path / "g.png", 3, 2, bytes(range(6)))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "g.png")), [[0, 1, 2], [3, 4, 5]])


def test_image_classifier_missing_model_is_one_line(digit_images: Path, tmp_path: Path) -> None:
    proc = python(IMAGES / "classify.py", digit_images, "--model", tmp_path / "none.tflite")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: cannot read model") and "Traceback" not in proc.stderr


# ------------------------------------------------------------------ vibration anomaly
@pytest.fixture(scope="module")
def vibration_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("vibration")
    proc = python(VIBRATION / "train.py", "--out", folder)
    assert proc.returncode == 0, proc.stderr
    assert "held-out accuracy" in proc.stdout
    return convert(folder / "vibration.onnx", folder / "calib.npz", folder / "eval.npz",
                   folder / "int8")


@pytest.fixture(scope="module")
def sensor_csv() -> str:
    proc = python(VIBRATION / "sensor.py", "--windows", "50", "--fault-after", "30")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("artifact", ["model.int8.onnx", "model.int8.tflite"])
def test_vibration_alarm_after_fault_and_not_before(vibration_model: Path, sensor_csv: str,
                                                    artifact: str) -> None:
    proc = python(VIBRATION / "detect.py", "--model", vibration_model / artifact,
                  stdin=sensor_csv)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    verdicts = {int(m.group(1)): m.group(2) for m in (
        re.match(r"window +(\d+)  p_fault=[01]\.\d{3}  (ok|ANOMALY)$", line) for line in lines)
        if m}
    assert sorted(verdicts) == list(range(50))
    assert [i for i in range(30) if verdicts[i] == "ANOMALY"] == []  # healthy: no false alarm
    assert sum(verdicts[i] == "ANOMALY" for i in range(30, 50)) >= 18
    alarms = [line for line in lines if line.startswith("ALARM")]
    assert len(alarms) == 1 and int(re.search(r"window (\d+)", alarms[0]).group(1)) <= 34
    assert lines[-1].startswith("summary: 50 windows, ") and "model via local" in lines[-1]


def test_vibration_detect_skips_lines_that_are_not_windows(vibration_model: Path,
                                                           sensor_csv: str) -> None:
    first = sensor_csv.splitlines()[0]
    stdin = f"1,2,3\nhello,world\n{first}\n"
    proc = python(VIBRATION / "detect.py", "--model", vibration_model / "model.int8.tflite",
                  "--consecutive", "1", stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0] == "window    0  skipped: 3 samples, expected 1024"
    assert out[1] == "window    1  skipped: not numbers"
    assert out[2].startswith("window    2  p_fault=") and out[2].endswith("ok")
    assert out[-1].startswith("summary: 1 windows, 0 anomalous, 0 alarm(s), 2 skipped")
