"""The device's store of examples worth learning from, bounded and oldest-first out.

One file per example (``<sequence>-<source>.npz``: the model's inputs, a label when one is
known, the source that kept it). The agent writes it from its answer path; the Flower
client reads it in a training round. Files are written whole through a temporary name, so
a power cut leaves either the example or nothing. With a key, each file is AES-256-GCM
under it (the agent derives the key from its device key), so examples at rest read as
noise to anyone who takes the flash.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeship._errors import EdgeshipError

if TYPE_CHECKING:
    import numpy as np

SOURCES = ("low_confidence", "cloud", "drift", "feedback")
_NAME = re.compile(r"^(\d{12})-([a-z_]+)\.npz$")


class StoreError(EdgeshipError):
    """An example could not be stored or read back."""


@dataclass(frozen=True, kw_only=True)
class Example:
    """One kept input with what is known about it."""

    inputs: dict[str, np.ndarray]
    label: int | None  # a teacher's (cloud) or the application's label; None if unknown
    source: str


@dataclass(frozen=True, kw_only=True)
class StoreLimits:
    """How much the store may hold; the oldest examples go first."""

    max_examples: int = 1000
    max_bytes: int = 16 * 1024 * 1024


class ExampleStore:
    """A directory of examples within ``limits``; ``key`` (32 bytes) encrypts them."""

    def __init__(self, directory: str | Path, limits: StoreLimits | None = None,
                 key: bytes | None = None) -> None:
        self.directory = Path(directory)
        self.limits = limits or StoreLimits()
        self._key = key
        self.directory.mkdir(parents=True, exist_ok=True)

    def add(self, example: Example) -> Path:
        """Write one example, then drop the oldest until the store is within its limits."""
        if example.source not in SOURCES:
            raise StoreError(f"unknown example source {example.source!r}; one of {SOURCES}")
        data = self._seal(_encode(example))
        if len(data) > self.limits.max_bytes:
            raise StoreError(f"an example of {len(data)} bytes exceeds the store's "
                             f"{self.limits.max_bytes}-byte limit")
        path = self.directory / f"{self._next_sequence():012d}-{example.source}.npz"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        self._evict()
        return path

    def relabel(self, path: Path, label: int) -> bool:
        """Give the stored example at ``path`` (as :meth:`add` returned it) a label, in
        place (same name, so its age is kept); False when it is gone (evicted, wiped)."""
        try:
            example = _decode(self._open(path.read_bytes()), _source_of(path))
        except FileNotFoundError:
            return False
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EdgeshipError):
            path.unlink(missing_ok=True)
            return False
        data = self._seal(_encode(Example(inputs=example.inputs, label=label,
                                          source=example.source)))
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        if not path.exists():  # evicted meanwhile: do not bring it back
            tmp.unlink(missing_ok=True)
            return False
        os.replace(tmp, path)
        return True

    def examples(self) -> list[Example]:
        """Every readable example, oldest first; an unreadable file is skipped and removed."""
        found = []
        for path in self._files():
            try:
                found.append(_decode(self._open(path.read_bytes()), _source_of(path)))
            except (OSError, ValueError, KeyError, zipfile.BadZipFile, EdgeshipError):
                path.unlink(missing_ok=True)
        return found

    def labelled(self) -> list[Example]:
        """The examples that carry a label: what local training can use."""
        return [e for e in self.examples() if e.label is not None]

    def wipe(self) -> int:
        """Remove every example; returns how many were removed."""
        files = self._files()
        for path in files:
            path.unlink(missing_ok=True)
        return len(files)

    def size(self) -> tuple[int, int]:
        """(examples, bytes) held now."""
        files = self._files()
        return len(files), sum(p.stat().st_size for p in files)

    def _files(self) -> list[Path]:
        return sorted(p for p in self.directory.iterdir() if _NAME.match(p.name))

    def _next_sequence(self) -> int:
        files = self._files()
        match = _NAME.match(files[-1].name) if files else None
        return int(match.group(1)) + 1 if match else 1

    def _evict(self) -> None:
        files = self._files()
        sizes = [p.stat().st_size for p in files]
        total = sum(sizes)
        while files and (len(files) > self.limits.max_examples or total > self.limits.max_bytes):
            total -= sizes.pop(0)
            files.pop(0).unlink(missing_ok=True)

    def _seal(self, data: bytes) -> bytes:
        if self._key is None:
            return data
        from edgeship.sdk.release._crypt import encrypt, new_nonce

        return encrypt(data, self._key, new_nonce())

    def _open(self, data: bytes) -> bytes:
        if self._key is None:
            return data
        from edgeship.sdk.release._crypt import decrypt

        return decrypt(data, self._key, what="stored example")


def _source_of(path: Path) -> str:
    match = _NAME.match(path.name)
    return match.group(2) if match else "unknown"


def _encode(example: Example) -> bytes:
    import numpy as np

    arrays: dict[str, Any] = {f"input:{name}": value for name, value in example.inputs.items()}
    if example.label is not None:
        arrays["label"] = np.asarray(example.label, dtype=np.int64)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _decode(data: bytes, source: str) -> Example:
    import numpy as np

    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        inputs = {k.split(":", 1)[1]: npz[k] for k in npz.files if k.startswith("input:")}
        label = int(npz["label"]) if "label" in npz.files else None
    return Example(inputs=inputs, label=label, source=source)
