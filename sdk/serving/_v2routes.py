"""The v2 server's service contract and its routing, pure (no sockets).

:class:`V2Service` is what a server subclasses (see :mod:`._v2server` for the contract);
:class:`_Dispatcher` turns (method, target, headers, body) into a :class:`Response`: the
v2 routes, the service's extra routes, the API key, errors mapped to status codes.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import numpy as np
from edgeship.sdk.serving._v2 import (
    HEADER_LENGTH,
    InferRequest,
    ModelMetadata,
    encode_response,
    parse_header_length,
    validate_inputs,
)
from edgeship.sdk.serving._v2http import StatusError
from edgeship.sdk.serving._v2layout import Layout, RequestDecoder

from edgeship._errors import (
    InferenceError,
    InputError,
    ModelLoadError,
    TransportError,
)

__all__ = [
    "Request",
    "Response",
    "Route",
    "StatusError",
    "V2Service",
    "current_request_id",
]

_LOGGER = "edgeship.v2"


@functools.cache
def _log() -> logging.Logger:
    """The server's logger. logging is imported on first use, not with this module (it is
    ~1 % of an agent's start to its first answer, which logs nothing here)."""
    import logging

    return logging.getLogger(_LOGGER)


def _debug() -> bool:
    """Whether debug lines are wanted (on every answer: no import, no lock when logging was
    never imported, for then no one can have configured it)."""
    logging = sys.modules.get("logging")
    return logging is not None and _log().isEnabledFor(logging.DEBUG)

if TYPE_CHECKING:
    import logging

# the id of the infer request being answered on this thread (see V2Service.assign_ids)
_REQUEST_ID: ContextVar[str | None] = ContextVar("edgeship_v2_request_id", default=None)


def current_request_id() -> str | None:
    """The id of the infer request this thread is answering (None outside one): what a
    service's taps use to find an answer again by the id its client got."""
    return _REQUEST_ID.get()


@dataclass(frozen=True, kw_only=True)
class Request:
    """What an extra route handler gets."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True, kw_only=True)
class Response:
    """What a route handler returns."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, doc: Any, status: int = 200) -> Response:
        return cls(status=status, body=json.dumps(doc, separators=(",", ":")).encode())


@dataclass(frozen=True, kw_only=True)
class Route:
    """An extra route, matched on the exact method and path."""

    method: str
    path: str
    handler: Callable[[Request], Response]


class V2Service:
    """Base of a v2 server; see the module docstring for what to override."""

    server_name = "edgeship"
    server_version = "0.1.0"
    # give an answer whose request carried no "id" one (a client can then refer to it,
    # e.g. to post a label for it); off: the answer has an id only when the request had one
    assign_ids = False

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return True

    def metadata(self, name: str) -> ModelMetadata | None:
        raise NotImplementedError

    def model_ready(self, name: str) -> bool:
        return self.ready()

    def infer(
        self, name: str, inputs: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        raise NotImplementedError

    def routes(self) -> list[Route]:
        return []


# ---------------------------------------------------------------------------- dispatch


def _status_of(exc: BaseException) -> int:
    if isinstance(exc, StatusError):
        return exc.status
    if isinstance(exc, InputError | InferenceError):
        return 400
    if isinstance(exc, TransportError | ModelLoadError):
        return 503
    return 500


@functools.lru_cache(maxsize=256)  # clients ask the same few URLs again and again
def _split_target(target: str) -> tuple[str, str, tuple[str, ...]]:
    """A request target's path, query and unquoted path segments."""
    url = urlsplit(target)
    return url.path, url.query, tuple(unquote(p) for p in url.path.strip("/").split("/"))


def _model_path(parts: tuple[str, ...]) -> tuple[str, str | None, str] | None:
    """Split ``models/<name>[/versions/<v>][/ready|/infer]`` into (name, version, action)."""
    if len(parts) < 2 or parts[0] != "models":
        return None
    name, rest = parts[1], parts[2:]
    version = None
    if len(rest) >= 2 and rest[0] == "versions":
        version, rest = rest[1], rest[2:]
    if len(rest) > 1 or (rest and rest[0] not in ("ready", "infer")):
        return None
    return name, version, rest[0] if rest else "metadata"


class _Dispatcher:
    """Pure routing: (method, path, headers, body) -> Response, no sockets."""

    def __init__(self, service: V2Service, *, max_request_bytes: int, api_key: str | None):
        self.service = service
        self.max_request_bytes = max_request_bytes
        self.api_key = api_key
        self.extra = {(r.method, r.path): r.handler for r in service.routes()}
        self.decoder = RequestDecoder(max_request_bytes)
        # the last (layout, metadata) whose inputs validate_inputs accepted: a request of
        # that layout against that metadata needs no check again (see _v2layout)
        self._valid: tuple[Layout, ModelMetadata] | None = None

    def authorized(self, path: str, headers: dict[str, str]) -> bool:
        if not self.api_key or path.startswith("/v2/health/"):
            return True
        auth = headers.get("authorization", "")
        given = auth[7:] if auth[:7].lower() == "bearer " else headers.get("x-api-key", "")
        import hmac

        return hmac.compare_digest(given.encode(), self.api_key.encode())

    def dispatch(self, method: str, target: str, headers: dict[str, str],
                 body: bytes | bytearray | memoryview) -> Response:
        path, query, parts = _split_target(target)
        if not self.authorized(path, headers):
            return Response(
                status=401,
                body=b'{"error":"missing or wrong API key"}',
                headers={"WWW-Authenticate": "Bearer"},
            )
        extra = self.extra.get((method, path))
        try:
            if extra is not None:
                return extra(
                    Request(method=method, path=path, query=query, headers=headers,
                            body=bytes(body))
                )
            return self._v2(method, path, parts, headers, body)
        except Exception as exc:
            status = _status_of(exc)
            if status == 500:
                _log().error("internal error on %s %s: %r", method, path, exc)
            return Response.json({"error": str(exc) or type(exc).__name__}, status)

    def _v2(self, method: str, path: str, parts: tuple[str, ...], headers: dict[str, str],
            body: bytes | bytearray | memoryview) -> Response:
        if not parts or parts[0] != "v2":
            raise StatusError(404, f"no route {path}")
        parts = parts[1:]
        if method == "GET" and not parts:
            return Response.json(
                {
                    "name": self.service.server_name,
                    "version": self.service.server_version,
                    "extensions": ["binary_tensor_data"],
                }
            )
        if method == "GET" and parts[:1] == ("health",) and len(parts) == 2:
            check = {"live": self.service.live, "ready": self.service.ready}.get(parts[1])
            if check is None:
                raise StatusError(404, f"no route {path}")
            return Response(status=200 if check() else 503)
        target = _model_path(parts)
        if target is None:
            raise StatusError(404, f"no route {path}")
        name, version, action = target
        if method not in ("GET", "POST") or (method == "POST") != (action == "infer"):
            raise StatusError(405, f"{method} is not allowed on {path}")
        meta = self._metadata(name, version)
        if action == "metadata":
            return Response.json(meta.to_dict())
        if action == "ready":
            return Response(status=200 if self.service.model_ready(name) else 503)
        return self._infer(meta, headers, body)

    def _metadata(self, name: str, version: str | None) -> ModelMetadata:
        meta = self.service.metadata(name)
        if meta is None:
            raise StatusError(404, f"unknown model {name!r}")
        if version is not None and version not in meta.versions:
            raise StatusError(404, f"model {name!r} has no version {version!r}")
        return meta

    def _infer(self, meta: ModelMetadata, headers: dict[str, str],
               body: bytes | bytearray | memoryview) -> Response:
        if headers.get("content-encoding", "identity") != "identity":
            raise StatusError(415, "compressed request bodies are not supported")
        request, layout = self.decoder.decode(
            body, parse_header_length(headers.get(HEADER_LENGTH.lower())),
            default_id=os.urandom(16).hex() if self.service.assign_ids else None)
        inputs = self._validated(request, layout, meta)
        token = _REQUEST_ID.set(request.id)
        try:
            outputs, params = self.service.infer(meta.name, inputs)
        finally:
            _REQUEST_ID.reset(token)
        version = str(params.get("version") or (meta.versions[-1] if meta.versions else ""))
        payload, extra_headers = encode_response(
            outputs, request, model_name=meta.name, model_version=version, parameters=params
        )
        return Response(
            body=payload,
            content_type=extra_headers.pop("Content-Type"),
            headers=extra_headers,
        )

    def _validated(self, request: InferRequest, layout: Layout | None,
                   meta: ModelMetadata) -> dict[str, np.ndarray]:
        """The request's inputs, checked against the model's metadata (once per layout)."""
        if not meta.inputs:
            return request.inputs
        valid = self._valid
        if layout is not None and valid is not None and valid[0] is layout and valid[1] is meta:
            return dict(request.inputs)
        inputs = validate_inputs(request.inputs, meta.inputs)
        if layout is not None:
            self._valid = (layout, meta)
        return inputs

