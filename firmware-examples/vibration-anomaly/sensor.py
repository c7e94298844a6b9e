"""Simulated accelerometer: writes windows as CSV lines (one window per line) to stdout.

Stands in for the sensor driver on a bench: the machine runs healthy, then from window
``--fault-after`` an outer-race bearing fault develops (its severity grows linearly from
``--start-severity`` to ``--end-severity``). ``--rate`` paces the output in windows per
second like a real sensor (0 = as fast as possible).

    python sensor.py --windows 60 --fault-after 40 | python detect.py --model model/int8/model.int8.tflite
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from vibration import synth_window


def severity(i: int, args: argparse.Namespace) -> float:
    if args.fault_after < 0 or i < args.fault_after:
        return 0.0
    span = max(args.windows - 1 - args.fault_after, 1)
    frac = (i - args.fault_after) / span
    return args.start_severity + frac * (args.end_severity - args.start_severity)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=60)
    parser.add_argument("--fault-after", type=int, default=40, help="-1: stay healthy")
    parser.add_argument("--start-severity", type=float, default=0.5)
    parser.add_argument("--end-severity", type=float, default=1.2)
    parser.add_argument("--rate", type=float, default=0.0, help="windows per second (0: no pacing)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    out = sys.stdout
    for i in range(args.windows):
        window = synth_window(rng, severity(i, args))
        out.write(",".join(f"{v:.5f}" for v in window) + "\n")
        out.flush()
        if args.rate > 0:
            time.sleep(1.0 / args.rate)


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:  # the reader stopped early: that is fine for a sensor
        sys.exit(0)
