"""What a device remembers between offers: :class:`TrustedState` (the rollback floor and
the installed release), and the offer modes it may be asked to install in.

Split from :mod:`~edgeship.sdk.release._trust` (which re-exports both, and holds the
checks that use them) so an agent can read its persisted state before it needs the
signature checks and the manifest parser (issue 16: start-up); those are imported by
the methods that use them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from edgeship.sdk.release._version import parse_version

from edgeship._errors import MalformedError

if TYPE_CHECKING:
    from edgeship.sdk.release._keys import KeySet
    from edgeship.sdk.release._manifest import Manifest
    from edgeship.sdk.release._trust import Offer

__all__ = ["MAX_STATE_SIZE", "OFFER_MODES", "TrustedState"]

OFFER_MODES = ("active", "shadow")  # an offer's unsigned "mode" (see _trust.Offer)
MAX_STATE_SIZE = 256 * 1024  # bytes
_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")


@dataclass(frozen=True, kw_only=True)
class TrustedState:
    """What a device remembers between offers (persist it atomically with ``to_json``).

    ``seen`` maps a release key id to the highest version verified under that key: the
    rollback floor. ``model``/``version``/``sha256``/``keyid`` describe the installed
    release (empty before the first install).
    """

    keyset_version: int = 0
    keyset_sha256: str = ""
    model: str = ""
    version: str = ""
    sha256: str = ""
    keyid: str = ""
    seen: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "keyset_version": self.keyset_version,
            "keyset_sha256": self.keyset_sha256,
            "model": self.model,
            "version": self.version,
            "sha256": self.sha256,
            "keyid": self.keyid,
            "seen": dict(self.seen),
        }

    @classmethod
    def from_dict(cls, d: Any) -> TrustedState:
        if not isinstance(d, dict):
            raise MalformedError("trusted state: expected an object")
        seen = d.get("seen", {})
        strings = ("keyset_sha256", "model", "version", "sha256", "keyid")
        if (
            not isinstance(d.get("keyset_version", 0), int)
            or not all(isinstance(d.get(k, ""), str) for k in strings)
            or not isinstance(seen, dict)
        ):
            raise MalformedError("trusted state: wrong field types")
        for version in seen.values():
            parse_version(version)
        _check_state_fields(d)
        return cls(
            keyset_version=d.get("keyset_version", 0),
            **{k: d.get(k, "") for k in strings},
            seen=dict(seen),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> TrustedState:
        from edgeship.sdk.release._trust import load_json

        data = text.encode() if isinstance(text, str) else text
        return cls.from_dict(load_json(data, "trusted state", max_size=MAX_STATE_SIZE))

    def floor(self, keyset: KeySet) -> tuple[tuple[int, int, int], str]:
        """Highest version seen under a key ``keyset`` still lists, and its text."""
        best, text = (-1, -1, -1), ""
        for keyid, version in self.seen.items():
            if keyid in keyset.keys and parse_version(version) > best:
                best, text = parse_version(version), version
        return best, text

    def accept(self, offer: Offer, manifest: Manifest) -> TrustedState:
        """The state after ``check_offer(offer, ...)`` returned ``manifest``."""
        from edgeship.sdk.release._keys import KeySet, canonical_bytes

        keyset = KeySet.from_dict(offer.keyset["signed"])
        seen = dict(self.seen)
        previous = seen.get(manifest.keyid)
        if previous is None or parse_version(previous) < manifest.version_tuple:
            seen[manifest.keyid] = manifest.version
        return replace(
            self,
            keyset_version=keyset.version,
            keyset_sha256=hashlib.sha256(canonical_bytes(offer.keyset["signed"])).hexdigest(),
            seen=seen,
        )

    def installed(self, manifest: Manifest) -> TrustedState:
        """The state after ``manifest``'s artifact was installed and passed its health check."""
        return replace(
            self,
            model=manifest.model,
            version=manifest.version,
            sha256=manifest.artifact.sha256,
            keyid=manifest.keyid,
        )


def _check_state_fields(d: Mapping[str, Any]) -> None:
    """A state that would fail every later offer is refused when read, not at each offer:
    a garbled installed version made check_offer raise MalformedError forever (a freeze)."""
    ks_version = d.get("keyset_version", 0)
    if isinstance(ks_version, bool) or ks_version < 0:
        raise MalformedError(f"trusted state: keyset_version {ks_version!r} is not >= 0")
    if d.get("version"):
        parse_version(d["version"])
    for name in ("keyset_sha256", "sha256"):
        if d.get(name) and not _HEX64.match(d[name]):
            raise MalformedError(f"trusted state: {name} is not a sha256 hex digest")
