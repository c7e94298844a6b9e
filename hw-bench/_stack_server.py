"""One v2 endpoint for bench_http_stack.py: the agent's own service (AgentService over
Model.load, exactly the agent's answer path) served by a chosen HTTP stack.

``python _stack_server.py STACK MODEL PORT THREADS`` prints ``ready <seconds>`` once
listening. STACK: ``socketserver`` (edgeship's server, sdk/serving/_v2server.py, as the agent
runs it; the name is session 6's, the selector loop of _v2loop.py replaced socketserver),
``uvicorn`` (uvicorn + httptools, a raw ASGI app over the same dispatcher, inference on
the event loop) or ``uvicorn-pool`` (the same, inference in the default thread pool).
The ASGI adapter carries none of the issue-16 defences; it measures the stack's speed,
footprint and what it does by itself against slowloris.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

BEGAN = time.perf_counter()


def asgi_app(dispatcher: Any, *, pool: bool) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        args = (scope["method"], scope["path"], headers, body)
        if pool:
            response = await asyncio.get_running_loop().run_in_executor(
                None, dispatcher.dispatch, *args)
        else:
            response = dispatcher.dispatch(*args)
        fields = [(b"content-type", response.content_type.encode()),
                  (b"content-length", str(len(response.body)).encode())]
        fields += [(k.encode(), v.encode()) for k, v in response.headers.items()]
        await send({"type": "http.response.start", "status": response.status,
                    "headers": fields})
        await send({"type": "http.response.body", "body": response.body})
    return app


def main() -> None:
    stack, model_path, port, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    from edgeship.agent._api import AgentService, Metrics, Serving, describe
    from edgeship.sdk.runtime._model import Model

    model = Model.load(model_path, threads=threads)
    service = AgentService("model", Metrics())
    service.swap(Serving(model=model, version="1", sha256="",
                         metadata=describe("model", model, "1")))
    if stack == "socketserver":
        from edgeship.sdk.serving._v2server import SPIN_S, serve

        server = serve(service, port=port, spin_s=SPIN_S)  # as the agent serves
        print("ready", round(time.perf_counter() - BEGAN, 3), flush=True)
        server.serve_forever()
        return
    import uvicorn
    from edgeship.sdk.serving._v2server import _Dispatcher

    dispatcher = _Dispatcher(service, max_request_bytes=32 << 20, api_key=None)
    config = uvicorn.Config(asgi_app(dispatcher, pool=stack == "uvicorn-pool"),
                            host="127.0.0.1", port=port, http="httptools", loop="asyncio",
                            lifespan="off", access_log=False, log_level="warning")
    print("ready", round(time.perf_counter() - BEGAN, 3), flush=True)
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
