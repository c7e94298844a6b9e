"""Offline bundles (``.esb``): one file that carries a release to an air-gapped device.

A bundle is a ZIP archive (stored, not compressed: models barely compress) holding

- ``edgeship-bundle.json``: ``{"format": 1, "model", "version", "files": [...]}``;
- ``offer.json``: the exact offer an OTA push publishes (signed manifest + key set);
- ``files/<name>``: the artifact and/or deltas, under the names the manifest signs.

Nothing in a bundle is trusted for being in it: the device installs it through its OTA
path (the offer checked by ``check_offer``, the payload by ``check_payload``, slots, the
health check and rollback), with the bundle answering the chunk requests a release
server would answer. :func:`read_bundle` only bounds what it reads.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeship.sdk.release._release import Release
from edgeship.sdk.release._trust import MAX_OFFER_SIZE

from edgeship._errors import InputError, MalformedError

__all__ = ["BUNDLE_SUFFIX", "Bundle", "read_bundle", "write_bundle"]

BUNDLE_SUFFIX = ".esb"
FORMAT = 1
_INDEX, _OFFER = "edgeship-bundle.json", "offer.json"
_MAX_MEMBERS = 256


@dataclass(frozen=True)
class Bundle:
    """What a bundle carries (unverified): the offer bytes and the files by manifest name."""

    model: str
    version: str
    offer: bytes
    files: dict[str, bytes]

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version,
                "files": {name: len(data) for name, data in sorted(self.files.items())}}


def write_bundle(reldir: str | Path, out: str | Path, *,
                 bases: Sequence[str] | None = None, artifact: bool = True) -> Bundle:
    """Write the release in ``reldir`` as one bundle file ``out``.

    ``bases`` keeps only the deltas from those versions (default: every delta);
    ``artifact=False`` leaves the full artifact out (a smaller file for devices known to
    run one of ``bases``)."""
    release = Release.load(reldir)
    manifest = release.manifest
    deltas = [d for d in manifest.deltas if bases is None or d.base_version in bases]
    if bases is not None and len(deltas) != len(set(bases)):
        have = ", ".join(d.base_version for d in manifest.deltas) or "none"
        raise InputError(f"--from: release {manifest.version} has deltas from {have} only")
    files = {d.name: release.read_delta(d) for d in deltas}
    if artifact:
        files[manifest.artifact.name] = release.read_artifact()
    if not files:
        raise InputError("the bundle would carry neither the artifact nor a delta")
    bundle = Bundle(model=manifest.model, version=manifest.version,
                    offer=release.offer().to_bytes(), files=files)
    index = {"format": FORMAT, "model": bundle.model, "version": bundle.version,
             "files": sorted(files)}
    target = Path(out)
    tmp = target.with_name(target.name + ".part")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr(_INDEX, json.dumps(index, sort_keys=True, indent=1))
            zf.writestr(_OFFER, bundle.offer)
            for name, data in sorted(files.items()):
                zf.writestr(f"files/{name}", data)
        os.replace(tmp, target)
    except OSError as exc:
        raise InputError(f"-o {target}: cannot write the bundle: {exc.strerror or exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return bundle


def read_bundle(path: str | Path, *, max_file_bytes: int) -> Bundle:
    """Read a bundle, bounding every member (a file over ``max_file_bytes`` is refused);
    nothing is verified here."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > _MAX_MEMBERS:
                raise MalformedError(f"bundle {path.name}: {len(infos)} members is too many")
            by_name = {i.filename: i for i in infos}
            index = json.loads(_member(zf, by_name, _INDEX, 64 * 1024))
            offer = _member(zf, by_name, _OFFER, MAX_OFFER_SIZE)
            if not isinstance(index, dict) or index.get("format") != FORMAT:
                raise MalformedError(f"bundle {path.name}: not an edgeship bundle of format "
                                     f"{FORMAT}")
            files = {name[len("files/"):]: _member(zf, by_name, name, max_file_bytes)
                     for name in by_name if name.startswith("files/") and not name.endswith("/")}
    except (zipfile.BadZipFile, ValueError, UnicodeDecodeError) as exc:
        raise MalformedError(f"bundle {path.name}: not a readable bundle ({exc})") from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot read the bundle: {exc.strerror or exc}") from exc
    return Bundle(model=str(index.get("model", "")), version=str(index.get("version", "")),
                  offer=offer, files=files)


def _member(zf: zipfile.ZipFile, by_name: dict[str, zipfile.ZipInfo], name: str,
            limit: int) -> bytes:
    info = by_name.get(name)
    if info is None:
        raise MalformedError(f"bundle: no {name} inside")
    if info.file_size > limit:
        raise MalformedError(f"bundle: {name} of {info.file_size} bytes is over the limit "
                             f"of {limit}")
    with zf.open(info) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise MalformedError(f"bundle: {name} is over the limit of {limit} bytes")
    return data
