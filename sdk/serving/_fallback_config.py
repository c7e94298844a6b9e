"""Build a :class:`~edgeship.sdk.FallbackModel` from the ``[fallback]`` keys of agent.toml.

The agent parses and validates its TOML; this turns the values into a cloud client (URL,
model, deadline, API key or mutual TLS), a policy and a circuit breaker, so an application
without the agent can use the same keys. Keys (all but ``url`` optional)::

    url = "https://cloud.example:8000"   model = "cnn"        deadline_ms = 300
    policy = ["no_model", "on_error", "low_confidence"]      confidence = 0.6
    api_key_file = "/etc/edgeship/cloud.key"   # sent as "Authorization: Bearer <key>"
    ca = "..."  cert = "..."  key = "..."      # https trust and client certificate (mTLS)
    headers = { "X-Tenant" = "acme" }          # extra HTTP headers
    failures = 3  window_s = 30  cooldown_s = 5            # circuit breaker
    activation = "auto"  output = "probs"                  # how confidence is read
    max_answer_bytes = 4194304                             # largest answer taken (no model)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgeship.sdk._fileio import read_head
from edgeship.sdk.serving._fallback import POLICIES, CircuitBreaker, FallbackModel, FallbackPolicy

from edgeship._errors import ConfigError

__all__ = ["build_fallback", "read_api_key"]

MAX_API_KEY_BYTES = 4096


def read_api_key(path: str | Path, *, where: str = "fallback.api_key_file") -> str:
    """The one key in ``path`` (whitespace stripped); :class:`ConfigError` otherwise."""
    try:
        data = read_head(path, MAX_API_KEY_BYTES)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from exc
    key = data.decode(errors="replace").strip()
    if not key or len(data) > MAX_API_KEY_BYTES or any(c.isspace() for c in key):
        raise ConfigError(f"{where}: {path} must hold one key of at most {MAX_API_KEY_BYTES} bytes")
    return key


def _number(values: Mapping[str, Any], key: str, default: float) -> float:
    value = values.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"fallback.{key}: expected a number, got {value!r}")
    return float(value)


def build_fallback(
    values: Mapping[str, Any], *, default_model: str = "", local: Any = None, version: str = ""
) -> FallbackModel:
    """A ready :class:`FallbackModel` for the ``[fallback]`` table ``values``."""
    from edgeship.sdk.serving._cloud import CloudClient, tls_context

    url = values.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError(f"fallback.url: {url!r} is not an http(s) URL")
    model = str(values.get("model") or default_model)
    if not model:
        raise ConfigError("fallback.model: name the cloud model (/v2/models/<name>)")
    headers = values.get("headers") or {}
    if not isinstance(headers, Mapping):
        raise ConfigError("fallback.headers: expected a table of strings")
    headers = {str(k): str(v) for k, v in headers.items()}
    if values.get("api_key_file"):
        headers["Authorization"] = f"Bearer {read_api_key(values['api_key_file'])}"
    ca, cert, key = (values.get(k) or None for k in ("ca", "cert", "key"))
    if key and not cert:
        raise ConfigError("fallback.key: given without fallback.cert")
    context = tls_context(ca=ca, cert=cert, key=key) if (ca or cert) else None
    deadline_ms = _number(values, "deadline_ms", 300)
    # without a local model nothing says how big an answer may be: this does (a JSON answer
    # takes ~16x its size in memory while decoded, and time the deadline does not have)
    max_answer = int(_number(values, "max_answer_bytes", 4 * 1024 * 1024))
    cloud = CloudClient(url, model, deadline_ms=deadline_ms, headers=headers, ssl_context=context,
                        max_response_bytes=max_answer)
    names = values.get("policy", list(POLICIES[:2]))
    policy = FallbackPolicy.from_names(
        list(names),
        confidence=_number(values, "confidence", 0.6),
        output=values.get("output") or None,
        activation=str(values.get("activation", "auto")),
    )
    breaker = CircuitBreaker(
        failures=int(_number(values, "failures", 3)),
        window_s=_number(values, "window_s", 30),
        cooldown_s=_number(values, "cooldown_s", 5),
    )
    return FallbackModel(local, cloud, policy, breaker, version=version, deadline_ms=deadline_ms)
