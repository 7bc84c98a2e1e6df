"""The shard's persisted topology and the sitter's target role, as plain data.

Why persisted state at all: v1 took the topology from the order in which nodes joined the
ZooKeeper election, so after simultaneous restarts a stale async could lead (the guide's
safe-mode scenario). Here the authoritative topology is `<shardPath>/state`, written only
by compare-and-set on its znode version, and the election only says who is alive.

Everything in this module is pure: parsing, validation and (de)serialisation, no I/O.
JSON keys are the original v2's (`generation, primary, sync, async, deposed, initWal,
freeze, oneNodeWriteMode`; each peer `{id, zoneId, ip, pgUrl, backupUrl, statusUrl}`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from enum import StrEnum
from collections.abc import Iterable, Mapping
from typing import Any

from manatee.core.lsn import format_lsn, parse_lsn

__all__ = [
    "CONNECTED", "SUSPENDED", "LOST", "ZK_STATES",
    "ZkSession", "Role", "Place", "UNASSIGNED", "PRIMARY", "STANDBY", "DEPOSED", "FENCED", "SAFE_MODE", "REBUILD", "ROLES",
    "StateError", "Peer", "Freeze", "Switchover", "ClusterState", "Target",
    "parse_election_name", "election_order", "parse_election", "parse_election_nodes", "dedupe_peers",
    "decode_node", "parse_state", "parse_error_node", "error_record",
    "format_lsn", "parse_lsn",
]

# ZooKeeper session as the sitter sees it.
class ZkSession(StrEnum):
    CONNECTED = "connected"  # session alive and the link up
    SUSPENDED = "suspended"  # link lost; the session may still be alive on the server
    LOST = "lost"            # the server expired the session: our ephemeral nodes are gone


CONNECTED, SUSPENDED, LOST = ZkSession.CONNECTED, ZkSession.SUSPENDED, ZkSession.LOST
ZK_STATES = tuple(ZkSession)


class Role(StrEnum):
    """Local target roles (what this node's PostgreSQL should be doing)."""
    UNASSIGNED = "unassigned"  # wait: PG stopped, or left running as a (read-only) standby
    PRIMARY = "primary"        # the head of the chain
    STANDBY = "standby"        # streams from `upstream` (sync or async: the state says which)
    DEPOSED = "deposed"        # a former primary: PG stopped until it rejoins at the tail
    FENCED = "fenced"          # a primary whose ZooKeeper session expired: PG killed at once
    SAFE_MODE = "safe_mode"    # the shard's error node exists: read-only, change nothing
    REBUILD = "rebuild"        # WAL diverged or data missing: restore from `upstream`


class Place(StrEnum):
    """Where a peer sits in the persisted state."""
    PRIMARY = "primary"
    SYNC = "sync"
    ASYNC = "async"
    DEPOSED = "deposed"


UNASSIGNED, PRIMARY, STANDBY, DEPOSED = Role.UNASSIGNED, Role.PRIMARY, Role.STANDBY, Role.DEPOSED
FENCED, SAFE_MODE, REBUILD = Role.FENCED, Role.SAFE_MODE, Role.REBUILD
ROLES = tuple(Role)


class StateError(ValueError):
    """Malformed persisted state; the message names the field."""


def _tags(t: Any, where: str) -> dict[str, Any]:
    """A peer's tags; malformed tags are an error (unknown is not a fact: a node whose tags
    cannot be read is not treated as untagged)."""
    if t is None:
        return {}
    if not isinstance(t, Mapping) or set(t) - {"nofailover", "nosync", "priority"}:
        raise StateError(f"{where}.tags: expected an object of nofailover, nosync, priority, got {t!r}")
    out: dict[str, Any] = {}
    for k in ("nofailover", "nosync"):
        if k in t:
            if not isinstance(t[k], bool):
                raise StateError(f"{where}.tags.{k}: expected a boolean, got {t[k]!r}")
            out[k] = t[k]
    if "priority" in t:
        if not isinstance(t["priority"], int) or isinstance(t["priority"], bool):
            raise StateError(f"{where}.tags.priority: expected an integer, got {t['priority']!r}")
        out["priority"] = t["priority"]
    return out


UNKNOWN_MEMORY = "unknown"  # Peer.remembers of an election node that does not say


def _remembers(d: Mapping[str, Any], where: str) -> int | None | str:
    """An election node's "remembers": a generation (>= 1), null (no data of the shard), or
    absent (UNKNOWN_MEMORY). Anything else is malformed."""
    if "remembers" not in d:
        return UNKNOWN_MEMORY
    v = d["remembers"]
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise StateError(f"{where}.remembers: expected a generation (an integer >= 1) or null, got {v!r}")
    return v


def _req(d: Mapping[str, Any], key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(d, Mapping):
        raise StateError(f"{where}: expected a JSON object, got {type(d).__name__}")
    if key not in d:
        raise StateError(f"{where}.{key}: missing")
    v = d[key]
    if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
        raise StateError(f"{where}.{key}: expected {getattr(kind, '__name__', kind)}, got {v!r}")
    return v


@dataclass(frozen=True)
class Peer:
    """One sitter of the shard. `id` is its election name prefix `ip:pgPort:backupPort:statusPort`."""

    id: str
    zone_id: str
    ip: str
    pg_url: str
    backup_url: str
    status_url: str = ""
    # Node tags (the sitter config's `tags`, published in the election node; not part of a
    # peer's identity): nofailover = never sync, never primary; nosync = never sync;
    # priority orders the nodes eligible as the next sync (higher first).
    nofailover: bool = field(default=False, compare=False)
    nosync: bool = field(default=False, compare=False)
    priority: int = field(default=0, compare=False)
    # What the peer's election node says its data belongs to (the shell's memory,
    # manatee.sitter.statememory): the newest generation of this shard it knows, None when it
    # holds no data of the shard, UNKNOWN_MEMORY when the node does not say (an older sitter).
    # Not part of the state's JSON: only the election node carries it ("remembers").
    remembers: int | None | str = field(default=None, compare=False)

    @property
    def can_sync(self) -> bool:
        """May be named sync (and so, later, take over as primary)."""
        return not (self.nofailover or self.nosync)

    def tags_json(self) -> dict[str, Any]:
        return {k: v for k, v in (("nofailover", self.nofailover), ("nosync", self.nosync),
                                  ("priority", self.priority)) if v}

    def to_json(self) -> dict[str, Any]:
        d = {"id": self.id, "zoneId": self.zone_id, "ip": self.ip, "pgUrl": self.pg_url,
             "backupUrl": self.backup_url, "statusUrl": self.status_url}
        tags = self.tags_json()
        return {**d, "tags": tags} if tags else d

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str = "peer") -> Peer:
        return cls(
            id=_req(d, "id", where, str),
            zone_id=_req(d, "zoneId", where, str),
            ip=_req(d, "ip", where, str),
            pg_url=_req(d, "pgUrl", where, str),
            backup_url=_req(d, "backupUrl", where, str),
            status_url=d.get("statusUrl", "") if isinstance(d.get("statusUrl", ""), str) else "",
            **_tags(d.get("tags"), where),
        )

    @classmethod
    def from_election(cls, peer_id: str, data: Mapping[str, Any], where: str | None = None) -> Peer:
        """From an election znode: its name gives the id, its data the rest (and what it
        remembers: absent is unknown, never "nothing")."""
        where = where or f"election/{peer_id}"
        peer = cls.from_json({**data, "id": peer_id}, where=where)
        return replace(peer, remembers=_remembers(data, where))

    def __str__(self) -> str:
        return self.ip or self.id


@dataclass(frozen=True)
class Freeze:
    """An operator's freeze: while set, nobody writes the state."""

    reason: str
    by: str = ""
    time: str = ""

    def to_json(self) -> dict[str, str]:
        return {"reason": self.reason, "by": self.by, "time": self.time}

    @classmethod
    def from_json(cls, d: Any) -> Freeze | None:
        if d is None:
            return None
        if not isinstance(d, Mapping):
            raise StateError(f"state.freeze: expected null or an object, got {d!r}")
        return cls(reason=str(d.get("reason", "")), by=str(d.get("by", "")), time=str(d.get("time", "")))


@dataclass(frozen=True)
class Switchover:
    """An operator's request for a planned takeover by the sync (`manatee-adm switchover`).

    `to` is the sync's peer id. The primary goes read-only, waits until the sync has flushed
    its WAL, stops its PostgreSQL and then sets `released` with the WAL position the sync had
    flushed (`releasedWal`); only then may the sync take over, by the usual takeover rule.
    Absent (None) in states written before this existed: no request."""

    to: str
    requested: str = ""
    by: str = ""
    released: bool = False
    released_wal: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"to": self.to, "requested": self.requested, "by": self.by, "released": self.released,
                "releasedWal": format_lsn(self.released_wal)}

    @classmethod
    def from_json(cls, d: Any) -> Switchover | None:
        if d is None:
            return None
        if not isinstance(d, Mapping) or not isinstance(d.get("to"), str) or not d.get("to"):
            raise StateError(f"state.switchover: expected null or an object with a peer id 'to', got {d!r}")
        try:
            wal = parse_lsn(d.get("releasedWal", "0/0"))
        except ValueError as e:
            raise StateError(f"state.switchover.releasedWal: {e}") from None
        return cls(to=d["to"], requested=str(d.get("requested", "")), by=str(d.get("by", "")),
                   released=d.get("released") is True, released_wal=wal)


@dataclass(frozen=True)
class ClusterState:
    """The authoritative topology: primary → sync → async..., plus deposed former primaries.

    `init_wal` is the WAL position the primary had when it named the current sync: the sync
    may take over only once it has received at least that much (S2, S3). `generation` goes
    up by one whenever the primary or the sync changes.
    """

    generation: int
    primary: Peer
    sync: Peer | None = None
    async_: tuple[Peer, ...] = ()
    deposed: tuple[Peer, ...] = ()
    init_wal: int = 0
    freeze: Freeze | None = None
    one_node_write_mode: bool = False
    switchover: Switchover | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.generation, int) or self.generation < 1:
            raise StateError(f"state.generation: must be an integer >= 1, got {self.generation!r}")
        if not isinstance(self.init_wal, int) or self.init_wal < 0:
            raise StateError(f"state.initWal: must be a WAL position, got {self.init_wal!r}")
        seen: dict[str, str] = {}
        for place, peers in (("primary", (self.primary,)), ("sync", (self.sync,) if self.sync else ()),
                             ("async", self.async_), ("deposed", self.deposed)):
            for p in peers:
                if p.id in seen:
                    raise StateError(f"state.{place}: peer {p.id} is also listed as {seen[p.id]}")
                seen[p.id] = place

    # -- queries ---------------------------------------------------------------------------
    def chain(self) -> tuple[Peer, ...]:
        """primary, sync (if any), asyncs: the daisy chain in replication order."""
        return (self.primary, *((self.sync,) if self.sync else ()), *self.async_)

    def place_of(self, peer_id: str) -> Place | None:
        """Place.PRIMARY | SYNC | ASYNC | DEPOSED (each equal to its lower-case string) | None."""
        if self.primary.id == peer_id:
            return Place.PRIMARY
        if self.sync is not None and self.sync.id == peer_id:
            return Place.SYNC
        if any(p.id == peer_id for p in self.async_):
            return Place.ASYNC
        if any(p.id == peer_id for p in self.deposed):
            return Place.DEPOSED
        return None

    def members(self) -> tuple[Peer, ...]:
        return (*self.chain(), *self.deposed)

    @property
    def frozen(self) -> bool:
        return self.freeze is not None

    def evolve(self, **changes: Any) -> ClusterState:
        return replace(self, **changes)

    # -- JSON ------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "primary": self.primary.to_json(),
            "sync": self.sync.to_json() if self.sync else None,
            "async": [p.to_json() for p in self.async_],
            "deposed": [p.to_json() for p in self.deposed],
            "initWal": format_lsn(self.init_wal),
            "freeze": self.freeze.to_json() if self.freeze else None,
            "oneNodeWriteMode": self.one_node_write_mode,
            # written only while a request is pending, so older readers see the v2 shape
            **({"switchover": self.switchover.to_json()} if self.switchover else {}),
        }

    def dumps(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=False).encode()

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ClusterState:
        gen = _req(d, "generation", "state", int)
        primary = Peer.from_json(_req(d, "primary", "state", dict), "state.primary")
        sync_raw = d.get("sync")
        sync = Peer.from_json(sync_raw, "state.sync") if sync_raw is not None else None
        asyncs = d.get("async", [])
        deposed = d.get("deposed", [])  # absent in some v2 states (MANATEE-389)
        for key, v in (("async", asyncs), ("deposed", deposed)):
            if not isinstance(v, list):
                raise StateError(f"state.{key}: expected a list, got {v!r}")
        init_raw = d.get("initWal", "0/0")
        try:
            init_wal = parse_lsn(init_raw)
        except ValueError as e:
            raise StateError(f"state.initWal: {e}") from None
        onwm = d.get("oneNodeWriteMode", False)
        if not isinstance(onwm, bool):
            raise StateError(f"state.oneNodeWriteMode: expected true/false, got {onwm!r}")
        return cls(
            generation=gen, primary=primary, sync=sync,
            async_=tuple(Peer.from_json(p, f"state.async[{i}]") for i, p in enumerate(asyncs)),
            deposed=tuple(Peer.from_json(p, f"state.deposed[{i}]") for i, p in enumerate(deposed)),
            init_wal=init_wal, freeze=Freeze.from_json(d.get("freeze")), one_node_write_mode=onwm,
            switchover=Switchover.from_json(d.get("switchover")),
        )

    @classmethod
    def loads(cls, raw: bytes | str) -> ClusterState:
        try:
            d = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise StateError(f"state: not JSON ({e})") from None
        return cls.from_json(d)


@dataclass(frozen=True)
class Target:
    """What this node's PostgreSQL should be doing.

    upstream: whom a standby (or rebuild) streams / restores from; None for a standby means
      "detached" (no primary_conninfo: nothing more can arrive).
    sync: the primary's synchronous standby (synchronous_standby_names), None otherwise.
    downstream: the next live node behind me in the chain (heartbeats and history).
    read_only: default_transaction_read_only on a primary; always True for other roles.
    then: for a detached standby about to take over, the primary target it expects to take
      (its sync and mode are configured ahead; PostgreSQL ignores them until the promotion).
    """

    role: str
    upstream: Peer | None = None
    sync: Peer | None = None
    downstream: Peer | None = None
    read_only: bool = True
    then: Target | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}; one of {', '.join(ROLES)}")
        if self.role != PRIMARY and not self.read_only:
            raise ValueError(f"only a primary may be read-write, not {self.role}")
        if self.then is not None and not (self.role == STANDBY and self.upstream is None
                                          and self.then.role == PRIMARY):
            raise ValueError("only a detached standby may prepare a primary target")

    def describe(self) -> str:
        if self.role == PRIMARY:
            mode = "read-only" if self.read_only else "read-write"
            return f"primary ({mode}, sync {self.sync or 'none'})"
        if self.role in (STANDBY, REBUILD):
            return f"{self.role} of {self.upstream or 'nobody (detached)'}"
        return self.role


# -- election helpers (pure: the shell lists the children, these order them) ---------------
_SEQ = re.compile(r"^(?P<id>.+)-(?P<seq>\d{10})$")


def parse_election_name(name: str) -> tuple[str, int]:
    """'10.0.0.1:5432:10002:5433-0000000007' → ('10.0.0.1:5432:10002:5433', 7)."""
    m = _SEQ.match(name)
    if not m:
        raise StateError(f"election node {name!r}: expected '<ip:pgPort:backupPort:statusPort>-<10-digit seq>'")
    return m.group("id"), int(m.group("seq"))


def dedupe_peers(peers: Iterable[Peer]) -> tuple[Peer, ...]:
    """Peers in join order, one per id: a peer listed twice (a sitter that restarted before
    its old ephemeral node expired) keeps only its latest (last) entry and position."""
    last: dict[str, int] = {}
    plist = list(peers)
    for i, p in enumerate(plist):
        last[p.id] = i
    return tuple(p for i, p in enumerate(plist) if last[p.id] == i)


def election_order(children: Mapping[str, Mapping[str, Any]]) -> tuple[Peer, ...]:
    """Election znodes {name: data} → live peers in join order (sequence), deduped by id."""
    parsed = sorted((parse_election_name(n)[1], parse_election_name(n)[0], d) for n, d in children.items())
    return dedupe_peers(Peer.from_election(pid, data) for _seq, pid, data in parsed)


def parse_election(children: Mapping[str, Any]) -> tuple[tuple[Peer, ...], tuple[tuple[str, str], ...]]:
    """Election znodes {name: data} → (live peers in join order, quarantined).

    Unlike `election_order`, a malformed node (bad name, data not a JSON object, a field
    missing or of the wrong type) does not spoil the rest: it is left out and listed in
    `quarantined` as (name, why), sorted by name. Any ZooKeeper client can create such a
    node; one of them must not stop every sitter's cycle (and with it every failover)."""
    good: list[tuple[int, Peer]] = []
    bad: list[tuple[str, str]] = []
    for name, data in children.items():
        try:
            pid, seq = parse_election_name(name)
            if not isinstance(data, Mapping):
                raise StateError(f"election/{name}: expected a JSON object, got "
                                 f"{'nothing' if data is None else type(data).__name__}")
            good.append((seq, Peer.from_election(pid, data, where=f"election/{name}")))
        except StateError as e:
            bad.append((name, str(e)))
    good.sort(key=lambda sp: sp[0])
    return dedupe_peers(p for _seq, p in good), tuple(sorted(bad))


def decode_node(raw: bytes | None, where: str) -> Any:
    """A znode's data → its JSON value (None for an empty node). StateError naming `where`
    for data that is not JSON: the one decoder of every shard record."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise StateError(f"{where}: not JSON ({e})") from None


def parse_state(raw: bytes | None) -> ClusterState:
    """The state znode's data → ClusterState; StateError (naming the field) when it cannot be
    read, an empty node included: a state node that exists is never "no state"."""
    if not raw:
        raise StateError("state: the znode is empty")
    return ClusterState.loads(raw)


def parse_election_nodes(raws: Mapping[str, bytes | None]) -> tuple[tuple[Peer, ...], tuple[tuple[str, str], ...]]:
    """Election znodes {name: raw data} → (live peers in join order, quarantined (name, why)):
    `parse_election` after decoding each node's JSON (undecodable data is quarantined too)."""
    children: dict[str, Any] = {}
    bad: list[tuple[str, str]] = []
    for name, raw in raws.items():
        try:
            children[name] = decode_node(raw, f"election/{name}")
        except StateError as e:
            bad.append((name, str(e)))
    peers, rejected = parse_election(children)
    return peers, tuple(sorted((*bad, *rejected)))


def parse_error_node(raw: bytes | None) -> tuple[dict[str, Any], str | None]:
    """The safe-mode node's data → (its record, why it could not be read or None). A node
    that exists is safe mode whatever it holds: unreadable data gives a record whose reason
    says so ({} for an empty node)."""
    try:
        data = decode_node(raw, "error")
    except StateError as e:
        why = str(e)
        return {"reason": f"the error node exists but cannot be parsed: {why}"}, why
    if data is None:
        return {}, None
    return (data, None) if isinstance(data, dict) else ({"reason": str(data)}, None)


def error_record(state: ClusterState | None, me: Peer, reason: str) -> dict[str, str]:
    """The safe-mode node's data, as the guide shows it plus a reason: {primary, zoneId, standby, reason}."""
    return {
        "primary": state.primary.ip if state else "",
        "zoneId": state.primary.zone_id if state else "",
        "standby": me.ip,
        "reason": reason,
    }

