"""Write a folder of PNG test images: handwritten digits from scikit-learn, upscaled.

Host-side helper (needs numpy, and scikit-learn unless ``--npz`` is given). Each image is
an 8x8 digit scaled up ``--scale`` times (nearest neighbour) to look like a small camera
crop; the true class is in the file name (``digit_0007_label3.png``) so ``classify.py``
can report accuracy. ``--npz`` takes images from an eval file instead (``input`` with
values in [0, 1] and ``label``), e.g. the held-out split in tests/fixtures/cnn_eval.npz.

    python make_images.py --out images --count 20
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from pngio import write_png_grey


def load_digits_01(npz: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """(N, 8, 8) float images in [0, 1] and their (N,) labels."""
    if npz is not None:
        data = np.load(npz)
        return data["input"].reshape(-1, 8, 8).astype(np.float32), data["label"]
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("images"))
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--scale", type=int, default=4, help="upscale factor (8x8 -> 32x32)")
    parser.add_argument("--npz", type=Path, default=None, help="eval .npz to draw images from")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    images, labels = load_digits_01(args.npz)
    picks = np.random.default_rng(args.seed).choice(len(images), args.count, replace=False)
    args.out.mkdir(parents=True, exist_ok=True)
    for n, i in enumerate(sorted(picks)):
        big = np.kron(images[i], np.ones((args.scale, args.scale), np.float32))
        pixels = np.clip(np.rint(big * 255), 0, 255).astype(np.uint8)
        name = args.out / f"digit_{n:04d}_label{int(labels[i])}.png"
        write_png_grey(name, pixels.shape[1], pixels.shape[0], pixels.tobytes())
    print(f"wrote {args.count} images ({8 * args.scale}x{8 * args.scale}) to {args.out}")


if __name__ == "__main__":
    main()
