"""The agent's files: A/B slots, the state file and the download file (small, careful I/O).

Layout of ``data_dir``::

    state.json              OtaState, replaced atomically (temp, fsync, rename, fsync dir)
    state.json.damaged-<t>  a state file that could not be read, kept aside for diagnosis
    slots/a/model.<fmt>     slot A; slots/b/... slot B; a slot is written only while inactive
    slots/a/offer.json      the signed offer of the release in slot A (to rebuild a lost state)
    download.part           the file being downloaded; only verified chunks, fsynced in order
    queue.sqlite            the offline message queue (see _queue.py)
    agent.lock              held by the daemon, or by ``agent install`` (one at a time)

The state file is the single source of truth for which slot serves, so switching slots
is the one ``os.replace`` of ``state.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from edgeship.agent._ota_state import OtaState, decode_state, encode_state
from edgeship.agent._state_check import state_problem
from edgeship.sdk._fileio import fsync_dir, lock_file, read_head, write_atomic

from edgeship._errors import ConfigError, EdgeshipError, UpdateError

__all__ = ["LOCK_NAME", "StateDamaged", "Store", "data_dir_lock", "fsync_dir", "write_atomic"]

LOCK_NAME = "agent.lock"

MAX_STATE_BYTES = 8 * 1024 * 1024  # the state holds one offer (with its golden input)
MAX_SLOT_OFFER_BYTES = 4 * 1024 * 1024  # an offer (sdk._trust.MAX_OFFER_SIZE)


class StateDamaged(UpdateError):
    """``state.json`` exists but cannot be used; ``raw`` holds what could be read of it."""

    def __init__(self, message: str, raw: bytes = b"") -> None:
        super().__init__(message)
        self.raw = raw


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
        """The persisted state (a fresh one when there is none); StateDamaged when the
        file is unreadable, malformed or names things that cannot be."""
        try:
            raw = self.state_path.read_bytes()
        except FileNotFoundError:
            return OtaState()
        except OSError as exc:  # a directory in its place, an I/O error
            raise StateDamaged(f"cannot read it: {exc.strerror or exc}") from exc
        if len(raw) > MAX_STATE_BYTES:
            raise StateDamaged(f"larger than {MAX_STATE_BYTES} bytes")
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise StateDamaged(f"not JSON ({type(exc).__name__})", raw) from exc
        problem = state_problem(doc)
        if problem is not None:
            raise StateDamaged(problem, raw)
        try:
            return decode_state(raw)
        except (ValueError, KeyError, TypeError, EdgeshipError) as exc:
            raise StateDamaged(f"{type(exc).__name__}: {exc}"[:200], raw) from exc

    def set_aside_state(self) -> Path | None:
        """Rename a damaged state file (or whatever sits in its place) out of the way,
        kept for diagnosis; None when it could not be moved."""
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        target = self.root / f"state.json.damaged-{stamp}"
        n = 1
        while target.exists():
            target, n = self.root / f"state.json.damaged-{stamp}-{n}", n + 1
        try:
            os.rename(self.state_path, target)
            fsync_dir(self.root)
        except OSError:
            return None
        return target

    def save_state(self, state: OtaState) -> None:
        write_atomic(self.state_path, encode_state(state))

    # -- slots --------------------------------------------------------------------------
    def slot_file(self, slot: str, fmt: str) -> Path:
        if slot not in ("a", "b"):
            raise UpdateError(f"unknown slot {slot!r}")
        return self.root / "slots" / slot / f"model.{fmt}"

    def write_slot(self, slot: str, fmt: str, data: bytes, *, offer: bytes = b"",
                   pause: float = 0.0) -> Path:
        """The model first, then the signed ``offer`` it came with: a slot whose two
        files do not match fails verification when a lost state is rebuilt."""
        target = self.slot_file(slot, fmt)
        for old in target.parent.glob("model.*"):  # another format from an older release
            if old != target:
                old.unlink()
        offer_path = target.parent / "offer.json"
        with contextlib.suppress(FileNotFoundError):
            offer_path.unlink()  # names the old model until the new one is in place
        write_atomic(target, data, pause=pause)
        if offer:
            write_atomic(offer_path, offer)
        return target

    def write_slot_offer(self, slot: str, offer: bytes) -> None:
        """Store the signed offer of the model already in ``slot`` (one verified to name
        exactly that model: a slot installed by an agent that did not keep offers)."""
        write_atomic(self.slot_file(slot, "onnx").parent / "offer.json", offer)

    def slot_offer(self, slot: str) -> bytes | None:
        """The signed offer stored with ``slot``'s model (None: none, or unreadable)."""
        try:
            raw = read_head(self.root / "slots" / slot / "offer.json", MAX_SLOT_OFFER_BYTES)
        except OSError:
            return None
        return raw if len(raw) <= MAX_SLOT_OFFER_BYTES else None

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


@contextlib.contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Hold ``data_dir``'s agent lock (one daemon or one install at a time)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_NAME
    try:
        fd = lock_file(path)
    except BlockingIOError as exc:
        raise ConfigError(f"an agent runs on {data_dir} (its lock is held): stop it "
                          "before installing a bundle") from exc
    except OSError as exc:
        raise ConfigError(f"cannot take the agent lock: {exc}") from exc
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # while still held: no lock file is left behind
        os.close(fd)
