"""This device's X25519 private key for encrypted releases, from the ``[encryption]`` source.

The key only ever lives in this process's memory: read once at start from a 0600 file,
an environment variable, a systemd credential (``$CREDENTIALS_DIRECTORY``; with
``LoadCredentialEncrypted=`` systemd unseals it with the TPM) or the stdout of a command
(a secure element's CLI). Every failure is one :class:`~edgeship.ConfigError` naming the
source, never the key.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Any

from edgeship.agent._config import EncryptionConfig

from edgeship._errors import ConfigError, EdgeshipError

__all__ = ["MAX_KEY_BYTES", "load_device_key", "no_core_dumps"]

MAX_KEY_BYTES = 16 * 1024  # a PEM private key is ~120 bytes


def load_device_key(config: EncryptionConfig) -> Any | None:
    """The X25519 private key ``config`` names, or None when no source is configured."""
    if not config.enabled:
        return None
    if config.key_file:
        where, data = f"encryption.key_file {config.key_file}", _from_file(config.key_file)
    elif config.key_env:
        where, data = f"encryption.key_env ${config.key_env}", _from_env(config.key_env)
    elif config.key_credential:
        where = f"encryption.key_credential {config.key_credential}"
        data = _from_credential(config.key_credential)
    else:
        where = f"encryption.key_command {config.key_command[0]}"
        data = _from_command(config.key_command, config.command_timeout_s)
    from edgeship.sdk.release._crypt import load_private_key

    try:
        # PEM may come with blank lines around it; 32 raw bytes are the key itself, and
        # one in twenty starts or ends with a byte strip() would take
        return load_private_key(data if len(data) == 32 else data.strip())
    except (EdgeshipError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _read_key(handle: Any, path: Path, what: str) -> bytes:
    """At most MAX_KEY_BYTES from an open key file (ConfigError beyond: not a key)."""
    try:
        data = handle.read(MAX_KEY_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_KEY_BYTES:
        raise ConfigError(f"{what}: {path} is larger than {MAX_KEY_BYTES} bytes, not a key")
    return bytes(data)


def _from_file(name: str) -> bytes:
    """The key file's bytes. Checked on the open file itself (fstat), not by name before
    opening it, so a file swapped in between is not read unchecked; opened non-blocking,
    so a FIFO or device named by mistake fails at once instead of hanging the start."""
    path, what = Path(name), "encryption.key_file"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        problem = key_file_problem(os.fstat(fd), os.geteuid())
        if problem:
            raise ConfigError(f"{what}: {path} {problem}")
        return _read_key(handle, path, what)


def key_file_problem(st: os.stat_result, euid: int) -> str | None:
    """Why a private key file with this stat must not be used (None: it may)."""
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:  # anyone but the owner could copy the key that opens every model
        return (f"has mode {mode:04o}; a private key must be readable by its owner only "
                f"(chmod 600)")
    if st.st_uid not in (euid, 0):  # its owner (another account) can read or replace it
        return (f"belongs to uid {st.st_uid}, not to this agent's user (uid {euid}) or root"
                " (chown it)")
    return None


def _from_env(variable: str) -> bytes:
    """The variable's value, taken *out* of this process's environment: every child (the
    health check, the shadow worker, a key command) inherits the environment, and needs
    no key (the health check gets one data key over its pipe), raw or PEM."""
    value = os.environ.pop(variable, "")
    if not value.strip():
        raise ConfigError(f"encryption.key_env: ${variable} is not set or empty")
    if len(value) > MAX_KEY_BYTES:
        raise ConfigError(f"encryption.key_env: ${variable} is larger than {MAX_KEY_BYTES}")
    return value.encode()


def _from_credential(name: str) -> bytes:
    folder = os.environ.get("CREDENTIALS_DIRECTORY", "")
    if not folder:
        raise ConfigError("encryption.key_credential: $CREDENTIALS_DIRECTORY is not set "
                          "(run the agent from a systemd unit with LoadCredential= or "
                          f"LoadCredentialEncrypted={name}:...)")
    path, what = Path(folder) / name, "encryption.key_credential"
    try:
        with path.open("rb") as handle:
            return _read_key(handle, path, what)
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc.strerror}") from None


def _from_command(argv: tuple[str, ...], timeout: float) -> bytes:
    """The command's stdout. It runs in its own process group, so a timeout stops the
    helpers it started too (a wrapper script's hung secure-element tool, say), not only
    the command itself."""
    import signal
    import subprocess  # only with a key command: not on every agent's start

    what = "encryption.key_command"
    try:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        raise ConfigError(f"{what}: cannot run {argv[0]}: {exc.strerror}") from None
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise ConfigError(f"{what}: {argv[0]} did not finish in {timeout:g}s") from None
    if proc.returncode != 0:
        lines = stderr.decode(errors="replace").strip().splitlines()
        detail = f": {lines[-1][:200]}" if lines else ""
        raise ConfigError(f"{what}: {argv[0]} exited with {proc.returncode}{detail}")
    if len(stdout) > MAX_KEY_BYTES:
        raise ConfigError(f"{what}: {argv[0]} printed more than {MAX_KEY_BYTES} bytes")
    return stdout


_PR_SET_DUMPABLE = 4  # <linux/prctl.h>


def no_core_dumps() -> list[str]:
    """Keep this process's memory (the device key, decrypted models) out of core files.

    RLIMIT_CORE 0, soft and hard, is inherited by the health-check child and the shadow
    worker, which hold plaintext too (systemd-coredump and apport honour it as well);
    ``PR_SET_DUMPABLE`` 0 also stops other processes of the same user from reading this
    one's memory through ptrace or /proc (it is reset at exec, so only for this process).
    Best effort: returns what was done. Swap is not covered (encrypt it, or turn it off).
    """
    import ctypes
    import resource

    done = []
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        done.append("rlimit_core")
    except (OSError, ValueError):
        pass
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) == 0:
            done.append("not_dumpable")
    except (OSError, AttributeError):  # not Linux
        pass
    return done
