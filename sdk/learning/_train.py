"""Fine-tuning a float head on a device's features: plain numpy, no framework.

A head is a linear layer ``z = W x + b`` followed by softmax (or a sigmoid for one class).
Gradient descent on its cross-entropy is a few matrix products per batch, which a device's
CPU does in milliseconds; FedProx's proximal term keeps a device with skewed data near the
global weights it started from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How a device trains the head in one round."""

    epochs: int = 5
    learning_rate: float = 0.05
    batch_size: int = 32
    proximal_mu: float = 0.0  # FedProx; 0 is FedAvg's plain local training
    weight_decay: float = 1e-4
    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class HeadUpdate:
    """What one round of local training produced."""

    weight: np.ndarray
    bias: np.ndarray
    samples: int
    loss: float  # mean cross-entropy over the last epoch


def train_head(weight: np.ndarray, bias: np.ndarray, features: np.ndarray,
               labels: np.ndarray, config: TrainConfig,
               pace: Callable[[], None] | None = None) -> HeadUpdate:
    """Minibatch gradient descent from ``(weight, bias)``; returns new arrays.
    ``pace`` (a CPU budget's) is called after every minibatch."""
    if len(features) == 0:
        return HeadUpdate(weight=weight.copy(), bias=bias.copy(), samples=0, loss=0.0)
    w, b = weight.astype(np.float64), bias.astype(np.float64)
    w0, b0 = w.copy(), b.copy()
    x = features.reshape(len(features), -1).astype(np.float64)
    y = labels.astype(np.int64).reshape(-1)
    rng = np.random.default_rng(config.seed)
    loss = 0.0
    for _ in range(config.epochs):
        order = rng.permutation(len(x))
        losses = []
        for start in range(0, len(x), config.batch_size):
            rows = order[start:start + config.batch_size]
            grad_w, grad_b, batch_loss = _gradients(w, b, x[rows], y[rows])
            grad_w += config.weight_decay * w + config.proximal_mu * (w - w0)
            grad_b += config.proximal_mu * (b - b0)
            w -= config.learning_rate * grad_w
            b -= config.learning_rate * grad_b
            losses.append(batch_loss)
            if pace is not None:
                pace()
        loss = float(np.mean(losses))
    return HeadUpdate(weight=w.astype(np.float32), bias=b.astype(np.float32),
                      samples=len(x), loss=loss)


def _gradients(w: np.ndarray, b: np.ndarray, x: np.ndarray,
               y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    logits = x @ w.T + b
    if w.shape[0] == 1:  # one sigmoid unit: binary cross-entropy
        p = 1.0 / (1.0 + np.exp(-logits[:, 0]))
        err = (p - y)[:, None]
        loss = -np.mean(y * np.log(p + 1e-12) + (1 - y) * np.log(1 - p + 1e-12))
    else:
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        loss = -np.mean(np.log(p[np.arange(len(y)), y] + 1e-12))
        err = p
        err[np.arange(len(y)), y] -= 1.0
    return err.T @ x / len(x), err.mean(axis=0), float(loss)


def head_predictions(weight: np.ndarray, bias: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Class index per row (0/1 for a single sigmoid unit)."""
    logits = features.reshape(len(features), -1) @ weight.T + bias
    picked: np.ndarray = (logits[:, 0] > 0) if weight.shape[0] == 1 else logits.argmax(axis=1)
    return picked.astype(np.int64)


def head_accuracy(weight: np.ndarray, bias: np.ndarray, features: np.ndarray,
                  labels: np.ndarray) -> float:
    """Share of rows whose predicted class is the label, in percent."""
    if len(features) == 0:
        return 0.0
    hits = head_predictions(weight, bias, features) == labels.reshape(-1)
    return float(100.0 * hits.mean())
