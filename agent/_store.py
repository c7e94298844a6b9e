"""The agent's files: A/B slots, the state file and the download file (small, careful I/O).

Layout of ``data_dir``::

    state.json              OtaState, replaced atomically (temp, fsync, rename, fsync dir)
    slots/a/model.<fmt>     slot A; slots/b/... slot B; a slot is written only while inactive
    download.part           the file being downloaded; only verified chunks, fsynced in order
    queue.sqlite            the offline message queue (see _queue.py)

The state file is the single source of truth for which slot serves, so switching slots
is the one ``os.replace`` of ``state.json``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from edgeship.agent._ota import OtaState, decode_state, encode_state
from edgeship.sdk._fileio import fsync_dir, write_atomic

from edgeship._errors import UpdateError

__all__ = ["Store", "fsync_dir", "write_atomic"]

MAX_STATE_BYTES = 8 * 1024 * 1024  # the state holds one offer (with its golden input)


class Store:
    """Files under ``data_dir``; every method leaves them consistent if the process dies."""

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir)
        self.state_path = self.root / "state.json"
        self.download_path = self.root / "download.part"
        for slot in ("a", "b"):
            (self.root / "slots" / slot).mkdir(parents=True, exist_ok=True)
        self._clean_temps()

    def _clean_temps(self) -> None:
        """Left-overs of writes cut short by a crash are garbage (never renamed into place)."""
        for folder in (self.root, self.root / "slots" / "a", self.root / "slots" / "b"):
            for tmp in folder.glob(".*.tmp"):
                with contextlib.suppress(OSError):
                    tmp.unlink()

    # -- state --------------------------------------------------------------------------
    def load_state(self) -> OtaState:
        try:
            raw = self.state_path.read_bytes()
        except FileNotFoundError:
            return OtaState()
        if len(raw) > MAX_STATE_BYTES:
            raise UpdateError(f"{self.state_path} is larger than {MAX_STATE_BYTES} bytes")
        try:
            return decode_state(raw)
        except (ValueError, KeyError, TypeError) as exc:
            raise UpdateError(f"{self.state_path} is unreadable: {exc}") from exc

    def save_state(self, state: OtaState) -> None:
        write_atomic(self.state_path, encode_state(state))

    # -- slots --------------------------------------------------------------------------
    def slot_file(self, slot: str, fmt: str) -> Path:
        if slot not in ("a", "b"):
            raise UpdateError(f"unknown slot {slot!r}")
        return self.root / "slots" / slot / f"model.{fmt}"

    def write_slot(self, slot: str, fmt: str, data: bytes, *, pause: float = 0.0) -> Path:
        target = self.slot_file(slot, fmt)
        for old in target.parent.glob("model.*"):  # another format from an older release
            if old != target:
                old.unlink()
        write_atomic(target, data, pause=pause)
        return target

    def read_slot(self, slot: str, fmt: str, *, max_bytes: int) -> bytes:
        path = self.slot_file(slot, fmt)
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise UpdateError(f"{path} is larger than {max_bytes} bytes")
        return data

    # -- download -----------------------------------------------------------------------
    def truncate_download(self, size: int) -> None:
        """Keep the first ``size`` bytes (all verified); 0 removes the file."""
        if size == 0:
            with contextlib.suppress(FileNotFoundError):
                self.download_path.unlink()
            return
        with self.download_path.open("r+b") as handle:
            handle.truncate(size)
            os.fsync(handle.fileno())

    def download_size(self) -> int:
        """Bytes in the download file (0 when there is none)."""
        try:
            return self.download_path.stat().st_size
        except FileNotFoundError:
            return 0

    def write_chunk(self, offset: int, data: bytes) -> None:
        mode = "r+b" if self.download_path.exists() else "wb"
        with self.download_path.open(mode) as handle:
            handle.seek(offset)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    def read_download(self, *, max_bytes: int) -> bytes:
        try:
            with self.download_path.open("rb") as handle:
                data = handle.read(max_bytes + 1)
        except FileNotFoundError:
            return b""
        if len(data) > max_bytes:
            raise UpdateError(f"{self.download_path} is larger than {max_bytes} bytes")
        return data
