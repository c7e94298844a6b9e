"""What the agent reads once at start besides its config: the root key, the broker
password, the cloud fallback (split from ``_daemon`` to keep it short)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeship.agent._config import AgentConfig
from edgeship.sdk._fileio import read_head

__all__ = ["fallback_of", "initial_offer", "read_root", "read_secret"]


def read_root(path: Path) -> bytes:
    from edgeship._errors import ConfigError

    try:
        data = read_head(path, 16 * 1024)
    except OSError as exc:
        raise ConfigError(f"root_key: cannot read {path}: {exc.strerror}") from exc
    if not data or len(data) > 16 * 1024:
        raise ConfigError(f"root_key: {path} is not a public key file")
    from edgeship.sdk.release._keys import public_key_from_bytes

    from edgeship._errors import SignatureError

    try:  # a device that cannot read its one trusted key would refuse every update
        public_key_from_bytes(data)
    except SignatureError as exc:
        raise ConfigError(f"root_key: {path}: {exc}") from exc
    return data


def read_secret(path: str) -> str:
    if not path:
        return ""
    from edgeship._errors import ConfigError

    try:
        data = read_head(path, 4096)
    except OSError as exc:
        raise ConfigError(f"broker.password_file: cannot read {path}: {exc.strerror}") from exc
    if len(data) > 4096:
        raise ConfigError(f"broker.password_file: {path} is larger than 4096 bytes")
    try:
        return data.decode().strip()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"broker.password_file: {path} is not UTF-8 text") from exc


def fallback_of(config: AgentConfig) -> Any | None:
    if config.fallback is None:
        return None
    from edgeship.sdk.serving._fallback_config import build_fallback

    return build_fallback(config.fallback.values(), default_model=config.model.name)


def initial_offer(config: AgentConfig) -> tuple[bytes, ...]:
    """The signed offer of ``[model] initial`` (none when unset or unreadable): what a slot
    installed before slots kept their offer can be verified against."""
    if not config.model.initial:
        return ()
    from edgeship.sdk.release._release import Release

    from edgeship._errors import EdgeshipError

    try:
        return (Release.load(config.model.initial).offer().to_bytes(),)
    except EdgeshipError:
        return ()

