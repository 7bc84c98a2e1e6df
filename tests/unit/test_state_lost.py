"""A missing state znode is "no state" only for a new shard.

Trial (sandbox, 2026-12-05): after a failover and a switchover the election's head was the
async; deleting /manatee/1/state made it declare generation 1 with itself as primary and
the old primary as its sync ("problems: none"). Under writes, the old primary's
acknowledged WAL beyond the async's would have forked and been rebuilt away. Now a sitter
that remembers a state, or whose dataset does, holds; a new node does not declare while a
live peer remembers the shard; and the remembered primary re-creates the znode when its
session has not been lost since it read it. Pure rules, the shell's memory, and the
simulated shard (whose ZooKeeper raises a Violation if anything but the lost state is
written after the loss)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from types import SimpleNamespace

import pytest

from manatee.shard.decide import decide
from manatee.shard.state import (
    PRIMARY, STANDBY, UNASSIGNED, UNKNOWN_MEMORY, ClusterState, Peer, StateError, Switchover,
    parse_election_nodes,
)
from manatee.sitter.statememory import MEMORY_PROP, Memory, StateMemory
from tests.observations import A, B, C, D, STATE, obs
from tests.sim.shard import SESSION_TIMEOUT, Shard, acked_count_grows

LOST = "I remember generation 3 (primary 10.0.0.1)"


# ------------------------------------------------------------------ the rules

def test_the_remembered_primary_recreates_the_state_when_its_session_was_never_lost():
    d = decide(obs(A, state_version=-1, state_lost=LOST, session_unbroken=True, sync_caught_up=True))
    assert d.rule == "state_lost.recreate" and d.write_state == STATE
    assert d.target.role == PRIMARY and "create it again" in d.reason


def test_after_a_lost_session_the_primary_serves_but_writes_nothing():
    d = decide(obs(A, state_version=-1, state_lost=LOST, session_unbroken=False, sync_caught_up=True))
    assert d.write_state is None and d.rule.startswith("state_lost.primary")
    assert d.target.role == PRIMARY and not d.target.read_only and "missing" in d.reason


def test_a_primary_that_released_its_role_does_not_recreate_the_state():
    st = replace(STATE, switchover=Switchover(to=B.id, requested="t", released=True))
    d = decide(obs(A, state=st, state_version=-1, state_lost=LOST, session_unbroken=True))
    assert d.write_state is None


def test_a_primary_whose_sync_is_gone_cannot_replace_it_while_the_state_is_lost():
    d = decide(obs(A, state_version=-1, state_lost=LOST, session_unbroken=False, election=(A, C), read_only=True))
    assert d.write_state is None and d.target.role == PRIMARY and d.target.read_only


@pytest.mark.parametrize("me", [B, C])
def test_standbys_keep_following_and_never_take_over(me):
    d = decide(obs(me, state_version=-1, state_lost=LOST, session_unbroken=True))
    assert d.rule == "state_lost.follow" and d.target.role == STANDBY and d.write_state is None
    d = decide(obs(B, state_version=-1, state_lost=LOST, election=(B, C), streaming=False, upstream_id=None))
    assert d.write_state is None and d.target.role != PRIMARY


def test_a_restarted_sitter_whose_dataset_remembers_waits():
    d = decide(obs(C, state=None, state_version=-1, state_lost="my dataset remembers generation 3 (primary 10.0.0.1)",
                   election=(C, A, B), running=False))
    assert d.rule == "state_lost.wait" and d.target.role == UNASSIGNED and d.write_state is None
    assert "until it is restored" in d.reason


@pytest.mark.parametrize("remembers", [3, UNKNOWN_MEMORY])
def test_a_new_head_does_not_declare_while_a_live_peer_remembers_the_shard(remembers):
    peers = (D, replace(A, remembers=remembers), replace(B, remembers=None))
    d = decide(obs(D, state=None, state_version=-1, election=peers, running=False, has_data=False))
    assert d.rule == "bootstrap.peers_remember" and d.write_state is None and d.target.role == UNASSIGNED
    assert "10.0.0.1" in d.reason and "state-restore" in d.reason


def test_a_new_shard_still_declares_generation_1():
    peers = (A, replace(B, remembers=None), replace(C, remembers=None))
    d = decide(obs(A, state=None, state_version=-1, election=peers, wal=0x1000, running=False))
    assert d.rule == "bootstrap.declare" and d.write_state.generation == 1


# ------------------------------------------------------------------ the election node

def test_the_election_node_says_what_the_peer_remembers():
    data = {"zoneId": "z", "ip": "10.0.0.9", "pgUrl": "tcp://p@10.0.0.9:5432/postgres", "backupUrl": "http://b"}
    assert Peer.from_election("10.0.0.9:5432:1:2", data).remembers == UNKNOWN_MEMORY  # an older sitter
    assert Peer.from_election("10.0.0.9:5432:1:2", {**data, "remembers": None}).remembers is None
    assert Peer.from_election("10.0.0.9:5432:1:2", {**data, "remembers": 4}).remembers == 4
    for bad in (0, -1, True, "4", 2.5):
        with pytest.raises(StateError, match="remembers"):
            Peer.from_election("10.0.0.9:5432:1:2", {**data, "remembers": bad})
    assert "remembers" not in replace(A, remembers=4).to_json()  # never in the state's JSON


def test_the_sitters_election_reader_keeps_what_each_node_remembers():
    """The sitter reads the election with parse_election_nodes (a rogue node is quarantined,
    the rest kept). It dropped `remembers` until 2026-12-05, so every peer read as holding
    nothing and a new node heading the election declared generation 1 even while a live
    peer held the shard's data (bootstrap.peers_remember never fired outside the sim)."""
    import json

    def raw(p, **extra):
        return json.dumps({**{k: v for k, v in p.to_json().items() if k != "id"}, **extra}).encode()

    raws = {f"{A.id}-0000000001": raw(A, remembers=None), f"{B.id}-0000000002": raw(B, remembers=7),
            f"{C.id}-0000000003": raw(C), f"{D.id}-0000000004": raw(D, remembers="7")}
    peers, bad = parse_election_nodes(raws)
    assert [p.remembers for p in peers] == [None, 7, UNKNOWN_MEMORY]
    assert [n for n, _ in bad] == [f"{D.id}-0000000004"] and "remembers" in bad[0][1]
    d = decide(obs(A, state=None, state_version=-1, election=peers, wal=0x1000, running=False))
    assert d.rule == "bootstrap.peers_remember" and d.write_state is None
    assert "generation 7" in d.reason, d.reason


@pytest.mark.parametrize("said,now,says", [
    (None, 3, 3), (3, 4, 4), (UNKNOWN_MEMORY, None, None), (UNKNOWN_MEMORY, 2, 2),  # news
    (3, 3, "same"), (None, None, "same"), (4, 3, "same"), (4, None, "same"),        # never less
    (None, UNKNOWN_MEMORY, "same"), (4, UNKNOWN_MEMORY, "same"),                    # unknown is no news
])
def test_an_election_node_is_rewritten_only_with_news(said, now, says):
    from manatee.sitter.statememory import SAID, to_say
    got = to_say(said, now)
    assert (got is SAID) if says == "same" else (got == says and got is not SAID)


# ------------------------------------------------------------------ the dataset's memory

class _Dataset:
    def __init__(self, value="-", fail=None):
        self.value, self.fail, self.writes = value, fail, []

    async def read_memory(self, timeout):
        if self.fail:
            raise self.fail
        return self.value

    async def write_memory(self, value, timeout):
        if self.fail:
            raise self.fail
        self.value = value
        self.writes.append(value)


def _memory(ds):
    clock = SimpleNamespace(t=0.0)
    clock.monotonic = lambda: clock.t
    log = SimpleNamespace(info=lambda *a, **k: None, warning=lambda *a, **k: None)
    return StateMemory(ds, log, clock), clock


def test_memory_parse():
    assert Memory.parse("-") is None and Memory.parse("") is None
    assert Memory.parse('{"generation":3,"primary":"10.0.0.1:5432:1:2"}') == Memory(3, "10.0.0.1:5432:1:2")
    assert Memory.parse(Memory.of(STATE).dumps()) == Memory(3, A.id, STATE)  # the whole state, when it fits
    other = replace(STATE, generation=4)
    for bad in ("nope", "[]", '{"generation":0,"primary":"x"}', '{"generation":3}', '{"generation":true,"primary":"x"}',
                '{"generation":3,"primary":"x","state":{"generation":"3"}}',
                Memory(3, A.id, other).dumps()):  # its state says another generation
        with pytest.raises(ValueError, match=MEMORY_PROP):
            Memory.parse(bad)


def test_a_state_too_big_for_a_property_keeps_the_generation_and_primary():
    big = replace(STATE, async_=tuple(replace(C, id=f"10.0.{i // 250}.{i % 250}:5432:1:2") for i in range(60)))
    value = Memory.of(big).dumps()
    assert len(value) < 100 and Memory.parse(value) == Memory(3, A.id)


def _kept(m: StateMemory):
    async def keep(st, **kw):
        await m.keep(st, **kw)
        if m.task is not None:
            await m.task  # saved in the background (an event loop runs here)
    return lambda st, **kw: asyncio.run(keep(st, **kw))


def test_the_memory_is_saved_once_per_generation_and_never_moves_back():
    ds = _Dataset()
    m, _ = _memory(ds)
    asyncio.run(m.load())
    keep = _kept(m)
    assert m.known and m.saved is None and m.remembers(None) is None and m.lost(None) is None
    keep(STATE, has_data=False)
    assert ds.writes == []  # no data of the shard: nothing to remember
    keep(STATE, has_data=True)
    keep(STATE, has_data=True)
    assert ds.writes == [Memory.of(STATE).dumps()]
    keep(replace(STATE, generation=2), has_data=True)
    assert len(ds.writes) == 1 and m.remembers(None) == 3
    assert m.lost(None) == "my dataset remembers generation 3 (primary 10.0.0.1)"
    assert m.lost(STATE).startswith("I remember generation 3")
    m.dataset_replaced()  # a restore: the new dataset has no property
    assert m.remembers(None) is None
    keep(STATE, has_data=True)
    assert len(ds.writes) == 2


def test_the_upstream_streamed_from_is_kept_for_its_generation_and_read_back_once():
    """F12 with the primary never returning: what a sync's dataset says it streamed from in
    the current generation stands for streaming again after a restart (once, at start)."""
    assert Memory.parse(Memory.of(STATE, A.id).dumps()) == Memory(3, A.id, STATE, A.id)
    for bad in ('{"generation":3,"primary":"x","streamed":7}', '{"generation":3,"primary":"x","streamed":""}'):
        with pytest.raises(ValueError, match="streamed"):
            Memory.parse(bad)
    ds = _Dataset()
    m, _ = _memory(ds)
    asyncio.run(m.load())
    keep = _kept(m)
    keep(STATE, has_data=True)
    keep(STATE, has_data=True, streaming_from=A.id)
    keep(STATE, has_data=True)  # not streaming now (e.g. the primary died): the proof is kept
    assert [Memory.parse(w).streamed for w in ds.writes] == [None, A.id]
    keep(replace(STATE, generation=4), has_data=True)  # a new generation: streamed in it, not before
    assert Memory.parse(ds.writes[-1]) == Memory(4, A.id, replace(STATE, generation=4), None)

    ds.value = Memory.of(STATE, A.id).dumps()  # a restarted sitter reads it
    m, _ = _memory(ds)
    asyncio.run(m.load())
    assert m.streamed_before(None) is None  # no state read yet: not used up
    assert m.streamed_before(replace(STATE, generation=4)) is None  # another generation: never
    m, _ = _memory(ds)
    said = []
    m.log = SimpleNamespace(info=lambda ev, **kw: said.append((ev, kw)), warning=lambda *a, **k: None)
    asyncio.run(m.load())
    assert m.streamed_before(STATE) == A.id and m.streamed_before(STATE) is None  # once
    assert [ev for ev, _ in said] == ["state_memory_read", "streamed_record_used"]  # the log says why
    assert said[1][1]["upstream"] == A.id and said[1][1]["generation"] == 3
    assert m.not_used is None
    m, _ = _memory(ds)
    asyncio.run(m.load())
    m.dataset_replaced()  # restored from a peer: its WAL came from elsewhere
    assert m.streamed_before(STATE) is None and "does not say that I streamed in generation 3" in m.not_used


def test_why_the_record_of_streaming_was_not_used_is_said_until_streaming_again():
    ds = _Dataset(Memory.of(STATE, A.id).dumps())
    m, _ = _memory(ds)
    m.flushed_acks = False  # synchronousCommit remote_write
    asyncio.run(m.load())
    assert m.streamed_before(STATE) is None
    assert "remote_write" in m.as_json(STATE)["streamedNotUsed"]
    m, _ = _memory(ds)
    asyncio.run(m.load())
    assert m.streamed_before(replace(STATE, generation=4)) is None
    assert m.not_used == "my dataset says that I streamed in generation 3, not 4"
    _kept(m)(replace(STATE, generation=4), has_data=True, streaming_from=A.id)
    assert m.not_used is None and "streamedNotUsed" not in m.as_json(STATE)


def test_an_unreadable_memory_counts_as_remembering_and_is_read_again_later():
    ds = _Dataset(fail=OSError("zfs hung"))
    m, clock = _memory(ds)
    asyncio.run(m.load())
    assert not m.known and m.remembers(None) == UNKNOWN_MEMORY and "cannot tell" in m.lost(None)
    assert m.remembers(STATE) == 3
    ds.fail = None
    ds.value = '{"generation":5,"primary":"10.0.0.2:5432:1:2"}'
    asyncio.run(m.load())
    assert not m.known  # not before the retry time
    clock.t += 61
    asyncio.run(m.load())
    assert m.known and m.remembers(None) == 5 and m.as_json(STATE) == {"generation": 5, "primary": "10.0.0.2:5432:1:2"}


def test_a_malformed_memory_is_unknown_not_nothing():
    m, _ = _memory(_Dataset(value="garbage"))
    asyncio.run(m.load())
    assert not m.known and m.remembers(None) == UNKNOWN_MEMORY


# ------------------------------------------------------------------ the simulated shard

def _shard() -> Shard:
    return Shard(3, seed=1, commits_per_tick=2).bootstrap()


def _head_is_the_async(sh: Shard) -> None:
    """Restart the primary's and the sync's sitters (PostgreSQL runs on) so that the async
    heads the election, as after the trial's failover and switchover."""
    for role in ("primary", "sync"):
        n = sh.by_role(role)
        sh._halt(n)
        sh._boot(n)
        sh.run(3)
        sh.settle()
    assert sh.zk.peers()[0].id == sh.zk.state().async_[0].id


def test_sim_deleted_state_znode_is_recreated_by_the_primary_with_nothing_lost():
    sh = _shard()
    _head_is_the_async(sh)
    sh.run(5)
    st, promotions = sh.zk.state(), list(sh.promotions)
    sh.zk.delete_state()
    sh.run(5)
    assert sh.zk.state() == st and sh.promotions == promotions, sh.describe()
    assert sh.events(sh.by_role("primary"), "state_written")
    assert acked_count_grows(sh) and not sh.lost_acknowledged()


def test_sim_zookeeper_wiped_nobody_declares_and_the_operator_restores():
    sh = _shard()
    _head_is_the_async(sh)
    sh.run(5)
    st, writes = sh.zk.state(), len(sh.zk.writes)
    sh.zk.wipe()  # every session expires: nobody may re-create it by itself
    sh.run(3 * SESSION_TIMEOUT)
    assert sh.zk.state() is None and len(sh.zk.writes) == writes, sh.describe()
    assert all(n.last_decision.rule.startswith("state_lost") for n in sh.nodes), sh.describe()
    assert not sh.lost_acknowledged()
    sh.zk.set_raw(st.dumps())  # manatee-adm state-restore
    sh.settle()
    assert sh.zk.state().primary.id == st.primary.id and acked_count_grows(sh) and not sh.lost_acknowledged()


def test_sim_zookeeper_wiped_and_every_sitter_restarted_the_datasets_remember():
    """A power cut of everything with ZooKeeper's data lost: each dataset remembers the whole
    state, so the primary serves again and the standbys follow; nobody writes a state."""
    sh = _shard()
    sh.run(5)
    st, writes = sh.zk.state(), len(sh.zk.writes)
    for n in sh.nodes:
        sh.kill(n)
    sh.zk.wipe()
    for n in reversed(sh.nodes):  # the async first: it heads the election
        sh.start(n)
    sh.run(3 * SESSION_TIMEOUT)
    assert sh.zk.state() is None and len(sh.zk.writes) == writes, sh.describe()
    assert all(n.last_decision.rule.startswith("state_lost.") for n in sh.nodes), sh.describe()
    assert acked_count_grows(sh) and not sh.lost_acknowledged()
    sh.zk.set_raw(st.dumps())
    sh.settle()
    assert sh.zk.state().primary.id == st.primary.id and not sh.lost_acknowledged() and acked_count_grows(sh)


# ------------------------------------------------------------------ an older state written back

OLDER = ("the shard state znode is older than I remember: it holds generation 2 (primary 10.0.0.2); "
         "I remember generation 3 (primary 10.0.0.1)")


@pytest.mark.parametrize("me", [A, B, C])
def test_an_older_state_is_held_never_followed_and_never_recreated(me):
    d = decide(obs(me, state_older=OLDER, session_unbroken=True, sync_caught_up=True))
    assert d.write_state is None and d.rule.startswith("state_older."), d.rule
    assert d.target.role == (PRIMARY if me == A else STANDBY) and "older than I remember" in d.reason


def test_sim_zookeeper_restored_from_an_older_copy_is_not_followed():
    """ZooKeeper's data restored from a backup taken before the last failover: its state
    names the old primary, now behind. Following it would make that node lead without the
    newer generations' writes; every sitter holds what it remembers instead."""
    sh = _shard()
    old = sh.zk.state_raw
    sh.kill(sh.by_role("primary"))
    sh.settle()
    new, promotions = sh.zk.state(), list(sh.promotions)
    sh.run(5)
    sh.zk.set_raw(old)  # ZooKeeper back from its backup
    sh.run(3 * SESSION_TIMEOUT)
    assert sh.promotions == promotions and sh.zk.state_raw == old, sh.describe()
    live = [n for n in sh.nodes if n.alive]
    assert all(n.last_decision.rule.startswith("state_older.") for n in live), sh.describe()
    assert acked_count_grows(sh) and not sh.lost_acknowledged()
    sh.zk.set_raw(new.dumps())  # the operator writes the newest state back
    sh.settle()
    assert sh.zk.state().primary.id == new.primary.id and not sh.lost_acknowledged()


# ------------------------------------------------------------------ what the election nodes say

def test_sim_election_nodes_say_the_newest_generation_their_sitters_know():
    """Every node of a new shard joins knowing nothing (`remembers: null`); once its sitter
    has read the state its election node says that generation, and a failover's new one,
    so that the tools (manatee-adm show, state-restore) and a peer heading the election
    after the state is lost do not take a node that holds the shard's data for a new one."""
    sh = _shard()
    sh.run(3)
    assert all(p.remembers == sh.zk.state().generation == 1 for p in sh.zk.peers()), sh.zk.peers()
    sh.kill(sh.by_role("primary"))
    sh.settle()
    sh.run(3)
    gen = sh.zk.state().generation
    assert gen > 1 and [p.remembers for p in sh.zk.peers()] == [gen, gen], sh.zk.peers()
    assert all(sh.events(n, "election_node_updated") for n in sh.nodes if n.alive)


def test_sim_a_sitter_whose_election_node_was_deleted_joins_again():
    """An election node deleted by hand (or overwritten with bytes that do not parse) while
    its sitter's session lives: the primary counts that node gone, and with the sync's or the
    async's node gone a failover could find no candidate. The sitter sees itself missing at
    its next read of the election and joins again (at the tail)."""
    sh = _shard()
    sh.run(3)
    victim = sh.node(sh.zk.state().async_[0].id)
    seq = next(s for s, (p, _sid) in sh.zk.election.items() if p.id == victim.id)
    del sh.zk.election[seq]
    sh.zk.poke()
    sh.run(3)
    assert victim.id in {p.id for p in sh.zk.peers()}, sh.describe()
    assert sh.events(victim, "election_node_gone")
    sh.kill(sh.by_role("primary"))
    sh.settle()
    assert sh.zk.state().generation > 1 and not sh.lost_acknowledged() and acked_count_grows(sh)


# ------------------------------------------------------------------ other leaders at the same generation

def test_a_state_follows_only_with_a_newer_generation_or_the_same_leaders():
    from manatee.sitter.statememory import not_following
    mem = Memory.of(STATE)
    g = STATE.generation
    assert not_following(STATE, mem) is None
    assert not_following(STATE.evolve(async_=(), deposed=(STATE.async_[0],)), mem) is None  # the primary's own
    assert not_following(STATE.evolve(generation=g + 1, primary=STATE.sync, sync=STATE.async_[0], async_=()), mem) is None
    older = not_following(STATE.evolve(generation=g - 1), mem)
    assert older.startswith("the shard state znode is older than I remember") and f"generation {g - 1}" in older
    for other in (STATE.evolve(primary=STATE.async_[0], sync=STATE.primary, async_=(STATE.sync,)),  # the async
                  STATE.evolve(sync=STATE.async_[0], async_=(STATE.sync,))):   # another sync
        why = not_following(other, mem)
        assert why and "names other leaders than I remember for its generation" in why, why
        assert f"I remember generation {g} (primary {STATE.primary.ip}, sync {STATE.sync.ip})" in why
    bare = Memory(g, STATE.primary.id)  # a memory too big to hold the whole state: the primary alone
    assert not_following(STATE.evolve(sync=STATE.async_[0], async_=(STATE.sync,)), bare) is None
    assert not_following(STATE.evolve(primary=STATE.sync, sync=STATE.primary), bare)


def test_sim_a_state_written_by_hand_at_the_same_generation_is_not_followed():
    """Someone writes the state back at its generation but with the async as primary (a copy
    pieced together by hand). Before, everyone followed it: the async, which lacks the last
    acknowledged writes, was promoted. Now every sitter holds what it remembers, the primary
    keeps serving, and writing the right state back resumes the shard."""
    sh = _shard()
    sh.run(5)
    st = sh.zk.state()
    p, a = sh.node(st.primary.id), sh.node(st.async_[0].id)
    a.peers_cut = True  # the async lags: it lacks writes the primary acknowledged since
    sh.run(3)
    assert acked_count_grows(sh)
    promotions, writes = list(sh.promotions), len(sh.zk.writes)
    sh.zk.set_raw(st.evolve(primary=st.async_[0], sync=st.primary, async_=(st.sync,)).dumps())
    sh.run(2 * SESSION_TIMEOUT)
    assert sh.promotions == promotions and len(sh.zk.writes) == writes, sh.describe()
    assert all(n.last_decision.rule.startswith("state_older.") for n in sh.nodes), sh.describe()
    assert sh.writable(p) and set(sh.acked) <= set(p.log)  # (lost_acknowledged asks the znode's primary)
    sh.zk.set_raw(sh.node(p.id).sitter.view.state.dumps())  # the operator writes the right one back
    a.peers_cut = False
    sh.settle()
    assert sh.zk.state().primary.id == p.id and acked_count_grows(sh) and not sh.lost_acknowledged()


def test_sim_a_failed_election_node_rewrite_is_not_fatal_and_is_retried_later():
    """A rewrite refused (say, the node's ACL changed by hand) must not fail every refresh,
    which would stop the sitter's cycles: it is logged, retried after ZK_SAFETY_REFRESH_S,
    and the shard goes on."""
    from kazoo.exceptions import NoAuthError

    sh = _shard()
    n = sh.node(sh.zk.state().async_[0].id)

    async def refused(me):
        raise NoAuthError()

    n.sitter.view.store.update_me = refused
    n.sitter.view.said = None  # it has news to tell: the generation it read
    sh.run(20)
    tries = sh.events(n, "election_node_not_updated")
    assert 2 <= len(tries) <= 20 // 5 + 1, tries
    assert n.last_decision.rule == "async.follow" and acked_count_grows(sh) and not sh.lost_acknowledged()


@pytest.mark.parametrize("record, generation, flushed, upstream, why", [
    ((3, A.id), 3, True, A.id, None),
    ((3, A.id), 3, False, None, "remote_write"),
    ((2, A.id), 3, True, None, "generation 2, not 3"),
    (None, 3, True, None, "does not say"),
])
def test_the_record_of_streaming_stands_for_streaming_only_in_its_generation(record, generation, flushed,
                                                                               upstream, why):
    from manatee.shard.latches import streamed_record
    got, reason = streamed_record(record, generation, flushed)
    assert got == upstream and (reason is None if why is None else why in reason)
