"""manatee-adm reap: forget a former primary that is gone for good (the original's `reap`).

After a failover the old primary is listed as *deposed* until its sitter comes back and the
primary moves it to the tail of the chain. A host that never comes back stays deposed for
ever, and `verify` warns about it for ever. `reap --node NODE` removes it from the deposed
list by compare-and-set on the state (no new generation: it is bookkeeping, as when the
primary moves a live deposed peer to the tail) and records `Reaped` in the history.

Refused unless the node is deposed, no election node names it (a malformed one counts: its
sitter may be running, and unknown is not "gone"), and the shard is not in safe mode. Safe
either way: a reaped node that comes back after all is a newcomer with data, which the
primary appends to the tail like any; PostgreSQL refuses to follow if its WAL forked, and it is
rebuilt. Only the sync may ever take over, and a newcomer becomes the sync only by streaming
from the primary.
"""

from __future__ import annotations

import sys
import time

from manatee.cli.adm_ops import _who, cas_state, find_peer
from manatee.cli.common import CliError, ZkReader
from manatee.shard.history import reaped_event
from manatee.shard.state import ClusterState, Peer
from manatee.shard.syncstore import SyncShardStore

__all__ = ["reap", "cmd_reap", "add_parsers", "COMMANDS"]


def _named_in_election(store: SyncShardStore, peer: Peer) -> list[str]:
    """The election znodes that may be this peer's: its id, or its address with other ports,
    parsable or not."""
    names = store.zk.children(store.layout.election) or []
    return [n for n in names if n.split("-")[0] == peer.id or n.startswith(f"{peer.ip}:")]


def reap(zk: ZkReader, shard: str, node: str) -> tuple[ClusterState, Peer]:
    """Remove the deposed `node` from the state; (the state written, the peer removed)."""
    store = SyncShardStore(zk, shard)
    rec = store.read()
    if rec.error is not None:
        raise CliError(f"shard {shard!r} is in safe mode: follow the runbook (set-primary leaves no deposed "
                       f"node); nothing written")
    found: list[Peer] = []

    def change(st: ClusterState) -> ClusterState:
        p = find_peer(st, node)
        place = st.place_of(p.id)
        if place != "deposed":
            raise CliError(f"{p.ip} is the {place}, not a deposed former primary: reap removes only those "
                           f"(a dead async leaves the chain by itself; a primary or sync is replaced by a "
                           f"failover)")
        live = _named_in_election(store, p)
        if live:
            raise CliError(f"{p.ip} is in the election ({', '.join(live)}): its sitter runs, and the primary moves "
                           f"it to the tail by itself; stop its sitter first if it leaves for good")
        found[:] = [p]
        return st.evolve(deposed=tuple(x for x in st.deposed if x.id != p.id))

    _old, new = cas_state(zk, shard, change)
    assert new is not None and found
    return new, found[0]


def cmd_reap(args, zk: ZkReader) -> int:
    from manatee.cli.adm import _say

    st, p = reap(zk, args.shard, args.node)
    detail = f"by {_who()} (manatee-adm reap): removed from the deposed list; no election node named it"
    try:
        SyncShardStore(zk, args.shard).add_history(reaped_event(p, st.primary, st.generation, detail,
                                                                int(time.time() * 1000)))
    except Exception as e:  # noqa: BLE001 - best effort: the state is what matters
        print(f"warning: the history record could not be written: {e}", file=sys.stderr)
    _say(f"removed {p.ip} ({p.id}) from the deposed list of generation {st.generation}. If it comes back with "
         f"its data it joins the tail of the chain as a new node (rebuilt if its WAL forked). Snapshots on the "
         f"other nodes may still be kept as shared with it: `zfs get -r -s local manatee:bases <dataset>`, then "
         f"`zfs inherit manatee:bases <snapshot>` for those naming only {p.ip} (docs/operators-guide.md)")
    return 0


def add_parsers(add, positive) -> None:
    """The sub-command of this module, on manatee-adm's parser (`add` is its helper)."""
    sp = add("reap", "forget a deposed former primary that is gone for good (its sitter is not in the "
                     "election): remove it from the state's deposed list")
    sp.add_argument("--node", required=True, metavar="NODE", help="the node's ip, id or zoneId")


COMMANDS = {"reap": cmd_reap}
