"""A device's Flower node: ``flower-supernode --isolation process`` and a warm ClientApp
executor beside it.

By default (``--isolation subprocess``) Flower 1.42's SuperNode starts a fresh
``flwr-clientapp`` interpreter for every message the SuperLink sends; under SecAgg+ that is
four per round, each paying ~1.5 s of CPU for its imports (flwr, numpy, the app) before it
does a millisecond of work. Here the SuperNode runs with ``--isolation process`` and this
process does the SuperExec's job itself: it imports Flower's ClientApp runtime and
edgeship's ClientApp once, asks the SuperNode's Runtime API for tasks (what
``flower-superexec`` does) and forks one child per task that runs Flower's own
``run_clientapp`` with the task's token. Every message still gets a process of its own
(Flower's isolation and exit handling, unchanged), without the imports. POSIX only (fork).

The node dies with whoever started it (PR_SET_PDEATHSIG on Linux), ends when its SuperNode
ends, and turns Flower's telemetry off for itself and its children (nothing but the
round's messages leaves the device). Usage::

    python -m edgeship.sdk.learning._node --superlink HOST:PORT --node-config 'k="v" ...'
        [--insecure | --root-certificates PEM] [--poll 0.2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _runtime_opened(port: int, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """True once the SuperNode listens on ``port``; False if it ended first (the port was
    taken between our pick and its bind: another process on a busy host)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return True
        time.sleep(0.1)
    if proc.poll() is None:
        raise SystemExit(f"the SuperNode's Runtime API did not open on port {port}")
    return False


def _started(args: argparse.Namespace, first: tuple[subprocess.Popen[bytes], int]
             ) -> tuple[subprocess.Popen[bytes], int]:
    """The SuperNode (``first`` already launched) once its Runtime API is open."""
    node, port = first
    for _ in range(5):
        if _runtime_opened(port, node, timeout=120):
            return node, port
        port = _free_port()
        node = _supernode(args, port)
    raise SystemExit("the SuperNode could not start (see its output above)")


def _supernode(args: argparse.Namespace, runtime_port: int) -> subprocess.Popen[bytes]:
    beside = Path(sys.executable).parent / "flower-supernode"
    binary = str(beside) if beside.exists() else shutil.which("flower-supernode")
    if binary is None:
        raise SystemExit("flower-supernode is not installed (pip install 'edgeship[federated]')")
    tls = (["--root-certificates", args.root_certificates] if args.root_certificates
           else ["--insecure"])
    return subprocess.Popen([binary, *tls, "--superlink", args.superlink, "--isolation",
                             "process", "--port", str(runtime_port),
                             "--node-config", args.node_config],
                            preexec_fn=_die_with_parent)  # no threads here yet


def _run_task(runtime: str, token: str) -> None:
    """In the forked child: Flower's ClientApp runtime for one task, then out."""
    code = 1
    try:
        from flwr.supernode.runtime.run_clientapp import run_clientapp

        run_clientapp(runtime_api_address=runtime, token=token, insecure=True,
                      parent_pid=os.getppid())
        code = 0
    except SystemExit as done:  # Flower ends every task with sys.exit
        code = done.code if isinstance(done.code, int) else 1
    finally:
        os._exit(code)  # never the parent's cleanup (it would stop the SuperNode)


def serve(args: argparse.Namespace) -> int:
    """Run the SuperNode and hand its tasks to forked children until it ends."""
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    _die_with_parent()
    port = _free_port()
    launched = _supernode(args, port), port
    # the warm part, while the SuperNode starts: what every task needs, imported once
    import edgeship.sdk.learning._apps  # noqa: F401
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.runtime import RuntimeHttpClient

    node, port = _started(args, launched)
    runtime = f"127.0.0.1:{port}"
    try:
        client = RuntimeHttpClient.from_server_address(
            server_address=runtime, insecure=True, root_certificates=None,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")])
        request = AcquireTaskRequest(supported_task_types=[str(TaskType.CLIENT_APP)])
        tasks: set[int] = set()
        while node.poll() is None:
            tasks = _reap(tasks)
            try:
                found = client.AcquireTask(request)
            except Exception:  # the SuperNode restarting or going away: look again
                time.sleep(args.poll)
                continue
            if found.HasField("task") and found.token:
                pid = os.fork()
                if pid == 0:
                    _run_task(runtime, found.token)
                tasks.add(pid)
                continue  # a round's next message often follows at once
            time.sleep(args.poll)
        return int(node.returncode or 0)
    finally:
        if node.poll() is None:
            node.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.wait(timeout=5)
            node.kill()


def _reap(tasks: set[int]) -> set[int]:
    """The task children still running (the finished ones waited for)."""
    running = set()
    for pid in tasks:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == 0:
                running.add(pid)
        except ChildProcessError:
            continue
    return running


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--superlink", required=True)
    parser.add_argument("--node-config", required=True)
    parser.add_argument("--root-certificates", default="")
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--poll", type=float, default=0.2)
    args = parser.parse_args(argv)
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
