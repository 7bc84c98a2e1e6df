"""What a recording writer saw: each id's attempt (Attempt: acked, warned or failed), the
periods without a successful commit (Outage), and the read side of the record that the
writer's thread fills in (WriteRecord; every read takes the record's lock)."""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass
from typing import Any

ACKED = "acked"
WARNED = "warned"
FAILED = "failed"


@dataclass(frozen=True)
class Attempt:
    """One id's INSERT: where it went and how it ended."""

    id: int
    dsn: str
    started: float
    finished: float
    outcome: str  # ACKED | WARNED | FAILED
    error: str | None = None
    notices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outage:
    """A period without successful commits.

    ``start``: when the first failure after a success began (a failed commit counts from
    the moment it was issued; a failed connect or "no primary known" from when it was
    noticed). ``end``: when the next commit returned success (None: still open when the
    writer stopped). ``last_ack``: when the last success before it returned, so
    ``end - last_ack`` is the client-visible write gap.
    """

    start: float
    end: float | None
    last_ack: float
    failures: int

    def duration(self, now: float | None = None) -> float:
        end = self.end if self.end is not None else (now if now is not None else time.monotonic())
        return max(0.0, end - self.start)

    @property
    def gap(self) -> float | None:
        return None if self.end is None else self.end - self.last_ack


class WriteRecord:
    """The outcomes and outages one writer recorded; `_cond` guards every field."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._attempts: list[Attempt] = []
        self._acked: set[int] = set()
        self._warned: set[int] = set()
        self._failed: set[int] = set()
        self._success_times: list[float] = []  # finish times of acked+warned, ascending
        self._outages: list[Outage] = []
        self._open: dict[str, Any] | None = None
        self._last_success: float | None = None
        self._stopped_at: float | None = None


    @property
    def acked(self) -> set[int]:
        """Ids whose COMMIT returned success with no notice or warning."""
        with self._cond:
            return set(self._acked)

    @property
    def warned(self) -> set[int]:
        """Ids whose COMMIT returned success together with a NOTICE/WARNING (e.g. a
        cancelled wait for synchronous replication): committed, not confirmed by a sync."""
        with self._cond:
            return set(self._warned)

    @property
    def failed(self) -> set[int]:
        """Ids whose INSERT/COMMIT raised or was abandoned: outcome unknown."""
        with self._cond:
            return set(self._failed)

    @property
    def succeeded(self) -> set[int]:
        """acked | warned: every id whose COMMIT returned success."""
        with self._cond:
            return self._acked | self._warned

    @property
    def attempted(self) -> set[int]:
        with self._cond:
            return {a.id for a in self._attempts}

    def attempts(self) -> list[Attempt]:
        with self._cond:
            return list(self._attempts)

    def _now_or_stopped(self) -> float:
        return self._stopped_at if self._stopped_at is not None else time.monotonic()

    def outages(self) -> list[Outage]:
        """Closed outages in order, then the open one (end=None) if any."""
        with self._cond:
            return self._outages_locked()

    def _outages_locked(self) -> list[Outage]:
        out = list(self._outages)
        if self._open is not None:
            out.append(Outage(self._open["start"], None, self._open["last_ack"], self._open["failures"]))
        return out

    def longest_outage(self) -> float:
        """Seconds; an outage still open counts up to stop() (or now). 0.0 if none."""
        with self._cond:
            now = self._now_or_stopped()
        return max((o.duration(now) for o in self.outages()), default=0.0)

    def longest_ack_gap(self) -> float:
        """Longest time between two consecutive successful commits (includes slow
        successes that no failure marks as an outage)."""
        with self._cond:
            t = self._success_times
            return max((b - a for a, b in zip(t, t[1:])), default=0.0)

    def first_ack_after(self, t: float) -> float | None:
        """When the first commit that returned success at or after monotonic time `t`
        returned (None: none yet)."""
        with self._cond:
            i = bisect.bisect_left(self._success_times, t)
            return self._success_times[i] if i < len(self._success_times) else None
