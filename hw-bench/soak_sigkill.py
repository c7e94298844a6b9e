"""Soak (issue 16): SIGKILL a real agent at random moments across OTA updates while a
client asks throughout; every restart must serve a verified model and no answer may be
wrong.

Set-up: a loopback mosquitto, ``edgeship fleet serve`` with a chain of signed releases
(``1.0.0`` ... ``1.0.<V-1>``, each a linear model whose every weight differs, ~256 KB, so
an update downloads 16 chunks of 16 KiB and a kill lands in the download, the
verification, the install or the health check as often as in plain serving), an agent
installed from ``1.0.0`` as its initial release. Every ``--update-every`` kills the next
release is offered (retained: the agent finds it again after each restart).

Each round starts the agent and kills it at one of four moments, chosen at random: in its
boot (0 to 1.5 s), while serving (after its first answer, which must come within 60 s:
"every restart serves", then 0 to 2 s), inside an update (0 to 0.3 s after it logs
offered / downloading / verifying / installing / health-checking; serving when no update
is under way) or just after the offered release answers (0 to 0.5 s). The agent's last
logged OTA state at each kill is counted (``killed_in_state``). A client thread asks all the time (JSON,
fresh connection each) and checks every 200 answer against the model of the version it
names (``parameters.version``): a version never released, or an output that differs from
that version's model, is a wrong answer. After the last kill the agent runs until it
serves the last offered release.

Usage: ``python hw-bench/soak_sigkill.py [--kills 200] [--versions N] [--update-every 5]
[--seed 0] [-o DIR]``; writes ``soak_sigkill.json``; exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from _common import print_machine, print_table, write_result  # noqa: E402
from test_agent_support import (  # noqa: E402
    AgentProc,
    expected,
    make_keys,
    make_model,
    start_fleet_serve,
    version_bias,
    write_config,
)

DIM = 4096  # model input size: W is DIM x 16 float32 = 256 KiB
DEVICE, FLEET = "soak-1", "soak"
CHUNK = 16 * 1024  # an update is 16 chunks: it completes between kills, and kills land in it


def build_releases(tmp: Path, count: int) -> tuple[Path, list[tuple[str, Path]]]:
    """Root key and ``count`` signed releases, each with a delta from the previous one."""
    from edgeship.sdk.release._release import Release

    keys = make_keys(tmp)
    releases: list[tuple[str, Path]] = []
    x = np.linspace(-1, 1, DIM, dtype=np.float32).reshape(1, DIM)
    for i in range(count):
        version = f"1.0.{i}"
        work = tmp / "build" / version
        model = make_model(work / "model.onnx", version_bias(version), seed=i, dim=DIM)
        golden = work / "golden.npz"
        np.savez(golden, x=x, output=expected(version_bias(version), x, seed=i),
                 atol=np.float32(1e-3))
        out = tmp / "releases" / version
        Release.build(model, version=version, keydir=keys, out=out, golden=golden,
                      bases=[releases[-1][1]] if releases else [], model_name="model")
        releases.append((version, out))
    return keys / "root.pub", releases


@dataclass
class Client:
    """Asks the agent all the time and checks every answer (see the module docstring)."""

    port: int
    seeds: dict[str, int]  # released version -> its weights' seed
    answers: Counter[str] = field(default_factory=Counter)  # by version
    unavailable: int = 0  # refused / reset / 503 while the agent is down or booting
    wrong: list[dict[str, Any]] = field(default_factory=list)
    last_ok: float = 0.0
    last_version: str = ""

    def __post_init__(self) -> None:
        self.x = np.random.default_rng(7).standard_normal((1, DIM)).astype(np.float32)
        self.body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, DIM],
                                            "data": self.x.ravel().tolist()}]}).encode()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _ask(self) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=3)
        try:
            conn.request("POST", "/v2/models/model/infer", body=self.body,
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                status, reply = self._ask()
            except (OSError, http.client.HTTPException):
                status, reply = 0, b""
            if status == 200:
                self._check(json.loads(reply))
            else:
                with self.lock:
                    self.unavailable += 1
                time.sleep(0.01)

    def _check(self, doc: dict[str, Any]) -> None:
        version = str(doc.get("parameters", {}).get("version", ""))
        got = np.asarray(doc["outputs"][0]["data"], np.float32)
        problem = None
        if version not in self.seeds:
            problem = "a version never released"
        else:
            want = expected(version_bias(version), self.x, seed=self.seeds[version]).ravel()
            if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-3):
                problem = "output differs from the model of that version"
        with self.lock:
            if problem:
                self.wrong.append({"version": version, "problem": problem,
                                   "at": round(time.time(), 3)})
            else:
                self.answers[version] += 1
                self.last_ok, self.last_version = time.monotonic(), version

    def served_since(self, since: float) -> str | None:
        with self.lock:
            return self.last_version if self.last_ok > since else None


def wait_served(client: Client, agent: AgentProc, since: float, timeout: float,
                version: str | None = None) -> str | None:
    """The version the agent answered with after ``since`` (and is ``version``, if given);
    None on timeout or if the agent exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        served = client.served_since(since)
        if served is not None and (version is None or served == version):
            return served
        if agent.proc is not None and agent.proc.poll() is not None:
            return None
        time.sleep(0.02)
    return None


MOMENTS = ("boot", "serving", "update", "committed")
OTA_STATES = frozenset({"offered", "downloading", "verifying", "installing", "health-checking"})


def last_state(agent: AgentProc) -> str:
    """The OTA state of the agent's last status log line ("none" before the first)."""
    states = [line.get("state") for line in list(agent.log) if line.get("event") == "status"]
    return str(states[-1]) if states else "none"


def wait_state(agent: AgentProc, wanted: frozenset[str], timeout: float) -> bool:
    """Whether the agent logs a status in one of ``wanted`` within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if last_state(agent) in wanted:
            return True
        if agent.proc is not None and agent.proc.poll() is not None:
            return False
        time.sleep(0.01)
    return False


def soak(args: argparse.Namespace) -> dict[str, Any]:
    from conftest import free_port
    from edgeship.sdk.fleet._release_server import push_offer

    from edgeship._cli.broker import LocalBroker

    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="soak-sigkill-"))
    root_pub, releases = build_releases(tmp, args.versions)
    broker = LocalBroker().start()
    server = start_fleet_serve(broker.url, *(r for _, r in releases), fleet=FLEET)
    port = free_port()
    cfg = write_config(tmp, broker_url=broker.url, port=port, root_pub=root_pub,
                       device=DEVICE, fleet=FLEET, initial=releases[0][1], chunk_size=CHUNK)
    client = Client(port, {v: i for i, (v, _) in enumerate(releases)})
    client.thread.start()
    offered, failures = 0, []
    agent: AgentProc | None = None
    phases: Counter[str] = Counter()  # the moment chosen for each kill
    states: Counter[str] = Counter()  # the agent's last OTA state logged before the kill
    began = time.monotonic()
    try:
        for kill in range(args.kills):
            if kill and kill % args.update_every == 0 and offered + 1 < len(releases):
                offered += 1
                push_offer(broker.url, FLEET, releases[offered][1], [DEVICE])
            agent = AgentProc(cfg, port)
            started = time.monotonic()
            agent.start(wait=False)
            moment = rng.choice(MOMENTS)
            if moment == "boot":
                time.sleep(rng.uniform(0.0, 1.5))
            elif moment == "update" and wait_state(agent, OTA_STATES, 20.0):
                time.sleep(rng.uniform(0.0, 0.3))
            else:  # serving, after the update's commit, or no update under way
                target = releases[offered][0] if moment == "committed" else None
                if wait_served(client, agent, started, 60.0) is None:
                    failures.append({"kill": kill, "failure": "restart did not serve in 60 s",
                                     "exit": agent.proc.poll() if agent.proc else None,
                                     "log": agent.log[-5:]})
                elif target is not None:
                    wait_served(client, agent, started, 60.0, version=target)
                time.sleep(rng.uniform(0.0, 2.0 if moment == "serving" else 0.5))
            phases[moment] += 1
            states[last_state(agent)] += 1
            if agent.proc is not None and agent.proc.poll() is not None:
                failures.append({"kill": kill, "failure": "the agent exited by itself",
                                 "exit": agent.proc.returncode, "log": agent.log[-5:]})
            agent.kill()
            if (kill + 1) % 10 == 0:
                print(f"{kill + 1} kills, offered up to {releases[offered][0]}, answers "
                      f"{sum(client.answers.values())}, wrong {len(client.wrong)}", flush=True)
        last = releases[offered][0]
        agent = AgentProc(cfg, port)
        started = time.monotonic()
        agent.start(wait=False)
        final = wait_served(client, agent, started, 120.0, version=last)
        if final is None:
            failures.append({"failure": f"after the soak the agent did not serve {last} in "
                                        "120 s", "log": agent.log[-5:]})
        agent.terminate()
    finally:
        if agent is not None:
            agent.kill()  # interrupted mid-round: no agent outlives the soak
        client.stop.set()
        client.thread.join(timeout=10)
        server.terminate()
        server.wait()
        broker.stop()
    return {"kills": args.kills, "kill_moments": dict(phases), "killed_in_state": dict(states), "versions": args.versions,
            "offered_up_to": releases[offered][0], "final_version": final,
            "answers": sum(client.answers.values()), "answers_by_version": dict(client.answers),
            "unavailable": client.unavailable, "wrong_answers": len(client.wrong),
            "wrong": client.wrong[:20], "failures": failures,
            "seconds": round(time.monotonic() - began, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--versions", type=int, default=None,
                        help="releases in the chain (default: one per --update-every kills)")
    parser.add_argument("--update-every", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--out", type=Path, default=None)
    args = parser.parse_args()
    if args.versions is None:  # updates go on for the whole soak
        args.versions = args.kills // args.update_every + 1
    result = soak(args)
    print_machine()
    print_table([{k: v for k, v in result.items() if k not in ("wrong", "failures",
                                                                "answers_by_version")}],
                title="SIGKILL soak")
    print(f"answers by version: {result['answers_by_version']}")
    for failure in result["failures"] + result["wrong"]:
        print(f"FAILED: {failure}")
    path = write_result("soak_sigkill", result, out_dir=args.out)
    print(json.dumps({"written": str(path)}))
    sys.exit(1 if result["failures"] or result["wrong_answers"] else 0)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
