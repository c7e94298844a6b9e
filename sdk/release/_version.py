"""A release version: semver ``X.Y.Z`` with one spelling each, compared numerically.

Split from :mod:`~edgeship.sdk.release._manifest` (which re-exports it) so a device can
check its state file before it needs the manifest's parser (issue 16: start-up).
"""

from __future__ import annotations

import re
from typing import Any

from edgeship._errors import MalformedError

__all__ = ["parse_version"]

# \Z, not $ ($ also matches before a trailing newline), and [0-9], not \d (which matches
# any Unicode digit): one version has exactly one spelling
_SEMVER = re.compile(r"^(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})\Z")


def parse_version(text: Any) -> tuple[int, int, int]:
    """``"1.2.3"`` -> ``(1, 2, 3)``; MalformedError for anything that is not X.Y.Z."""
    match = _SEMVER.match(text) if isinstance(text, str) else None
    if match is None:
        raise MalformedError(f"version {text!r} is not semver X.Y.Z")
    return int(match[1]), int(match[2]), int(match[3])
