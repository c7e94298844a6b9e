"""edgeship.sdk.release: what a release is and how a device trusts it.

Manifests, signing keys and the key directory, artifact encryption, binary and tensor
deltas, and the checks a device makes on an offer and its payload (the same checks as
``edgeship verify``). Shared by the fleet manager's commands, which write releases, and the
agent, which verifies them. Device-safe: imports no ``sdk.fleet``, ``sdk.serving`` or MQTT.
"""

from __future__ import annotations

from edgeship._lazy import attach

_EXPORTS: dict[str, str] = {
    "ArtifactInfo": "edgeship.sdk.release._manifest",
    "Bundle": "edgeship.sdk.release._bundle",
    "DeltaInfo": "edgeship.sdk.release._manifest",
    "Encryption": "edgeship.sdk.release._crypt",
    "Golden": "edgeship.sdk.release._manifest",
    "KeyDir": "edgeship.sdk.release._keydir",
    "KeySet": "edgeship.sdk.release._keys",
    "MAX_OFFER_SIZE": "edgeship.sdk.release._trust",
    "Manifest": "edgeship.sdk.release._manifest",
    "Offer": "edgeship.sdk.release._trust",
    "PayloadVerifier": "edgeship.sdk.release._trust",
    "Release": "edgeship.sdk.release._release",
    "TrustedState": "edgeship.sdk.release._trust",
    "apply_delta": "edgeship.sdk.release._delta",
    "best_delta": "edgeship.sdk.release._delta",
    "check_offer": "edgeship.sdk.release._trust",
    "check_payload": "edgeship.sdk.release._trust",
    "decrypt": "edgeship.sdk.release._crypt",
    "make_delta": "edgeship.sdk.release._delta",
    "parse_version": "edgeship.sdk.release._manifest",
    "read_bundle": "edgeship.sdk.release._bundle",
    "unwrap_data_key": "edgeship.sdk.release._crypt",
    "verify_release": "edgeship.sdk.release._release",
    "write_bundle": "edgeship.sdk.release._bundle",
    "write_verified": "edgeship.sdk.release._release",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = attach(__name__, _EXPORTS)
