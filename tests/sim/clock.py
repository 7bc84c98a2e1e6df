"""A clock the simulation moves by hand (one tick = one second)."""

from __future__ import annotations

EPOCH = 1_700_000_000.0


class FakeClock:
    def __init__(self, now: float = 0.0):
        self.now = now

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return EPOCH + self.now


QUIET = {"replication_slot_created", "replication_slot_dropped"}  # slots are not simulated: every cycle


class SimLog:
    """A structlog-like logger that keeps (time, who, level, event, fields) for the trace."""

    def __init__(self, clock: FakeClock, who: str, sink: list):
        self.clock, self.who, self.sink = clock, who, sink

    def bind(self, **_kw) -> SimLog:
        return self

    def _rec(self, level: str, event: str, kw) -> None:
        if event in QUIET:
            return
        self.sink.append((self.clock.now, self.who, level, event, kw))

    def debug(self, event: str, **kw) -> None:
        pass

    def info(self, event: str, **kw) -> None:
        self._rec("info", event, kw)

    def warning(self, event: str, **kw) -> None:
        self._rec("warning", event, kw)

    def error(self, event: str, **kw) -> None:
        self._rec("error", event, kw)

    def exception(self, event: str, **kw) -> None:
        self._rec("exception", event, kw)


def format_record(rec) -> str:
    t, who, level, event, kw = rec
    detail = kw.get("reason") or kw.get("why") or kw.get("error") or ""
    extra = f" rule={kw['rule']}" if "rule" in kw else ""
    extra += f" {kw.get('frm')}->{kw.get('to')}" if "frm" in kw else ""
    return f"{t:g} {who} {level} {event}{extra}: {detail}"
