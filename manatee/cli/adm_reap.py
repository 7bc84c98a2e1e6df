"""manatee-adm reap: forget a node that is gone for good (the original's `reap`, and more).

After a failover the old primary is listed as *deposed* until its sitter comes back and the
primary moves it to the tail of the chain. A host that never comes back stays deposed for
ever, `verify` warns about it for ever, and it keeps replication access. `reap --node NODE`
removes it from the deposed list by compare-and-set on the state (no new generation: it is
bookkeeping, as when the primary moves a live deposed peer to the tail). An async that left
(its sitter stopped) is no longer in the state; `reap --node IP` then writes no state. Either
way it records `Reaped` in the history, and the backupservers release the base-snapshot marks
they keep for that address at their next check (history.reaped_addresses: until a record
names it again).

Refused for the primary, the sync and a listed async, for a node that any election node
names (a malformed one counts: its sitter may be running, and unknown is not "gone"), and in
safe mode. Safe either way: a reaped node that comes back after all is a newcomer with data,
which the primary appends to the tail like any; PostgreSQL refuses to follow if its WAL
forked, and it is rebuilt. Only the sync may ever take over, and a newcomer becomes the sync
only by streaming from the primary.
"""

from __future__ import annotations

import sys
import time

from manatee.cli.adm_ops import _who, cas_state, find_peer
from manatee.cli.common import CliError, ZkReader
from manatee.core.bases import peer_key
from manatee.shard.history import reaped_event
from manatee.shard.state import ClusterState
from manatee.shard.syncstore import SyncShardStore

__all__ = ["forget", "reap", "cmd_reap", "add_parsers", "COMMANDS"]


def _refuse_live(election: list[str], ip: str, peer_id: str | None) -> None:
    """Refuse a node that an election znode may belong to: its id, or its address with any
    ports, parsable or not."""
    live = [n for n in election if n.split("-")[0] == peer_id or n.startswith(f"{ip}:")]
    if live:
        raise CliError(f"{ip} is in the election ({', '.join(live)}): its sitter runs, and the primary places it "
                       f"by itself; stop its sitter first if it leaves for good")


def forget(st: ClusterState, node: str, election: list[str]) -> tuple[ClusterState | None, str]:
    """Pure: (the state without the deposed `node`, or None when the state no longer lists it;
    its address), given the election's znode names. CliError says why it is refused."""
    try:
        p = find_peer(st, node)
    except CliError:
        ip = peer_key(node)
        if ip is None:
            raise
        _refuse_live(election, ip, None)  # not in the state: only the history says it was reaped
        return None, ip
    place = st.place_of(p.id)
    if place != "deposed":
        raise CliError(f"{p.ip} is the {place}, not a deposed former primary or a node that left: reap "
                       f"forgets only those (the primary or sync is replaced by a failover; stop an async's "
                       f"sitter first and it leaves the chain)")
    _refuse_live(election, p.ip, p.id)
    return st.evolve(deposed=tuple(x for x in st.deposed if x.id != p.id)), p.ip


def reap(zk: ZkReader, shard: str, node: str) -> tuple[ClusterState, str, bool]:
    """Forget `node`: remove it from the state's deposed list, or, for an address the state
    no longer lists (an async that left), nothing to write there. (the state, the node's
    address, whether the state was written)."""
    store = SyncShardStore(zk, shard)
    rec = store.read()
    if rec.error is not None:
        raise CliError(f"shard {shard!r} is in safe mode: follow the runbook (set-primary leaves no deposed "
                       f"node); nothing written")
    election = list(zk.children(store.layout.election) or [])
    found: list[str] = []

    def change(st: ClusterState) -> ClusterState | None:
        new, ip = forget(st, node, election)
        found[:] = [ip]
        return new

    old, new = cas_state(zk, shard, change)
    assert found
    return (new or old), found[0], new is not None


def cmd_reap(args, zk: ZkReader) -> int:
    from manatee.cli.adm import _say

    st, ip, wrote = reap(zk, args.shard, args.node)
    what = "removed from the deposed list" if wrote else "not in the shard state; recorded as gone for good"
    detail = f"by {_who()} (manatee-adm reap): {what}; no election node named it"
    try:
        SyncShardStore(zk, args.shard).add_history(reaped_event(ip, st.primary, st.generation, detail,
                                                                int(time.time() * 1000)))
    except Exception as e:  # noqa: BLE001 - the state is written; the marks stay until it is
        print(f"warning: the Reaped record could not be written ({e}): the base-snapshot marks and the "
              f"replication slot kept for {ip} stay until it is; run reap again", file=sys.stderr)
    _say(f"{ip}: {what} (generation {st.generation}). The backupservers release the base snapshots they keep "
         f"for it at their next check (backupSenderCfg.baseCheckInterval), and its upstream's sitter drops the "
         f"replication slot it kept for it within 10 s. If it comes back with its data it "
         f"joins the tail of the chain as a new node (rebuilt if its WAL forked)")
    return 0


def add_parsers(add, positive) -> None:
    """The sub-command of this module, on manatee-adm's parser (`add` is its helper)."""
    sp = add("reap", "forget a node that is gone for good (its sitter is not in the election): a deposed former "
                     "primary leaves the state; its base-snapshot marks are released")
    sp.add_argument("--node", required=True, metavar="NODE", help="the node's ip, id or zoneId (the ip of a node "
                                                                   "the state no longer lists)")


COMMANDS = {"reap": cmd_reap}
