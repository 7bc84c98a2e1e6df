"""History records (S7): which flips a target change means, and the guide's record format.

Pure: time comes in as `now_ms`. A record is a persistent-sequential znode under
`<shardPath>/history/` whose name is `<time>-<ip>-<action>-<role>-<master>-<slave>-<seq10>`
(the original's, so v1-era tools can still read it) and whose data is the record's JSON
without `zkSeq` (ZooKeeper assigns the sequence only at create). `parse_record` gives the
guide's manatee-history line: {time, date, ip, action, role, master, slave, zkSeq}, plus
`generation` (this port's addition: the state generation the flip belongs to) and, when
recorded, `detail` (a line of text: who did an operator's action, and from what).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from manatee.shard.state import PRIMARY, REBUILD, STANDBY, Peer, Target

__all__ = [
    "ASSUME_LEADER", "NEW_LEADER", "NEW_STANDBY", "EXPIRED_STANDBY", "STEP_DOWN", "ACTIONS", "LEADER",
    "STATE_RESTORED", "REAPED", "OPERATOR_ACTIONS", "state_restored_event", "reaped_event", "reaped_addresses",
    "STANDBY_ROLE", "HistoryEvent", "events_for", "step_down_event", "record_json", "record_data",
    "znode_prefix", "parse_record", "sort_records", "FIELDS",
]

ASSUME_LEADER = "AssumeLeader"
NEW_LEADER = "NewLeader"
NEW_STANDBY = "NewStandby"
EXPIRED_STANDBY = "ExpiredStandby"
STEP_DOWN = "StepDown"  # this port's addition (S9): a primary that could not serve released its role
ACTIONS = (ASSUME_LEADER, NEW_LEADER, NEW_STANDBY, EXPIRED_STANDBY, STEP_DOWN)
#: what an operator's tool records (not a sitter's flip, so not among the sitters' ACTIONS):
#: StateRestored: `manatee-adm state-restore` re-created a lost state znode
STATE_RESTORED = "StateRestored"
#: Reaped: `manatee-adm reap` removed a deposed former primary that is gone for good
REAPED = "Reaped"
OPERATOR_ACTIONS = (STATE_RESTORED, REAPED)
LEADER = "Leader"
STANDBY_ROLE = "Standby"
FIELDS = ("time", "date", "ip", "action", "role", "master", "slave", "zkSeq")


@dataclass(frozen=True)
class HistoryEvent:
    time: int  # ms since the epoch
    ip: str
    action: str
    role: str
    master: str = ""
    slave: str = ""
    generation: int | None = None
    detail: str | None = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS + OPERATOR_ACTIONS:
            raise ValueError(f"history action {self.action!r} is not one of {', '.join(ACTIONS + OPERATOR_ACTIONS)}")
        if self.role not in (LEADER, STANDBY_ROLE):
            raise ValueError(f"history role {self.role!r} is not Leader or Standby")
        for name in ("ip", "master", "slave"):
            if "-" in getattr(self, name):
                raise ValueError(f"history {name} {getattr(self, name)!r} may not contain '-' (znode name separator)")


def _id(p: Peer | None) -> str | None:
    return p.id if p is not None else None


def _up(t: Target | None) -> Peer | None:
    return t.upstream if t is not None and t.role in (STANDBY, REBUILD) else None


def _down(t: Target | None) -> Peer | None:
    if t is None:
        return None
    if t.role == PRIMARY:
        return t.sync
    if t.role in (STANDBY, REBUILD):
        return t.downstream
    return None


def events_for(me: Peer, old: Target | None, new: Target, generation: int | None,
               now_ms: int) -> list[HistoryEvent]:
    """The flips that going from `old` to `new` records, in order.

    AssumeLeader: I become primary. NewLeader: my upstream changes (master = its ip).
    NewStandby: the node directly behind me changes (for the primary: its sync; slave = its ip).
    ExpiredStandby: the node behind me is dropped or replaced (slave = the dropped one).
    Roles without replication (unassigned, deposed, fenced, safe mode) record nothing."""
    leader = new.role == PRIMARY
    if not leader and new.role not in (STANDBY, REBUILD):
        return []
    was_leader = old is not None and old.role == PRIMARY
    role = LEADER if leader else STANDBY_ROLE
    up = _up(new)
    master = up.ip if up else ""

    def ev(action: str, slave: str = "") -> HistoryEvent:
        return HistoryEvent(time=now_ms, ip=me.ip, action=action, role=role, master=master,
                            slave=slave, generation=generation)

    out: list[HistoryEvent] = []
    if leader and not was_leader:
        out.append(ev(ASSUME_LEADER))
    if up is not None and _id(up) != _id(_up(old)):
        out.append(ev(NEW_LEADER))
    old_down = _down(old) if was_leader == leader else None
    new_down = _down(new)
    if old_down is not None and _id(old_down) != _id(new_down):
        out.append(ev(EXPIRED_STANDBY, old_down.ip))
    if new_down is not None and _id(new_down) != _id(old_down):
        out.append(ev(NEW_STANDBY, new_down.ip))
    return out


def step_down_event(me: Peer, sync: Peer, generation: int | None, now_ms: int) -> HistoryEvent:
    """StepDown: I, the primary, released my role to my sync `sync` (slave = its ip) because my
    PostgreSQL could not serve (decide's rule primary.step_down)."""
    return HistoryEvent(time=now_ms, ip=me.ip, action=STEP_DOWN, role=LEADER, slave=sync.ip,
                        generation=generation)


def state_restored_event(primary: Peer, sync: Peer | None, generation: int, detail: str,
                         now_ms: int) -> HistoryEvent:
    """StateRestored: an operator re-created the lost state znode (generation `generation`,
    primary `primary`: ip, sync: slave); `detail` says who and from which sitters."""
    return HistoryEvent(time=now_ms, ip=primary.ip, action=STATE_RESTORED, role=LEADER,
                        slave=sync.ip if sync is not None else "", generation=generation, detail=detail)


def reaped_event(ip: str, primary: Peer, generation: int, detail: str, now_ms: int) -> HistoryEvent:
    """Reaped: an operator said the node at `ip` is gone for good (removed from the deposed
    list of `generation`, or not in the state any more); `primary` (master) was the primary;
    `detail` says who and what."""
    return HistoryEvent(time=now_ms, ip=ip, action=REAPED, role=STANDBY_ROLE, master=primary.ip,
                        generation=generation, detail=detail)


def _date(ms: int) -> str:
    d = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def record_json(event: HistoryEvent, zk_seq: int | str | None = None) -> dict[str, Any]:
    """The record as manatee-history prints it (keys in the guide's order)."""
    rec: dict[str, Any] = {
        "time": str(event.time), "date": _date(event.time), "ip": event.ip, "action": event.action,
        "role": event.role, "master": event.master, "slave": event.slave,
    }
    if zk_seq is not None:
        rec["zkSeq"] = f"{int(zk_seq):010d}"
    if event.generation is not None:
        rec["generation"] = event.generation
    if event.detail is not None:
        rec["detail"] = event.detail
    return rec


def record_data(event: HistoryEvent) -> bytes:
    """The znode data to create (no zkSeq: ZooKeeper has not assigned it yet)."""
    return json.dumps(record_json(event)).encode()


def znode_prefix(event: HistoryEvent) -> str:
    """Name prefix for a sequential create: '<time>-<ip>-<action>-<role>-<master>-<slave>-'."""
    return f"{event.time}-{event.ip}-{event.action}-{event.role}-{event.master}-{event.slave}-"


def parse_record(name: str, data: bytes | str | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A history znode → the guide's record. The name alone suffices (v1 records had no data);
    fields in the data win over the name's, `zkSeq` always comes from the name.
    Raises ValueError naming the znode if neither gives a record."""
    head, sep, seq = name.rpartition("-")
    if not sep or not seq.isdigit():
        raise ValueError(f"history node {name!r}: expected '<time>-<ip>-<action>-<role>-<master>-<slave>-<seq>'")
    parts = head.split("-")
    if len(parts) != 6 or not parts[0].isdigit():
        raise ValueError(f"history node {name!r}: expected 6 '-'-separated fields before the sequence")
    t, ip, action, role, master, slave = parts
    rec: dict[str, Any] = {"time": t, "date": _date(int(t)), "ip": ip, "action": action, "role": role,
                           "master": master, "slave": slave}
    if isinstance(data, (bytes, str)) and data:
        try:
            data = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            data = None
    if isinstance(data, Mapping):
        for k in FIELDS[:-1]:
            if k in data and data[k] is not None:
                rec[k] = str(data[k])
        if isinstance(data.get("generation"), int):
            rec["generation"] = data["generation"]
        if isinstance(data.get("detail"), str):
            rec["detail"] = data["detail"]
    rec["zkSeq"] = f"{int(seq):010d}"
    out = {k: rec[k] for k in FIELDS}
    for k in ("generation", "detail"):
        if k in rec:
            out[k] = rec[k]
    return out


def reaped_addresses(names: Iterable[str]) -> frozenset[str]:
    """The addresses an operator reaped (`manatee-adm reap`) that no history record has named
    since: their newest mention, as ip, master or slave, is their own Reaped record. A node that
    came back records flips again (and its upstream names it), so it is not among them. Names
    that do not parse are skipped."""
    recs = []
    for n in names:
        try:
            recs.append(parse_record(n))
        except ValueError:
            continue
    latest: dict[str, bool] = {}
    for rec in sort_records(recs):
        for a in {rec["ip"], rec["master"], rec["slave"]} - {""}:
            latest[a] = rec["action"] == REAPED and rec["ip"] == a
    return frozenset(a for a, reaped in latest.items() if reaped)


def sort_records(records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Records in zkSeq order (the order ZooKeeper created them; times may interleave)."""
    return sorted(records, key=lambda r: int(r["zkSeq"]))
