"""The floor of any server on this machine, for bench_agent.py's serving section (issue
16: binary req/s at concurrency 1 >= 0.7x in-process onnxruntime). Three servers answer
the bench's own binary request with the agent's own answer bytes, through the same client
(``_load.py``) as every peer:

- ``C, no inference``: ``_floor_server.c`` (compiled here with the system's C compiler;
  skipped without one): reads each request by its Content-Length and writes the pre-built
  answer. Its round trip is what the machine, the loopback and the client cost.
- ``Python, no inference``: the same in Python (blocking socket, one preallocated buffer).
- ``Python + onnxruntime``: the same, running the model (1 thread, as the floor) on the
  body's tensor before answering: no HTTP head parsing beyond Content-Length, no v2
  codec, no checks. What a Python server can reach at best here.

``implied`` is the ratio a server would reach if it cost the C floor's round trip plus the
in-process call (the machine's bound), next to the measured ratios.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _load import run_load
from _peers import free_port

HERE = Path(__file__).resolve().parent

PY_FLOOR = '''
import socket, sys
port, answer = int(sys.argv[1]), open(sys.argv[2], "rb").read()
model = sys.argv[3] if len(sys.argv) > 3 else None
if model:
    import numpy as np, onnxruntime as ort
    so = ort.SessionOptions(); so.intra_op_num_threads = 1
    s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    spec = s.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in spec.shape]
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", port)); ls.listen(128); print("ready", flush=True)
buf = bytearray(1 << 23); view = memoryview(buf)

def field(head, name):
    i = head.find(name)
    j = head.find(b"\\r\\n", i)
    return int(head[i + len(name):j if j > 0 else None])

while True:
    conn, _ = ls.accept(); conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    have = 0
    try:
        while True:
            while (end := buf.find(b"\\r\\n\\r\\n", 0, have)) < 0:
                n = conn.recv_into(view[have:])
                if not n: raise ConnectionError
                have += n
            head = bytes(buf[:end]).lower()
            need = end + 4 + field(head, b"content-length:")
            while have < need:
                n = conn.recv_into(view[have:])
                if not n: raise ConnectionError
                have += n
            if model:
                at = end + 4 + field(head, b"inference-header-content-length:")
                x = np.frombuffer(buf, np.float32, count=int(np.prod(shape)), offset=at)
                s.run(None, {spec.name: x.reshape(shape)})
            conn.sendall(answer)
            buf[:have - need] = buf[need:have]; have -= need
    except OSError:
        conn.close()
'''


def raw_answer(port: int, request: bytes) -> bytes:
    """The bytes (head and body) a server answers ``request`` with."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head = data.split(b"\r\n\r\n", 1)[0]
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(data) < len(head) + 4 + length:
            data += sock.recv(65536)
        return data


def _measure(argv: list[str], port: int, request: bytes, seconds: float) -> dict[str, Any]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{argv[0]} did not start")
        run_load(port, request, concurrency=1, seconds=0.3)  # warm-up
        return run_load(port, request, concurrency=1, seconds=seconds)
    finally:
        proc.kill()
        proc.wait()


def floor_rows(request: bytes, answer: bytes, model: Path, seconds: float) -> list[dict[str, Any]]:
    """One c=1 binary run of each floor server (see the module docstring)."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-floor-"))
    try:
        (tmp / "answer").write_bytes(answer)
        servers: list[tuple[str, list[str]]] = []
        compiler = shutil.which("cc") or shutil.which("gcc")
        if compiler is not None:
            built = subprocess.run([compiler, "-O2", "-o", str(tmp / "floor"),
                                    str(HERE / "_floor_server.c")], capture_output=True)
            if built.returncode == 0:
                servers.append(("floor: C, no inference", [str(tmp / "floor")]))
        servers.append(("floor: Python, no inference", [sys.executable, "-c", PY_FLOOR]))
        servers.append(("floor: Python + onnxruntime", [sys.executable, "-c", PY_FLOOR]))
        rows = []
        for name, argv in servers:
            port = free_port()
            extra = [str(model)] if "onnxruntime" in name else []
            got = _measure([*argv, str(port), str(tmp / "answer"), *extra], port, request,
                           seconds)
            rows.append({"peer": name, "tensors": "binary", **got})
        return rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
