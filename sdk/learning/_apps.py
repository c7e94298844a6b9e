"""The Flower apps: the ClientApp a device's SuperNode runs, the ServerApp the SuperLink runs.

Flower loads them by name (``edgeship.sdk.learning._apps:client_app`` / ``:server_app``,
see ``flower_app/pyproject.toml``); nothing else imports this module, so flwr is imported
here at the top. Aggregation is Flower's own: the legacy strategies (FedAvg, FedProx) under
``DefaultWorkflow`` so that the SecAgg+ workflow can do the fit step: the server then sees
only the sum of the devices' masked updates.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from edgeship.sdk.learning._budget import CpuBudget
from edgeship.sdk.learning._features import example_features
from edgeship.sdk.learning._head import HeadSpec
from edgeship.sdk.learning._plan import LearningPlan
from edgeship.sdk.learning._store import ExampleStore
from edgeship.sdk.learning._train import TrainConfig, head_accuracy, train_head
from flwr.app import Context
from flwr.client import Client, ClientApp, NumPyClient
from flwr.client.mod import adaptiveclipping_mod, fixedclipping_mod, secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Message, MessageType, ndarrays_to_parameters
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext, ServerApp, ServerConfig
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    FedAvg,
    FedProx,
    Strategy,
)
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM, KEY_NORM_BIT

# ------------------------------------------------------------------ device side


class HeadClient(NumPyClient):
    """Trains the head on this device's stored examples; sends back only the weights.

    Node config (the device's own, set where its SuperNode starts): ``store``, ``model``
    and ``cpu-budget`` (a fraction of one core the step may use on average; absent: none).
    """

    def __init__(self, node_config: dict[str, Any]) -> None:
        key = os.environ.get("EDGESHIP_LEARNING_KEY")  # the agent's, for a sealed store
        self._store = ExampleStore(str(node_config["store"]),
                                   key=bytes.fromhex(key) if key else None)
        self._model = str(node_config["model"])
        budget = node_config.get("cpu-budget")
        self._budget = float(budget) if budget not in (None, "") else None

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]
            ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        os.nice(int(config.get("nice", 10)))  # training never competes with answers
        pace = CpuBudget(self._budget).pace if self._budget else None
        spec = HeadSpec.from_json(str(config["head-spec"]))  # the server's: one per run
        features, labels = example_features(self._model, spec, self._store.labelled(), pace)
        update = train_head(parameters[0], parameters[1], features, labels, TrainConfig(
            epochs=int(config["local-epochs"]), learning_rate=float(config["learning-rate"]),
            proximal_mu=float(config.get("proximal_mu", 0.0))), pace)
        # no metrics: the weights go masked (SecAgg+), a loss would go in the clear
        return [update.weight, update.bias], max(update.samples, 1), {}


def _client_fn(context: Context) -> Client:
    return HeadClient(dict(context.node_config)).to_client()


ADAPTIVE_KEY = "adaptive-clipping"  # in the fit config of runs with adaptive clipping


def _clip_when_private(msg: Message, context: Context, call_next: ClientAppCallable
                       ) -> Message:
    """Flower's client-side clipping, on the runs whose server asks for it (the DP
    wrapper sends a clipping norm; adaptive runs also say so, and the device then
    returns one bit: was its update within the norm); a run without differential privacy
    passes through."""
    if msg.metadata.message_type == MessageType.TRAIN:
        try:
            fit_ins = compat.recorddict_to_fitins(msg.content, keep_input=True)
        except (KeyError, TypeError, ValueError):  # a SecAgg+ stage, not the fit itself
            return call_next(msg, context)
        if KEY_CLIPPING_NORM in fit_ins.config:
            clip = adaptiveclipping_mod if fit_ins.config.get(ADAPTIVE_KEY) else fixedclipping_mod
            return clip(msg, context, call_next)
    return call_next(msg, context)


client_app = ClientApp(client_fn=_client_fn, mods=[secaggplus_mod, _clip_when_private])

# ------------------------------------------------------------------ server side

server_app = ServerApp()


@server_app.main()
def _server_main(grid: Any, context: Context) -> None:
    workdir = Path(str(context.run_config["workdir"]))
    plan = LearningPlan.from_json((workdir / "plan.json").read_text())
    strategy = _strategy(plan, workdir)
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=plan.rounds),
                           strategy=strategy)
    fit = None
    if plan.secure_aggregation:
        fit = SecAggPlusWorkflow(num_shares=plan.min_devices,
                                 reconstruction_threshold=max(2, plan.min_devices // 2 + 1))
    DefaultWorkflow(fit_workflow=fit)(grid, legacy)


def _strategy(plan: LearningPlan, workdir: Path) -> Strategy:
    spec_json = (workdir / "spec.json").read_text()
    with np.load(workdir / "initial.npz") as initial:
        start = [initial["weight"], initial["bias"]]
    common: dict[str, Any] = {
        "fraction_fit": 1.0, "fraction_evaluate": 0.0, "min_fit_clients": plan.min_devices,
        "min_available_clients": plan.min_devices,
        "initial_parameters": ndarrays_to_parameters(start),
        "evaluate_fn": _held_out_evaluator(workdir),
        "on_fit_config_fn": lambda _round: {"local-epochs": plan.local_epochs,
                                            "learning-rate": plan.learning_rate,
                                            "head-spec": spec_json,
                                            ADAPTIVE_KEY: plan.clipping == "adaptive"},
    }
    strategy: Strategy = (FedProx(proximal_mu=plan.proximal_mu, **common)
                          if plan.strategy == "fedprox" else FedAvg(**common))
    if plan.private and plan.clipping == "adaptive":
        strategy = AdaptiveClipping(
            strategy, noise_multiplier=plan.noise_multiplier,
            num_sampled_clients=plan.min_devices, initial_clipping_norm=plan.clipping_norm,
            target_clipped_quantile=plan.clip_quantile,
            clip_norm_lr=plan.clip_learning_rate)
    elif plan.private:
        strategy = DifferentialPrivacyClientSideFixedClipping(
            strategy, noise_multiplier=plan.noise_multiplier,
            clipping_norm=plan.clipping_norm, num_sampled_clients=plan.min_devices)
    return strategy


class AdaptiveClipping(DifferentialPrivacyClientSideAdaptiveClipping):
    """Flower 1.42's client-side adaptive clipping with two corrections (Andrew et al. 2021).

    - Direction: the devices' bit says "my update was clipped", and Flower then shrinks
      the norm when most were clipped and grows it when none were (its geometric step
      has the paper's sign for the *unclipped* bit). Here the norm grows when more than
      ``target_clipped_quantile`` of the devices were clipped, and shrinks otherwise.
    - Order: Flower moves the norm first and noises the round's sum with the new one; a
      shrinking norm then adds less noise than the devices' clipping (the sensitivity)
      needs, and the epsilon reported would be too low. Here a round is noised with the
      norm its devices clipped to; the new norm goes to the next round.
    """

    def configure_fit(self, server_round: int, parameters: Any, client_manager: ClientManager
                      ) -> list[tuple[ClientProxy, Any]]:
        self.clipping_norm = getattr(self, "_next_norm", self.clipping_norm)
        return super().configure_fit(server_round, parameters, client_manager)

    def _update_clip_norm(self, results: list[tuple[ClientProxy, Any]]) -> None:
        clipped = sum(1 for _, fit_res in results if fit_res.metrics[KEY_NORM_BIT])
        noised = float(np.random.normal(clipped, self.clipped_count_stddev)) / len(results)
        self._next_norm = self.clipping_norm * math.exp(
            self.clip_norm_lr * (noised - self.target_clipped_quantile))


def _held_out_evaluator(workdir: Path) -> Any:
    """Accuracy of each round's head on the server's own held-out features; every round's
    weights and the history are written to the work dir as they come."""
    with np.load(workdir / "heldout.npz") as held:
        features, labels = held["features"], held["labels"]
    history: list[dict[str, float]] = []

    def evaluate(server_round: int, arrays: list[np.ndarray], _config: dict[str, Any]
                 ) -> tuple[float, dict[str, float]]:
        accuracy = head_accuracy(arrays[0], arrays[1], features, labels)
        np.savez(workdir / f"round-{server_round}.npz", weight=arrays[0], bias=arrays[1])
        history.append({"round": server_round, "accuracy": accuracy})
        (workdir / "history.json").write_text(json.dumps(history, indent=2))
        return 0.0, {"accuracy": accuracy}

    return evaluate
