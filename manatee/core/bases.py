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

The decisions here are pure; `mark_base` is the shell (two zfs calls and one per
changed snapshot).
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any, Collection, Mapping

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
