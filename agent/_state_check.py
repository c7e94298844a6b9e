"""Is a decoded ``state.json`` one the agent can act on? (pure: a document in, a reason out)

``OtaState.from_dict`` trusts its input; a file damaged by a bad sector, a full disk or a
hand edit reached the state machine as ``None`` where a dict was expected, a string for a
number, or ``chunk_size`` 0, and the agent stopped with AttributeError or
ZeroDivisionError. :func:`state_problem` names the first thing that is wrong, so the
caller can recover instead (see :mod:`edgeship.agent._recover`).
"""

from __future__ import annotations

import re
from typing import Any

from edgeship.agent._ota_state import MODES, PHASES
from edgeship.sdk.release._version import parse_version

from edgeship._errors import EdgeshipError

__all__ = ["state_problem"]

_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")
_FORMAT = re.compile(r"^[a-z0-9]{1,16}\Z")  # a slot file is model.<format>
_TARGET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
_WORKING = ("downloading", "downloaded", "verifying", "installing", "health-checking")
_SLOT_KEYS = ("slot", "version", "sha256", "size", "format")
_JOB_KEYS = ("offer", "version", "file", "size", "sha256", "delta", "chunk_size")


def state_problem(doc: Any) -> str | None:
    """What makes ``doc`` (the parsed JSON) unusable as an ``OtaState``, or None."""
    if not isinstance(doc, dict):
        return f"expected an object, got {type(doc).__name__}"
    for key in ("phase", "active", "previous", "job", "trusted"):
        if key not in doc:
            return f"'{key}' is missing"
    if doc["phase"] not in PHASES:
        return f"phase {str(doc['phase'])[:40]!r} is unknown"
    for key in ("error", "target"):
        if not isinstance(doc.get(key, ""), (str, type(None))):
            return f"'{key}' is not a string"
    for key in ("active", "previous", "shadow"):
        problem = _slot_problem(doc[key]) if doc.get(key) is not None else None
        if problem:
            return f"{key}: {problem}"
    if not isinstance(doc["trusted"], dict):
        return "trusted: expected an object"
    if (doc["job"] is not None) != (doc["phase"] in _WORKING):
        return f"phase {doc['phase']} with{'out' if doc['job'] is None else ''} a job"
    return _job_problem(doc["job"]) if doc["job"] is not None else None


def _slot_problem(d: Any) -> str | None:
    if not isinstance(d, dict) or any(k not in d for k in _SLOT_KEYS):
        return f"expected an object with {', '.join(_SLOT_KEYS)}"
    if d["slot"] not in ("a", "b"):
        return f"slot {str(d['slot'])[:8]!r} is not a or b"
    if not _is_version(d["version"]) or not _is_hex(d["sha256"]) or not _is_size(d["size"]):
        return "version, sha256 or size is malformed"
    if not isinstance(d["format"], str) or not _FORMAT.match(d["format"]):
        return "format is malformed"
    if d.get("variant") is not None and not _is_target(d["variant"]):
        return "variant is malformed"
    return None


def _job_problem(d: Any) -> str | None:
    if not isinstance(d, dict) or any(k not in d for k in _JOB_KEYS):
        return f"job: expected an object with {', '.join(_JOB_KEYS)}"
    if not all(isinstance(d[k], str) for k in ("offer", "file")) or not _is_version(d["version"]):
        return "job: offer, file or version is malformed"
    if not _is_size(d["size"]) or not _is_hex(d["sha256"]) or not isinstance(d["delta"], bool):
        return "job: size, sha256 or delta is malformed"
    chunk = d["chunk_size"]
    if not _is_size(chunk) or chunk == 0:
        return f"job: chunk_size {str(chunk)[:20]} is not a positive integer"
    chunks = -(-d["size"] // chunk)
    received = d.get("received", 0)
    if not _is_size(received) or received > chunks:
        return f"job: received {str(received)[:20]} is not in 0..{chunks}"
    if d.get("slot", "") not in ("a", "b") or d.get("mode", "active") not in MODES:
        return "job: slot or mode is malformed"
    if not _is_size(d.get("refusals", 0)):
        return "job: refusals is malformed"
    if not isinstance(d.get("nonce", ""), str) or len(d.get("nonce", "")) > 64:
        return "job: nonce is malformed"
    if not isinstance(d.get("switched", False), bool) or not _is_size(d.get("switch_attempts", 0)):
        return "job: switched or switch_attempts is malformed"
    if d.get("variant", "") != "" and not _is_target(d["variant"]):
        return "job: variant is malformed"
    return None


def _is_target(value: Any) -> bool:
    """A hardware target name as a manifest's ``variants`` spells it."""
    return isinstance(value, str) and bool(_TARGET.match(value))


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53


def _is_hex(value: Any) -> bool:
    return isinstance(value, str) and bool(_HEX64.match(value))


def _is_version(value: Any) -> bool:
    if not isinstance(value, str) or len(value) > 64:
        return False
    try:
        parse_version(value)
    except EdgeshipError:
        return False
    return True
