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
- Nobody writes the state unless connected, present in the election, and not frozen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from manatee.sitter.state import (
    CONNECTED, DEPOSED, FENCED, LOST, PRIMARY, REBUILD, SAFE_MODE, STANDBY, SUSPENDED, UNASSIGNED,
    ZK_STATES, ClusterState, Peer, Target, dedupe_peers, error_record, format_lsn,
)

__all__ = ["Observation", "Decision", "decide"]


@dataclass(frozen=True)
class Observation:
    """Everything `decide` may look at, gathered by the shell for one cycle.

    zk: CONNECTED | SUSPENDED | LOST (see state.py). When not connected, `election`,
      `state` and `error` are the last values seen while connected.
    election: live peers in join order (duplicates by id allowed: the latest entry wins).
    state / state_version: the persisted topology and its znode version (-1: absent).
    error: the shard's error (safe-mode) node's data, or None.
    running / in_recovery: my PostgreSQL is up / is a standby.
    wal: primary: its current WAL position. Standby: the WAL received by streaming from its
      upstream since PG started (pg_last_wal_receive_lsn), None if it has not streamed —
      so a node whose WAL forked can never look caught up.
    streaming: my walreceiver is streaming. upstream_id: the peer my primary_conninfo names
      (None when detached or not a standby).
    read_only: default_transaction_read_only as my running primary reports it (None: unknown).
    diverged: PG refused to follow its upstream (timeline fork, "not a child" ...).
    sync_caught_up: (primary) the sync named in the state is connected and its flush
      position has reached my WAL at least once since it connected (latched by the shell
      so that a busy primary does not flap read-only).
    has_data: my data directory is initialised.
    heartbeats: peer id -> fresh, for standbys that heartbeat me; absent = no verdict yet.
    one_node_write_mode: the operator allows a primary without a sync to take writes.
    expiry_passed: (suspended) the session-expiry deadline has passed (last heard from the
      server + negotiated timeout, ZKClient.session_expiry_deadline): it may have expired.
    sync_streaming: (primary) the state's sync is connected to me as a walreceiver now.
    """

    me: Peer
    zk: str = CONNECTED
    election: tuple[Peer, ...] = ()
    state: ClusterState | None = None
    state_version: int = -1
    error: Mapping[str, Any] | None = None
    running: bool = False
    in_recovery: bool = False
    wal: int | None = None
    streaming: bool = False
    upstream_id: str | None = None
    read_only: bool | None = None
    diverged: bool = False
    sync_caught_up: bool = False
    has_data: bool = False
    heartbeats: Mapping[str, bool] = field(default_factory=dict)
    one_node_write_mode: bool = False
    expiry_passed: bool = False
    sync_streaming: bool = False

    def __post_init__(self) -> None:
        if self.zk not in ZK_STATES:
            raise ValueError(f"Observation.zk: {self.zk!r} is not one of {', '.join(ZK_STATES)}")


@dataclass(frozen=True)
class Decision:
    """target: what my PostgreSQL should be. write_state: CAS it against obs.state_version
    before applying target (on failure, re-observe). write_error: create the error node.
    reason: one plain sentence for the log. rule: a short stable name of the rule that fired."""

    target: Target
    reason: str
    rule: str
    write_state: ClusterState | None = None
    write_error: dict[str, str] | None = None


def _lsn(v: int | None) -> str:
    return "none" if v is None else format_lsn(v)


class _View:
    """Derived facts shared by the rules."""

    def __init__(self, obs: Observation) -> None:
        self.obs = obs
        self.me = obs.me
        self.election = dedupe_peers(obs.election)
        self.live = {p.id for p in self.election}
        self.st = obs.state
        self.onwm = obs.one_node_write_mode
        # A node that runs PG as a primary without being the state's primary has forked.
        self.forked = obs.running and not obs.in_recovery
        self.in_election = obs.me.id in self.live

    def alive(self, p: Peer | None) -> bool:
        return p is not None and p.id in self.live

    def write_block(self) -> str | None:
        """Why I may not write the state now, or None if I may."""
        if self.obs.zk != CONNECTED:
            return f"my ZooKeeper session is {self.obs.zk}"
        if not self.in_election:
            return "I am not registered in the election"
        if self.st is not None and self.st.frozen:
            return f"the shard is frozen ({self.st.freeze.reason})"
        return None

    def candidates(self, exclude: set[str]) -> list[Peer]:
        """Who may be the next sync / the asyncs, in order: live asyncs as listed, then live
        peers unknown to the state, then live deposed peers rejoining, in election order."""
        st = self.st
        assert st is not None
        known = {p.id for p in st.members()}
        dep = {p.id for p in st.deposed}
        out = [p for p in st.async_ if self.alive(p)]
        out += [p for p in self.election if p.id not in known]
        out += [p for p in self.election if p.id in dep]
        return [p for p in out if p.id not in exclude]

    def next_live_after(self, peer_id: str, chain: tuple[Peer, ...]) -> Peer | None:
        ids = [p.id for p in chain]
        if peer_id not in ids:
            return None
        for p in chain[ids.index(peer_id) + 1:]:
            if self.alive(p):
                return p
        return None


def decide(obs: Observation) -> Decision:
    """The target role for this node, the state/error writes that go with it, and why."""
    v = _View(obs)
    if obs.error is not None:
        return _safe_mode(v)
    if v.st is None:
        return _bootstrap(v)
    place = v.st.place_of(obs.me.id)
    if place == "primary":
        return _as_primary(v)
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
def _safe_mode(v: _View) -> Decision:
    why = str(v.obs.error.get("reason") or "no reason recorded")
    return Decision(
        Target(SAFE_MODE), rule="safe_mode",
        reason=f"the shard is in safe mode ({why}), so I take no writes and change nothing "
               f"until an operator clears the error node")


# -- rule 3: no state yet ----------------------------------------------------------------
def _bootstrap(v: _View) -> Decision:
    obs = v.obs
    if obs.zk != CONNECTED:
        return Decision(Target(UNASSIGNED), rule="bootstrap.wait_zk",
                        reason=f"no shard state exists and my ZooKeeper session is {obs.zk}, so I wait")
    if not v.election or v.election[0].id != obs.me.id:
        head = v.election[0] if v.election else None
        why = (f"{head} heads the election and will declare the first generation" if head
               else "the election is empty")
        return Decision(Target(UNASSIGNED), rule="bootstrap.not_head",
                        reason=f"no shard state exists and {why}, so I wait")
    need = 1 if v.onwm else 2
    if len(v.election) < need:
        return Decision(Target(UNASSIGNED), rule="bootstrap.alone",
                        reason="no shard state exists and I am the only live peer, so I wait for a "
                               "second one to be my sync before declaring the first generation")
    me = v.election[0]
    sync = v.election[1] if len(v.election) > 1 else None
    new = ClusterState(generation=1, primary=me, sync=sync, async_=tuple(v.election[2:]),
                       init_wal=obs.wal or 0, one_node_write_mode=v.onwm)
    return Decision(
        Target(PRIMARY, sync=sync, downstream=sync, read_only=not v.onwm),
        write_state=new, rule="bootstrap.declare",
        reason=f"no shard state exists and I head the election, so I declare generation 1 with "
               f"me as primary and {sync or 'no'} sync"
               + ("" if v.onwm else ", read-only until the sync catches up"))


# -- rule 4: I am the primary ------------------------------------------------------------
def _as_primary(v: _View) -> Decision:
    obs, st = v.obs, v.st
    assert st is not None
    if obs.zk == LOST:
        return Decision(
            Target(FENCED), rule="primary.fence_lost",
            reason="my ZooKeeper session expired, so another node may already have been promoted: "
                   "I stop PostgreSQL at once so that I acknowledge nothing more")
    if obs.zk == SUSPENDED and obs.expiry_passed and not obs.sync_streaming:
        return Decision(
            Target(FENCED), rule="primary.fence_suspended",
            reason="my ZooKeeper session may have expired and my sync no longer streams from me, so it may "
                   "have been promoted: I stop PostgreSQL at once so that not even a cancelled commit succeeds")
    if obs.zk == SUSPENDED and v.onwm and st.sync is None:
        return Decision(
            Target(FENCED), rule="primary.fence_onwm",
            reason="I lost ZooKeeper while taking writes in one-node-write mode with no sync to "
                   "fence me, so I stop PostgreSQL at once")
    if not obs.has_data and st.generation > 1:
        return Decision(
            Target(UNASSIGNED), rule="primary.no_data",
            reason=f"the state of generation {st.generation} names me primary but my data directory "
                   f"is empty, so I do not start an empty primary over the writes my standbys hold")

    block = v.write_block()
    sync = st.sync
    hb = obs.heartbeats.get(sync.id) if sync else None
    sync_gone = sync is None or not v.alive(sync) or hb is False
    cands = v.candidates(exclude={st.primary.id, *([sync.id] if sync else [])})
    deposed_left = tuple(p for p in st.deposed if not v.alive(p))

    def ro(s: Peer | None, caught_up: bool) -> bool:
        return not v.onwm and not (s is not None and caught_up)

    def tgt(s: Peer | None, read_only: bool) -> Target:
        return Target(PRIMARY, sync=s, downstream=s, read_only=read_only)

    # A new sync is needed: mine is gone and someone can replace it (or ONWM lets me drop it).
    wants_new_sync = sync_gone and (bool(cands) or (v.onwm and sync is not None))
    if wants_new_sync and block is None:
        gone = (f"my sync {sync} is gone" + (" (its heartbeats stopped)" if v.alive(sync) else "")
                if sync else "I have no sync")
        if obs.wal is None:
            return Decision(tgt(sync, True), rule="primary.replace_sync_wait_pg",
                            reason=f"{gone} but my PostgreSQL reports no WAL position yet, so I stay "
                                   f"read-only and wait before naming a new sync")
        if obs.read_only is not True:
            return Decision(tgt(sync, True), rule="primary.replace_sync_read_only_first",
                            reason=f"{gone}, so I go read-only first: no commit may be acknowledged "
                                   f"beyond the WAL position I will record for the new sync")
        new_sync = cands[0] if cands else None
        rest = cands[1:]
        if sync is not None and v.alive(sync):
            rest = [*rest, sync]  # still registered: it rejoins at the tail
        new = st.evolve(generation=st.generation + 1, sync=new_sync, async_=tuple(rest),
                        deposed=deposed_left, init_wal=obs.wal, one_node_write_mode=v.onwm)
        what = (f"name {new_sync} my new sync" if new_sync else "continue without a sync")
        return Decision(
            tgt(new_sync, ro(new_sync, False)), write_state=new, rule="primary.replace_sync",
            reason=f"{gone}, so I {what} in generation {new.generation}"
                   + (f" and stay read-only until it has my WAL up to {_lsn(obs.wal)}" if new_sync and not v.onwm
                      else ""))

    read_only = ro(sync, obs.sync_caught_up)
    # Bookkeeping: asyncs that died leave the list, live newcomers and deposed peers join its tail.
    desired_async = tuple(cands)
    if block is None and (desired_async != st.async_ or deposed_left != st.deposed
                          or st.one_node_write_mode != v.onwm):
        new = st.evolve(async_=desired_async, deposed=deposed_left, one_node_write_mode=v.onwm)
        joined = [p for p in desired_async if p not in st.async_]
        left = [p for p in st.async_ if p not in desired_async]
        parts = []
        if joined:
            parts.append(f"append {', '.join(map(str, joined))} to the tail of the chain")
        if left:
            parts.append(f"drop {', '.join(map(str, left))} that left the election")
        if not parts:
            parts.append(f"record one-node-write mode {'on' if v.onwm else 'off'}")
        return Decision(tgt(sync, read_only), write_state=new, rule="primary.update_asyncs",
                        reason=f"I am the primary and {' and '.join(parts)}, keeping generation {st.generation}")

    if sync_gone and sync is not None and not wants_new_sync:
        return Decision(tgt(sync, read_only), rule="primary.sync_gone_no_candidate",
                        reason=f"my sync {sync} is gone and no other standby is live to replace it, so I stay "
                               f"primary" + (" and read-only: writes need a sync" if read_only else ""))
    if wants_new_sync:  # blocked from writing
        return Decision(tgt(sync, read_only), rule="primary.sync_gone_cannot_write",
                        reason=f"my sync {sync or 'slot'} needs replacing but {block}, so I keep the topology as it is")
    if sync is None:
        return Decision(tgt(None, read_only), rule="primary.no_sync",
                        reason="I am the primary with no sync and no standby to name, so I stay "
                               + ("read-write in one-node-write mode" if not read_only else "read-only: writes need a sync"))
    if obs.zk != CONNECTED:
        return Decision(tgt(sync, read_only), rule="primary.suspended",
                        reason=f"I lost my ZooKeeper connection but my session may still be alive and every commit "
                               f"needs {sync}'s acknowledgement, so I keep serving as primary")
    if block is not None and st.frozen:
        return Decision(tgt(sync, read_only), rule="primary.frozen",
                        reason=f"I am the primary and {block}, so I change nothing")
    if read_only:
        return Decision(tgt(sync, True), rule="primary.wait_sync",
                        reason=f"I am the primary and stay read-only until my sync {sync} has caught up with my WAL")
    return Decision(tgt(sync, False), rule="primary.steady",
                    reason=f"I am the primary and my sync {sync} has caught up, so I take writes")


# -- rule 5: I am the sync ---------------------------------------------------------------
def _as_sync(v: _View) -> Decision:
    obs, st = v.obs, v.st
    assert st is not None
    primary = st.primary
    chain = st.chain()
    down = v.next_live_after(obs.me.id, chain)
    diverged = obs.diverged or v.forked
    if v.alive(primary):
        if diverged or not obs.has_data:
            why = "my WAL has diverged from" if diverged else "I have no data to follow"
            return Decision(Target(REBUILD, upstream=primary, downstream=down), rule="sync.rebuild",
                            reason=f"I am the sync but {why} the primary {primary}, so I rebuild from it")
        return Decision(Target(STANDBY, upstream=primary, downstream=down), rule="sync.follow",
                        reason=f"I am the sync and follow the primary {primary}")

    def stay(rule: str, why: str) -> Decision:
        return Decision(Target(STANDBY, upstream=primary, downstream=down), rule=rule,
                        reason=f"the primary {primary} is gone but {why}, so I may not take over")

    block = v.write_block()
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
        return stay("sync.behind", f"my WAL {_lsn(obs.wal)} is behind {_lsn(st.init_wal)} that the primary "
                                   f"had when I became sync")
    cands = v.candidates(exclude={primary.id, obs.me.id})
    if not cands and not v.onwm:
        return stay("sync.no_candidate", "no other standby is live to become my sync and I would take "
                                         "writes without one")
    if obs.streaming or obs.upstream_id is not None:
        return Decision(Target(STANDBY, upstream=None, downstream=down), rule="sync.detach",
                        reason=f"the primary {primary} is gone and I hold every acknowledged write, so I stop "
                               f"replicating first to make my WAL position final before I take over")
    me = next((p for p in v.election if p.id == obs.me.id), obs.me)
    new_sync = cands[0] if cands else None
    known_dep = {p.id for p in cands}
    new = st.evolve(generation=st.generation + 1, primary=me, sync=new_sync, async_=tuple(cands[1:]),
                    deposed=(*(p for p in st.deposed if p.id not in known_dep), primary),
                    init_wal=obs.wal, one_node_write_mode=v.onwm)
    return Decision(
        Target(PRIMARY, sync=new_sync, downstream=new_sync, read_only=not v.onwm),
        write_state=new, rule="sync.takeover",
        reason=f"the primary {primary} is gone and I hold every acknowledged write (WAL {_lsn(obs.wal)}, needed "
               f"{_lsn(st.init_wal)}), so I take over in generation {new.generation} with "
               f"{new_sync or 'no'} sync" + ("" if v.onwm else ", read-only until it catches up"))


# -- rule 6: I am an async ---------------------------------------------------------------
def _as_async(v: _View) -> Decision:
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
    if obs.diverged or v.forked or not obs.has_data:
        why = "my WAL has diverged from" if (obs.diverged or v.forked) else "I have no data to follow"
        return Decision(Target(REBUILD, upstream=upstream, downstream=down), rule="async.rebuild",
                        reason=f"I am an async standby but {why} {upstream}, so I rebuild from it")
    return Decision(Target(STANDBY, upstream=upstream, downstream=down), rule="async.follow",
                    reason=f"I am an async standby and follow {upstream}, the nearest live node ahead of me")

