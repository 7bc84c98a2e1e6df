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
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Mapping

from manatee.shard.state import (
    CONNECTED, DEPOSED, FENCED, LOST, PRIMARY, REBUILD, SAFE_MODE, STANDBY, SUSPENDED, UNASSIGNED,
    ZK_STATES, ClusterState, Peer, Switchover, Target, dedupe_peers, error_record, format_lsn,
)

__all__ = ["Observation", "Decision", "Effect", "decide", "STEP_DOWN_BY"]

#: `Switchover.by` of a release the primary wrote itself because it could not serve (S9).
STEP_DOWN_BY = "step-down"
PG_UNKNOWN = "my PostgreSQL did not answer its status query"


@dataclass(frozen=True)
class Observation:
    """Everything `decide` may look at, gathered by the shell for one cycle.

    zk: CONNECTED | SUSPENDED | LOST (see state.py). When not connected, `election`,
      `state` and `error` are the last values seen while connected.
    election: live peers in join order (duplicates by id allowed: the latest entry wins).
    state / state_version: the persisted topology and its znode version (-1: absent).
    error: the shard's error (safe-mode) node's data, or None.
    running / in_recovery: my PostgreSQL's process is up / it is a standby (None: unknown).
    pg_known: my running PostgreSQL answered its status query this cycle. False ("unknown is
      not a fact"): in_recovery, wal and read_only are None and no rule treats the silence
      as evidence of anything (running as a primary, divergence, a lost WAL position): no
      kill, rebuild, safe mode or takeover is decided on it.
    cannot_serve: (primary) why my PostgreSQL has not been healthy and writable for longer
      than primaryStartTimeout (hung, crash-looping, cannot start, cannot write its config),
      as the shell measured it; None while it serves or has not failed for that long.
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
    sync_flush: (primary) the flush position the state's sync reports to me now (None: not
      connected). A switchover stops PostgreSQL only once it has reached my WAL.
    switchover_stopped_wal: (primary) the shell stopped my PostgreSQL for the state's
      switchover request (rule primary.switchover_stop) at this WAL position, which my sync
      had flushed; None otherwise (and once PostgreSQL runs again).
    switchover_expired: (primary) the state's switchover request has been pending longer than
      the shell's limit: it is withdrawn, so that a takeover that cannot finish (the sync
      restarted, the operator's CLI died) never leaves the shard without a primary.
    state_unreadable: the state znode exists but cannot be parsed (quarantined by the
      shell). Not "no state": `state` is then the last state the shell could read (None if
      it never read one). Nobody writes the state, promotes or rebuilds until it is fixed.
    """

    me: Peer
    zk: str = CONNECTED
    election: tuple[Peer, ...] = ()
    state: ClusterState | None = None
    state_version: int = -1
    error: Mapping[str, Any] | None = None
    running: bool = False
    in_recovery: bool | None = False
    pg_known: bool = True
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
    sync_flush: int | None = None
    switchover_stopped_wal: int | None = None
    switchover_expired: bool = False
    cannot_serve: str | None = None
    state_unreadable: bool = False

    def __post_init__(self) -> None:
        if self.zk not in ZK_STATES:
            raise ValueError(f"Observation.zk: {self.zk!r} is not one of {', '.join(ZK_STATES)}")


class Effect(StrEnum):
    """What the shell does besides writing the state and reaching the target: explicit, so
    that it never matches on a rule's name."""

    #: the written state releases the primary role for a switchover and the target stops
    #: PostgreSQL: once stopped, latch the WAL it stopped at (Observation.switchover_stopped_wal)
    RELEASE_THEN_STOP = "release_then_stop"
    #: PostgreSQL is stopped so that I can step down (S9): my cannot-serve clock keeps running
    STOP_TO_STEP_DOWN = "stop_to_step_down"
    #: the written state is my step-down in favour of my sync: log it and record it in history
    STEP_DOWN = "step_down"


@dataclass(frozen=True)
class Decision:
    """target: what my PostgreSQL should be. write_state: CAS it against obs.state_version
    before applying target (on failure, re-observe). write_error: create the error node.
    reason: one plain sentence for the log. rule: a short stable name of the rule that fired
    (for logs and tests only: the shell acts on `effects`, never on `rule`)."""

    target: Target
    reason: str
    rule: str
    write_state: ClusterState | None = None
    write_error: dict[str, str] | None = None
    effects: tuple[Effect, ...] = ()


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
        # A node that runs PG as a primary without being the state's primary has forked;
        # that needs PG's own word (in_recovery False), never a query that went unanswered.
        self.pg_unknown = obs.running and not obs.pg_known
        self.forked = obs.running and obs.pg_known and obs.in_recovery is False
        self.in_election = obs.me.id in self.live

    def alive(self, p: Peer | None) -> bool:
        return p is not None and p.id in self.live

    def write_block(self) -> str | None:
        """Why I may not write the state now, or None if I may."""
        if self.obs.state_unreadable:
            return "the shard state znode cannot be parsed"
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
        by_id = {p.id: p for p in self.election}  # the election's copy carries current tags
        out = [by_id[p.id] for p in st.async_ if self.alive(p)]
        out += [p for p in self.election if p.id not in known]
        out += [p for p in self.election if p.id in dep]
        return [p for p in out if p.id not in exclude]

    @staticmethod
    def pick_sync(cands: list[Peer]) -> tuple[Peer | None, list[Peer]]:
        """(the next sync, the others in their order): the eligible candidate (tags: not
        nofailover, not nosync) of the highest priority, the first listed on a tie; None
        when nobody is eligible."""
        eligible = [p for p in cands if p.can_sync]
        if not eligible:
            return None, list(cands)
        best = max(eligible, key=lambda p: p.priority)  # max keeps the first of equals
        return best, [p for p in cands if p.id != best.id]

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
    if obs.state_unreadable:
        return _state_unreadable(v)
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


# -- rule 2: the state znode cannot be parsed ---------------------------------------------
def _state_unreadable(v: _View) -> Decision:
    """Hold. A malformed state is not "no state" (the election head would declare a new
    generation 1: a fork), and it says nothing about who may lead: nobody writes the state
    (write_block says so), promotes or rebuilds. A primary keeps its role by the usual
    primary rules, which cannot write the state either (and still fence it when its
    session is gone); a standby keeps following its upstream; everyone else waits."""
    obs, st = v.obs, v.st
    why = "the shard state znode cannot be parsed (an operator must fix it)"
    place = st.place_of(obs.me.id) if st is not None else None
    if place == "primary":
        d = _as_primary(v)
        return replace(d, rule=f"state_unreadable.{d.rule}", reason=f"{why}; {d.reason}")
    if place in ("sync", "async") and obs.has_data:
        chain = st.chain()
        ids = [p.id for p in chain]
        ahead = chain[:ids.index(obs.me.id)]
        up = st.primary if place == "sync" else next((p for p in reversed(ahead) if v.alive(p)), None)
        if up is not None:
            return Decision(Target(STANDBY, upstream=up, downstream=v.next_live_after(obs.me.id, chain)),
                            rule="state_unreadable.follow",
                            reason=f"{why}, so I keep following {up} as its {place} and take over, "
                                   f"rebuild or write nothing until it is fixed")
    return Decision(Target(UNASSIGNED), rule="state_unreadable.wait",
                    reason=f"{why}, so I wait and change nothing until it is fixed")


# -- rule 3: no state yet ----------------------------------------------------------------
def _bootstrap(v: _View) -> Decision:
    obs = v.obs
    if obs.zk != CONNECTED:
        return Decision(Target(UNASSIGNED), rule="bootstrap.wait_zk",
                        reason=f"no shard state exists and my ZooKeeper session is {obs.zk}, so I wait")
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


# -- rule 4: I am the primary ------------------------------------------------------------
def _as_primary(v: _View) -> Decision:
    obs, st = v.obs, v.st
    assert st is not None
    if obs.zk == LOST:
        return Decision(
            Target(FENCED), rule="primary.fence_lost",
            reason="my ZooKeeper session expired, so another node may already have been promoted: "
                   "I stop PostgreSQL at once so that I acknowledge nothing more")
    # The sync's heartbeats stop at once when it is cut off from me or detaches to take
    # over; PostgreSQL notices a silent walreceiver only after wal_sender_timeout (F7).
    sync_silent = st.sync is not None and obs.heartbeats.get(st.sync.id) is False
    if obs.zk == SUSPENDED and obs.expiry_passed and (not obs.sync_streaming or sync_silent):
        why = "no longer streams from me" if not obs.sync_streaming else "stopped heartbeating me"
        return Decision(
            Target(FENCED), rule="primary.fence_suspended",
            reason=f"my ZooKeeper session may have expired and my sync {why}, so it may "
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
    # a sync whose election node now says it may not be one (tags) is replaced like a gone one
    tagged_out = sync is not None and any(p.id == sync.id and not p.can_sync for p in v.election)
    sync_gone = sync is None or not v.alive(sync) or hb is False or tagged_out
    cands = v.candidates(exclude={st.primary.id, *([sync.id] if sync else [])})
    deposed_left = tuple(p for p in st.deposed if not v.alive(p))

    def ro(s: Peer | None, caught_up: bool) -> bool:
        return not v.onwm and not (s is not None and caught_up)

    def tgt(s: Peer | None, read_only: bool) -> Target:
        return Target(PRIMARY, sync=s, downstream=s, read_only=read_only)

    sd_dec, sd_wait = _primary_step_down(v, sync, hb, block, tgt)
    if sd_dec is not None:
        return sd_dec

    sw_dec, sw_wait = _primary_switchover(v, sync, sync_gone, block, tgt)
    if sw_dec is not None:
        return sw_dec

    # A new sync is needed: mine is gone and someone can replace it (or ONWM lets me drop it).
    wants_new_sync = sync_gone and (any(p.can_sync for p in cands) or (v.onwm and sync is not None))
    if wants_new_sync and block is None:
        gone = ((f"my sync {sync} is tagged nofailover/nosync" if tagged_out else
                 f"my sync {sync} is gone" + (" (its heartbeats stopped)" if v.alive(sync) else ""))
                if sync else "I have no sync")
        if obs.wal is None:
            return Decision(tgt(sync, True), rule="primary.replace_sync_wait_pg",
                            reason=f"{gone} but my PostgreSQL reports no WAL position yet, so I stay "
                                   f"read-only and wait before naming a new sync")
        if obs.read_only is not True:
            return Decision(tgt(sync, True), rule="primary.replace_sync_read_only_first",
                            reason=f"{gone}, so I go read-only first: no commit may be acknowledged "
                                   f"beyond the WAL position I will record for the new sync")
        new_sync, rest = v.pick_sync(cands)
        if sync is not None and v.alive(sync):
            rest = [*rest, sync]  # still registered: it rejoins at the tail
        new = st.evolve(generation=st.generation + 1, sync=new_sync, async_=tuple(rest),
                        deposed=deposed_left, init_wal=obs.wal, one_node_write_mode=v.onwm,
                        switchover=None)
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

    if sd_wait is not None:
        return Decision(tgt(sync, read_only), rule="primary.cannot_serve",
                        reason=f"my PostgreSQL cannot serve ({obs.cannot_serve}) but {sd_wait}, so I "
                               f"keep trying to serve as primary")
    if sync_gone and sync is not None and not wants_new_sync:
        return Decision(tgt(sync, read_only), rule="primary.sync_gone_no_candidate",
                        reason=f"my sync {sync} is gone and no other standby is live to replace it, so I stay "
                               f"primary" + (" and read-only: writes need a sync" if read_only else ""))
    if wants_new_sync:  # blocked from writing
        return Decision(tgt(sync, read_only), rule="primary.sync_gone_cannot_write",
                        reason=f"my sync {sync or 'slot'} needs replacing but {block}, so I keep the topology as it is")
    if v.pg_unknown:
        return Decision(tgt(sync, read_only), rule="primary.pg_unknown",
                        reason=f"{PG_UNKNOWN}, so I change nothing this cycle")
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
    if sw_wait is not None:
        return Decision(tgt(sync, read_only), rule="primary.switchover_waiting",
                        reason=f"a switchover to {sync} is requested but {sw_wait}, so I keep serving as "
                               f"primary until it is")
    if read_only:
        return Decision(tgt(sync, True), rule="primary.wait_sync",
                        reason=f"I am the primary and stay read-only until my sync {sync} has caught up with my WAL")
    return Decision(tgt(sync, False), rule="primary.steady",
                    reason=f"I am the primary and my sync {sync} has caught up, so I take writes")


def _primary_step_down(v: _View, sync: Peer | None, hb: bool | None, block: str | None,
                       tgt) -> tuple[Decision | None, str | None]:
    """S9: a primary whose PostgreSQL cannot serve (obs.cannot_serve: unhealthy for longer than
    primaryStartTimeout, measured by the shell) hands the role to its sync.

    (a) kill PostgreSQL first, so that nothing more is acknowledged (S1); (b) with it stopped,
    write a released switchover (`by` STEP_DOWN_BY) by compare-and-set: the sync then takes
    over by the usual takeover rule, after detaching so its WAL — which holds every
    acknowledged write, since each needed its flush — is final and at least initWal. Only
    with a healthy sync (live, heartbeating me now) and a write to ZooKeeper allowed; else I
    keep trying to serve and say why. A failed ZooKeeper read is not a cause: the shell
    derives cannot_serve from PostgreSQL and its config files alone. Once released, the
    switchover rules keep me stopped (or withdraw the release if the sync goes away).

    Returns (decision, None), or (None, why-I-cannot-step-down) or (None, None)."""
    obs, st = v.obs, v.st
    if obs.cannot_serve is None or (st.switchover is not None and st.switchover.released):
        return None, None
    why = None
    if block is not None:
        why = block
    elif sync is None:
        why = "I have no sync to take over"
    elif not v.alive(sync):
        why = f"my sync {sync} is not in the election"
    elif hb is not True:
        why = f"my sync {sync} is not heartbeating me"
    if why is not None:
        return None, why
    assert sync is not None
    if obs.running:
        return Decision(Target(UNASSIGNED), rule="primary.step_down_stop", effects=(Effect.STOP_TO_STEP_DOWN,),
                        reason=f"my PostgreSQL cannot serve ({obs.cannot_serve}) and my sync {sync} is healthy, "
                               f"so I stop PostgreSQL at once before I step down in its favour"), None
    new = st.evolve(switchover=Switchover(to=sync.id, requested=f"generation {st.generation}", by=STEP_DOWN_BY,
                                          released=True, released_wal=st.init_wal))
    return Decision(Target(UNASSIGNED), write_state=new, rule="primary.step_down", effects=(Effect.STEP_DOWN,),
                    reason=f"my PostgreSQL cannot serve ({obs.cannot_serve}) and is stopped, so I step down: "
                           f"I release the primary role to my sync {sync}, which holds every acknowledged "
                           f"write"), None


def _primary_switchover(v: _View, sync: Peer | None, sync_gone: bool, block: str | None,
                        tgt) -> tuple[Decision | None, str | None]:
    """A planned takeover by the sync (state.switchover), from the primary's side.

    (a) go read-only; (b) once my sync has flushed my whole WAL, write `released` (and that
    WAL position) and stop PostgreSQL at once — the state first, so the sync's takeover does
    not wait for the stop; no shutdown checkpoint: the sync then holds every WAL record I
    wrote, so I can rejoin as its standby. The sync takes over by the usual takeover rule,
    after it has detached from me. (A primary that had already stopped for the switchover
    without releasing — the shell's latch, switchover_stopped_wal — releases then.) Not ready (sync not streaming or not caught
    up, frozen, not connected) → change nothing and say why. A release whose sync is gone
    before it took over is withdrawn and I run PostgreSQL as the primary again.

    Returns (decision, None) when the switchover decides, else (None, why-it-waits or None)."""
    obs, st = v.obs, v.st
    sw = st.switchover
    if sw is None:
        return None, None
    if obs.switchover_expired and block is None:
        return Decision(tgt(sync, True), write_state=st.evolve(switchover=None), rule="primary.switchover_expired",
                        reason=f"the switchover to {sw.to} did not complete in time, so I withdraw it and "
                               f"stay the primary"), None
    if sw.released:
        if sync is not None and sw.to == sync.id and not sync_gone:
            return Decision(Target(UNASSIGNED), rule="primary.switchover_released",
                            reason=f"I stopped PostgreSQL for the switchover to {sync} and wait for it to "
                                   f"take over"), None
        if block is None:
            new = st.evolve(switchover=None)
            return Decision(tgt(sync, True), write_state=new, rule="primary.switchover_withdraw",
                            reason=f"my sync {sync or 'slot'} went away before it took over from my released "
                                   f"switchover, so I withdraw the release and run PostgreSQL as the primary "
                                   f"again"), None
        return None, None  # blocked: the usual rules keep me primary (the shell restarts PG)
    if sync is None or sw.to != sync.id:
        if block is None:
            return Decision(tgt(sync, not obs.sync_caught_up and not v.onwm), write_state=st.evolve(switchover=None),
                            rule="primary.switchover_invalid",
                            reason=f"a switchover to {sw.to} is requested but my sync is "
                                   f"{sync.id if sync else 'none'}: only the sync may take over, so I drop "
                                   f"the request"), None
        return None, None
    if obs.switchover_stopped_wal is not None and not obs.running:
        if block is not None:
            return None, None  # e.g. frozen meanwhile: the usual rules start PostgreSQL again
        new = st.evolve(switchover=replace(sw, released=True, released_wal=obs.switchover_stopped_wal))
        return Decision(Target(UNASSIGNED), write_state=new, rule="primary.switchover_release",
                        reason=f"I stopped PostgreSQL at WAL {_lsn(obs.switchover_stopped_wal)}, which my sync "
                               f"{sync} has flushed, so I release the primary role to it"), None
    why = None
    if block is not None:
        why = block
    elif sync_gone:
        why = f"my sync {sync} is gone"
    elif not obs.running:
        why = "my PostgreSQL is not running"
    elif not obs.sync_streaming or not obs.sync_caught_up:
        why = f"my sync {sync} has not caught up with me"
    if why is not None:
        return None, why
    if obs.read_only is not True:
        return Decision(tgt(sync, True), rule="primary.switchover_read_only",
                        reason=f"a switchover to {sync} is requested, so I go read-only first: my WAL must "
                               f"stop growing before it takes over"), None
    if obs.wal is None or obs.sync_flush is None or obs.sync_flush < obs.wal:
        return Decision(tgt(sync, True), rule="primary.switchover_wait_flush",
                        reason=f"a switchover to {sync} is requested and I am read-only: I wait until it has "
                               f"flushed my WAL {_lsn(obs.wal)} (it has {_lsn(obs.sync_flush)})"), None
    # Release and stop in one step (the shell writes the state, then kills PostgreSQL): the
    # sync may take over while my PostgreSQL still runs for a few milliseconds, which is safe
    # because it was my only synchronous standby — once it has detached, no commit of mine can
    # be acknowledged (S1), and everything acknowledged before was flushed by it (S2).
    new = st.evolve(switchover=replace(sw, released=True, released_wal=obs.wal))
    return Decision(Target(UNASSIGNED), write_state=new, rule="primary.switchover_stop",
                    effects=(Effect.RELEASE_THEN_STOP,),
                    reason=f"my sync {sync} has flushed my whole WAL {_lsn(obs.wal)} for the switchover, so I "
                           f"release the primary role to it and stop PostgreSQL at once (no shutdown "
                           f"checkpoint)"), None


# -- rule 5: I am the sync ---------------------------------------------------------------
def _as_sync(v: _View) -> Decision:
    obs, st = v.obs, v.st
    assert st is not None
    primary = st.primary
    chain = st.chain()
    down = v.next_live_after(obs.me.id, chain)
    diverged = obs.diverged or v.forked
    sw = st.switchover
    released = sw is not None and sw.released and sw.to == obs.me.id
    if v.alive(primary) and not released:
        if diverged or not obs.has_data:
            why = "my WAL has diverged from" if diverged else "I have no data to follow"
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
        return stay("sync.behind", f"my WAL {_lsn(obs.wal)} is behind {_lsn(st.init_wal)} that the primary "
                                   f"had when I became sync")
    if released and obs.wal < sw.released_wal:
        return stay("sync.behind_release", f"my WAL {_lsn(obs.wal)} is behind {_lsn(sw.released_wal)} at which "
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
    if obs.streaming or obs.upstream_id is not None:
        return Decision(Target(STANDBY, upstream=None, downstream=down), rule="sync.detach",
                        reason=f"{gone} and I hold every acknowledged write, so I stop "
                               f"replicating first to make my WAL position final before I take over")
    me = next((p for p in v.election if p.id == obs.me.id), obs.me)
    new_sync, rest = v.pick_sync(cands)
    known_dep = {p.id for p in cands}
    deposed = tuple(p for p in st.deposed if p.id not in known_dep)
    if primary.id not in known_dep:
        deposed = (*deposed, primary)
    new = st.evolve(generation=st.generation + 1, primary=me, sync=new_sync, async_=tuple(rest),
                    deposed=deposed, init_wal=obs.wal, one_node_write_mode=v.onwm, switchover=None)
    return Decision(
        Target(PRIMARY, sync=new_sync, downstream=new_sync, read_only=not v.onwm),
        write_state=new, rule="sync.switchover" if released else "sync.takeover",
        reason=f"{gone} and I hold every acknowledged write (WAL {_lsn(obs.wal)}, needed "
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
    if v.pg_unknown:
        return Decision(Target(STANDBY, upstream=upstream, downstream=down), rule="async.pg_unknown",
                        reason=f"I am an async standby of {upstream} but {PG_UNKNOWN}, so I change nothing "
                               f"this cycle")
    return Decision(Target(STANDBY, upstream=upstream, downstream=down), rule="async.follow",
                    reason=f"I am an async standby and follow {upstream}, the nearest live node ahead of me")

