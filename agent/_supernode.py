"""The device's Flower SuperNode, run by the agent when ``[learning] superlink`` is set.

A child process ``python -m edgeship.sdk.learning._node --superlink HOST:PORT
--node-config 'store=".." model=".." cpu-budget=F'``: Flower's ``flower-supernode`` (its
own transport) with a warm executor beside it that runs the ClientApp
(``edgeship.sdk.learning._apps:client_app``, which trains the head on the example store,
within ``[learning] cpu_budget`` of one core) in a forked child per message.
It follows the active model: restarted on every model change, stopped when there is no
plaintext ONNX model to give it (an encrypted slot is not written out in the clear: not
supported yet, logged). It runs in its own session at ``nice`` (training never competes
with answers) and dies with the agent (PR_SET_PDEATHSIG through a tiny launcher, then
the whole group is killed on stop). The store's key, when there is one, reaches it in
its environment (``EDGESHIP_LEARNING_KEY``), never on disk or on its command line.

Without flwr installed this is one log line; the agent keeps serving.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["KEY_ENV", "SuperNode"]

KEY_ENV = "EDGESHIP_LEARNING_KEY"
# the child: die with the agent, lower its priority, then become the device node
_LAUNCHER = ("import os, sys; from edgeship.agent._child import die_with_parent; "
             "die_with_parent(); os.nice(int(sys.argv[1])); os.execv(sys.argv[2], sys.argv[2:])")


class SuperNode:
    """One agent's SuperNode child (used from the daemon's loop thread only)."""

    def __init__(self, config: Any, store_dir: Path, key: bytes | None,
                 log: Callable[..., None]) -> None:
        self.config, self.store_dir, self.key, self.log = config, store_dir, key, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.model: Path | None = None
        self.version = ""
        self.binary = self._find()

    def _find(self) -> str | None:
        if importlib.util.find_spec("flwr") is None:
            self.log("supernode_unavailable", "warning", superlink=self.config.superlink,
                     reason="flwr is not installed (pip install 'edgeship[federated]'); "
                            "this device takes no part in federated rounds")
            return None
        beside = Path(sys.executable).parent / "flower-supernode"
        found = str(beside) if beside.exists() else shutil.which("flower-supernode")
        if found is None:
            self.log("supernode_unavailable", "warning", superlink=self.config.superlink,
                     reason="flwr is installed but flower-supernode is not on PATH")
        return found

    def follow(self, slot: Any, model_file: Path) -> None:
        """The model of ``slot`` (at ``model_file``) now answers: run the SuperNode on it."""
        if self.binary is None:
            return
        running = self.proc is not None and self.proc.poll() is None
        if running and (self.model, self.version) == (model_file, slot.version):
            return  # the same model loaded again (a resume): the SuperNode keeps its session
        self.stop()
        if slot.encryption is not None:
            self.log("supernode_not_started", "warning", version=slot.version,
                     reason="the active model is encrypted; federated learning on an "
                            "encrypted model is not supported yet (it would need the model "
                            "in the clear on disk)")
            return
        if slot.format != "onnx":
            self.log("supernode_not_started", "warning", version=slot.version,
                     reason=f"federated learning needs an ONNX model, not {slot.format}")
            return
        self._start(model_file, slot.version)

    def _start(self, model_file: Path, version: str) -> None:
        node_config = (f'store="{self.store_dir}" model="{model_file}" '
                       f'cpu-budget={float(self.config.cpu_budget)}')
        tls = (["--root-certificates", self.config.superlink_ca] if self.config.superlink_ca
               else ["--insecure"])
        argv = [sys.executable, "-c", _LAUNCHER, str(self.config.nice), sys.executable,
                "-m", "edgeship.sdk.learning._node", *tls,
                "--superlink", self.config.superlink, "--node-config", node_config]
        from edgeship.agent._child import child_env

        env = child_env()
        # the SuperNode starts flwr-clientapp by name: the one installed beside it
        env["PATH"] = os.pathsep.join([str(Path(str(self.binary)).parent),
                                       env.get("PATH", os.defpath)])
        if self.key is not None:
            env[KEY_ENV] = self.key.hex()
        log_file = self.store_dir.parent / "supernode.log"
        try:
            with log_file.open("ab") as out:
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                             stderr=subprocess.STDOUT, env=env,
                                             start_new_session=True)
        except OSError as exc:
            self.log("supernode_failed", "error", error=str(exc)[:200])
            return
        self.model, self.version = model_file, version
        self.log("supernode_started", pid=self.proc.pid, superlink=self.config.superlink,
                 version=version, log=str(log_file))

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:  # the group: the SuperNode and the ClientApp processes it started
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):  # a ClientApp the SuperNode left
            os.killpg(proc.pid, signal.SIGKILL)
        self.log("supernode_stopped", pid=proc.pid, code=proc.poll())

