"""ZooKeeper digest auth and ACLs on the shard's znodes, on a real ZooKeeper (issue 9): with
zkCfg.auth the sitter's ShardStore creates (and re-ACLs) the shard's znodes so that anyone can
read them but only the shard's credential can change them. A client without it — none, or
another one — cannot change the state, the election, the error node or the history."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError

from manatee.core.zk import ZKClient
from manatee.core.zkauth import OPEN_ACL_UNSAFE, ZKAuth, same_acl, shard_acl
from manatee.shard.shardstore import ShardStore
from manatee.shard import history
from manatee.shard.state import PRIMARY, ClusterState, Peer, Target
from tests.factories import peer

pytestmark = pytest.mark.timeout(60)

AUTH = ZKAuth("manatee:correct-horse")


class _Log:
    def __init__(self):
        self.events: list[str] = []

    def __getattr__(self, level):
        return lambda ev, **kw: self.events.append(ev)


def _peer(n: int) -> Peer:
    return peer(f"127.0.0.{n}", f"z{n}")


def _kazoo(hosts: str, auth: ZKAuth | None = None) -> KazooClient:
    kz = KazooClient(hosts=hosts, timeout=5, auth_data=auth.auth_data() if auth else None)
    kz.start(timeout=10)
    return kz


async def _shard(hosts: str, shard: str, log) -> tuple[ZKClient, ShardStore]:
    zk = ZKClient(hosts, session_timeout=5, connect_timeout=10, auth=AUTH)
    await zk.start()
    store = ShardStore(zk, shard, f"{shard}-registrar", log)
    await store.ensure_paths()
    me = _peer(1)
    await store.join(me)
    assert await store.cas_state(ClusterState(generation=1, primary=me), -1)
    for ev in history.events_for(me, None, Target(PRIMARY), 1, 1):
        await store.record(ev)
    return zk, store


def _kazoo_children(kz: KazooClient, path: str) -> list[str]:
    return sorted(kz.get_children(path))


def _refused(fn, *a, **kw) -> None:
    with pytest.raises(NoAuthError):
        fn(*a, **kw)


def test_only_the_shards_credential_changes_its_znodes(zk_server):
    hosts = zk_server.connect_string
    shard = f"/manatee/acl{uuid.uuid4().hex[:6]}"

    tag = uuid.uuid4().hex[:6]
    binder = f"/com/joyent/dc-{tag}/moray"

    async def setup():
        log = _Log()
        zk, store = await _shard(hosts, shard, log)
        store.registrar_path = f"{binder}/{tag}/pg"
        await store.write_error({"reason": "test"})
        await store.publish_registrar("tcp://postgres@127.0.0.1:5432/postgres", 60)
        return zk, store

    loop = asyncio.new_event_loop()
    zk, store = loop.run_until_complete(setup())
    strangers = [_kazoo(hosts), _kazoo(hosts, ZKAuth("manatee:wrong-password"))]
    try:
        me_node = store.my_node
        hist = store.history_path + "/" + _kazoo_children(strangers[0], store.history_path)[0]
        for kz in strangers:
            # reading is open to everyone (tools, manatee-stat, clients)
            assert b'"generation": 1' in kz.get(store.state_path)[0]
            assert kz.get_children(store.election_path)
            # changing is not
            _refused(kz.set, store.state_path, b'{"generation": 99}')
            _refused(kz.delete, store.state_path)
            _refused(kz.create, store.election_path + "/127.0.0.99:5432:10002:5433-", b"{}",
                     ephemeral=True, sequence=True)
            _refused(kz.delete, me_node)
            _refused(kz.set, me_node, b"{}")
            _refused(kz.delete, store.error_path)
            _refused(kz.set, store.error_path, b"{}")
            _refused(kz.create, store.history_path + "/x-", b"{}", sequence=True)
            _refused(kz.delete, hist)
            _refused(kz.set_acls, store.state_path, OPEN_ACL_UNSAFE)
            _refused(kz.delete, shard, recursive=True)
        # the shared parents stay open: another shard (another credential) can live there
        other = _kazoo(hosts, ZKAuth("other:pw"))
        other.ensure_path("/manatee/other-" + uuid.uuid4().hex[:6])
        other.ensure_path(f"{binder}/other-shard")
        _refused(other.set, f"{binder}/{tag}/pg", b"{}")
        other.stop()
        other.close()
        # with the credential, the sitter's writes work
        async def owner_writes():
            st, v = await store.read_state()
            assert await store.cas_state(st.evolve(generation=2), v)
            await store.zk.delete(store.error_path)
            await store.leave()
        loop.run_until_complete(owner_writes())
    finally:
        for kz in strangers:
            kz.stop()
            kz.close()
        loop.run_until_complete(zk.close())
        loop.close()


def test_an_open_shard_gets_the_acl_when_auth_is_switched_on(zk_server):
    hosts = zk_server.connect_string
    shard = f"/manatee/up{uuid.uuid4().hex[:6]}"
    kz = _kazoo(hosts)  # the shard as it was before auth: open znodes
    for p in ("election", "history", "state"):
        kz.create(f"{shard}/{p}", b"" if p != "state" else ClusterState(generation=3, primary=_peer(1)).dumps(),
                  makepath=True)
    log = _Log()

    async def upgrade():
        zk = ZKClient(hosts, session_timeout=5, connect_timeout=10, auth=AUTH)
        await zk.start()
        try:
            await ShardStore(zk, shard, f"{shard}-reg", log).ensure_paths()
        finally:
            await zk.close()

    try:
        asyncio.run(upgrade())
        owner = _kazoo(hosts, AUTH)  # ZooKeeper shows a digest's hash only to who may ADMIN the node
        try:
            for p in (shard, f"{shard}/election", f"{shard}/history", f"{shard}/state"):
                assert same_acl(owner.get_acls(p)[0], shard_acl(AUTH)), (p, owner.get_acls(p)[0])
        finally:
            owner.stop()
            owner.close()
        assert log.events.count("zk_acl_set") == 4
        _refused(kz.set, f"{shard}/state", b"{}")
    finally:
        kz.stop()
        kz.close()


def test_a_sitter_rewrites_what_its_election_node_remembers_in_place(zk_server):
    """ShardStore.update_me on a real ZooKeeper, under the shard's ACL: the data changes, the
    node keeps its name (its place in the election), and a deleted node says NoNodeError
    (the sitter then joins again: tests/unit/test_state_lost.py)."""
    from dataclasses import replace

    from manatee.core import zk as zkmod

    shard = f"/manatee/rem{uuid.uuid4().hex[:6]}"

    async def run():
        zk, store = await _shard(zk_server.connect_string, shard, _Log())
        try:
            node = store.my_node
            await store.update_me(replace(_peer(1), remembers=7))
            assert store.my_node == node and [p.remembers for p in await store.election()] == [7]
            await zk.delete(node)
            with pytest.raises(zkmod.NoNodeError):
                await store.update_me(replace(_peer(1), remembers=8))
        finally:
            await zk.close()

    asyncio.run(run())


def test_a_writing_cli_needs_the_credential_file(zk_server, tmp_path):
    """manatee-adm freeze (a CAS write of the state) is refused without the credential and
    works with $MANATEE_ZK_AUTH_FILE naming a file that holds it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    hosts = zk_server.connect_string
    name = f"cli{uuid.uuid4().hex[:6]}"

    async def setup():
        zk = ZKClient(hosts, session_timeout=5, connect_timeout=10, auth=AUTH)
        await zk.start()
        try:
            store = ShardStore(zk, f"/manatee/{name}", f"/manatee/{name}-reg", _Log())
            await store.ensure_paths()
            assert await store.cas_state(ClusterState(generation=1, primary=_peer(1)), -1)
        finally:
            await zk.close()

    asyncio.run(setup())
    cred = tmp_path / "zk.cred"
    cred.write_text(f"{AUTH.credential}\n")
    adm = Path(sys.executable).parent / "manatee-adm"
    runs = {}
    for label, extra in (("without", {}), ("with", {"MANATEE_ZK_AUTH_FILE": str(cred)})):
        env = {k: v for k, v in os.environ.items() if k != "MANATEE_ZK_AUTH_FILE"} | extra
        runs[label] = subprocess.run([str(adm), "freeze", name, hosts, "-r", "acl test"], env=env,
                                     capture_output=True, text=True, timeout=60)
    assert runs["without"].returncode != 0 and "writing" in runs["without"].stderr
    assert runs["with"].returncode == 0, runs["with"].stderr
    assert "frozen" in runs["with"].stdout
    assert "correct-horse" not in runs["without"].stderr + runs["with"].stderr


def test_verify_names_a_shard_znode_whose_acl_no_longer_admits_the_credential(zk_server, tmp_path,
                                                                              monkeypatch):
    """Sandbox trial 2026-12-06: /manatee/1/state set to world:anyone:r by hand. While the
    primary lived, `verify` said "ok"; the next failover could not be written. With the
    credential, manatee-adm now reads the ACLs of the shard's znodes and says which no longer
    admit it, and what that stops."""
    import time

    from kazoo.security import make_acl

    from manatee.cli.adm_acl import acl_problems
    from manatee.cli.common import ZkReader

    hosts = zk_server.connect_string
    shard = f"/manatee/acl{uuid.uuid4().hex[:6]}"
    loop = asyncio.new_event_loop()
    zk, store = loop.run_until_complete(_shard(hosts, shard, _Log()))
    cred = tmp_path / "zk.auth"
    cred.write_text(AUTH.credential + "\n")
    monkeypatch.setenv("MANATEE_ZK_AUTH_FILE", str(cred))
    owner = _kazoo(hosts, AUTH)
    try:
        with ZkReader(hosts, time.monotonic() + 10) as r:
            assert acl_problems(r, shard) == []  # as the sitters set it
        owner.set_acls(store.state_path, [make_acl("world", "anyone", read=True)])
        owner.set_acls(store.history_path, [make_acl("world", "anyone", all=True)])  # open: still admits
        with ZkReader(hosts, time.monotonic() + 10) as r:
            got = acl_problems(r, shard)
        assert got == [f"the ACL of {store.state_path} (world:anyone:r) no longer lets the shard's credential "
                       f"write: no failover, switchover or membership change can be written. Set the sitters' "
                       f"ACL back (world:anyone:r and the credential's digest with all rights) as a ZooKeeper "
                       f"super user; or, with the shard's credential, delete it: the primary's sitter writes "
                       f"it again with the sitters' ACL (else run 'manatee-adm state-restore')"], got
        monkeypatch.delenv("MANATEE_ZK_AUTH_FILE")
        with ZkReader(hosts, time.monotonic() + 10) as r:
            assert acl_problems(r, shard) == []  # no credential: what the sitters use is unknown
    finally:
        owner.stop()
        owner.close()
        loop.run_until_complete(zk.close())
        loop.close()


def test_a_state_write_refused_by_an_acl_changed_by_hand_is_made_with_the_shards_acl(zk_server):
    """Sandbox trial 2026-12-06: /manatee/1/state set to world:anyone:r by hand, then the
    primary killed: the sync could not write the takeover, and nobody took over. The shard's
    root still lets the credential delete and create children: the write is now one
    transaction (delete at the version read, create with the new state and the shard's ACL),
    still a compare-and-set; a stale version loses the race as before."""
    from kazoo.security import make_acl

    hosts = zk_server.connect_string
    shard = f"/manatee/acl{uuid.uuid4().hex[:6]}"
    loop = asyncio.new_event_loop()
    log = _Log()
    zk, store = loop.run_until_complete(_shard(hosts, shard, log))
    owner = _kazoo(hosts, AUTH)
    try:
        owner.set_acls(store.state_path, [make_acl("world", "anyone", read=True)])

        async def writes():
            st, v = await store.read_state()
            assert not await store.cas_state(st.evolve(generation=5), v - 1)  # stale: lost, nothing written
            assert await store.cas_state(st.evolve(generation=2), v)
            return await store.read_state()
        st, v = loop.run_until_complete(writes())
        assert st.generation == 2 and "zk_state_acl_restored" in log.events
        assert same_acl(owner.get_acls(store.state_path)[0], AUTH.acl())
        assert log.events.count("zk_state_acl_restored") == 1
    finally:
        owner.stop()
        owner.close()
        loop.run_until_complete(zk.close())
        loop.close()


def test_an_acl_changed_by_hand_is_named_in_the_sitters_error(zk_server):
    """Sandbox trial 2026-12-06: the state znode's ACL set by hand to world:anyone:r, then the
    primary killed. The sync's state writes failed with kazoo's NoAuthError, which carries no
    message: the sitter logged `error=` and only at the 10th failure. ZKClient now names the
    operation, the znode and the likely cause."""
    from kazoo.security import make_acl

    hosts = zk_server.connect_string
    shard = f"/manatee/acl{uuid.uuid4().hex[:6]}"
    loop = asyncio.new_event_loop()
    zk, store = loop.run_until_complete(_shard(hosts, shard, _Log()))
    owner = _kazoo(hosts, AUTH)
    try:
        owner.set_acls(store.state_path, [make_acl("world", "anyone", read=True)])

        async def write():  # ZKClient's own set (cas_state now works around the ACL: the test below)
            with pytest.raises(NoAuthError) as e:
                await zk.set(store.state_path, b"{}")
            return str(e.value)
        msg = loop.run_until_complete(write())
        assert msg.startswith(f"ZooKeeper set {store.state_path}: refused by the znode's ACL (NoAuth)"), msg
        assert "zkCfg.auth" in msg
    finally:
        owner.stop()
        owner.close()
        loop.run_until_complete(zk.close())
        loop.close()
