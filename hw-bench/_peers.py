"""The peers bench_agent.py measures the agent's API against (issue 16), each a process
it starts itself on a free loopback port, wrapping the same onnxruntime model with the
same thread count:

- ``fastapi``: a minimal FastAPI/uvicorn v2 infer endpoint with orjson (JSON and binary
  tensors), inference in the async handler as a minimal service writes it;
- ``mlserver``: MLServer with a custom runtime over an onnxruntime session (JSON tensors:
  MLServer's REST API has no binary tensor extension);
- ``bare``: a bare runtime process answering over HTTP: numpy + onnxruntime + the standard
  library's http.server, one binary v2 infer route (the floor for start-up and RSS).

``Peer.start`` returns once the peer answers a real infer request (``first_answer_s``:
from exec to that answer).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _load import _read_response  # the load generator's response reader

FASTAPI = '''
import sys, numpy as np, onnxruntime as ort, orjson, uvicorn
from fastapi import FastAPI, Request, Response
so = ort.SessionOptions(); so.intra_op_num_threads = int(sys.argv[3])
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
inp = s.get_inputs()[0].name
outs = [o.name for o in s.get_outputs()]
app = FastAPI()

@app.post("/v2/models/{name}/infer")
async def infer(name: str, request: Request) -> Response:
    body = await request.body()
    length = request.headers.get("inference-header-content-length")
    if length is None:
        t = orjson.loads(body)["inputs"][0]
        x = np.asarray(t["data"], np.float32).reshape(t["shape"])
        ys = s.run(outs, {inp: x})
        doc = {"model_name": name, "outputs": [{"name": n, "datatype": "FP32",
               "shape": list(y.shape), "data": y.ravel()} for n, y in zip(outs, ys)]}
        return Response(orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY),
                        media_type="application/json")
    n = int(length)
    t = orjson.loads(body[:n])["inputs"][0]
    x = np.frombuffer(body, np.float32, offset=n).reshape(t["shape"])
    ys = s.run(outs, {inp: x})
    head = orjson.dumps({"model_name": name, "outputs": [{"name": o, "datatype": "FP32",
        "shape": list(y.shape), "parameters": {"binary_data_size": y.nbytes}}
        for o, y in zip(outs, ys)]})
    return Response(head + b"".join(y.tobytes() for y in ys),
                    media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(head))})

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning",
            access_log=False)
'''

BARE_HTTP = '''
import sys, json, numpy as np, onnxruntime as ort
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
so = ort.SessionOptions(); so.intra_op_num_threads = int(sys.argv[3])
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
inp = s.get_inputs()[0].name

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        n = int(self.headers["Inference-Header-Content-Length"])
        shape = json.loads(body[:n])["inputs"][0]["shape"]
        y = s.run(None, {inp: np.frombuffer(body, np.float32, offset=n).reshape(shape)})[0]
        self.send_response(200)
        self.send_header("Content-Length", str(y.nbytes))
        self.end_headers()
        self.wfile.write(y.tobytes())
    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), H).serve_forever()
'''

MLSERVER_RUNTIME = '''
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

class OrtRuntime(MLModel):
    async def load(self) -> bool:
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(self.settings.parameters.extra["threads"])
        self.session = ort.InferenceSession(self.settings.parameters.uri, so,
                                            providers=["CPUExecutionProvider"])
        self.outs = [o.name for o in self.session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        ys = self.session.run(self.outs, feeds)
        return InferenceResponse(model_name=self.name, outputs=[
            NumpyCodec.encode_output(n, y) for n, y in zip(self.outs, ys)])
'''


def free_port() -> int:
    from conftest import free_port as pick

    return int(pick())


def wait_answer(port: int, request: bytes, began: float, proc: Any, timeout: float = 120
                ) -> float:
    """Seconds from ``began`` to the first 200 answer to ``request`` (polling every 5 ms)."""
    import socket

    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"peer exited with {proc.returncode} before answering")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(request)
                if _read_response(sock, bytearray()) == 200:
                    return time.perf_counter() - began
        except (OSError, ValueError):
            pass
        if time.perf_counter() - began > timeout:
            raise TimeoutError(f"no answer on port {port} after {timeout} s")
        time.sleep(0.005)


class Peer:
    """One peer process (see the module docstring)."""

    def __init__(self, kind: str, model: Path, threads: int = 1) -> None:
        self.kind, self.model, self.threads = kind, model, threads
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.tmp: Path | None = None
        self.first_answer_s = float("nan")

    def argv(self) -> list[str]:
        if self.kind == "fastapi":
            return [sys.executable, "-c", FASTAPI, str(self.model), str(self.port),
                    str(self.threads)]
        if self.kind == "bare":
            return [sys.executable, "-c", BARE_HTTP, str(self.model), str(self.port),
                    str(self.threads)]
        if self.kind == "mlserver":
            return [str(Path(sys.executable).parent / "mlserver"), "start", str(self._mlserver_dir())]
        raise ValueError(self.kind)

    def _mlserver_dir(self) -> Path:
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-mlserver-"))
        (self.tmp / "ort_runtime.py").write_text(MLSERVER_RUNTIME)
        (self.tmp / "settings.json").write_text(json.dumps({
            "http_port": self.port, "grpc_port": free_port(), "metrics_port": free_port(),
            "parallel_workers": 0, "debug": False, "logging_settings": None}))
        (self.tmp / "model-settings.json").write_text(json.dumps({
            "name": "model", "implementation": "ort_runtime.OrtRuntime",
            "parameters": {"uri": str(self.model), "extra": {"threads": self.threads}}}))
        return self.tmp

    def start(self, request: bytes) -> Peer:
        began = time.perf_counter()
        self.proc = subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, cwd=self.tmp)
        self.first_answer_s = wait_answer(self.port, request, began, self.proc)
        return self

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
