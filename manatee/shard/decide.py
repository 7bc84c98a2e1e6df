"""The sitter's decision core: `decide(Observation) -> Decision`. Pure: no I/O, no clock.

The imperative shell gathers an Observation every cycle (election, persisted state, what
its PostgreSQL reports), calls `decide`, writes `write_state` by compare-and-set on
`obs.state_version` (and `write_error` by create), applies `target` only if that write
succeeded, and logs `reason` — one plain sentence saying what was decided and why.

The safety argument for every rule is in docs/design.md; in short:
- S1 (one writer): a primary's commits need its sync's acknowledgement, and the only node
  that can ever be promoted is that sync, which stops replicating before it takes over. So
  a primary cut off from ZooKeeper may keep serving (F10) while its sync still streams from
  it; once its session may have expired and the sync is gone, or once the session did
  expire, it is fenced (a client-cancelled commit wait returns success without the sync).
- S2/S3: only the previous primary or sync leads; the sync takes over only when it has
  received at least `initWal` and its position is final (detached from the old primary);
  the primary records `initWal` for a new sync only after it went read-only.
- S4: a node that diverged never takes over: it is rebuilt, or the shard enters safe mode.
- S8: unknown is not a fact. A status query PostgreSQL did not answer (`pg_known` False)
  is never read as "running as a primary" (forked), divergence or a WAL position: no kill,
  rebuild, safe mode or takeover is decided on it; the node holds and says why.
- S9: a primary whose PostgreSQL cannot serve for primaryStartTimeout (`cannot_serve`)
  steps down to a live, heartbeating sync: PostgreSQL killed first, then a released
  switchover by CAS, which the sync takes over by the usual rule.
- Nobody writes the state unless connected, present in the election, and not frozen.
- A missing state znode is "no state" only for a new shard: a sitter that remembers a
  state (or whose dataset does), or that sees a live peer that does, never declares a new
  generation 1 (which could make a lagging node lead and rebuild the others).
"""

from __future__ import annotations

from dataclasses import replace

from manatee.shard.decision import PG_UNKNOWN, STEP_DOWN_BY, Decision, Observation, View, lsn_text
from manatee.shard.primary_rules import as_primary
from manatee.shard.state import (
    CONNECTED, DEPOSED, PRIMARY, REBUILD, SAFE_MODE, STANDBY, UNASSIGNED, UNKNOWN_MEMORY, ClusterState, Peer,
    Target, error_record,
)

__all__ = ["TAKEOVER_HELD", "decide"]

#: the sync's rules that hold back a takeover while its primary is gone (manatee-adm names them)
TAKEOVER_HELD = frozenset({"sync.no_wal", "sync.behind", "sync.behind_release", "sync.no_candidate",
                           "sync.cannot_write", "sync.diverged_cannot_write", "sync.pg_unknown"})


def decide(obs: Observation) -> Decision:
    """The target role for this node, the state/error writes that go with it, and why."""
    v = View(obs)
    if obs.error is not None:
        return _safe_mode(v)
    if obs.state_unreadable or obs.state_lost or obs.state_older:
        return _state_unreadable(v)
    if v.st is None:
        return _bootstrap(v)
    place = v.st.place_of(obs.me.id)
    if place == "primary":
        return as_primary(v)
    if place == "sync":
        return _as_sync(v)
    if place == "async":
        return _as_async(v)
    if place == "deposed":
        return Decision(
            Target(DEPOSED), rule="deposed",
            reason="the state lists me as a deposed former primary whose WAL may have forked, "
                   "so PostgreSQL stays stopped until the primary moves me to the tail of the chain")
    return Decision(
        Target(UNASSIGNED), rule="not_member",
        reason=f"I am not in the shard state of generation {v.st.generation} yet, "
               f"so I wait until the primary {v.st.primary} appends me to the chain")


# -- rule 1: safe mode -------------------------------------------------------------------
def _safe_mode(v: View) -> Decision:
    why = str(v.obs.error.get("reason") or "no reason recorded")
    return Decision(
        Target(SAFE_MODE), rule="safe_mode",
        reason=f"the shard is in safe mode ({why}), so I take no writes and change nothing "
               f"until an operator clears the error node")


# -- rule 2: the state znode cannot be parsed, or is gone while I know the shard had one ----
def _state_unreadable(v: View) -> Decision:
    """Hold. A malformed state is not "no state" (the election head would declare a new
    generation 1: a fork), and it says nothing about who may lead: nobody writes the state
    (write_block says so), promotes or rebuilds. A primary keeps its role by the usual
    primary rules, which cannot write the state either (and still fence it when its
    session is gone); a standby keeps following its upstream; everyone else waits.

    The same holds when the znode is gone but I remember it (obs.state_lost: ZooKeeper lost
    its data, or someone deleted it), or holds an older generation than I remember
    (obs.state_older: ZooKeeper restored from an old copy), or names other leaders at the
    generation I remember (a state written by hand): a new generation 1 would let the election's head,
    perhaps a lagging async, lead and rebuild the others from its older data. One write is
    safe there: the remembered primary re-creating exactly the state it last read, when its
    session has not been lost since — nobody can have replaced it without a write to that
    znode, which this session would have seen (create fails if anyone re-created it)."""
    obs, st = v.obs, v.st
    if obs.state_unreadable:
        rule = "state_unreadable"
        why = "the shard state znode cannot be parsed (an operator must fix it: manatee-adm state-restore)"
    elif obs.state_lost:
        rule, why = "state_lost", f"the shard state znode is missing ({obs.state_lost})"
    else:
        rule, why = "state_older", obs.state_older  # older, or other leaders at my generation
    lost = rule == "state_lost"
    place = st.place_of(obs.me.id) if st is not None else None
    if place == "primary":
        d = as_primary(v)
        sw = st.switchover
        if (lost and obs.session_unbroken and obs.zk == CONNECTED and v.in_election
                and d.target.role == PRIMARY and d.write_state is None and not (sw is not None and sw.released)):
            return replace(d, write_state=st, rule="state_lost.recreate",
                           reason=f"{why}; I am its primary and my ZooKeeper session has not been lost "
                                  f"since I read it, so nobody replaced me: I create it again as it was "
                                  f"(generation {st.generation})")
        return replace(d, rule=f"{rule}.{d.rule}", reason=f"{why}; {d.reason}")
    if place in ("sync", "async") and obs.has_data:
        chain = st.chain()
        ids = [p.id for p in chain]
        ahead = chain[:ids.index(obs.me.id)]
        up = st.primary if place == "sync" else next((p for p in reversed(ahead) if v.alive(p)), None)
        if up is not None:
            return Decision(Target(STANDBY, upstream=up, downstream=v.next_live_after(obs.me.id, chain)),
                            rule=f"{rule}.follow",
                            reason=f"{why}, so I keep following {up} as its {place} and take over, "
                                   f"rebuild or write nothing until it is {'restored' if lost else 'fixed'}")
    return Decision(Target(UNASSIGNED), rule=f"{rule}.wait",
                    reason=f"{why}, so I wait and change nothing until it is {'restored' if lost else 'fixed'}")


# -- rule 3: no state yet ----------------------------------------------------------------
def _bootstrap(v: View) -> Decision:
    obs = v.obs
    if obs.zk != CONNECTED:
        return Decision(Target(UNASSIGNED), rule="bootstrap.wait_zk",
                        reason=f"no shard state exists and my ZooKeeper session is {obs.zk}, so I wait")
    holders = [p for p in v.election if p.id != obs.me.id and p.remembers is not None]
    if holders:
        said = ", ".join(f"{p} {_memory_text(p.remembers)}" for p in holders)
        return Decision(Target(UNASSIGNED), rule="bootstrap.peers_remember",
                        reason=f"no shard state exists, but {said}: ZooKeeper lost the shard's state "
                               f"(or it was deleted), so nobody declares a new generation 1 over that data; "
                               f"I wait until it is restored (manatee-adm state-restore)")
    # The head of the election, skipping nofailover nodes (never primary).
    heads = [p for p in v.election if not p.nofailover]
    if not heads or heads[0].id != obs.me.id:
        head = heads[0] if heads else None
        why = (f"{head} heads the election and will declare the first generation" if head
               else "the election is empty")
        return Decision(Target(UNASSIGNED), rule="bootstrap.not_head",
                        reason=f"no shard state exists and {why}, so I wait")
    need = 1 if v.onwm else 2
    if len(v.election) < need:
        return Decision(Target(UNASSIGNED), rule="bootstrap.alone",
                        reason="no shard state exists and I am the only live peer, so I wait for a "
                               "second one to be my sync before declaring the first generation")
    me = heads[0]
    sync, rest = v.pick_sync([p for p in v.election if p.id != me.id])
    if sync is None and not v.onwm:
        return Decision(Target(UNASSIGNED), rule="bootstrap.no_sync_candidate",
                        reason="no shard state exists and no other live peer may be a sync (tags "
                               "nofailover/nosync), so I wait for one before declaring the first generation")
    new = ClusterState(generation=1, primary=me, sync=sync, async_=tuple(rest),
                       init_wal=obs.wal or 0, one_node_write_mode=v.onwm)
    return Decision(
        Target(PRIMARY, sync=sync, downstream=sync, read_only=not v.onwm),
        write_state=new, rule="bootstrap.declare",
        reason=f"no shard state exists and I head the election, so I declare generation 1 with "
               f"me as primary and {sync or 'no'} sync"
               + ("" if v.onwm else ", read-only until the sync catches up"))


def _memory_text(remembers: int | str | None) -> str:
    if remembers == UNKNOWN_MEMORY:
        return "does not say whether it holds data of this shard (an older sitter?)"
    return f"holds data of its generation {remembers}"


# -- rule 5: I am the sync ---------------------------------------------------------------
def _as_sync(v: View) -> Decision:
    obs, st = v.obs, v.st
    assert st is not None
    primary, down = st.primary, v.next_live_after(obs.me.id, st.chain())
    diverged = obs.diverged or v.forked
    sw = st.switchover
    released = sw is not None and sw.released and sw.to == obs.me.id
    if (held := _start_held(v, "sync", diverged or obs.rebuild_requested)) is not None:
        return held
    if v.alive(primary) and not released:
        if (why := _cannot_follow(obs, diverged, primary)) is not None:
            return Decision(Target(REBUILD, upstream=primary, downstream=down), rule="sync.rebuild",
                            reason=f"I am the sync but {why} the primary {primary}, so I rebuild from it")
        if v.pg_unknown:
            return Decision(Target(STANDBY, upstream=primary, downstream=down), rule="sync.pg_unknown",
                            reason=f"I am the sync of {primary} but {PG_UNKNOWN}, so I change nothing this cycle")
        return Decision(Target(STANDBY, upstream=primary, downstream=down), rule="sync.follow",
                        reason=f"I am the sync and follow the primary {primary}")

    if released and sw.by == STEP_DOWN_BY:
        gone = f"the primary {primary} stepped down in my favour (its PostgreSQL could not serve)"
    elif released:
        gone = f"the primary {primary} released its role to me for a switchover"
    else:
        gone = f"the primary {primary} is gone"

    def stay(rule: str, why: str) -> Decision:
        assert rule in TAKEOVER_HELD, rule
        return Decision(Target(STANDBY, upstream=primary, downstream=down), rule=rule,
                        reason=f"{gone} but {why}, so I may not take over")

    block = v.write_block()
    if v.pg_unknown and not diverged:
        return stay("sync.pg_unknown", f"{PG_UNKNOWN} and I cannot show that I hold every acknowledged write")
    if diverged:
        if block is None:
            reason = (f"the primary {primary} is gone and my WAL has diverged from it, so no node can "
                      f"safely take writes and I put the shard in safe mode")
            return Decision(Target(SAFE_MODE), rule="sync.safe_mode", reason=reason,
                            write_error=error_record(st, obs.me, reason))
        return stay("sync.diverged_cannot_write", f"my WAL has diverged and {block}")
    if block is not None:
        return stay("sync.cannot_write", block)
    if obs.wal is None:
        return stay("sync.no_wal", "I have not streamed any WAL from it since PostgreSQL started "
                                   "and cannot show that I hold every acknowledged write")
    if obs.wal < st.init_wal:
        return stay("sync.behind", f"my WAL {lsn_text(obs.wal)} is behind {lsn_text(st.init_wal)} that the primary "
                                   f"had when I became sync")
    if released and obs.wal < sw.released_wal:
        return stay("sync.behind_release", f"my WAL {lsn_text(obs.wal)} is behind {lsn_text(sw.released_wal)} at which "
                                           f"the primary stopped")
    cands = v.candidates(exclude={primary.id, obs.me.id})
    if released and v.alive(primary):
        # the old primary stopped cleanly behind my WAL: it rejoins the chain (as my sync when
        # nobody else can be), not the deposed list; if its WAL forked after all, it rebuilds
        cands = [*cands, primary]
    if not any(p.can_sync for p in cands) and not v.onwm:
        return stay("sync.no_candidate", "no other standby is live to become my sync and I would take "
                                         "writes without one" + (" (the live ones are tagged nofailover/nosync)"
                                                                 if cands else ""))
    new_sync, rest = v.pick_sync(cands)
    read_only = not v.onwm and not (released and new_sync is not None)  # docs/design.md "Switchover"
    then = Target(PRIMARY, sync=new_sync, downstream=new_sync, read_only=read_only)
    if obs.streaming or obs.upstream_id is not None:
        # the takeover's sync and mode go into the detached standby's config now (PostgreSQL
        # ignores both until it is promoted): the promotion then needs no reload of its own
        return Decision(Target(STANDBY, upstream=None, downstream=down, then=then), rule="sync.detach",
                        reason=f"{gone} and I hold every acknowledged write, so I stop "
                               f"replicating first to make my WAL position final before I take over")
    new = _takeover_state(v, cands, new_sync, rest)
    return Decision(
        then, write_state=new, rule="sync.switchover" if released else "sync.takeover",
        reason=f"{gone} and I hold every acknowledged write (WAL {lsn_text(obs.wal)}, needed "
               f"{lsn_text(st.init_wal)}), so I take over in generation {new.generation} with "
               f"{new_sync or 'no'} sync" + (", read-only until it catches up" if read_only else ""))


def _takeover_state(v: View, cands: list[Peer], new_sync: Peer | None, rest: list[Peer]) -> ClusterState:
    """The next generation written by a sync that takes over: the candidates it did not pick
    are the asyncs; the old primary is deposed unless it is one of them (a switchover)."""
    obs, st = v.obs, v.st
    assert st is not None and obs.wal is not None
    me = next((p for p in v.election if p.id == obs.me.id), obs.me)
    known_dep = {p.id for p in cands}
    deposed = tuple(p for p in st.deposed if p.id not in known_dep)
    if st.primary.id not in known_dep:
        deposed = (*deposed, st.primary)
    return st.evolve(generation=st.generation + 1, primary=me, sync=new_sync, async_=tuple(rest),
                     deposed=deposed, init_wal=obs.wal, one_node_write_mode=v.onwm, switchover=None)


# -- rule 6: I am an async ---------------------------------------------------------------
def _as_async(v: View) -> Decision:
    obs, st = v.obs, v.st
    assert st is not None
    chain = st.chain()
    ids = [p.id for p in chain]
    ahead = chain[:ids.index(obs.me.id)]
    upstream = next((p for p in reversed(ahead) if v.alive(p)), None)
    down = v.next_live_after(obs.me.id, chain)
    if upstream is None:
        return Decision(Target(UNASSIGNED, downstream=down), rule="async.no_upstream",
                        reason="I am an async standby but no node ahead of me in the chain is live, so I wait")
    if (why := _cannot_follow(obs, obs.diverged or v.forked, upstream)) is not None:
        return Decision(Target(REBUILD, upstream=upstream, downstream=down), rule="async.rebuild",
                        reason=f"I am an async standby but {why} {upstream}, so I rebuild from it")
    if (held := _start_held(v, "async", False)) is not None:
        return held
    if v.pg_unknown:
        return Decision(Target(STANDBY, upstream=upstream, downstream=down), rule="async.pg_unknown",
                        reason=f"I am an async standby of {upstream} but {PG_UNKNOWN}, so I change nothing "
                               f"this cycle")
    return Decision(Target(STANDBY, upstream=upstream, downstream=down), rule="async.follow",
                    reason=f"I am an async standby and follow {upstream}, the nearest live node ahead of me")


# -- a standby whose PostgreSQL keeps failing to start ---------------------------------------
def _cannot_follow(obs: Observation, diverged: bool, upstream: Peer) -> str | None:
    """Why I must rebuild from `upstream` instead of following it (the sentence's middle,
    completed by "... {upstream}"), or None: my WAL diverged, an operator asked for it (my
    data is intact: not a divergence, should the primary be gone), I have no data, or the
    upstream my primary_conninfo names told my walreceiver that the WAL I need is gone. About
    another upstream (mine is about to change) the last says nothing."""
    if diverged:
        return "my WAL has diverged from"
    if obs.rebuild_requested:
        return "an operator asked me to rebuild (manatee-adm rebuild) from"
    if not obs.has_data:
        return "I have no data to follow"
    if obs.wal_gone is not None and obs.upstream_id == upstream.id:
        return f"the WAL I need next ({obs.wal_gone}) is no longer kept on"
    return None


def _start_held(v: View, place: str, diverged: bool) -> Decision | None:
    """My PostgreSQL failed to start several times in a row and its next start waits (the
    shell's bounded back-off): stay out of the chain meanwhile — PostgreSQL stopped, no
    heartbeats, so a primary replaces me as its sync — and try again later. A start that
    fails is no evidence that my data is bad: never a rebuild on this alone."""
    obs = v.obs
    if obs.start_held is None or obs.running or diverged or not obs.has_data:
        return None
    return Decision(Target(UNASSIGNED), rule=f"{place}.start_backoff",
                    reason=f"I am the {place} but my PostgreSQL {obs.start_held}, so I stay out of the "
                           f"chain and send no heartbeats until then (no rebuild: my data may well be intact)")
