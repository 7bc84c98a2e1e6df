"""Who may ask this backupserver for the database: the shard's members.

A backup request makes this node stream its whole dataset to an address, so both
the requester and the target host must be peers in the shard's election. It fails
closed: no `<shardPath>/election` node means no members, and a ZooKeeper error
means the request is refused (503). Election
children are named `IP:pgPort:backupPort:statusPort-SEQ` (the original's
`ip:pgPort:backupPort:hbPort-seq`); their data is JSON with an "ip" key.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable, Optional
from urllib.parse import urlsplit

from manatee.shard.history import reaped_addresses
from manatee.shard.layout import ShardLayout
from manatee.shard.state import Peer, parse_election_nodes


class MembershipUnavailable(Exception):
    """The shard's membership could not be read (e.g. ZooKeeper unreachable)."""


def _canonical(ip: str) -> str:
    try:
        addr = ipaddress.ip_address(ip.strip().strip("[]").split("%", 1)[0])
    except ValueError:
        return ip.strip()
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def ip_from_election_name(name: str) -> Optional[str]:
    """The IP of an election child name (the part before the first ':'), or None."""
    ip, sep, _ = name.partition(":")
    if not sep or not ip:
        return None
    return _canonical(ip)


def _is_no_node(exc: BaseException) -> bool:
    # Works with kazoo's NoNodeError and with a wrapper's own "no node" error.
    return type(exc).__name__ in ("NoNodeError", "NoNode", "NoNodeException")


class ShardMembership:
    """Answers `is_member(ip)` from the live election children in ZooKeeper.

    `zk` is an asyncio ZooKeeper client with `get_children(path)` and `get(path)`
    coroutines (manatee.core.zk.ZKClient). Reads are done per question: requests
    are rare and membership must be current (a deposed peer leaves the election).
    """

    def __init__(self, zk: Any, shard_path: str) -> None:
        self.zk = zk
        self.layout = ShardLayout.of(shard_path)

    async def _election(self) -> Optional[tuple[dict[str, bytes | None], tuple[Peer, ...]]]:
        """The election children's raw data and the well-formed peers among them, or None
        if the shard has no election node (shard unknown)."""
        election = self.layout.election
        try:
            children = await self.zk.get_children(election)
        except Exception as e:  # noqa: BLE001 - classify below
            if _is_no_node(e):
                return None
            raise MembershipUnavailable(f"reading {election}: {type(e).__name__}: {e}") from e
        raws: dict[str, bytes | None] = {}
        for child in children:
            path = self.layout.election_node(child)
            try:
                data = await self.zk.get(path)
            except Exception as e:  # noqa: BLE001
                if _is_no_node(e):
                    continue  # the peer left between the two reads
                raise MembershipUnavailable(f"reading {path}: {type(e).__name__}: {e}") from e
            raws[child] = data[0] if isinstance(data, tuple) else data
        # only a well-formed election node is a member, as for the sitters (a malformed
        # one, e.g. {"ip": ...} alone, is quarantined there and ignored here)
        peers, _bad = parse_election_nodes(raws)
        return raws, peers

    async def members(self) -> Optional[set[str]]:
        """The member IPs, or None if the shard has no election node (shard unknown)."""
        election = await self._election()
        if election is None:
            return None
        raws, peers = election
        by_id = {p.id: p for p in peers}
        ips: set[str] = set()
        for child in raws:
            peer = by_id.get(child.rpartition("-")[0])
            if peer is not None:
                ips.add(_canonical(peer.ip))
                if (ip := ip_from_election_name(child)):
                    ips.add(ip)
        return ips

    async def reaped(self) -> set[str]:
        """The addresses an operator reaped that have not come back (history.reaped_addresses
        over the history's znode names; no history: none). A failed read raises."""
        try:
            names = await self.zk.get_children(self.layout.history)
        except Exception as e:  # noqa: BLE001 - classify
            if _is_no_node(e):
                return set()
            raise MembershipUnavailable(f"reading {self.layout.history}: {type(e).__name__}: {e}") from e
        return {_canonical(a) for a in reaped_addresses(names)}

    async def backup_urls(self) -> dict[str, str]:
        """Each member's address -> the URL of its backupserver (`backup_urls`); no election
        node: none."""
        election = await self._election()
        return {} if election is None else backup_urls(election[1])

    async def is_member(self, ip: str) -> bool:
        """True only for a peer in the election; no election node means no members (fail closed)."""
        members = await self.members()
        if members is None:
            return False
        return _canonical(ip) in members


def backup_urls(peers: Iterable[Peer]) -> dict[str, str]:
    """Address -> backupserver URL, from the members' election records (`backupUrl`, the one
    a rebuilding sitter asks too). Only a URL whose host is the member's own address counts
    (a record naming another host is not asked about this member's snapshots), and an
    address with two different URLs is left out: which one holds the snapshot is not known."""
    urls: dict[str, set[str]] = {}
    for p in peers:
        address = _canonical(p.ip)
        try:
            host = urlsplit(p.backup_url).hostname
        except ValueError:
            continue
        if host and _canonical(host) == address:
            urls.setdefault(address, set()).add(p.backup_url.rstrip("/"))
    return {a: next(iter(u)) for a, u in urls.items() if len(u) == 1}


class StaticMembership:
    """A fixed member list; for tests."""

    def __init__(self, ips: set[str]) -> None:
        self.ips = {_canonical(i) for i in ips}

    async def is_member(self, ip: str) -> bool:
        return _canonical(ip) in self.ips
