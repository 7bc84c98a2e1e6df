"""The fault soak's pure parts: which faults a run draws (parse_faults, schedule), what a
round measured (RoundResult: the write outage, the longest gap between commits), and the
run's summary and its printed form. No I/O: the runner is manatee_testbed/nemesis.py."""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

#: Every fault kind, in the order the summary lists them.
FAULT_KINDS = ("kill", "stop", "hang", "partition", "zk_restart", "double_failover",
               "pg_hang", "disk_full", "storm", "bad_znode", "flaky_net", "report_sync_loss",
               "switchover", "rebuild_kill")
#: Faults aimed at one node, chosen by the role it holds when the round starts.
TARGETED = ("kill", "stop", "hang", "partition", "pg_hang", "disk_full", "storm", "flaky_net")
#: The gray failures among them: the node lives on, sick (testbed/manatee_testbed/grayfaults.py).
GRAY = ("pg_hang", "disk_full", "storm", "flaky_net")
ROLES = ("primary", "sync", "async")


def parse_faults(text: str | None) -> tuple[str, ...]:
    """'kill,partition' → ('kill', 'partition'); None/'' → every kind. '-' and '_' are
    the same ('zk-restart'). ValueError names an unknown kind."""
    if not text:
        return FAULT_KINDS
    out: list[str] = []
    for part in text.split(","):
        k = part.strip().replace("-", "_")
        if not k:
            continue
        if k not in FAULT_KINDS:
            raise ValueError(f"unknown fault {part.strip()!r} (known: {', '.join(FAULT_KINDS)})")
        if k not in out:
            out.append(k)
    if not out:
        raise ValueError(f"no fault kinds in {text!r} (known: {', '.join(FAULT_KINDS)})")
    return tuple(out)


@dataclass(frozen=True)
class Planned:
    """One round's fault as scheduled: the role it aims at (None: no single target)."""

    kind: str
    role: str | None = None


def schedule(rounds: int, kinds: Sequence[str], rng: random.Random) -> list[Planned]:
    """The rounds' faults: the kinds in shuffled blocks (every kind once per block, so a
    short soak covers each kind when rounds >= len(kinds)), a random role for targeted
    ones. Deterministic for a given rng seed."""
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, not {rounds}")
    if not kinds:
        raise ValueError("no fault kinds to schedule")
    plan: list[Planned] = []
    while len(plan) < rounds:
        block = list(kinds)
        rng.shuffle(block)
        for k in block:
            if len(plan) == rounds:
                break
            plan.append(Planned(k, rng.choice(ROLES) if k in TARGETED else None))
    return plan


def round_outage(outages: Iterable[Any], t0: float, t1: float) -> float:
    """Longest write outage overlapping [t0, t1] (monotonic seconds), clipped to it.
    `outages`: objects with start and end (end None: still open at t1)."""
    best = 0.0
    for o in outages:
        end = t1 if o.end is None else o.end
        if end < t0 or o.start > t1:
            continue
        best = max(best, min(end, t1) - max(o.start, t0))
    return best


def longest_gap(success_times: Sequence[float], t0: float, t1: float) -> float:
    """Longest time without a successful commit within [t0, t1], clipped to it: the write
    outage a client saw (a commit that hangs until a new sync is found is no failure, but
    it is an outage). `success_times`: when commits returned success, ascending."""
    edges = [t0] + [t for t in success_times if t0 <= t <= t1] + [t1]
    return max((b - a for a, b in zip(edges, edges[1:])), default=0.0)


@dataclass
class RoundResult:
    index: int
    kind: str
    target: str = ""                  # "b(sync)", "a(primary)->b(sync)", "" for zk_restart
    before: str = ""                  # topology at the start: "p=a s=b as=c g=3"
    after: str = ""                   # topology once healthy
    heal_s: float = 0.0               # fault applied → healthy again
    outage_s: float = 0.0             # longest write outage within the round
    operator: str | None = None       # why an operator was needed (None: healed by itself)
    not_applied: str | None = None    # why the fault could not be put in place (no round of that fault)
    safe_mode: dict | None = None     # the error node, if the shard entered safe mode
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def line(self, total: int) -> str:
        parts = [f"round {self.index}/{total}", f"fault={self.kind}"]
        if self.target:
            parts.append(f"target={self.target}")
        if self.not_applied:
            parts.append(f"NOT_APPLIED({self.not_applied})")
        parts += [f"before=[{self.before}]", f"after=[{self.after}]",
                  f"heal_s={self.heal_s:.1f}", f"outage_s={self.outage_s:.1f}"]
        if self.operator:
            parts.append(f"OPERATOR({self.operator})")
        if self.safe_mode:
            parts.append(f"SAFE_MODE({self.safe_mode.get('reason', self.safe_mode)})")
        if self.problems:
            parts.append(f"PROBLEMS({'; '.join(self.problems)})")
        if self.notes:
            parts.append(f"notes: {'; '.join(self.notes)}")
        return " ".join(parts)


@dataclass
class Summary:
    rounds: int
    seed: int
    session_timeout_ms: int
    faults: dict[str, int] = field(default_factory=dict)       # rounds whose fault was put in place
    not_applied: dict[str, int] = field(default_factory=dict)  # rounds whose fault could not be
    rounds_run: int = 0
    acked: int = 0
    warned: int = 0
    lost: int = 0
    forks: int = 0
    history_ok: bool = False
    problems: list[str] = field(default_factory=list)   # every check problem, S1–S7
    longest_outage_s: float = 0.0
    operator_rounds: int = 0
    safe_mode_rounds: int = 0
    error: str | None = None          # the soak could not run to the end (why)
    duration_s: float = 0.0
    dir: str = ""
    round_results: list[dict] = field(default_factory=list)

    def count(self, r: RoundResult) -> None:
        """Count a round under its fault kind, or under not_applied when its fault could not be
        put in place: such a round tested nothing of that fault."""
        into = self.not_applied if r.not_applied else self.faults
        into[r.kind] = into.get(r.kind, 0) + 1

    @property
    def failed(self) -> bool:
        return not (self.error is None and self.rounds_run == self.rounds and self.lost == 0 and self.forks == 0
                    and self.history_ok and self.operator_rounds == 0 and not self.problems)

    @property
    def passed(self) -> bool:
        return not self.failed and not self.not_applied

    @property
    def result(self) -> str:
        """PASS; FAIL (a check failed); INCOMPLETE (no check failed, but some round's fault
        could not be applied, so the soak did not test what it was asked to)."""
        return "FAIL" if self.failed else "INCOMPLETE" if self.not_applied else "PASS"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["result"] = self.result
        return d


def format_faults(faults: dict[str, int]) -> str:
    """{'kill': 2, 'stop': 1} → '{kill:2,stop:1}' in FAULT_KINDS order (kinds never run omitted)."""
    order = [k for k in FAULT_KINDS if faults.get(k)] + sorted(k for k in faults if k not in FAULT_KINDS and faults[k])
    return "{" + ",".join(f"{k}:{faults[k]}" for k in order) + "}"


def format_summary(s: Summary) -> str:
    """The one summary line."""
    parts = [
        f"nemesis: rounds={s.rounds_run}" + ("" if s.rounds_run == s.rounds else f"/{s.rounds}"),
        f"seed={s.seed}",
        f"session_timeout_ms={s.session_timeout_ms}",
        f"faults={format_faults(s.faults)}",
        *([f"not_applied={format_faults(s.not_applied)}"] if s.not_applied else []),
        f"acked={s.acked}",
        f"lost={s.lost}",
        f"forks={s.forks}",
        f"history={'ok' if s.history_ok else 'BAD'}",
        f"problems={len(s.problems)}",
        f"longest_outage_s={s.longest_outage_s:.1f}",
        f"operator_rounds={s.operator_rounds}",
    ]
    if s.safe_mode_rounds:
        parts.append(f"safe_mode_rounds={s.safe_mode_rounds}")
    if s.error:
        parts.append(f"error={json.dumps(s.error.splitlines()[0] if s.error else '')}")
    parts.append(f"result={s.result}")
    return " ".join(parts)


def topo_line(t: dict[str, Any]) -> str:
    return (f"p={t.get('primary') or '-'} s={t.get('sync') or '-'} "
            f"as={','.join(x or '?' for x in t.get('async') or []) or '-'} g={t.get('generation')}")


def gray_reaction(t: dict[str, Any], name: str, hung_postmaster_gone: bool) -> str | None:
    """How the shard answered a gray failure (hung PostgreSQL, full disk) of its primary
    `name`, given ZooKeeper's topology `t`: another node took over, or the sitter killed the
    hung postmaster (to start it again in place). None while neither has happened; a
    topology that is not known yet is not an answer."""
    if t.get("generation") is not None and t.get("primary") not in (None, name):
        return f"{t['primary']} took over (generation {t['generation']})"
    if hung_postmaster_gone:
        return f"{name}'s hung PostgreSQL was killed, to start in place"
    return None
