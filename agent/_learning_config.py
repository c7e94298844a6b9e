"""The ``[learning]`` table of agent.toml, and the example store's key (issue 18)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeship._errors import ConfigError

__all__ = ["LearningConfig", "store_key"]

_ACTIVATIONS = ("auto", "softmax", "sigmoid", "probs")
_KEY_INFO = b"edgeship learning store v1"


@dataclass(frozen=True, kw_only=True)
class LearningConfig:
    """The ``[learning]`` table (its field names are its keys)."""

    store: str = ""  # the example store's directory; "" -> <data_dir>/examples
    max_examples: int = 1000
    max_bytes: int = 16 * 1024 * 1024
    low_confidence: float = 0.0  # keep answers whose top probability is below this; 0: off
    cloud: bool = True  # keep answers the cloud fallback gave, its argmax as the label
    drift: bool = False  # keep inputs while the drift alert is raised ...
    drift_sample: float = 0.1  # ... this fraction of them
    feedback: bool = True  # POST /v2/models/<name>/feedback
    output: str = ""  # which output is a class score (default: the model's first)
    activation: str = "auto"  # how that output reads as a probability (as [fallback])
    queue: int = 64  # examples waiting for the writer; more are dropped (counted)
    recent: int = 256  # answered requests kept in memory by id, for feedback by id ...
    recent_bytes: int = 16 * 1024 * 1024  # ... and the input bytes they may hold together
    superlink: str = ""  # host:port of the fleet's Flower SuperLink; "" -> no SuperNode
    superlink_ca: str = ""  # CA bundle of the SuperLink's TLS; "" -> --insecure
    nice: int = 10  # the SuperNode's CPU priority
    cpu_budget: float = 0.25  # fraction of one core a training step may use, on average

    def __post_init__(self) -> None:
        checks = (("max_examples", self.max_examples > 0, "> 0"),
                  ("max_bytes", self.max_bytes > 0, "> 0"),
                  ("low_confidence", 0.0 <= self.low_confidence <= 1.0, "in [0, 1]"),
                  ("drift_sample", 0.0 <= self.drift_sample <= 1.0, "in [0, 1]"),
                  ("queue", 0 < self.queue <= 100_000, "in [1, 100000]"),
                  ("recent", 0 <= self.recent <= 100_000, "in [0, 100000]"),
                  ("recent_bytes", self.recent_bytes >= 0, ">= 0"),
                  ("nice", 0 <= self.nice <= 19, "in [0, 19]"),
                  ("cpu_budget", 0.0 < self.cpu_budget <= 64.0, "in (0, 64]"))
        for name, ok, rule in checks:
            if not ok:
                raise ConfigError(f"learning.{name}: must be {rule}, got {getattr(self, name)}")
        if self.activation not in _ACTIVATIONS:
            raise ConfigError(f"learning.activation: {self.activation!r} is not one of "
                              f"{', '.join(_ACTIVATIONS)}")
        host, sep, port = self.superlink.rpartition(":")
        if self.superlink and (not sep or not host or not port.isdigit()):
            raise ConfigError(f"learning.superlink: {self.superlink!r} is not HOST:PORT")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LearningConfig:
        from edgeship.agent._config import _get

        w, known = "learning", cls.__dataclass_fields__
        kinds: dict[str, Any] = {"str": str, "int": int, "bool": bool, "float": (int, float)}
        values = {k: _get(d, k, w, kinds[str(f.type)]) for k, f in known.items() if k in d}
        typed: dict[str, Any] = {k: float(v) if str(known[k].type) == "float" else v
                                 for k, v in values.items()}
        return cls(**typed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def store_dir(self, data_dir: Path) -> Path:
        """Where the examples live: ``store`` (relative: under data_dir), or data_dir/examples."""
        return data_dir / (self.store or "examples")


def store_key(device_key: Any | None) -> bytes | None:
    """The store's 32-byte AES key, derived (HKDF-SHA256) from the device's X25519 key;
    None without one. Derived at each start, never written anywhere."""
    if device_key is None:
        return None
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=_KEY_INFO).derive(device_key.private_bytes_raw())
