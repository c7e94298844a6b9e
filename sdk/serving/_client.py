"""``AgentClient``: ask a running agent (its local Open Inference Protocol v2 API).

The same call as :meth:`Model.predict`, served by the agent, plus :meth:`infer` which also
says who answered (``source``: local / cloud / local-degraded) and with which release
``version``. Built on the sdk's v2 client (keep-alive connections, binary tensors, a hard
per-call deadline). An input the agent refuses (wrong shape, dtype, size) raises
:class:`~edgeship.InferenceError`; an agent that is away or cannot answer raises
:class:`~edgeship.TransportError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgeship._errors import InferenceError, TransportError

if TYPE_CHECKING:
    import numpy as np
    from edgeship.sdk.serving._v2 import ModelMetadata

__all__ = ["AgentAnswer", "AgentClient"]


@dataclass(frozen=True)
class AgentAnswer:
    outputs: dict[str, Any]
    source: str
    version: str


class AgentClient:
    """A client of one agent model (default ``http://127.0.0.1:8500``, model ``model``)."""

    def __init__(self, url: str = "http://127.0.0.1:8500", *, model: str = "model",
                 timeout: float = 10.0, binary: bool = True) -> None:
        from edgeship.sdk.serving._cloud import CloudClient

        self.url, self.model = url, model
        self._http = CloudClient(url, model, deadline_ms=timeout * 1000, binary=binary)
        self._input: str | None = None

    def metadata(self) -> ModelMetadata:
        """The model's v2 metadata; ``versions`` holds the release version serving."""
        return self._http.metadata()

    def ready(self) -> bool:
        """Whether the agent says it is ready to answer (``/v2/health/ready``)."""
        return self._http.ready()

    def infer(self, inputs: Mapping[str, Any]) -> AgentAnswer:
        """Outputs by name, and who answered with which version."""
        import numpy as np
        from edgeship.sdk.serving._cloud import CloudRejectedError

        arrays = {k: np.asarray(v) for k, v in inputs.items()}
        try:
            response = self._http.request(arrays)
        except CloudRejectedError as exc:
            raise InferenceError(str(exc).replace("cloud rejected", "agent rejected")) from exc
        except TransportError as exc:
            raise TransportError(f"agent at {self.url}: {exc}".replace("cloud ", "")) from exc
        params = response.parameters
        return AgentAnswer(outputs=response.outputs, source=str(params.get("source", "")),
                           version=str(params.get("version", response.model_version)))

    def predict(self, x: Any) -> np.ndarray:
        """Like ``Model.predict``: one array (or a dict by input name) in, the first output out."""
        if not isinstance(x, dict):
            if self._input is None:
                meta = self.metadata()
                if len(meta.inputs) != 1:
                    raise InferenceError(f"model has {len(meta.inputs)} inputs; pass a dict")
                self._input = meta.inputs[0].name
            x = {self._input: x}
        return next(iter(self.infer(x).outputs.values()))

    def close(self) -> None:
        """Close its pooled HTTP connections (a later call opens new ones)."""
        self._http.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
