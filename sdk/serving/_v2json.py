"""Large JSON tensors straight into numpy, a slice at a time (issue 16, bytes in flight).

A JSON tensor parsed whole becomes one Python float object per number before it becomes
an array: a 15 MiB body of 786 432 floats held ~25 MB of floats and list, and the
parser's own document ~13 MB more, next to the body itself (measured: +56 MB for one
body, 8 of them one after the other left the agent's peak +71 MB over a 64 MiB budget).

Here the big ``"data": [...]`` arrays of a body are cut out before the JSON is parsed:
:func:`cut_arrays` finds each flat array of numbers (only digits, ``-+.eE``, commas and
white space between its brackets) of at least ``MIN_ARRAY_BYTES`` and puts an
unguessable marker string in its place; the rest (names, shapes, parameters) is parsed as
usual. :meth:`CutArrays.array` then parses a marked array in slices of ``SLICE_BYTES``
cut at commas, each by the same JSON parser and converted by ``np.asarray`` into its
part of the preallocated array: a request costs its body, its array and one slice of
Python floats. Anything else (nested lists, ``NaN``, strings) is left in place for the
plain parser, and a marker found anywhere but in a tensor's ``data`` is refused.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["MIN_ARRAY_BYTES", "SLICE_BYTES", "CutArrays", "cut_arrays"]

MIN_ARRAY_BYTES = 1 << 20  # a smaller array costs little parsed whole (a few MB of floats)
SLICE_BYTES = 1 << 20
_DATA_KEY = re.compile(rb'"data"\s*:\s*\[')
_NUMBER_BYTES = b"0123456789eE+-., \t\r\n"  # what JSON numbers and their separators use


@dataclass
class CutArrays:
    """The arrays cut out of one body: marker -> (start, end) of their numbers in it."""

    body: bytes | bytearray  # (the server reads bodies into a bytearray: not copied)
    prefix: str = field(default_factory=lambda: f"\x00edgeship-array-{os.urandom(8).hex()}-")
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)
    taken: set[str] = field(default_factory=set)

    def is_marker(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.spans

    def array(self, marker: str, dtype: np.dtype[Any], count: int,
              loads: Callable[[bytes], Any]) -> np.ndarray:
        """The numbers of ``marker`` as a 1-D array of ``dtype``; ValueError when they are
        not ``count`` numbers (or not JSON numbers, or do not fit ``dtype``)."""
        self.taken.add(marker)
        start, end = self.spans[marker]
        out = np.empty(count, dtype)
        filled = 0
        while start < end:
            stop = end if end - start <= SLICE_BYTES else self.body.rfind(b",", start,
                                                                           start + SLICE_BYTES)
            if stop <= start:  # one "number" longer than a slice: not a number
                raise ValueError("a number of more than 1 MiB")
            # only digits, signs, dots, e/E, commas and blanks: JSON numbers or an error
            part = loads(b"[" + self.body[start:stop] + b"]")
            if filled + len(part) > count:
                raise ValueError(f"more than {count} data elements")
            out[filled:filled + len(part)] = np.asarray(part, dtype)
            filled += len(part)
            start = stop + 1 if stop < end else end
        if filled != count:
            raise ValueError(f"{filled} data elements")
        return out

    def untaken(self) -> int:
        return len(self.spans) - len(self.taken)


def cut_arrays(body: bytes | bytearray) -> tuple[bytes | bytearray, CutArrays]:
    """``body`` with each large flat numeric ``"data"`` array replaced by a marker string,
    and where those arrays are (the body is returned as is when it has none)."""
    cut = CutArrays(body)
    pieces: list[bytes | bytearray] = []
    last = 0
    for match in _DATA_KEY.finditer(body):
        start = match.end()
        if start < last or _escaped(body, match.start()):
            continue  # inside a string ("\"data\"") or an array already cut
        end = body.find(b"]", start)
        if end - start < MIN_ARRAY_BYTES or not _only_numbers(body, start, end):
            continue  # small, unterminated, or not only numbers (nested, NaN, strings)
        marker = f"{cut.prefix}{len(cut.spans)}"
        cut.spans[marker] = (start, end)
        pieces += [body[last:start - 1], b'"', marker.encode().replace(b"\x00", b"\\u0000"),
                   b'"']
        last = end + 1
    if not cut.spans:
        return body, cut
    pieces.append(body[last:])
    return b"".join(pieces), cut


def _only_numbers(body: bytes | bytearray, start: int, end: int) -> bool:
    """Whether ``body[start:end]`` holds only number bytes (checked a slice at a time, so
    the check copies at most one slice)."""
    return not any(body[at:min(at + SLICE_BYTES, end)].translate(None, _NUMBER_BYTES)
                   for at in range(start, end, SLICE_BYTES))


def _escaped(body: bytes | bytearray, quote: int) -> bool:
    """Whether the quote at ``quote`` is escaped (an odd run of backslashes before it)."""
    run = 0
    while quote - run - 1 >= 0 and body[quote - run - 1] == 0x5C:
        run += 1
    return run % 2 == 1
