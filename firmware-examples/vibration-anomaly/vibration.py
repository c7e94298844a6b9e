"""Signals and features of the vibration example (numpy only; shared by every script).

A window is ``WINDOW`` accelerometer samples at ``FS`` Hz from a motor bearing housing.
A healthy machine shows the shaft frequency and its low harmonics over broadband noise;
an outer-race bearing fault adds a train of impacts at the ball-pass frequency (BPFO,
here 3.57 x shaft speed) that ring the housing's resonance near 2.6 kHz, so energy moves
to high frequencies and the signal gets spiky (kurtosis and crest factor go up). Load and
sensor mounting change the overall level, so features are mostly level-free.
"""

from __future__ import annotations

import numpy as np

FS = 8000  # samples per second
WINDOW = 1024  # samples per window (128 ms)
BANDS = 16  # spectral bands, equal width from 0 to FS/2
N_FEATURES = BANDS + 4
BPFO_RATIO = 3.57  # outer-race ball-pass frequency / shaft frequency
RESONANCE_HZ = 2600.0

# Mean and spread of the raw features over a commissioning run (healthy and faulty
# windows, 4000 of them, ``train.dataset(4000, 7)``). Features are z-scored with these
# fixed numbers on the device, so the model sees inputs of one scale -- which is what
# lets a single INT8 scale per tensor keep every feature (kurtosis varies by 0.05,
# the 2.6 kHz band by 0.7: unscaled, the int8 input step would erase the former).
REFERENCE_MEAN = np.array([
    -0.037, -2.631, -2.629, -2.627, -2.624, -2.617, -2.608, -2.587, -2.536, -2.329,
    -1.957, -2.388, -2.522, -2.571, -2.583, -2.590, -0.036, 0.305, 2.388, -1.269])
REFERENCE_STD = np.array([
    0.030, 0.109, 0.108, 0.108, 0.108, 0.108, 0.114, 0.122, 0.165, 0.371,
    0.722, 0.314, 0.174, 0.138, 0.129, 0.124, 0.168, 0.046, 0.323, 0.322])


def synth_window(rng: np.random.Generator, fault: float = 0.0) -> np.ndarray:
    """One window; ``fault`` is the bearing-fault severity (0 healthy, ~1 clear fault)."""
    t = np.arange(WINDOW) / FS
    shaft = rng.uniform(20.0, 35.0)  # 1200-2100 rpm
    phases = rng.uniform(0, 2 * np.pi, 3)
    x = sum(a * np.sin(2 * np.pi * k * shaft * t + p)
            for k, a, p in zip((1, 2, 3), (1.0, 0.35, 0.12), phases, strict=True))
    x = x + rng.normal(0.0, 0.15, WINDOW)
    if fault > 0:
        period = FS / (BPFO_RATIO * shaft)
        start = rng.uniform(0, period)
        ring = np.exp(-np.arange(160) / 25.0) * np.sin(2 * np.pi * RESONANCE_HZ * np.arange(160) / FS)
        for hit in np.arange(start, WINDOW, period).astype(int):
            seg = ring[: WINDOW - hit] * fault * rng.uniform(0.6, 1.2)
            x[hit : hit + len(seg)] += seg
        x = x + rng.normal(0.0, 0.05 * fault, WINDOW)
    return (x * rng.uniform(0.5, 2.0)).astype(np.float32)  # load / mounting gain


def features(window: np.ndarray) -> np.ndarray:
    """``N_FEATURES`` float32, z-scored against the reference: log band-energy fractions,
    log RMS, log kurtosis, crest factor and the high-band energy share."""
    x = np.asarray(window, np.float64).reshape(-1)
    x = x - x.mean()
    power = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    bands = np.array([b.sum() for b in np.array_split(power[1:], BANDS)])
    total = bands.sum() + 1e-12
    rms = np.sqrt(np.mean(x**2)) + 1e-12
    kurtosis = np.mean(x**4) / rms**4
    crest = np.max(np.abs(x)) / rms
    high = bands[BANDS // 4 :].sum() / total
    raw = np.concatenate([
        np.log10(bands / total + 1e-9),
        [np.log10(rms), np.log10(kurtosis), crest, np.log10(high + 1e-9)],
    ])
    return ((raw - REFERENCE_MEAN) / REFERENCE_STD).astype(np.float32)
