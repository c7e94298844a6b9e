"""``edgeship agent check --config FILE``: would this config run? (every problem at once)

``agent run`` stops at the first bad value; on a device being set up one wants the whole
list. Errors: what stops ``agent run`` (a bad value, an unreadable root key, broker
password, TLS file, fallback API key or device key, a data_dir that cannot be written, an
initial release that does not load), and unknown ``[sections]`` (a typo'd table such as
``[brokr]`` silently runs on its defaults). Warnings: unknown keys (a newer config may
have keys an older agent does not know). Nothing is written; key commands
(``encryption.key_command``) are not run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeship.agent._config import AgentConfig, load_config

from edgeship._errors import EdgeshipError

__all__ = ["check_config"]


def check_config(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) of the agent config at ``path``."""
    try:
        config = load_config(path)
    except EdgeshipError as exc:
        return [str(exc)], []
    errors = [config.section_hint(s) for s in config.unknown_sections]
    warnings = [f"unknown key {k} (ignored)" for k in config.ignored_keys
                if k not in config.unknown_sections and k.split(".")[0]
                not in config.unknown_sections]
    for check in _CHECKS:
        problem = _problem(check, config)
        if problem:
            errors.append(problem)
    return errors, warnings


def _problem(check: Callable[[AgentConfig], Any], config: AgentConfig) -> str | None:
    try:
        result = check(config)
    except EdgeshipError as exc:
        return str(exc)
    return result if isinstance(result, str) else None


def _root_key(config: AgentConfig) -> None:
    from edgeship.agent._startup import read_root

    read_root(config.root_key)


def _broker(config: AgentConfig) -> str | None:
    from edgeship.agent._startup import read_secret

    b = config.broker
    read_secret(b.password_file)
    for name in ("ca", "cert", "key"):
        file = getattr(b, name)
        if file and not os.access(file, os.R_OK):
            return f"broker.{name}: cannot read {file}"
    return None


def _data_dir(config: AgentConfig) -> str | None:
    folder = Path(config.data_dir)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the agent creates the missing part
    if not folder.is_dir():
        return f"data_dir: {folder} is not a directory"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"data_dir: cannot write in {folder}"
    return None


def _initial(config: AgentConfig) -> None:
    if config.model.initial:
        from edgeship.sdk.release._release import Release

        Release.load(config.model.initial)


def _fallback(config: AgentConfig) -> None:
    from edgeship.agent._startup import fallback_of

    fallback_of(config)


def _device_key(config: AgentConfig) -> None:
    if config.encryption.enabled and not getattr(config.encryption, "key_command", None):
        from edgeship.agent._device_key import load_device_key

        load_device_key(config.encryption)


_CHECKS = (_root_key, _broker, _data_dir, _initial, _fallback, _device_key)
