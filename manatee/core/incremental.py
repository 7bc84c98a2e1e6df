"""Incremental rebuilds: which snapshot two copies of a dataset share, and what a stream is.

A node that must be rebuilt usually shares a snapshot with its upstream: after its
first rebuild its dataset carries the upstream's (received) snapshots, and an old
primary's own snapshots were received by the standby it fed. ZFS keeps a snapshot's
`guid` through `zfs send | zfs recv`, so two snapshots with the same guid hold the
same bytes whatever they are called on either side. Then only the blocks written
since that snapshot need to travel: `zfs send -i <common> <fresh>`.

The protocol (backward compatible both ways):
  * the requester lists its snapshots (name + guid) in the backup request's optional
    `snapshots` field (newest first, at most MAX_OFFERED);
  * the backupserver picks the newest of its own snapshots whose guid is offered
    (newest_common), holds it, and sends an increment from it; the job's JSON says
    `incremental: {"from": ..., "guid": ...}` (null for a full stream);
  * the requester does not trust either: it reads the stream's own header
    (parse_stream_header: DRR_BEGIN's fromguid, 0 for a full stream) and prepares
    its side from that. An old server that ignores the field sends a full stream, and
    the header says so.

Which member sends: a node whose upstream shares no snapshot with it (an old primary
rejoining behind the former async) may take the increment from a member ahead of its
upstream that does (choose_source; the questions are manatee.core.restore.source's,
`POST /snapshots/common`; docs/design.md "Incremental rebuild from another member").

Everything here is pure (no I/O): the shell is manatee.core.restore (receiver) and
manatee.backupserver.sender (sender).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from manatee.core.zfs import Snapshot

MAX_OFFERED = 500  # snapshots a requester offers (newest first); the server accepts up to MAX_ACCEPTED
MAX_ACCEPTED = 1000
GUID_RE = re.compile(r"[0-9]{1,20}")
GUID_MAX = 2**64 - 1

# dmu_replay_record: u32 drr_type, u32 drr_payloadlen, then drr_begin: u64 magic,
# u64 versioninfo, u64 creation_time, u32 objset type, u32 flags, u64 toguid, u64 fromguid,
# char toname[]. Byte order is the sender's; the magic tells which.
DMU_BACKUP_MAGIC = 0x2F5BACBAC
DRR_BEGIN = 0
STREAM_HEADER_LEN = 56
TONAME_LEN = 256


@dataclass(frozen=True)
class SnapshotRef:
    """A snapshot as offered in a backup request: its short name and its guid (decimal string)."""

    name: str
    guid: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "guid": self.guid}


@dataclass(frozen=True)
class StreamHeader:
    """What the first record of a `zfs send` stream says."""

    toguid: int
    fromguid: int
    toname: str = ""

    @property
    def incremental(self) -> bool:
        return self.fromguid != 0


class NotAStream(ValueError):
    """The bytes do not start with a zfs send stream's BEGIN record."""


def offered(snapshots: Sequence[tuple[Snapshot, str]], limit: int = MAX_OFFERED) -> list[SnapshotRef]:
    """What a requester offers: its snapshots with a guid, newest first, at most `limit`."""
    return [SnapshotRef(s.name, guid) for s, guid in snapshots[:limit] if guid]


def newest_common(
    ours: Iterable[tuple[Snapshot, str]], theirs: Iterable[SnapshotRef]
) -> Optional[tuple[Snapshot, str]]:
    """Our newest snapshot whose guid the peer also has, or None.

    Matching is by guid only: names differ when a snapshot was renamed, and two nodes'
    snapshotters may pick the same epoch-ms name for different data. Newest is by our
    creation time (a received snapshot keeps the sender's), ties broken by name.
    """
    wanted = {r.guid for r in theirs}
    best: Optional[tuple[Snapshot, str]] = None
    for snap, guid in ours:
        if guid and guid in wanted:
            if best is None or (snap.creation, snap.name) > (best[0].creation, best[0].name):
                best = (snap, guid)
    return best


def find_guid(snapshots: Iterable[tuple[Snapshot, str]], guid: int) -> Optional[Snapshot]:
    """The snapshot with this guid (the base an incremental stream needs), or None."""
    want = str(guid)
    for snap, g in snapshots:
        if g == want:
            return snap
    return None


def parse_stream_header(data: bytes) -> StreamHeader:
    """Decode DRR_BEGIN from the first bytes of a stream (at least STREAM_HEADER_LEN)."""
    if len(data) < STREAM_HEADER_LEN:
        raise NotAStream(f"stream header needs {STREAM_HEADER_LEN} bytes, got {len(data)}")
    for order in ("<", ">"):
        drr_type, _payload, magic = struct.unpack_from(order + "IIQ", data, 0)
        if magic == DMU_BACKUP_MAGIC:
            break
    else:
        raise NotAStream(f"no zfs send stream magic in {data[:16].hex()}")
    if drr_type != DRR_BEGIN:
        raise NotAStream(f"first record is of type {drr_type}, not BEGIN")
    toguid, fromguid = struct.unpack_from(order + "QQ", data, 40)
    toname = data[56 : 56 + TONAME_LEN].split(b"\0", 1)[0].decode(errors="replace")
    return StreamHeader(toguid=toguid, fromguid=fromguid, toname=toname)


def describe_path(incremental_from: Optional[str]) -> str:
    """`full` or `incremental from <snapshot>`: what /state and the history show."""
    return f"incremental from {incremental_from}" if incremental_from else "full"


# ------------------------------------------------------------------ which member sends

@dataclass(frozen=True)
class CommonSnapshot:
    """What a member's backupserver answers to an offer (POST /snapshots/common): the newest
    of its snapshots whose guid we offered, with its creation time (seconds)."""

    name: str
    guid: str
    creation: int


@dataclass(frozen=True)
class SourceOffer:
    """One member that could send the stream, as learned by offering it our snapshots.

    `known` False: we could not learn what it shares (an old backupserver without the
    question, a timeout, an unparsable answer); `why_unknown` says which. `common` None
    with `known` True: it shares no snapshot with us.
    """

    name: str
    common: Optional[CommonSnapshot] = None
    known: bool = True
    why_unknown: str = ""
    silent: bool = False  # no answer at all (a timeout, a refused connection): not an old backupserver


@dataclass(frozen=True)
class SourceChoice:
    """The member to stream from (`name`, one of the offers) and why, for the history and /state."""

    name: str
    reason: str
    expects_incremental: bool


def choose_source(upstream: SourceOffer, others: Sequence[SourceOffer]) -> SourceChoice:
    """Whom a node being rebuilt takes its stream from.

    `others` are the members ahead of the upstream in the chain (normally the primary),
    nearest first; only they can be used instead of the upstream, because their data is
    at least as new as the upstream's (see docs/design.md, "Incremental rebuild from
    another member"). The rules:
      1. the upstream shares a snapshot, or what it shares is unknown → the upstream
         (unknown is not a fact: an old backupserver is still asked, with the offer, and
         may send an increment or a full stream as before);
      2. the upstream shares none → the other member with the newest common snapshot
         (ties: the nearest), for an increment from it;
      3. nobody shares one → the upstream, in full;
      4. but an upstream that gave no answer at all (its backupserver hung or down: the
         stream request would hang or fail the same way, again at every retry) is passed
         over for a member ahead that did answer: an increment from it if it shares a
         snapshot, else a full stream from it (sandbox trial 2026-12-05: an async's rebuild
         retried a hung upstream for minutes while the primary could have sent it).
    """
    silent = not upstream.known and upstream.silent
    answered = [o for o in others if o.known] if silent else []
    if not upstream.known and not answered:
        return SourceChoice(upstream.name, f"could not ask the upstream {upstream.name} which snapshots it "
                                           f"shares ({upstream.why_unknown}): asking it for the stream",
                            expects_incremental=False)
    if upstream.common is not None:
        return SourceChoice(upstream.name, f"the upstream {upstream.name} shares snapshot "
                                           f"{upstream.common.name}", expects_incremental=True)
    why = f"does not answer ({upstream.why_unknown})" if silent else "shares no snapshot"
    best = _newest_common(others)
    if best is not None:
        assert best.common is not None
        return SourceChoice(best.name, f"from {best.name} at {best.common.name}: the upstream "
                                       f"{upstream.name} {why}", expects_incremental=True)
    if answered:
        return SourceChoice(answered[0].name, f"a full stream from {answered[0].name}: the upstream "
                                              f"{upstream.name} {why} and {answered[0].name} shares no "
                                              f"snapshot with this node", expects_incremental=False)
    unknown = [o.name for o in others if not o.known]
    tail = f" (not known for {', '.join(unknown)})" if unknown else ""
    return SourceChoice(upstream.name, f"no member shares a snapshot with this node{tail}: "
                                       f"a full stream from the upstream {upstream.name}",
                        expects_incremental=False)


def _newest_common(others: Sequence[SourceOffer]) -> Optional[SourceOffer]:
    """The member that shares the newest snapshot with us (ties: the nearest), or None."""
    best: Optional[SourceOffer] = None
    for o in others:
        if o.known and o.common is not None and (best is None or o.common.creation > best.common.creation):
            best = o
    return best


def common_to_json(common: Optional[tuple[Snapshot, str]]) -> Optional[dict[str, object]]:
    """The backupserver's answer to an offer: `{"name", "guid", "creation"}` or null."""
    if common is None:
        return None
    snap, guid = common
    return {"name": snap.name, "guid": guid, "creation": snap.creation}


def common_from_json(doc: object) -> Optional[CommonSnapshot]:
    """Parse that answer's `common`; ValueError naming what is wrong (the caller: unknown)."""
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise ValueError(f"common must be an object or null, got {type(doc).__name__}")
    name, guid, creation = doc.get("name"), doc.get("guid"), doc.get("creation")
    if not isinstance(name, str) or not name:
        raise ValueError(f"common.name must be a snapshot name, got {name!r}"[:200])
    if not isinstance(guid, str) or not GUID_RE.fullmatch(guid):
        raise ValueError(f"common.guid must be a decimal string, got {guid!r}"[:200])
    if not isinstance(creation, int) or isinstance(creation, bool):
        raise ValueError(f"common.creation must be an integer, got {creation!r}"[:200])
    return CommonSnapshot(name, guid, creation)
