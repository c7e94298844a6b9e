"""Attacks found in a security review of the release format and the device checks.

Each test is an attack that got past (or crashed) the checks before its fix. They drive
the same pure functions the agent runs on the bytes it receives (``Offer.from_bytes``,
``check_offer``, ``Manifest.from_dict``, ``TrustedState.from_json``), and each attack must
end in a :class:`~edgeship.VerificationError` subclass: anything else escapes the agent's
``except EdgeshipError`` and takes the OTA handler down.
"""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from edgeship.sdk import Offer, TrustedState, check_offer
from edgeship.sdk._keys import KeySet, canonical_bytes, keyid_of, raw_public, sign_envelope

from edgeship import MalformedError

# --- broker attacker: no key at all -------------------------------------------------------


def _keyset(root: Ed25519PrivateKey) -> dict[str, object]:
    release = Ed25519PrivateKey.generate()
    keyset = KeySet(version=1, keys={keyid_of(release): raw_public(release.public_key()).hex()},
                    created="2026-01-01T00:00:00Z", expires="2099-01-01T00:00:00Z")
    return sign_envelope(keyset.to_dict(), root)


@pytest.mark.parametrize("where", ["keyset", "manifest"])
def test_offer_with_a_lone_surrogate_is_malformed_not_a_crash(where: str) -> None:
    # JSON allows "\ud800" (a lone UTF-16 surrogate); Python parses it into a str that
    # cannot be encoded as UTF-8, so computing the signed bytes raised UnicodeEncodeError
    # before any signature was checked: anyone who can publish on the broker (replaying
    # the public key set) could crash the device's offer handler.
    root = Ed25519PrivateKey.generate()
    hostile = {"signed": {"type": "\ud800"}, "signatures": [{"keyid": "ab", "sig": "00"}]}
    keyset = hostile if where == "keyset" else _keyset(root)
    doc = {"type": "edgeship-offer", "manifest": hostile, "keyset": keyset}
    offer = Offer.from_bytes(json.dumps(doc).encode())  # ensure_ascii: the wire has \ud800
    with pytest.raises(MalformedError, match="surrogate"):
        check_offer(offer, raw_public(root.public_key()), TrustedState(), model_name="net",
                    hardware="cpu")


def test_canonical_bytes_refuses_what_utf8_cannot_carry() -> None:
    with pytest.raises(MalformedError, match="surrogate"):
        canonical_bytes({"name": "\udfff"})
