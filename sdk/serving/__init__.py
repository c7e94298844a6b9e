"""edgeship.sdk.serving: answering inference requests over HTTP.

The Open Inference Protocol (v2) codec and the small server toolkit the agent's local API
and ``edgeship cloud serve`` share, ``AgentClient`` for applications that ask a running
agent, ``CloudClient`` and the fallback policy with its circuit breaker. Imported by
device applications, the agent and the cloud server.
"""

from __future__ import annotations

from edgeship._lazy import attach

_EXPORTS: dict[str, str] = {
    "AgentAnswer": "edgeship.sdk.serving._client",
    "AgentClient": "edgeship.sdk.serving._client",
    "Answer": "edgeship.sdk.serving._fallback",
    "CircuitBreaker": "edgeship.sdk.serving._fallback",
    "CloudClient": "edgeship.sdk.serving._cloud",
    "FallbackModel": "edgeship.sdk.serving._fallback",
    "FallbackPolicy": "edgeship.sdk.serving._fallback",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = attach(__name__, _EXPORTS)
