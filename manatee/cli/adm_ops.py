"""manatee-adm's changes to the shard: compare-and-set writes of its state (freeze, unfreeze,
a switchover request and its withdrawal, the safe-mode runbook's set-primary) over the
shard store (manatee/shard/syncstore.py). Each is a pure `change(state) -> state | None`
retried on the store's CAS; a refusal is a CliError that says why.
"""

from __future__ import annotations

import getpass
import socket
from typing import Any, Callable

from manatee.cli import adm_view as V
from manatee.cli.common import CliError, ZkReader
from manatee.shard.state import ClusterState, Freeze, Switchover
from manatee.shard.syncstore import SyncShardStore

__all__ = ["cas_state", "set_freeze", "find_peer", "set_primary", "request_switchover", "withdraw_switchover"]


def cas_state(zk: ZkReader, shard: str, change: Callable[[ClusterState], ClusterState | None],
              tries: int = 20) -> tuple[ClusterState, ClusterState | None]:
    """Read the state, apply `change` (None: nothing to write) and write it by compare-and-set
    on the version read; a sitter writing in between makes it read and try again."""
    return SyncShardStore(zk, shard).cas_state(change, tries)


def _who() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001
        user = "?"
    return f"{user}@{socket.gethostname()}"


def set_freeze(zk: ZkReader, shard: str, reason: str | None) -> tuple[ClusterState, ClusterState | None]:
    """Freeze (reason given) or unfreeze (None). Returns (old, new); new None = nothing to do."""
    def change(st: ClusterState) -> ClusterState | None:
        if reason is None:
            return st.evolve(freeze=None) if st.frozen else None
        if st.frozen:
            return None
        return st.evolve(freeze=Freeze(reason=reason, by=_who(), time=V.iso_now()))

    return cas_state(zk, shard, change)


def find_peer(state: ClusterState, key: str):
    """A member of the state by id, ip, zoneId or pgUrl."""
    for p in state.members():
        if key in (p.id, p.ip, p.zone_id, p.pg_url):
            return p
    names = ", ".join(f"{p.ip} ({state.place_of(p.id)})" for p in state.members())
    raise CliError(f"no node {key!r} in the shard state (members: {names})")


def set_primary(zk: ZkReader, shard: str, node: str, error: Any, live: list[dict],
                force: bool = False) -> tuple[ClusterState, ClusterState]:
    """The safe-mode runbook's step 3: make `node` the primary of a new generation with no
    sync and nobody else in the chain (they rejoin at the tail and are rebuilt if they
    forked). Only in safe mode, and only while no sitter runs (a running sitter could act
    on the old generation meanwhile); --force skips the safe-mode check, never the other."""
    if live:
        raise CliError("stop every sitter first (runbook step 2); still in the election: "
                       + ", ".join(str(p.get("ip") or p.get("id")) for p in live))
    if error is None and not force:
        raise CliError(f"shard {shard!r} is not in safe mode: the sitters choose the primary themselves "
                       "(use switchover for a planned change; --force only if you know why)")

    def change(st: ClusterState) -> ClusterState:
        p = find_peer(st, node)
        return st.evolve(generation=st.generation + 1, primary=p, sync=None, async_=(), deposed=(),
                         switchover=None)

    old, new = cas_state(zk, shard, change)
    assert new is not None
    return old, new


def request_switchover(zk: ZkReader, shard: str, to: str | None, error: Any,
                       live: set[str]) -> ClusterState:
    def change(st: ClusterState) -> ClusterState:
        if error is not None:
            raise CliError("the shard is in safe mode: clear it first (see the runbook); no switchover")
        if st.frozen:
            raise CliError(f"the shard is frozen ({st.freeze.reason}): unfreeze it first")
        if st.switchover is not None:
            raise CliError(f"a switchover to {st.switchover.to} is already pending since "
                           f"{st.switchover.requested}; wait for it or run `switchover --cancel`")
        if st.sync is None:
            raise CliError("the shard has no sync: nobody can take over without losing writes")
        if to is not None:
            p = find_peer(st, to)
            if p.id != st.sync.id:
                raise CliError(f"{to} is the {st.place_of(p.id)}, not the sync ({st.sync.ip}): only the sync "
                               f"holds every acknowledged write and may take over")
        for who, p in (("primary", st.primary), ("sync", st.sync)):
            if p.id not in live:
                raise CliError(f"the {who} {p.ip} is not in the election (its sitter is down): no switchover")
        return st.evolve(switchover=Switchover(to=st.sync.id, requested=V.iso_now(), by=_who()))

    _old, new = cas_state(zk, shard, change)
    assert new is not None
    return new


def withdraw_switchover(zk: ZkReader, shard: str, requested: str | None = None) -> ClusterState | None:
    """Remove a pending switchover request (only ours when `requested` is given). Returns the
    written state, or None when there was nothing to withdraw (it completed or went away)."""
    def change(st: ClusterState) -> ClusterState | None:
        if st.switchover is None or (requested is not None and st.switchover.requested != requested):
            return None
        return st.evolve(switchover=None)

    return cas_state(zk, shard, change)[1]
