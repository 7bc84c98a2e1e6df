"""The shard's records for the short-lived tools (manatee-adm, -stat, -history, -clear):
a synchronous reader and compare-and-set writer over the same layout and parsers as the
sitter's asynchronous `ShardStore` (manatee/shard/shardstore.py).

The ZooKeeper client is anything with the blocking calls of `manatee.cli.common.ZkReader`:
`get_many(paths)` / `children_many(paths)` (None for a missing znode, pipelined),
`get`, `children`, `exists`, `set(path, data, version)`, `create(path, data, sequence=,
makepath=)` and `delete(path, version)`; it
bounds each call by its own deadline and raises its own error for a ZooKeeper failure.
What the shard itself lacks (no such shard, no state yet, a state that cannot be read)
raises `ShardStoreError`, whose message is the whole story for an operator.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from manatee.shard import history
from manatee.shard.layout import ShardLayout
from manatee.shard.state import (
    ClusterState, Peer, StateError, parse_election_nodes, parse_error_node, parse_state,
)

__all__ = ["ShardStoreError", "BadVersion", "NodeExists", "SyncZk", "ShardRecords", "SyncShardStore"]


class ShardStoreError(Exception):
    """The shard cannot give what was asked (not found, no state, unreadable state)."""


class BadVersion(Exception):
    """A compare-and-set lost: the znode changed since it was read (the client raises it)."""


class NodeExists(Exception):
    """A create lost: the znode exists (someone created it since it was seen missing)."""


class SyncZk(Protocol):
    hosts: str

    def get_many(self, paths: Any) -> dict[str, tuple[bytes, Any] | None]: ...
    def children_many(self, paths: Any) -> dict[str, list[str] | None]: ...
    def get(self, path: str) -> tuple[bytes, Any] | None: ...
    def children(self, path: str) -> list[str] | None: ...
    def exists(self, path: str) -> bool: ...
    def set(self, path: str, data: bytes, version: int) -> None: ...
    def create(self, path: str, data: bytes, *, sequence: bool = False, makepath: bool = False) -> str: ...
    def delete(self, path: str, version: int = -1) -> None: ...


@dataclass(frozen=True)
class ShardRecords:
    """One read of a shard: its state (None: none yet, or unreadable: `state_error` says why),
    the state znode's version (-1: none), the safe-mode record (None: not in safe mode) and
    the live election peers in join order."""

    state: ClusterState | None
    version: int
    state_error: str | None
    error: dict[str, Any] | None
    election: tuple[Peer, ...]


class SyncShardStore:
    """One shard's znodes, read and written by a blocking client (see the module doc)."""

    def __init__(self, zk: SyncZk, shard: str):
        self.zk = zk
        self.shard = shard
        self.layout = ShardLayout.of(shard)

    # ------------------------------------------------------------------ reads

    def not_found(self) -> ShardStoreError:
        return ShardStoreError(f"shard {self.shard!r} not found: no {self.layout.root} in ZooKeeper at "
                               f"{self.zk.hosts}")

    def require(self) -> None:
        """ShardStoreError unless the shard exists."""
        if not self.zk.exists(self.layout.root):
            raise self.not_found()

    def read(self) -> ShardRecords:
        """The state, the error node and the election, in two pipelined rounds."""
        lay = self.layout
        got = self.zk.get_many([lay.root, lay.state, lay.error])
        if got[lay.root] is None:
            raise self.not_found()
        state, version, state_err = None, -1, None
        if got[lay.state] is not None:
            version = got[lay.state][1].version
            try:
                state = parse_state(got[lay.state][0])
            except StateError as e:
                state_err = str(e)
        error = parse_error_node(got[lay.error][0])[0] if got[lay.error] is not None else None
        return ShardRecords(state, version, state_err, error, self.election())

    def election(self) -> tuple[Peer, ...]:
        """The live peers in join order; malformed nodes are left out (as the sitters do)."""
        names = self.zk.children(self.layout.election) or []
        datas = self.zk.get_many(self.layout.election_node(n) for n in names)
        raws = {n: d[0] for n in names if (d := datas.get(self.layout.election_node(n))) is not None}
        return parse_election_nodes(raws)[0]

    def state(self, doing: str = "change") -> tuple[ClusterState, int]:
        """(state, version); ShardStoreError when the shard or its state is missing (there is
        nothing to `doing`) or unreadable."""
        got = self.zk.get(self.layout.state)
        if got is None:
            self.require()
            raise ShardStoreError(f"shard {self.shard!r} has no state yet ({self.layout.state}): nothing to {doing}")
        try:
            return parse_state(got[0]), got[1].version
        except StateError as e:
            raise ShardStoreError(f"{self.layout.state}: {e}") from None

    def state_or_none(self) -> ClusterState | None:
        """The state, None while there is none (an unreadable one raises ShardStoreError)."""
        got = self.zk.get(self.layout.state)
        try:
            return parse_state(got[0]) if got is not None else None
        except StateError as e:
            raise ShardStoreError(f"{self.layout.state}: {e}") from None

    def history(self) -> dict[str, bytes | None]:
        """The history znodes {name: data} (parse them with manatee.shard.history.parse_record)."""
        self.require()
        names = self.zk.children(self.layout.history) or []
        got = self.zk.get_many(self.layout.history_node(n) for n in names)
        return {n: v[0] for n in names if (v := got[self.layout.history_node(n)]) is not None}

    # ------------------------------------------------------------------ writes

    def cas_state(self, change: Callable[[ClusterState], ClusterState | None],
                  tries: int = 20) -> tuple[ClusterState, ClusterState | None]:
        """Read the state, apply `change` (None: nothing to write) and write it by compare-and-set
        on the version read; a sitter writing in between makes it read and try again."""
        for _ in range(tries):
            old, version = self.state()
            new = change(old)
            if new is None:
                return old, None
            try:
                self.zk.set(self.layout.state, new.dumps(), version)
                return old, new
            except BadVersion:
                time.sleep(0.05)
        raise ShardStoreError(f"{self.layout.state} kept changing under {tries} attempts to write it; try again")

    def create_state(self, st: ClusterState) -> None:
        """Create the state znode holding `st` (with the client's ACL: the shard's, under auth).
        Never overwrites: NodeExists when a state appeared since it was seen missing."""
        self.zk.create(self.layout.state, st.dumps())

    def replace_state(self, st: ClusterState, version: int) -> None:
        """Write `st` over the state znode by compare-and-set on `version` (the version of an
        unreadable state the caller saw): BadVersion when anyone wrote it since."""
        self.zk.set(self.layout.state, st.dumps(), version)

    def add_history(self, event: history.HistoryEvent) -> str:
        """Record `event` as a history znode (its parent made if missing); the path created."""
        return self.zk.create(self.layout.history_node(history.znode_prefix(event)), history.record_data(event),
                              sequence=True, makepath=True)

    def clear_error(self) -> tuple[str, bytes]:
        """Remove the safe-mode node (only the version read). (its path, the data it held)."""
        got = self.zk.get(self.layout.error)
        if got is None:
            self.require()
            raise ShardStoreError(f"shard {self.shard!r} is not in safe mode (no {self.layout.error} node): "
                                  "nothing to clear")
        self.zk.delete(self.layout.error, version=got[1].version)
        return self.layout.error, got[0]
