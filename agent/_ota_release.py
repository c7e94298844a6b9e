"""What the OTA core needs to know about one release for this device (pure, no I/O).

Split from :mod:`edgeship.agent._ota` to keep the state machine short: reading what
arrives on the offer topic (an offer and its unsigned ``mode``, or a shadow-discard
message), and what an encrypted release asks of this device's key (is it a recipient,
what the slot keeps, the keywords ``check_payload`` needs).
"""

from __future__ import annotations

from typing import Any

from edgeship.agent._ota_types import Job, SlotInfo
from edgeship.sdk.release._manifest import Manifest

from edgeship._errors import DecryptionError, EdgeshipError, MismatchError

__all__ = ["base_opens", "decrypting", "peek_offer", "recipient", "select", "slot_info"]


MAX_PEEKED_VERSION = 64  # an X.Y.Z version is far shorter


def peek_offer(raw: bytes) -> tuple[str | None, str]:
    """The version a message on the offer topic *claims* and its kind: an offer's
    ``mode`` ("active" unless it says otherwise) or "shadow-discard". Unverified: used
    to skip exact repeats and to route; an offer itself is verified later."""
    from edgeship.sdk.release._trust import MAX_OFFER_SIZE, load_json

    try:
        doc = load_json(raw, "offer", max_size=MAX_OFFER_SIZE)
        if isinstance(doc, dict) and doc.get("type") == "shadow-discard":
            version, mode = doc.get("version"), "shadow-discard"
        else:
            version, mode = doc["manifest"]["signed"]["version"], doc.get("mode", "active")
    except (EdgeshipError, KeyError, TypeError):
        return None, "active"
    # it names the refused offer in the retained status: an absurd one (30 KB) made the
    # status too big for fleet status, which then lost the device
    ok = isinstance(version, str) and len(version) <= MAX_PEEKED_VERSION
    return (version if ok else None), str(mode)


def recipient(manifest: Manifest, private_key: Any | None, *,
              required: bool = False) -> dict[str, Any] | None:
    """The manifest's ``encryption`` reduced to this device's recipient (None for a
    plaintext release); DecryptionError when ``private_key`` cannot open the data key,
    MismatchError for a plaintext release when this device takes encrypted ones only."""
    encryption = manifest.encryption
    if encryption is None:
        if required:
            raise MismatchError(f"release {manifest.version} is not encrypted; this device "
                                "takes encrypted releases only ([encryption] require)")
        return None
    from edgeship.sdk.release._crypt import keyid_of_public, listed_keys, unwrap_data_key

    if private_key is None:
        raise DecryptionError(f"release is encrypted for keys {listed_keys(encryption)}; "
                              "this device has no [encryption] key")
    unwrap_data_key(encryption, private_key)
    return encryption.only(keyid_of_public(private_key)).to_dict()


def slot_info(job: Job, private_key: Any | None) -> SlotInfo:
    """The slot ``job`` installed, as the state remembers it."""
    manifest = job.manifest()
    art = manifest.artifact
    profile = manifest.profile
    return SlotInfo(slot=job.slot, version=job.version, sha256=art.sha256, size=art.size,
                    format=art.format, encryption=recipient(manifest, private_key),
                    profile=profile.to_dict() if profile is not None else None,
                    variant=job.variant or None)


def select(manifest: Manifest, hardware: str | None, usable: frozenset[str]) -> tuple[Manifest, str]:
    """The manifest as this device installs it, and the variant's target ("" for the
    generic artifact): the per-target artifact when the release has one for a target
    whose runtime is here (``usable``: the device's ``hardware``, or openvino-cpu for a
    CPU agent that runs OpenVINO), else the generic one."""
    for target in (hardware, "openvino-cpu"):  # usable holds the latter only for such a CPU
        if target and target in usable and target in manifest.variants:
            return manifest.select(target), target
    return manifest, ""


def base_opens(active: SlotInfo, private_key: Any | None) -> bool:
    """Whether this device's key opens the ``active`` slot, the base a delta is applied
    to. Not after a device key change: that slot is encrypted for the old key, so an
    encrypted delta from it would fail its check at every offer; fetch the artifact."""
    if active.encryption is None:
        return True
    if private_key is None:
        return False
    from edgeship.sdk.release._crypt import keyid_of_public

    listed = active.encryption.get("recipients")
    mine = keyid_of_public(private_key)
    return isinstance(listed, list) and any(isinstance(r, dict) and r.get("keyid") == mine
                                            for r in listed)


def decrypting(manifest: Manifest, job: Job, active: SlotInfo | None,
               private_key: Any | None) -> dict[str, Any]:
    """``check_payload``'s keywords for an encrypted release (none for a plaintext one);
    a delta's base is the active slot's ciphertext, opened with its own section."""
    if manifest.encryption is None:
        return {}
    base_encryption = None
    if job.delta and active is not None and active.encryption is not None:
        from edgeship.sdk.release._crypt import Encryption

        base_encryption = Encryption.from_dict(active.encryption)
    return {"private_key": private_key, "base_encryption": base_encryption}
