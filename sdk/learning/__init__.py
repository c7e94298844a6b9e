"""edgeship.sdk.learning: learning from the fleet without collecting its data.

The device keeps examples worth learning from (``ExampleStore``); a Flower ClientApp on the
device fine-tunes the model's float head on them; the fleet manager's Flower ServerApp
averages the heads (FedAvg / FedProx, under SecAgg+, optionally with differential privacy)
and ``edgeship learn serve`` turns the result into a head-only delta release. Shared by the
agent (the store) and the host (the run); Flower itself is an extra
(``pip install 'edgeship[federated]'``) imported only by the Flower processes.
"""

from __future__ import annotations

from edgeship._lazy import attach

_EXPORTS: dict[str, str] = {
    "Example": "edgeship.sdk.learning._store",
    "ExampleStore": "edgeship.sdk.learning._store",
    "HeadSpec": "edgeship.sdk.learning._head",
    "LearningPlan": "edgeship.sdk.learning._plan",
    "LearningResult": "edgeship.sdk.learning._federation",
    "StoreLimits": "edgeship.sdk.learning._store",
    "TrainConfig": "edgeship.sdk.learning._train",
    "find_head": "edgeship.sdk.learning._head",
    "train_head": "edgeship.sdk.learning._train",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = attach(__name__, _EXPORTS)
