"""The agent's configuration: one TOML file read into frozen dataclasses (pure).

Every value read from the file is checked here, once; a bad value raises one
:class:`~edgeship.ConfigError` that names the key (``broker.url: ...``). Keys this
version does not know are ignored, so a newer file still loads. Limits (chunk size,
queue length, timeouts) have defaults sized for a small device.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edgeship.sdk._fileio import read_head

from edgeship._errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - python 3.10
    import tomli as tomllib

__all__ = [
    "AgentConfig",
    "ApiConfig",
    "BrokerConfig",
    "EncryptionConfig",
    "FallbackConfig",
    "ModelConfig",
    "OtaConfig",
    "TelemetryConfig",
    "load_config",
]

MAX_CONFIG_BYTES = 256 * 1024
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # one MQTT topic level, no wildcards
_POLICIES = ("no_model", "on_error", "low_confidence")


def _get(d: Mapping[str, Any], key: str, where: str, kind: type | tuple[type, ...],
         default: Any = ...) -> Any:
    name = f"{where}.{key}" if where else key
    if key not in d:
        if default is ...:
            raise ConfigError(f"{name}: missing (required)")
        return default
    value = d[key]
    # bool is an int in python; a boolean where a number is wanted is a mistake
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ConfigError(f"{name}: expected {_kind_name(kind)}, got a boolean")
    if not isinstance(value, kind):
        raise ConfigError(f"{name}: expected {_kind_name(kind)}, got {type(value).__name__}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({"str": "a string", "int": "an integer", "float": "a number",
                        "bool": "true/false", "list": "a list", "dict": "a table"}
                       .get(k.__name__, k.__name__) for k in kinds)


def _section(d: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = d.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a table [{key}]")
    return value


def _positive(value: float, name: str, *, low: float = 0.0, high: float | None = None) -> None:
    if value <= low or (high is not None and value > high):
        bound = f" and <= {high}" if high is not None else ""
        raise ConfigError(f"{name}: must be > {low}{bound}, got {value}")


@dataclass(frozen=True, kw_only=True)
class BrokerConfig:
    """Where the MQTT broker is and how to log in (TLS with mqtts://)."""

    url: str = "mqtt://127.0.0.1:1883"
    username: str = ""
    password_file: str = ""
    ca: str = ""
    cert: str = ""
    key: str = ""
    keepalive_s: int = 30

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ConfigError(f"broker.url: {self.url!r} is not mqtt://HOST[:PORT] or mqtts://...")
        try:
            parts.port  # noqa: B018 (urllib checks the port when it is read)
        except ValueError as exc:
            raise ConfigError(f"broker.url: {self.url!r}: {exc}") from exc
        if bool(self.cert) != bool(self.key):
            raise ConfigError("broker.cert: cert and key must be given together")
        _positive(self.keepalive_s, "broker.keepalive_s", high=3600)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BrokerConfig:
        w = "broker"
        return cls(url=_get(d, "url", w, str, cls.url), username=_get(d, "username", w, str, ""),
                   password_file=_get(d, "password_file", w, str, ""), ca=_get(d, "ca", w, str, ""),
                   cert=_get(d, "cert", w, str, ""), key=_get(d, "key", w, str, ""),
                   keepalive_s=_get(d, "keepalive_s", w, int, 30))


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The served model's name and how to run it."""

    name: str = "model"
    runtime: str = "auto"
    # 1: measured (hw-bench/bench_http_stack.py, mobilenet, binary; two runs) 679-1020 vs
    # 463-540 inferences/s on 1 core and 842-1136 vs 400-446 on 2 busy cores against 2
    # threads, p50 equal; the API answered 482-558 vs 303-344 req/s on 2 cores. Raise it
    # for a large model on an otherwise idle device (4 cores could not be measured here).
    threads: int = 1
    initial: str = ""

    def __post_init__(self) -> None:
        if not _SEGMENT.match(self.name):
            raise ConfigError(f"model.name: {self.name!r} must be letters, digits, '.', '_', '-'")
        if self.runtime not in ("auto", "onnxruntime", "litert", "openvino"):
            raise ConfigError(
                f"model.runtime: {self.runtime!r} is not auto, onnxruntime, litert or openvino")
        _positive(self.threads, "model.threads", high=256)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        w = "model"
        return cls(name=_get(d, "name", w, str, "model"), runtime=_get(d, "runtime", w, str, "auto"),
                   threads=_get(d, "threads", w, int, 1), initial=_get(d, "initial", w, str, ""))


@dataclass(frozen=True, kw_only=True)
class ApiConfig:
    """The local Open Inference Protocol v2 endpoint (loopback by default)."""

    host: str = "127.0.0.1"
    port: int = 8500
    max_request_bytes: int = 16 * 1024 * 1024
    # memory the requests in flight may cost together (a JSON body costs ~16x its size
    # while decoded): bounds the API's RSS, not only each request's size
    max_inflight_bytes: int = 64 * 1024 * 1024
    # connections (one thread each): a waiting one is closed at its deadline or to make
    # room for a newcomer, so idle and slowloris peers cannot lock clients out
    max_connections: int = 128  # a thread each, mostly idle: ~100 KB of RSS apiece
    max_per_peer: int = 64  # 64 keep-alive clients on one host (a gateway) are not evicted
    header_timeout_s: float = 10.0  # idle keep-alive or a request line + headers
    body_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"api.listen: port {self.port} is out of range")
        _positive(self.max_request_bytes, "api.max_request_bytes")
        _positive(self.max_inflight_bytes, "api.max_inflight_bytes")
        _positive(self.max_connections, "api.max_connections", high=4096)
        _positive(self.max_per_peer, "api.max_per_peer", high=4096)
        _positive(self.header_timeout_s, "api.header_timeout_s", high=3600)
        _positive(self.body_timeout_s, "api.body_timeout_s", high=3600)

    @property
    def listen(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ApiConfig:
        listen = _get(d, "listen", "api", str, "127.0.0.1:8500")
        host, sep, port = listen.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(f"api.listen: {listen!r} is not HOST:PORT")
        return cls(host=host, port=int(port),
                   max_request_bytes=_get(d, "max_request_bytes", "api", int, 16 * 1024 * 1024),
                   max_inflight_bytes=_get(d, "max_inflight_bytes", "api", int,
                                           64 * 1024 * 1024),
                   max_connections=_get(d, "max_connections", "api", int, 128),
                   max_per_peer=_get(d, "max_per_peer", "api", int, 64),
                   header_timeout_s=float(_get(d, "header_timeout_s", "api", (int, float), 10.0)),
                   body_timeout_s=float(_get(d, "body_timeout_s", "api", (int, float), 30.0)))


@dataclass(frozen=True, kw_only=True)
class FallbackConfig:
    """The cloud model asked when the local one cannot answer (see the fallback issue)."""

    url: str
    model: str = ""
    deadline_ms: int = 300
    policy: tuple[str, ...] = _POLICIES
    confidence: float = 0.6
    api_key_file: str = ""
    ca: str = ""
    cert: str = ""
    key: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)  # keys for the fallback layer

    def __post_init__(self) -> None:
        if urlsplit(self.url).scheme not in ("http", "https"):
            raise ConfigError(f"fallback.url: {self.url!r} is not an http(s) URL")
        _positive(self.deadline_ms, "fallback.deadline_ms", high=600_000)
        bad = [p for p in self.policy if p not in _POLICIES]
        if bad:
            raise ConfigError(f"fallback.policy: unknown {bad}; choose from {list(_POLICIES)}")
        if not 0.0 <= self.confidence <= 1.0:
            raise ConfigError(f"fallback.confidence: must be in [0, 1], got {self.confidence}")

    def values(self) -> dict[str, Any]:
        """The ``[fallback]`` table as the sdk's ``build_fallback`` takes it."""
        out = {**self.extra, "url": self.url, "model": self.model,
               "deadline_ms": self.deadline_ms, "policy": list(self.policy),
               "confidence": self.confidence}
        out.update({k: getattr(self, k) for k in ("api_key_file", "ca", "cert", "key")
                    if getattr(self, k)})
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FallbackConfig | None:
        w = "fallback"
        url = _get(d, "url", w, str, "")
        if not url:
            return None
        policy = _get(d, "policy", w, list, list(_POLICIES))
        if not all(isinstance(p, str) for p in policy):
            raise ConfigError("fallback.policy: expected a list of strings")
        known = {"url", "model", "deadline_ms", "policy", "confidence", "api_key_file", "ca",
                 "cert", "key"}
        return cls(url=url, model=_get(d, "model", w, str, ""),
                   deadline_ms=_get(d, "deadline_ms", w, int, 300), policy=tuple(policy),
                   confidence=float(_get(d, "confidence", w, (int, float), 0.6)),
                   api_key_file=_get(d, "api_key_file", w, str, ""), ca=_get(d, "ca", w, str, ""),
                   cert=_get(d, "cert", w, str, ""), key=_get(d, "key", w, str, ""),
                   extra={k: v for k, v in d.items() if k not in known})


@dataclass(frozen=True, kw_only=True)
class OtaConfig:
    """Download and install limits."""

    chunk_size: int = 64 * 1024
    request_timeout_s: float = 10.0
    health_timeout_s: float = 60.0
    max_artifact_bytes: int = 256 * 1024 * 1024
    max_switch_attempts: int = 3
    install_window: str = ""  # "02:00-04:00" local time: install only then (download any time)
    max_rate_kbps: float = 0.0  # cap on the download rate (kilobits per second); 0 = none
    # a folder watched for offline bundles (*.esb; a USB stick's mount point): each is
    # installed like `agent install`, then moved into installed/ or rejected/ inside it
    bundle_dir: Path | None = None

    def __post_init__(self) -> None:
        _positive(self.chunk_size, "ota.chunk_size", low=255, high=1024 * 1024)
        if self.max_rate_kbps:
            _positive(self.max_rate_kbps, "ota.max_rate_kbps", high=10_000_000)
        if self.install_window:
            from edgeship.sdk.release._window import parse_window

            from edgeship._errors import EdgeshipError

            try:
                parse_window(self.install_window)
            except EdgeshipError as exc:
                raise ConfigError(f"ota.install_window: {exc}") from exc
        _positive(self.request_timeout_s, "ota.request_timeout_s", high=3600)
        _positive(self.health_timeout_s, "ota.health_timeout_s", high=3600)
        _positive(self.max_artifact_bytes, "ota.max_artifact_bytes")
        _positive(self.max_switch_attempts, "ota.max_switch_attempts", high=100)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base: Path | None = None) -> OtaConfig:
        w = "ota"
        folder = _get(d, "bundle_dir", w, str, "")
        bundle_dir = None if not folder else Path(folder) if Path(folder).is_absolute() \
            or base is None else base / folder
        return cls(bundle_dir=bundle_dir,
                   chunk_size=_get(d, "chunk_size", w, int, 64 * 1024),
                   request_timeout_s=float(_get(d, "request_timeout_s", w, (int, float), 10.0)),
                   health_timeout_s=float(_get(d, "health_timeout_s", w, (int, float), 60.0)),
                   max_artifact_bytes=_get(d, "max_artifact_bytes", w, int, 256 * 1024 * 1024),
                   max_switch_attempts=_get(d, "max_switch_attempts", w, int, 3),
                   install_window=_get(d, "install_window", w, str, ""),
                   max_rate_kbps=float(_get(d, "max_rate_kbps", w, (int, float), 0.0)))


@dataclass(frozen=True, kw_only=True)
class TelemetryConfig:
    """Heartbeat period and the bound of the offline queue."""

    interval_s: float = 30.0
    queue_max_messages: int = 10_000
    queue_max_bytes: int = 16 << 20  # payload bytes; heartbeats with drift are ~10 KB

    def __post_init__(self) -> None:
        _positive(self.interval_s, "telemetry.interval_s", high=86_400)
        _positive(self.queue_max_messages, "telemetry.queue_max_messages", high=10_000_000)
        _positive(self.queue_max_bytes, "telemetry.queue_max_bytes", high=1 << 40)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TelemetryConfig:
        w = "telemetry"
        return cls(interval_s=float(_get(d, "interval_s", w, (int, float), 30.0)),
                   queue_max_messages=_get(d, "queue_max_messages", w, int, 10_000),
                   queue_max_bytes=_get(d, "queue_max_bytes", w, int, 16 << 20))


@dataclass(frozen=True, kw_only=True)
class EncryptionConfig:
    """Where this device's X25519 private key comes from (for encrypted releases).

    At most one source: ``key_file`` (a PEM file that must be mode 0600 or stricter),
    ``key_env`` (the name of an environment variable holding the PEM), ``key_credential``
    (a systemd credential name, read from ``$CREDENTIALS_DIRECTORY``: how a TPM-sealed
    ``LoadCredentialEncrypted=`` key arrives) or ``key_command`` (argv of a tool that
    prints the PEM, e.g. a secure element's CLI). The key is read once, at start.
    """

    key_file: str = ""
    key_env: str = ""
    key_credential: str = ""
    key_command: tuple[str, ...] = ()
    command_timeout_s: float = 30.0
    # refuse plaintext releases: a release built without --encrypt-for would otherwise
    # put the model on this device's disk in the clear
    require: bool = False

    def __post_init__(self) -> None:
        given = [k for k in ("key_file", "key_env", "key_credential", "key_command")
                 if getattr(self, k)]
        if len(given) > 1:
            raise ConfigError(f"encryption: give one key source, not {' and '.join(given)}")
        if self.require and not given:
            raise ConfigError("encryption.require: needs a key source (key_file, key_env, "
                              "key_credential or key_command)")
        if self.key_credential and ("/" in self.key_credential
                                    or self.key_credential in (".", "..")):
            raise ConfigError(f"encryption.key_credential: {self.key_credential!r} is a "
                              "credential name, not a path")
        _positive(self.command_timeout_s, "encryption.command_timeout_s", high=600)

    @property
    def enabled(self) -> bool:
        return bool(self.key_file or self.key_env or self.key_credential or self.key_command)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, base: Path | None = None) -> EncryptionConfig:
        w = "encryption"
        command = _get(d, "key_command", w, list, [])
        if not all(isinstance(a, str) and a for a in command):
            raise ConfigError("encryption.key_command: expected a list of strings (argv)")
        key_file = _get(d, "key_file", w, str, "")
        if key_file and base is not None and not Path(key_file).is_absolute():
            key_file = str(base / key_file)
        return cls(key_file=key_file, key_env=_get(d, "key_env", w, str, ""),
                   key_credential=_get(d, "key_credential", w, str, ""),
                   key_command=tuple(command),
                   command_timeout_s=float(_get(d, "command_timeout_s", w, (int, float), 30.0)),
                   require=_get(d, "require", w, bool, False))


def _drift(d: Mapping[str, Any]) -> Any:
    """``[drift]`` -> the drift monitor's ``DriftConfig`` (imported only when used)."""
    from edgeship.agent._drift import DriftConfig

    return _typed(DriftConfig, d, "drift")


def _shadow(d: Mapping[str, Any]) -> Any:
    """``[shadow]`` -> the shadow runtime's ``ShadowConfig`` (imported only when used)."""
    from edgeship.agent._shadow import ShadowConfig

    return _typed(ShadowConfig, d, "shadow")


def _learning(d: Mapping[str, Any]) -> Any:
    """``[learning]`` -> ``LearningConfig`` (imported only when the table is there)."""
    from edgeship.agent._learning import LearningConfig

    return _typed(LearningConfig, d, "learning")


def _typed(kind: Any, d: Mapping[str, Any], where: str) -> Any:
    """Build ``kind`` from a table with its own ``from_dict`` (or its fields); errors name
    the section."""
    try:
        if hasattr(kind, "from_dict"):
            return kind.from_dict(d)
        return kind(**d)
    except ConfigError as exc:
        text = str(exc)
        raise ConfigError(text if text.startswith(f"{where}.") else f"{where}: {text}") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    """Everything ``edgeship agent run`` needs; build it with :func:`load_config`."""

    device_id: str
    fleet: str
    data_dir: Path
    root_key: Path
    hardware: str = "cpu"
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    fallback: FallbackConfig | None = None
    ota: OtaConfig = field(default_factory=OtaConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    encryption: EncryptionConfig = field(default_factory=EncryptionConfig)
    drift: Any = None  # agent._drift.DriftConfig ([drift]); None: its defaults
    shadow: Any = None  # agent._shadow.ShadowConfig ([shadow]); None: its defaults
    learning: Any = None  # agent._learning.LearningConfig ([learning]); None: off
    # keys the file has that the agent does not know: more keys are allowed (newer configs
    # on older agents), but a typo like [fallbak] must not pass silently, so they are logged
    ignored_keys: tuple[str, ...] = ()
    # unknown [sections]: a typo like [brokr] leaves a whole table at its defaults (the
    # default broker), so these are warned about on stderr and are errors for agent check
    unknown_sections: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for key in ("device_id", "fleet"):
            if not _SEGMENT.match(getattr(self, key)):
                raise ConfigError(f"{key}: {getattr(self, key)!r} must be 1-64 letters, digits,"
                                  " '.', '_' or '-' (it is an MQTT topic level)")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, base: Path | None = None) -> AgentConfig:
        """Build from a parsed TOML table; relative paths are taken from ``base``."""
        def path(key: str) -> Path:
            value = Path(_get(d, key, "", str))
            return value if value.is_absolute() or base is None else base / value

        return cls(device_id=_get(d, "device_id", "", str), fleet=_get(d, "fleet", "", str),
                   data_dir=path("data_dir"), root_key=path("root_key"),
                   hardware=_get(d, "hardware", "", str, "cpu"),
                   broker=BrokerConfig.from_dict(_section(d, "broker")),
                   model=ModelConfig.from_dict(_section(d, "model")),
                   api=ApiConfig.from_dict(_section(d, "api")),
                   fallback=FallbackConfig.from_dict(_section(d, "fallback")),
                   ota=OtaConfig.from_dict(_section(d, "ota"), base=base),
                   telemetry=TelemetryConfig.from_dict(_section(d, "telemetry")),
                   encryption=EncryptionConfig.from_dict(_section(d, "encryption"), base=base),
                   drift=_drift(_section(d, "drift")) if "drift" in d else None,
                   shadow=_shadow(_section(d, "shadow")) if "shadow" in d else None,
                   learning=_learning(_section(d, "learning")) if "learning" in d else None,
                   ignored_keys=unknown_keys(d),
                   unknown_sections=tuple(sorted(k for k, v in d.items()
                                                 if isinstance(v, Mapping)
                                                 and k not in _KNOWN_KEYS[""])))

    def section_hint(self, section: str) -> str:
        """``[brokr]`` -> "unknown section [brokr] (did you mean [broker]?)"."""
        import difflib

        known = [k for k in _KNOWN_KEYS if k] + list(_OTHER_CONFIGS)
        close = difflib.get_close_matches(section, known, n=1)
        return f"unknown section [{section}]" + (f" (did you mean [{close[0]}]?)" if close else
                                                 " (ignored)")

    def to_dict(self) -> dict[str, Any]:
        """A plain view for logs (no secrets: only file names of keys and passwords)."""
        from dataclasses import asdict

        out = asdict(self)
        out["data_dir"], out["root_key"] = str(self.data_dir), str(self.root_key)
        if self.ota.bundle_dir is not None:
            out["ota"]["bundle_dir"] = str(self.ota.bundle_dir)
        for name in ("drift", "shadow", "learning"):  # other modules' configs: their own view
            value = getattr(self, name)
            out[name] = value.to_dict() if hasattr(value, "to_dict") else value
        return out


# every key agent.toml may hold (see agent.example.toml); [fallback] passes its own extra
# keys on to the fallback layer, which checks them
_KNOWN_KEYS: dict[str, frozenset[str]] = {
    "": frozenset({"device_id", "fleet", "data_dir", "root_key", "hardware", "broker", "model",
                   "api", "fallback", "ota", "telemetry", "encryption", "drift", "shadow",
                   "learning"}),
    "broker": frozenset({"url", "username", "password_file", "ca", "cert", "key", "keepalive_s"}),
    "model": frozenset({"name", "runtime", "threads", "initial"}),
    "api": frozenset({"listen", "max_request_bytes", "max_inflight_bytes", "max_connections",
                      "max_per_peer", "header_timeout_s", "body_timeout_s"}),
    "ota": frozenset({"chunk_size", "request_timeout_s", "health_timeout_s", "install_window",
                      "max_rate_kbps", "bundle_dir",
                      "max_artifact_bytes", "max_switch_attempts"}),
    "telemetry": frozenset({"interval_s", "queue_max_messages", "queue_max_bytes"}),
    "encryption": frozenset({"key_file", "key_env", "key_credential", "key_command",
                             "command_timeout_s", "require"}),
    # [drift], [shadow] and [learning] are checked whole by their own config classes
}


_OTHER_CONFIGS = {"drift": ("edgeship.agent._drift", "DriftConfig"),
                  "shadow": ("edgeship.agent._shadow", "ShadowConfig"),
                  "learning": ("edgeship.agent._learning", "LearningConfig")}


def unknown_keys(table: Mapping[str, Any]) -> tuple[str, ...]:
    """Dotted names of the keys in ``table`` that no part of the agent reads."""
    import importlib

    found = [k for k in table if k not in _KNOWN_KEYS[""]]
    known_by = dict(_KNOWN_KEYS)
    for section, (module, name) in _OTHER_CONFIGS.items():
        if isinstance(table.get(section), Mapping):  # their fields are their keys
            fields = getattr(importlib.import_module(module), name).__dataclass_fields__
            known_by[section] = frozenset(fields)
    for section, known in known_by.items():
        sub = table.get(section) if section else None
        if isinstance(sub, Mapping):
            found += [f"{section}.{k}" for k in sub if k not in known]
    return tuple(sorted(found))


def load_config(path: str | Path) -> AgentConfig:
    """Read and check ``agent.toml``; ConfigError names the file and the key."""
    file = Path(path)
    try:
        raw = read_head(file, MAX_CONFIG_BYTES)
    except OSError as exc:
        raise ConfigError(f"cannot read config {file}: {exc.strerror}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config {file} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        table = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config {file}: not valid TOML: {exc}") from exc
    try:
        return AgentConfig.from_dict(table, base=file.parent.resolve())
    except ConfigError as exc:
        raise ConfigError(f"config {file}: {exc}") from exc
