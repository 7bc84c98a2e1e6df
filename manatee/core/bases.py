"""Base snapshots: the newest snapshot this node shares with each peer, kept past retention.

An incremental rebuild needs a snapshot both copies hold (same guid), and two copies
only share a snapshot that went from one to the other by `zfs send | zfs recv`: the
one a rebuild received. Without more, the snapshotters prune it like any other after
`snapshotNumber` polls (about two days at the defaults), and every later rebuild (an old
primary rejoining after a failover, a standby whose disk was damaged) is a full stream.

So each end of a completed stream records it on the snapshot itself, in the user
property `manatee:bases` (a comma-separated list of peer addresses): the sender marks
the snapshot it sent with the receiver's address, the receiver marks the snapshot it
received with the sender's. A newer exchange with a peer moves its mark to the newer
snapshot; the sender of an increment also keeps the mark on the increment's base (the
receiver proved it has that one by offering it; if its receive fails it still has only
that one). The snapshotter keeps every marked snapshot
past its retention count, except under disk pressure (then only the newest snapshot
stays, as before: space for PostgreSQL comes first, and the next rebuild is full).

What this costs: a kept base pins the blocks overwritten since it was taken, at most
about the dataset's size; the increment it saves is the blocks written since, at most a
full stream. Marks are best effort: a mark that cannot be written means a full stream
later, never a wrong one (the stream's header decides what is received).

Stale marks. A mark outlives the sharing when the peer no longer holds the snapshot: it
was rebuilt in full from another node since (its old dataset, with our common snapshot, is
gone), or the mark is on an increment's base the receiver has since dropped. The
backupserver asks each member named in a mark, one snapshot at a time, whether it still
holds that snapshot (`POST /snapshots/common` offering exactly it), and releases the
peer's mark when the peer itself answered "no" at two consecutive checks (`stale_marks`).
Nothing else releases a mark: an unknown answer, an address that is not a member now
(a peer gone for good: released by hand), a value that is not a list of addresses all
keep it.

The decisions here are pure; `mark_base` is the shell of marking (two zfs calls and one
per changed snapshot), manatee.backupserver.basecheck that of the check.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Collection, Mapping, Optional

from manatee.core.incremental import SourceOffer

BASES_PROP = "manatee:bases"
MARK_TIMEOUT_S = 30.0  # the whole marking, every zfs call included


def peer_key(address: str) -> str | None:
    """The canonical form of a peer's address, or None if it is not an IP address."""
    try:
        return ipaddress.ip_address(address.strip().strip("[]")).compressed
    except ValueError:
        return None


def parse_bases(value: str) -> frozenset[str]:
    """The peers a `manatee:bases` value names. Unset ("-", "") is none; entries that are
    not IP addresses are dropped here (the snapshot still counts as marked: `is_marked`)."""
    if value in ("", "-"):
        return frozenset()
    return frozenset(k for k in (peer_key(p) for p in value.split(",")) if k)


def render_bases(peers: frozenset[str]) -> str:
    return ",".join(sorted(peers))


def is_marked(value: str) -> bool:
    """True if the snapshot carries a mark we must not prune. Any local value counts,
    even one that does not parse: a value we cannot read is not a reason to destroy."""
    return value not in ("", "-")


def bases_by_peer(marks: Mapping[str, str]) -> dict[str, str]:
    """Peer address -> the snapshot's short name, from `Zfs.snapshot_bases`' {full name: value}
    (what /state shows; a value that names no address shows under its raw text)."""
    out: dict[str, str] = {}
    for full, value in sorted(marks.items()):
        if not is_marked(value):
            continue
        peers = parse_bases(value) or {value}
        for peer in peers:
            out[peer] = full.partition("@")[2]
    return out


def marks_for(current: Mapping[str, str], snapshot: str, peer: str,
              keep: Collection[str] = ()) -> dict[str, str | None]:
    """The `manatee:bases` values to write so that `snapshot` (full name) is the base for
    `peer` and no other snapshot is, except those in `keep` that are already marked for it:
    {snapshot full name: new value, None to clear}.

    `current` maps each snapshot of the dataset to its local value ("-" when unset).
    Snapshots whose value does not change are left out.
    """
    key = peer_key(peer)
    if key is None:
        raise ValueError(f"not an IP address: {peer!r}")
    out: dict[str, str | None] = {}
    for name, value in current.items():
        if name == snapshot or name in keep:
            continue
        peers = parse_bases(value)
        if key in peers:
            rest = peers - {key}
            out[name] = render_bases(rest) if rest else None
    mine = parse_bases(current.get(snapshot, "-"))
    if key not in mine:
        out[snapshot] = render_bases(mine | {key})
    return out


async def mark_base(zfs: Any, dataset: str, snapshot: str, peer: str, log: Any,
                    timeout: float = MARK_TIMEOUT_S, keep: Collection[str] = ()) -> bool:
    """Record that `snapshot` is the newest snapshot `dataset` shares with `peer` (the marks
    on `keep` stay too). Best effort, bounded by `timeout`: a failure is logged and
    returns False."""
    try:
        async with asyncio.timeout(timeout):
            current = await zfs.snapshot_bases(dataset)
            changes = marks_for(current, snapshot, peer, keep)
            for name, value in sorted(changes.items(), key=lambda kv: kv[0] != snapshot):
                if value is None:
                    await zfs.inherit(name, BASES_PROP)
                else:
                    await zfs.set(name, BASES_PROP, value)
    except asyncio.CancelledError:
        raise
    except Exception as e:  # noqa: BLE001 - a missing mark only costs a full stream later
        log.warning("base_mark_failed", snapshot=snapshot, peer=peer, error=str(e) or repr(e))
        return False
    log.info("base_marked", snapshot=snapshot, peer=peer,
             moved_from=sorted(n for n in changes if n != snapshot))
    return True


# ------------------------------------------------------------------ stale marks

Mark = tuple[str, str]  # (snapshot full name, peer address): one peer's mark on one snapshot


class Held(enum.Enum):
    """What a peer answered about one snapshot we offered it (by guid)."""

    YES = "holds it"
    NO = "does not hold it"
    UNKNOWN = "could not be asked"


def held(answer: SourceOffer, guid: str) -> Held:
    """A peer's answer to an offer of exactly one snapshot (`guid`). Only a known answer of
    null is NO; an answer naming another guid is not an answer to our question."""
    if not answer.known:
        return Held.UNKNOWN
    if answer.common is None:
        return Held.NO
    return Held.YES if answer.common.guid == guid else Held.UNKNOWN


def strict_peers(value: str) -> Optional[frozenset[str]]:
    """The peers a value names if every entry is an IP address; None if any is not (such a
    value is never rewritten by the check: we cannot say what the rest of it means)."""
    if not is_marked(value):
        return frozenset()
    keys = [peer_key(p) for p in value.split(",")]
    if any(k is None for k in keys):
        return None
    return frozenset(k for k in keys if k)


def questions(marks: Mapping[str, str], askable: Collection[str]) -> list[Mark]:
    """The (snapshot, peer) marks to ask about, oldest snapshot first: each mark of a value
    made only of addresses whose peer we can ask (a member with a backupserver URL)."""
    out = []
    for snap, value in sorted(marks.items()):
        for peer in sorted(strict_peers(value) or ()):
            if peer in askable:
                out.append((snap, peer))
    return out


@dataclass(frozen=True)
class StaleCheck:
    """One check's decision: the marks to release with why, the values to write for them
    ({snapshot: new value, None to clear}), the marks found absent this time (the next
    check releases those it finds absent again), and why every other mark stays
    (mark or (snapshot, raw value) -> one of KEPT_WHY's keys)."""

    released: tuple[tuple[str, str, str], ...] = ()
    writes: dict[str, Optional[str]] = field(default_factory=dict)
    absent: frozenset[Mark] = frozenset()
    kept: dict[Mark, str] = field(default_factory=dict)


KEPT_WHY = {
    "holds": "the peer holds the snapshot",
    "absent_once": "the peer does not hold it; released if it says so again at the next check",
    "unknown": "the peer could not be asked (timeout, error, an old backupserver)",
    "not_member": "the address is not a member of the shard now (or its election node names no "
                  "backupserver URL on that address), and no operator reaped it",
    "unreadable": "the value is not a list of addresses",
}


def stale_marks(marks: Mapping[str, str], members: Collection[str], answers: Mapping[Mark, Held],
                absent_before: Collection[Mark], reaped: Collection[str] = ()) -> StaleCheck:
    """Which marks to release: those whose peer answered NO now and at the previous check
    (`absent_before`, that check's `absent`). `marks` is `Zfs.snapshot_bases`' {snapshot:
    value}, read again just before writing; `members` the addresses we could ask; a member's
    mark without an answer counts as unknown. Anything but two NOs in a row keeps the mark,
    and a YES or an unknown in between starts the count again. A non-member's mark stays,
    unless an operator reaped that address (`reaped`: history.reaped_addresses) and it has not
    come back: then it goes at once."""
    released: list[tuple[str, str, str]] = []
    writes: dict[str, Optional[str]] = {}
    absent: set[Mark] = set()
    kept: dict[Mark, str] = {}
    for snap, value in sorted(marks.items()):
        peers = strict_peers(value)
        if peers is None:
            kept[(snap, value)] = "unreadable"
            continue
        gone: set[str] = set()
        for peer in sorted(peers):
            mark = (snap, peer)
            answer = answers.get(mark, Held.UNKNOWN)
            if peer not in members and peer in reaped:
                gone.add(peer)
                released.append((snap, peer, "an operator reaped this node (manatee-adm reap) and it has "
                                             "not come back"))
            elif peer not in members:
                kept[mark] = "not_member"
            elif answer is Held.YES:
                kept[mark] = "holds"
            elif answer is Held.UNKNOWN:
                kept[mark] = "unknown"
            elif mark in absent_before:
                gone.add(peer)
                released.append((snap, peer, "the peer said at two consecutive checks that it does not "
                                             "hold this snapshot"))
            else:
                absent.add(mark)
                kept[mark] = "absent_once"
        if gone:
            rest = peers - gone
            writes[snap] = render_bases(rest) if rest else None
    return StaleCheck(tuple(released), writes, frozenset(absent), kept)
