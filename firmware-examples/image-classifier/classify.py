"""Classify every PNG in a folder with an edgeship model: one line per image.

The device side of a camera classifier: read a frame, shape it to what the model takes
(its own input spec says the size, layout and channels), run ``Model.predict``, print the
class and its confidence. ``Model.load`` picks the runtime from the suffix, so the same
program runs the INT8 ONNX (onnxruntime) and the INT8 TFLite (LiteRT) from
``edgeship convert``. With ``--agent URL`` the running edgeship agent answers instead
(the model it serves is the one the fleet pushed), through ``AgentClient``.

    python classify.py images/ --model out/model.int8.tflite
    python classify.py images/ --agent http://127.0.0.1:8500
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from edgeship.sdk import Model
from pngio import PngError, read_png

from edgeship import EdgeshipError

MAX_IMAGES = 100_000
_LABEL = re.compile(r"label(\d+)")


def load_image(path: Path) -> np.ndarray:
    """H x W x C float32 in [0, 1]; the alpha channel is dropped."""
    width, height, channels, pixels = read_png(path)
    img = np.frombuffer(pixels, np.uint8).reshape(height, width, channels)
    if channels in (2, 4):
        img = img[..., :-1]
    return img.astype(np.float32) / 255.0


def resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area average when the size divides evenly (the usual downscale), else nearest."""
    h, w, c = img.shape
    if h % height == 0 and w % width == 0:
        return img.reshape(height, h // height, width, w // width, c).mean(axis=(1, 3))
    rows = np.arange(height) * h // height
    cols = np.arange(width) * w // width
    return img[rows][:, cols]


def to_input(img: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Shape an image for a (1, C, H, W) or (1, H, W, C) model input."""
    nchw = len(shape) == 4 and shape[1] in (1, 3) and shape[3] not in (1, 3)
    channels, height, width = (shape[1], shape[2], shape[3]) if nchw else (
        shape[3], shape[1], shape[2])
    if img.shape[2] != channels:  # grey <-> colour as the model wants it
        img = img.mean(axis=2, keepdims=True) if channels == 1 else np.repeat(
            img[..., :1], channels, axis=2)
    x = resize(img, height, width)
    x = x.transpose(2, 0, 1) if nchw else x
    return x[np.newaxis].astype(np.float32)


def top1(scores: np.ndarray) -> tuple[int, float]:
    """Class and confidence; logits are turned into probabilities first."""
    row = np.asarray(scores, np.float64).reshape(-1)
    if row.min() < 0 or abs(row.sum() - 1.0) > 0.05:
        row = np.exp(row - row.max())
        row /= row.sum()
    best = int(row.argmax())
    return best, float(row[best])


def make_predictor(args: argparse.Namespace
                   ) -> tuple[Callable[[np.ndarray], np.ndarray], tuple[int, ...], str]:
    """(predict function, input shape, description) for a local model or the agent."""
    if args.agent:
        from edgeship.sdk import AgentClient

        client = AgentClient(args.agent, model=args.agent_model)
        meta = client.metadata()  # the served model's own input spec, like Model.inputs
        shape = tuple(d if d > 0 else 1 for d in meta.inputs[0].shape)
        version = meta.versions[-1] if meta.versions else "?"
        return client.predict, shape, f"agent {args.agent} (release {version})"
    model = Model.load(args.model, runtime=args.runtime, threads=args.threads)
    shape = tuple(d if d > 0 else 1 for d in model.inputs[0].shape)
    return model.predict, shape, f"{args.model.name} ({model.runtime})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--model", type=Path, help="model.int8.onnx or model.int8.tflite")
    parser.add_argument("--agent", help="URL of a running edgeship agent (instead of --model)")
    parser.add_argument("--agent-model", default="model", help="model name on the agent")
    parser.add_argument("--runtime", default="auto", choices=["auto", "onnxruntime", "litert"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if not (args.model or args.agent):
        parser.error("give --model PATH or --agent URL")
    images = sorted(args.folder.glob("*.png"))[:MAX_IMAGES]
    if not images:
        print(f"error: no .png images in {args.folder}", file=sys.stderr)
        return 2
    try:
        predict, shape, source = make_predictor(args)
    except EdgeshipError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    correct = labelled = failed = 0
    began = time.perf_counter()
    for path in images:
        try:
            cls, conf = top1(predict(to_input(load_image(path), shape)))
        except (PngError, EdgeshipError) as exc:
            failed += 1
            print(f"{path.name}  error: {exc}")
            continue
        print(f"{path.name}  class={cls}  confidence={conf:.3f}")
        label = _LABEL.search(path.stem)
        if label:
            labelled += 1
            correct += int(label.group(1)) == cls
    elapsed_ms = (time.perf_counter() - began) * 1000
    done = len(images) - failed
    print(f"classified {done} images with {source} in {elapsed_ms:.1f} ms "
          f"({elapsed_ms / max(done, 1):.2f} ms/image)")
    if labelled:
        print(f"accuracy {correct}/{labelled} = {correct / labelled:.1%} (labels from file names)")
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
