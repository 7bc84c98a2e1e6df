"""The sitter's ZooKeeper I/O for one shard: election membership, the persisted state
(compare-and-set only), the safe-mode error node, history records and the registrar.

Layout under shardPath (see docs/design.md):
  election/<ip:pgPort:backupPort:statusPort>-<seq>  ephemeral-sequential, {zoneId, ip, pgUrl, backupUrl, statusUrl}
  state                                             persistent JSON, written by CAS on its version
  history/<time>-<ip>-<action>-...-<seq>            persistent-sequential records
  error                                             safe mode: {primary, zoneId, standby, reason}
and the registrar record at the original's binder path (ephemeral, written by the primary).
"""

from __future__ import annotations

from typing import Mapping

from manatee.core import zk as zkmod
from manatee.core.zkauth import OPEN_ACL_UNSAFE, same_acl
from manatee.core.zkdata import Create, Delete
from manatee.shard import history
from manatee.shard.layout import ShardLayout
from manatee.shard.state import (
    UNKNOWN_MEMORY, ClusterState, Peer, StateError, parse_election_name, parse_election_nodes, parse_error_node,
    parse_state,
)


class StateUnreadable(zkmod.ZKDataError):
    """The state znode exists but is not a valid shard state. It is *not* "no state": the
    sitter holds (nobody writes the state, promotes or rebuilds) until an operator fixes it."""

    def __init__(self, msg: str, version: int):
        super().__init__(msg)
        self.version = version


class Quarantine:
    """Znodes whose content the sitter ignores because it cannot parse them, by kind
    ("election", "state", "error", "registrar"): {path: why}. Each is logged once when it
    appears (or its reason changes) and once when it is gone, not every cycle."""

    def __init__(self, log):
        self.log = log
        self._by_kind: dict[str, dict[str, str]] = {}

    def update(self, kind: str, found: Mapping[str, str]) -> None:
        old = self._by_kind.get(kind, {})
        for path, why in found.items():
            if old.get(path) != why:
                self.log.warning("zk_data_quarantined", node=path, why=why)
        for path in old.keys() - found.keys():
            self.log.info("zk_data_quarantine_cleared", node=path)
        self._by_kind[kind] = dict(found)

    def items(self) -> tuple[str, ...]:
        """"<path>: <why>" for every quarantined znode, sorted."""
        return tuple(sorted(f"{p}: {w}" for nodes in self._by_kind.values() for p, w in nodes.items()))


class ShardStore:
    def __init__(self, zk: zkmod.ZKClient, shard_path: str, registrar_path: str, log):
        self.zk, self.log = zk, log
        self.layout = ShardLayout.of(shard_path)
        self.path = self.layout.root
        self.election_path = self.layout.election
        self.history_path = self.layout.history
        self.state_path = self.layout.state
        self.error_path = self.layout.error
        self.registrar_path = registrar_path
        self.my_node: str | None = None
        self.quarantine = Quarantine(log)

    async def ensure_paths(self) -> None:
        """Create the shard's persistent znodes. With ZooKeeper auth (zkCfg.auth) they carry
        the shard's ACL — readable by anyone, changed only with the shard's credential — and
        one created before auth was switched on is given it (needs the ADMIN right, which an
        open node grants everyone). Ancestors above the shard path (e.g. /manatee, shared by
        every shard) are created open, and left as they are."""
        acl = self.zk.acl
        if acl is None:
            for p in (self.election_path, self.history_path):
                await self.zk.ensure_path(p)
            return
        parts = self.path.strip("/").split("/")
        if len(parts) > 1:
            await self.zk.ensure_path("/" + "/".join(parts[:-1]), acl=OPEN_ACL_UNSAFE)
        for p in (self.election_path, self.history_path):
            await self.zk.ensure_path(p)
        for p in (self.path, self.election_path, self.history_path, self.state_path, self.error_path):
            await self._keep_acl(p, acl)

    async def _keep_acl(self, path: str, acl) -> None:
        try:
            have, stat = await self.zk.get_acls(path)
            if same_acl(have, acl):
                return
            await self.zk.set_acls(path, acl, version=stat.aversion)
            self.log.warning("zk_acl_set", node=path, was=[f"{a.id.scheme}:{a.id.id}:{a.perms}" for a in have],
                             note="the shard's znodes are now writable only with its credential")
        except zkmod.NoNodeError:
            pass
        except (zkmod.NoAuthError, zkmod.BadVersionError) as e:
            # another credential owns it (or it changed meanwhile): say so, do not fight
            self.log.error("zk_acl_not_ours", node=path, error=type(e).__name__,
                           note="this node's ACL does not admit the shard's credential; fix it by hand")

    # ------------------------------------------------------------------ election

    async def join(self, me: Peer) -> str:
        """Register in the election. A node of ours left by a previous run (same id, the
        session not yet expired) is deleted first, so the shard never sees us twice."""
        for name in await self.zk.get_children(self.election_path):
            try:
                pid, _ = parse_election_name(name)
            except ValueError:
                continue
            if pid == me.id:
                try:
                    await self.zk.delete(self.layout.election_node(name))
                    self.log.info("election_stale_node_removed", node=name)
                except zkmod.NoNodeError:
                    pass
        self.my_node = await self.zk.create(f"{self.election_path}/{me.id}-", self._election_data(me),
                                            ephemeral=True, sequence=True)
        self.log.info("election_joined", node=self.my_node)
        return self.my_node

    @staticmethod
    def _election_data(me: Peer) -> dict:
        data = {"zoneId": me.zone_id, "ip": me.ip, "pgUrl": me.pg_url,
                "backupUrl": me.backup_url, "statusUrl": me.status_url}
        if me.tags_json():
            data["tags"] = me.tags_json()  # nofailover / nosync / priority
        if me.remembers != UNKNOWN_MEMORY:
            data["remembers"] = me.remembers  # the generation my data belongs to (null: none)
        return data

    async def update_me(self, me: Peer) -> None:
        """Rewrite my election node's data (what I remember now), keeping its place. Raises
        NoNodeError when it is gone (deleted by hand, or my session with it)."""
        if self.my_node is None:
            raise zkmod.NoNodeError()
        await self.zk.set(self.my_node, self._election_data(me))

    async def leave(self) -> None:
        """Leave the election at once (graceful stop: the sync need not wait for session expiry)."""
        if self.my_node:
            try:
                await self.zk.delete(self.my_node)
            except zkmod.NoNodeError:
                pass
            self.log.info("election_left", node=self.my_node)
            self.my_node = None

    async def election(self) -> tuple[Peer, ...]:
        """The live peers in join order. Malformed nodes are left out and quarantined."""
        raws: dict[str, bytes] = {}
        for name in await self.zk.get_children(self.election_path):
            try:
                raws[name], _ = await self.zk.get(self.layout.election_node(name))
            except zkmod.NoNodeError:
                continue  # gone since the listing
        peers, rejected = parse_election_nodes(raws)
        bad = {self.layout.election_node(name): why for name, why in rejected}
        self.quarantine.update("election", bad)
        return peers

    # ------------------------------------------------------------------ state

    async def read_state(self) -> tuple[ClusterState | None, int]:
        """(state, znode version); (None, -1) when there is no state znode. A state znode
        that cannot be parsed raises StateUnreadable (and is quarantined): never None."""
        try:
            raw, stat = await self.zk.get(self.state_path)
        except zkmod.NoNodeError:
            self.quarantine.update("state", {})
            return None, -1
        try:
            st = parse_state(raw)
        except StateError as e:
            self.quarantine.update("state", {self.state_path: str(e)})
            raise StateUnreadable(f"{self.state_path}: {e}", stat.version) from None
        self.quarantine.update("state", {})
        return st, stat.version

    async def cas_state(self, new: ClusterState, version: int) -> bool:
        """Write the state only if nobody changed it since we read `version` (-1: create)."""
        try:
            if version < 0:
                await self.zk.create(self.state_path, new.dumps())
            else:
                await self.zk.set(self.state_path, new.dumps(), version=version)
            return True
        except (zkmod.BadVersionError, zkmod.NodeExistsError):
            self.log.info("state_write_lost_race", generation=new.generation, version=version)
            return False
        except zkmod.NoAuthError:
            if version < 0 or self.zk.acl is None:
                raise
            return await self._replace_refused_state(new, version)

    async def _replace_refused_state(self, new: ClusterState, version: int) -> bool:
        """The state's ACL no longer admits the shard's credential (set by hand: sandbox trial
        2026-12-06, no takeover could be written, and nobody took over). The shard's root still
        lets the credential delete and create its children, so the write is one transaction that
        deletes the znode at the version read and creates it with the new state and the shard's
        ACL: still a compare-and-set, and never a moment without a state."""
        try:
            await self.zk.transaction([Delete(self.state_path, version), Create(self.state_path, new.dumps())])
        except (zkmod.BadVersionError, zkmod.NoNodeError, zkmod.NodeExistsError):
            self.log.info("state_write_lost_race", generation=new.generation, version=version)
            return False
        self.log.error("zk_state_acl_restored", node=self.state_path, generation=new.generation,
                       note="the state's ACL did not admit the shard's credential (changed by hand?); the state "
                            "was written again with the shard's ACL")
        return True

    # ------------------------------------------------------------------ safe mode

    async def read_error(self) -> dict | None:
        """The safe-mode node's data, None if there is none. An error node that exists is
        safe mode even when its content cannot be parsed (quarantined, reason says so)."""
        try:
            raw, _ = await self.zk.get(self.error_path)
        except zkmod.NoNodeError:
            self.quarantine.update("error", {})
            return None
        record, why = parse_error_node(raw)
        self.quarantine.update("error", {self.error_path: why} if why else {})
        return record

    async def write_error(self, record: dict) -> None:
        try:
            await self.zk.create(self.error_path, record)
            self.log.error("safe_mode_entered", **record)
        except zkmod.NodeExistsError:
            pass

    # ------------------------------------------------------------------ history, registrar

    async def reaped(self) -> frozenset[str]:
        """The addresses an operator reaped that have not come back (history.reaped_addresses
        over the history's znode names). A failed read raises."""
        return history.reaped_addresses(await self.zk.get_children(self.history_path))

    async def record(self, event: history.HistoryEvent) -> None:
        await self.zk.create(self.layout.history_node(history.znode_prefix(event)),
                             history.record_data(event), sequence=True)

    async def publish_registrar(self, pg_url: str, ttl: int) -> None:
        rec = {"type": "database", "database": {"primary": pg_url, "ttl": ttl}}
        parts = self.registrar_path.strip("/").split("/")
        if self.zk.acl is not None and len(parts) > 2:
            # the binder tree above the shard's own node (e.g. /com/joyent/<dc>/moray) is shared
            # by every shard: created open, as /manatee is, so that each shard's ACL is its own
            await self.zk.ensure_path("/" + "/".join(parts[:-2]), acl=OPEN_ACL_UNSAFE)
        try:
            await self.zk.create(self.registrar_path, rec, ephemeral=True, makepath=True)
        except zkmod.NodeExistsError:
            try:
                data, _ = await self.zk.get_json(self.registrar_path)
            except zkmod.ZKDataError as e:  # not ours to keep: the primary's record replaces it
                self.log.warning("registrar_unparsable_replaced", node=self.registrar_path, why=str(e))
                data = None
            if data != rec:
                await self.zk.delete(self.registrar_path)
                await self.zk.create(self.registrar_path, rec, ephemeral=True, makepath=True)

    async def remove_registrar(self, pg_url: str) -> None:
        try:
            data, _ = await self.zk.get_json(self.registrar_path)
            if isinstance(data, dict) and data.get("database", {}).get("primary") == pg_url:
                await self.zk.delete(self.registrar_path)
        except zkmod.NoNodeError:
            pass
        except zkmod.ZKDataError as e:  # not a record of mine: leave it
            self.log.warning("registrar_unparsable_kept", node=self.registrar_path, why=str(e))
