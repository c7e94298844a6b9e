"""Device loop of the vibration anomaly detector: read windows, score, raise alarms.

Reads accelerometer windows (CSV lines, one window each) from stdin or ``--input``,
turns each into features (``vibration.features``), asks the model for P(fault) and
flags the window when it is over ``--threshold``. A single odd window is not an alarm:
``--consecutive`` anomalous windows in a row are (the usual debounce of predictive
maintenance, so one knock on the housing does not page anyone).

The model is a local file (``--model``, ONNX or TFLite; ``Model.load`` picks the
runtime) or the running edgeship agent (``--agent URL``, via ``AgentClient``), which
serves whatever release the fleet pushed. With both, the agent answers and the local
file is the fallback when the agent is unreachable.

    python sensor.py | python detect.py --model model/int8/model.int8.tflite
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from typing import TextIO

import numpy as np
from edgeship.sdk import Model
from vibration import WINDOW, features

from edgeship import EdgeshipError, TransportError

MAX_LINE = 1 << 20  # bytes; a longer line is not a window from this sensor


def windows(stream: TextIO) -> Iterator[tuple[int, np.ndarray | str]]:
    """(index, window) per line, or (index, reason) for a line that is not a window."""
    for i, line in enumerate(iter(lambda: stream.readline(MAX_LINE), "")):
        if not line.strip():
            continue
        try:
            values = np.array(line.split(","), dtype=np.float32)
        except ValueError:
            yield i, "not numbers"
            continue
        if values.shape != (WINDOW,):
            yield i, f"{values.size} samples, expected {WINDOW}"
        else:
            yield i, values


class Scorer:
    """P(fault) of one window from the agent, the local model, or the agent with the
    local model as fallback."""

    def __init__(self, model: Model | None, agent: str | None) -> None:
        self.model = model
        self.client = None
        if agent:
            from edgeship.sdk import AgentClient

            self.client = AgentClient(agent)
        self.source = "agent" if self.client else "local"

    def __call__(self, x: np.ndarray) -> float:
        if self.client is not None:
            try:
                self.source = "agent"
                return self._p(self.client.predict(x))
            except TransportError:
                if self.model is None:
                    raise
                self.source = "local (agent unreachable)"
        assert self.model is not None
        return self._p(self.model.predict(x))

    @staticmethod
    def _p(probs: np.ndarray) -> float:
        return float(np.asarray(probs).reshape(-1)[1])


def run(stream: TextIO, score: Callable[[np.ndarray], float], threshold: float,
        consecutive: int, out: TextIO) -> dict[str, int]:
    """The loop; returns counts for the summary line."""
    counts = {"windows": 0, "anomalous": 0, "alarms": 0, "bad": 0, "first_alarm": -1}
    streak = 0
    for i, item in windows(stream):
        if isinstance(item, str):
            counts["bad"] += 1
            print(f"window {i:4d}  skipped: {item}", file=out)
            continue
        p = score(features(item)[np.newaxis])
        counts["windows"] += 1
        anomalous = p > threshold
        counts["anomalous"] += anomalous
        streak = streak + 1 if anomalous else 0
        print(f"window {i:4d}  p_fault={p:.3f}  {'ANOMALY' if anomalous else 'ok'}", file=out)
        if streak == consecutive:
            counts["alarms"] += 1
            if counts["first_alarm"] < 0:
                counts["first_alarm"] = i
            print(f"ALARM window {i}: bearing fault suspected "
                  f"({consecutive} anomalous windows in a row)", file=out)
        out.flush()
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model.int8.tflite / .onnx (or the fp32 vibration.onnx)")
    parser.add_argument("--agent", help="URL of the local edgeship agent, e.g. http://127.0.0.1:8500")
    parser.add_argument("--input", help="CSV file of windows (default: stdin)")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--consecutive", type=int, default=3)
    args = parser.parse_args(argv)
    if not (args.model or args.agent):
        parser.error("give --model PATH and/or --agent URL")
    try:
        scorer = Scorer(Model.load(args.model, threads=1) if args.model else None, args.agent)
        with open(args.input) if args.input else sys.stdin as stream:
            counts = run(stream, scorer, args.threshold, args.consecutive, sys.stdout)
    except (EdgeshipError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    first = counts["first_alarm"]
    print(f"summary: {counts['windows']} windows, {counts['anomalous']} anomalous, "
          f"{counts['alarms']} alarm(s)" + (f", first at window {first}" if first >= 0 else "")
          + f", {counts['bad']} skipped; model via {scorer.source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
