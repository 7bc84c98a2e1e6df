"""PostgreSQL WAL positions (LSNs).

PostgreSQL prints an LSN as two hex numbers, ``"16/B374D848"``: the high and low
32 bits of a 64-bit byte position in the WAL stream. Comparing the strings is
wrong (``"0/9" > "0/10"``), so every comparison goes through :class:`Lsn`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

_LSN_RE = re.compile(r"^\s*([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})\s*$")
_MAX = (1 << 64) - 1


def parse_lsn(text: str) -> int:
    """``"0/16B3748"`` → 23803720. Raises ValueError naming the bad text."""
    m = _LSN_RE.match(text) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"not a PostgreSQL LSN: {text!r} (expected 'X/Y' in hex)")
    return (int(m.group(1), 16) << 32) | int(m.group(2), 16)


def format_lsn(value: int) -> str:
    """23803720 → ``"0/16B3748"`` (PostgreSQL's own spelling: upper-case, no padding)."""
    if not 0 <= value <= _MAX:
        raise ValueError(f"LSN out of range: {value}")
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


@functools.total_ordering
@dataclass(frozen=True, slots=True)
class Lsn:
    """A WAL position; orders numerically, prints like PostgreSQL."""

    value: int

    def __post_init__(self) -> None:
        if not isinstance(self.value, int) or isinstance(self.value, bool):
            raise TypeError(f"Lsn value must be an int, not {type(self.value).__name__}")
        if not 0 <= self.value <= _MAX:
            raise ValueError(f"LSN out of range: {self.value}")

    @classmethod
    def parse(cls, text: str) -> Lsn:
        return cls(parse_lsn(text))

    @classmethod
    def coerce(cls, v: Lsn | str | int) -> Lsn:
        """Accept an Lsn, PostgreSQL's text form, or an int byte position."""
        if isinstance(v, Lsn):
            return v
        if isinstance(v, str):
            return cls.parse(v)
        return cls(v)

    def __str__(self) -> str:
        return format_lsn(self.value)

    def __repr__(self) -> str:
        return f"Lsn('{self}')"

    def __int__(self) -> int:
        return self.value

    def __index__(self) -> int:
        return self.value

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Lsn):
            return NotImplemented
        return self.value < other.value

    def __sub__(self, other: Lsn) -> int:
        """Bytes between two positions (may be negative)."""
        if not isinstance(other, Lsn):
            return NotImplemented
        return self.value - other.value

    def __add__(self, nbytes: int) -> Lsn:
        if isinstance(nbytes, Lsn) or not isinstance(nbytes, int):
            return NotImplemented
        return Lsn(self.value + nbytes)

    def to_json(self) -> str:
        return str(self)


ZERO = Lsn(0)
