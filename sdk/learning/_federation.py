"""The fleet manager's side of a learning run: prepare the work dir, submit the Flower App
to a SuperLink, read back the rounds.

Flower runs the rounds (``flwr run`` submits ``flower_app/`` to the SuperLink, whose
ServerApp reads the work dir this module writes). What the server owns stays here: the
held-out set, reduced to the head's features, and each round's accuracy on it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgeship.sdk.learning._head import HeadSpec, find_head, read_head, write_head
from edgeship.sdk.learning._plan import LearningPlan

from edgeship._errors import EdgeshipError

if TYPE_CHECKING:
    import numpy as np

APP_DIR = Path(__file__).with_name("flower_app")


class FederationError(EdgeshipError):
    """A learning run could not be started or did not finish."""


@dataclass(frozen=True, kw_only=True)
class RoundResult:
    """One round: the held-out accuracy of the aggregated head."""

    round: int
    accuracy: float


@dataclass(frozen=True, kw_only=True)
class LearningResult:
    """What a run produced: accuracy per round (round 0 is the starting head)."""

    spec: HeadSpec
    rounds: tuple[RoundResult, ...]
    weight: np.ndarray
    bias: np.ndarray
    epsilon: float | None

    def to_json(self) -> str:
        return json.dumps({"head": json.loads(self.spec.to_json()), "epsilon": self.epsilon,
                           "rounds": [{"round": r.round, "accuracy": r.accuracy}
                                      for r in self.rounds]}, indent=2)


def prepare_run(workdir: Path, plan: LearningPlan, fp32_model: Path, device_model: Path,
                heldout: Path) -> HeadSpec:
    """Write what the ServerApp reads: plan, head spec, starting head, held-out features."""
    import numpy as np
    import onnx
    from edgeship.sdk.learning._features import model_features

    model = onnx.load(str(fp32_model))
    spec = find_head(model)
    weight, bias = read_head(model, spec)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "plan.json").write_text(plan.to_json())
    (workdir / "spec.json").write_text(spec.to_json())
    np.savez(workdir / "initial.npz", weight=weight, bias=bias)
    with np.load(heldout) as held:
        if "label" not in held.files:
            raise FederationError(f"{heldout}: the held-out set needs a 'label' array")
        inputs = {k: held[k] for k in held.files if k != "label"}
        labels = held["label"].astype(np.int64)
    features = model_features(device_model, spec, inputs)
    np.savez(workdir / "heldout.npz", features=features, labels=labels)
    for stale in workdir.glob("round-*.npz"):
        stale.unlink()
    (workdir / "history.json").unlink(missing_ok=True)
    return spec


def submit_run(workdir: Path, superlink: str, *, timeout_s: float = 3600.0,
               root_certificates: Path | None = None) -> None:
    """Run the Flower App on the SuperLink at ``superlink`` (host:port) and wait for it."""
    flwr = shutil.which("flwr", path=str(Path(sys.executable).parent)) or shutil.which("flwr")
    if flwr is None:
        raise FederationError("Flower is not installed: pip install 'edgeship[federated]'")
    with tempfile.TemporaryDirectory(prefix="edgeship-flwr-") as home:
        _write_connection(Path(home), superlink, root_certificates)
        env = {**os.environ, "FLWR_HOME": home, "FLWR_TELEMETRY_ENABLED": "0"}
        try:
            proc = subprocess.run(
                [flwr, "run", str(APP_DIR), "--stream", "--run-config",
                 f'workdir="{workdir.resolve()}"'],
                env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise FederationError(f"the learning run did not finish in {timeout_s:.0f} s") from exc
    if proc.returncode != 0 or not (workdir / "history.json").exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise FederationError(f"the learning run on {superlink} failed: {tail[0]}")


def _write_connection(home: Path, superlink: str, root_certificates: Path | None) -> None:
    lines = ["[superlink]", 'default = "edgeship"', "", "[superlink.edgeship]",
             f'address = "{superlink}"']
    if root_certificates is None:
        lines.append("insecure = true")
    else:
        lines.append(f'root-certificates = "{root_certificates.resolve()}"')
    (home / "config.toml").write_text("\n".join(lines) + "\n")


def read_result(workdir: Path) -> LearningResult:
    """The rounds of a finished run and its last head."""
    import numpy as np

    spec = HeadSpec.from_json((workdir / "spec.json").read_text())
    plan = LearningPlan.from_json((workdir / "plan.json").read_text())
    history = json.loads((workdir / "history.json").read_text())
    last = max(int(h["round"]) for h in history)
    with np.load(workdir / f"round-{last}.npz") as final:
        weight, bias = final["weight"], final["bias"]
    rounds = tuple(RoundResult(round=int(h["round"]), accuracy=float(h["accuracy"]))
                   for h in history)
    return LearningResult(spec=spec, rounds=rounds, weight=weight, bias=bias,
                          epsilon=plan.epsilon())


def write_finetuned(fp32_model: Path, result: LearningResult, out: Path) -> Path:
    """The float model with the federated head in place of the old one."""
    import onnx

    model = write_head(onnx.load(str(fp32_model)), result.spec, result.weight, result.bias)
    onnx.save(model, str(out))
    return out
