"""What a federated learning run does: the plan the server app reads from its work dir."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from edgeship._errors import EdgeshipError

STRATEGIES = ("fedavg", "fedprox")
CLIPPING = ("adaptive", "fixed")


class PlanError(EdgeshipError):
    """A learning plan that cannot run."""


@dataclass(frozen=True, kw_only=True)
class LearningPlan:
    """Rounds, strategy, privacy: everything ``learn serve`` decides before round 1."""

    rounds: int = 5
    strategy: str = "fedavg"
    proximal_mu: float = 0.1  # used by fedprox only
    local_epochs: int = 5
    learning_rate: float = 0.05
    min_devices: int = 2
    secure_aggregation: bool = True
    noise_multiplier: float = 0.0  # 0: no differential privacy
    # adaptive (Andrew et al., Flower's client-side wrapper): the norm starts at
    # clipping_norm and follows the clip_quantile of the devices' update norms, so the
    # noise (z * norm / devices) shrinks as the head settles; fixed: clipping_norm always
    clipping: str = "adaptive"
    clipping_norm: float = 1.0
    clip_quantile: float = 0.5
    # Andrew et al. suggest 0.2 over hundreds of rounds; a fleet run of a few rounds
    # has to reach the updates' scale sooner
    clip_learning_rate: float = 0.5
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise PlanError(f"strategy {self.strategy!r}: one of {', '.join(STRATEGIES)}")
        if self.rounds < 1 or self.local_epochs < 1:
            raise PlanError("rounds and local epochs must be at least 1")
        if self.min_devices < 2:
            raise PlanError("a federated round needs at least 2 devices "
                            "(secure aggregation hides each one's update among the others)")
        if self.noise_multiplier < 0 or self.clipping_norm <= 0:
            raise PlanError("noise multiplier must be >= 0 and clipping norm > 0")
        if self.clipping not in CLIPPING:
            raise PlanError(f"clipping {self.clipping!r}: one of {', '.join(CLIPPING)}")
        if not 0 < self.clip_quantile < 1 or self.clip_learning_rate <= 0:
            raise PlanError("clip quantile must be in (0, 1) and its learning rate > 0")
        if self.private and self.clipping == "adaptive" and \
                self.noise_multiplier >= self.min_devices / 10:
            # the norm's count noise (devices/20) takes a share of the noise budget
            raise PlanError(f"adaptive clipping with {self.min_devices} devices needs a noise "
                            f"multiplier below {self.min_devices / 10:g} (or --clipping fixed)")

    @property
    def private(self) -> bool:
        return self.noise_multiplier > 0

    def epsilon(self) -> float | None:
        """The (epsilon, delta) guarantee of the Gaussian mechanism over all rounds, or None
        without noise (Renyi-DP of each round composed, then converted; device-level).
        Adaptive clipping spends the same budget: the update's noise and the norm count's
        noise together are one Gaussian mechanism of this multiplier (Andrew et al. 2021)."""
        if not self.private:
            return None
        z = self.noise_multiplier
        return min(self.rounds * a / (2 * z * z) + math.log(1 / self.delta) / (a - 1)
                   for a in [1 + x / 10 for x in range(1, 100)] + list(range(12, 256)))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=2)

    @classmethod
    def from_json(cls, text: str) -> LearningPlan:
        data: dict[str, Any] = json.loads(text)
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PlanError(f"learning plan: unknown fields {', '.join(unknown)}")
        return cls(**data)
