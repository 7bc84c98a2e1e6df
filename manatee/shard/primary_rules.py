"""Rule 4 of the decision core: the state names me primary (manatee.shard.decide). Fencing,
the step-down of a primary that cannot serve (S9), a switchover from the primary's side, a
new sync when mine is gone, the asyncs' bookkeeping, and why I keep serving as I do. Pure."""

from __future__ import annotations

from dataclasses import replace

from manatee.shard import latches
from manatee.shard.decision import PG_UNKNOWN, STEP_DOWN_BY, Decision, Effect, View, lsn_text
from manatee.shard.state import CONNECTED, FENCED, LOST, PRIMARY, SUSPENDED, UNASSIGNED, Peer, Switchover, Target

__all__ = ["as_primary"]


def _fence(v: View) -> Decision | None:
    """A primary that must stop at once (its session is gone or may be), or has no data."""
    obs, st = v.obs, v.st
    if obs.zk == LOST:
        return Decision(
            Target(FENCED), rule="primary.fence_lost",
            reason="my ZooKeeper session expired, so another node may already have been promoted: "
                   "I stop PostgreSQL at once so that I acknowledge nothing more")
    if obs.fenced and obs.zk != CONNECTED:
        return Decision(
            Target(FENCED), rule="primary.fence_held",
            reason="I fenced myself and have not reconnected to ZooKeeper since, so PostgreSQL stays "
                   "stopped: only a connected session can tell me that nobody replaced me")
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
    return None


def _data_lost(v: View) -> tuple[str, str] | None:
    """Why my empty data directory is not a new shard's (None: a new shard's first primary,
    which creates the database): ("lost", why) — the generation is above 1, or a peer holds
    data of the shard, built from mine: its election node says so (or does not say: unknown
    is not "none"), or it streamed my WAL — its heartbeat claims a position, or as my sync it
    has flushed my WAL up to initWal (the election I read may be seconds old, from before a
    new shard's standbys said anything: the random simulation lost a write so); ("unknown",
    why) — at generation 1 a member the state names is not in the election, so nobody can
    tell whether it holds data built from mine."""
    obs, st = v.obs, v.st
    if obs.has_data:
        return None
    if st.generation > 1:
        return "lost", f"the state of generation {st.generation} names me primary but my data directory is empty"
    streamed = {p.id for p in v.election if obs.standby_wal.get(p.id) is not None}
    if obs.sync_holds_init_wal and st.sync is not None:
        streamed.add(st.sync.id)
    holders = [p for p in v.election if p.id != obs.me.id and (p.remembers is not None or p.id in streamed)]
    if holders:
        return "lost", (f"my data directory is empty although {', '.join(str(p) for p in holders)} "
                        f"{'holds' if len(holders) == 1 else 'hold'} data of this shard, built from mine")
    absent = [p for p in st.members() if p.id != obs.me.id and not v.alive(p)]
    if absent:
        return "unknown", (f"my data directory is empty and {', '.join(str(p) for p in absent)}, named in the "
                           f"state, {'is' if len(absent) == 1 else 'are'} not in the election: "
                           f"{'it' if len(absent) == 1 else 'they'} may hold data built from mine")
    return None


def _no_data(v: View, c: _Primary, kind: str, lost: str) -> Decision:
    """My data was lost (a destroyed, wiped or unmounted dataset) while the state names me
    primary, or may have been (`kind` "unknown"). An empty database (initdb) as primary would
    be followed by nobody — its system differs — and my standbys would rebuild from it: every
    acknowledged write lost. So when it was lost I step down to my sync like a primary that
    cannot serve (S9); otherwise, or until I can, I hold, stopped, and say why: never a target
    that starts PostgreSQL (the unassigned -> primary steps run initdb)."""
    if kind == "unknown":
        return Decision(Target(UNASSIGNED), rule="primary.no_data_unknown",
                        reason=f"{lost}, so I neither create a database nor step down until it is known")
    sd_dec, sd_wait = _primary_step_down(v, c.sync, c.hb, c.block, c.tgt,
                                         cannot_serve=f"{lost}: an empty database must not be the primary")
    if sd_dec is not None:
        return sd_dec
    sw_dec, _ = _primary_switchover(v, c.sync, c.sync_gone, c.block, c.tgt)
    if sw_dec is not None and sw_dec.target.role == UNASSIGNED:
        return sw_dec  # released: I stay stopped while my sync takes over
    return Decision(Target(UNASSIGNED), rule="primary.no_data",
                    reason=f"{lost}, so I do not start an empty primary over the writes my standbys hold, "
                           f"and I cannot step down in favour of my sync yet: {sd_wait or 'a step-down is pending'}")


class _Primary:
    """What the primary's rules share: my sync, whether it is gone, who may replace it."""

    def __init__(self, v: View):
        st = v.st
        self.v, self.obs, self.st = v, v.obs, st
        self.block = v.write_block()
        self.sync = sync = st.sync
        self.hb = v.obs.heartbeats.get(sync.id) if sync else None
        # a sync whose election node now says it may not be one (tags) is replaced like a gone one
        self.tagged_out = sync is not None and any(p.id == sync.id and not p.can_sync for p in v.election)
        # a sync that heartbeats but has not flushed my WAL for the bound blocks every commit:
        # replaced like a gone one (never on an unknown status of my own PostgreSQL)
        self.stalled = (sync is not None and v.obs.sync_stalled_s is not None and not v.pg_unknown
                        and v.obs.wal is not None)
        self.sync_gone = sync is None or not v.alive(sync) or self.hb is False or self.tagged_out or self.stalled
        # a standby that just told me it gives way (its PostgreSQL cannot serve) is no candidate:
        # naming it flaps the sync between sick nodes (every disk of the shard full, 2026-12-05)
        self.cands = v.candidates(exclude={st.primary.id, *([sync.id] if sync else []), *v.obs.gave_way})
        self.deposed_left = tuple(p for p in st.deposed if not v.alive(p))
        # A new sync is needed: mine is gone and someone can replace it (or ONWM lets me drop it).
        self.wants_new_sync = self.sync_gone and (any(p.can_sync for p in self.cands)
                                                  or (v.onwm and sync is not None))

    def ro(self, s: Peer | None, caught_up: bool) -> bool:
        """Read-only unless ONWM, or my sync has caught up, or I already take writes and it
        streams from me (a switchover's new primary takes writes from its promotion: commits
        wait for the sync's flush); a sync that disconnects makes me read-only (S5). A sync is
        never replaced under a read-write primary (_replace_sync goes read-only first)."""
        obs = self.v.obs
        keeps = obs.read_only is False and obs.sync_streaming and not self.sync_gone
        return not self.v.onwm and not (s is not None and (caught_up or keeps))

    @staticmethod
    def tgt(s: Peer | None, read_only: bool) -> Target:
        return Target(PRIMARY, sync=s, downstream=s, read_only=read_only)


def as_primary(v: View) -> Decision:
    """Rule 4: the state names me primary."""
    assert v.st is not None
    fenced = _fence(v)
    if fenced is not None:
        return fenced
    c = _Primary(v)
    lost = _data_lost(v)
    if lost is not None:
        return _no_data(v, c, *lost)
    sd_dec, sd_wait = _primary_step_down(v, c.sync, c.hb, c.block, c.tgt)
    if sd_dec is not None:
        return sd_dec
    sw_dec, sw_wait = _primary_switchover(v, c.sync, c.sync_gone, c.block, c.tgt)
    if sw_dec is not None:
        return sw_dec
    if c.wants_new_sync and c.block is None:
        return _replace_sync(c)
    read_only = c.ro(c.sync, v.obs.sync_caught_up)
    return _update_asyncs(c, read_only) or _trim_init_wal(c, read_only) or _hold(c, read_only, sd_wait, sw_wait)


def _replace_sync(c: _Primary) -> Decision:
    """My sync is gone and someone can replace it: read-only first, then a new generation."""
    v, obs, st, sync, tgt = c.v, c.obs, c.st, c.sync, c.tgt
    gone = _why_sync_gone(c) if sync else "I have no sync"
    if obs.wal is None:
        return Decision(tgt(sync, True), rule="primary.replace_sync_wait_pg",
                        reason=f"{gone} but my PostgreSQL reports no WAL position yet, so I stay "
                               f"read-only and wait before naming a new sync")
    if obs.read_only is not True:
        return Decision(tgt(sync, True), rule="primary.replace_sync_read_only_first",
                        reason=f"{gone}, so I go read-only first: no commit may be acknowledged "
                               f"beyond the WAL position I will record for the new sync")
    new_sync, rest = v.pick_sync(c.cands)
    if sync is not None and v.alive(sync):
        rest = [*rest, sync]  # still registered: it rejoins at the tail
    new = st.evolve(generation=st.generation + 1, sync=new_sync, async_=tuple(rest),
                    deposed=c.deposed_left, init_wal=obs.wal, one_node_write_mode=v.onwm,
                    switchover=None)
    what = (f"name {new_sync} my new sync" if new_sync else "continue without a sync")
    return Decision(
        tgt(new_sync, c.ro(new_sync, False)), write_state=new, rule="primary.replace_sync",
        reason=f"{gone}, so I {what} in generation {new.generation}"
               + (f" and stay read-only until it has my WAL up to {lsn_text(obs.wal)}" if new_sync and not v.onwm
                  else ""))


def _trim_init_wal(c: _Primary, read_only: bool) -> Decision | None:
    """initWal beyond my whole WAL: lower it to my WAL (same generation).

    A sync takes over with initWal = the WAL it had *received*. When the old primary died
    half-way through writing a record (F19: its disk filled), that position includes the
    record's first part; PostgreSQL discards an incomplete record when it ends recovery, and
    my new timeline starts before it. Read-only until my sync catches up, I write almost no
    WAL, so my WAL may not reach initWal for a minute or more, and until it does neither my
    sync's flush (its catch-up needs both) nor its own takeover check can. Safe: every write ever acknowledged in this shard
    is in my WAL (I took over holding them all, and each of mine waits for my flush), so no
    acknowledged write lies beyond it. Only on PostgreSQL's own answer (out of recovery)."""
    v, obs, st = c.v, c.obs, c.st
    if (c.block is not None or v.pg_unknown or not obs.running or obs.in_recovery is not False
            or obs.wal is None or obs.wal >= st.init_wal):
        return None
    return Decision(c.tgt(c.sync, read_only), write_state=st.evolve(init_wal=obs.wal), rule="primary.trim_init_wal",
                    reason=f"the state's initWal {lsn_text(st.init_wal)} lies beyond my whole WAL "
                           f"{lsn_text(obs.wal)} (a record I had received only in part before I took over, "
                           f"which PostgreSQL discarded), so no acknowledged write lies there: I record my WAL "
                           f"as initWal so that {c.sync or 'a sync'} can catch up, keeping generation "
                           f"{st.generation}")


def _why_sync_gone(c: _Primary) -> str:
    sync, obs = c.sync, c.obs
    if c.tagged_out:
        return f"my sync {sync} is tagged nofailover/nosync"
    if c.v.alive(sync) and c.hb is False and obs.gave_way.get(sync.id):
        return f"my sync {sync} gave way ({obs.gave_way[sync.id]})"
    if not c.v.alive(sync) or c.hb is False:
        return f"my sync {sync} is gone" + (" (its heartbeats stopped)" if c.v.alive(sync) else "")
    has = (f"its flush position stayed at {lsn_text(obs.sync_flush)}" if obs.sync_flush is not None
           else "it does not stream from me")
    return (f"my sync {sync} still heartbeats but has not flushed my WAL {lsn_text(obs.wal)} for "
            f"{obs.sync_stalled_s:.0f}s ({has}), which blocks every commit")


def _update_asyncs(c: _Primary, read_only: bool) -> Decision | None:
    """Bookkeeping: asyncs that died leave the list, live newcomers and deposed peers join its tail."""
    v, st, sync, tgt, deposed_left = c.v, c.st, c.sync, c.tgt, c.deposed_left
    desired_async = tuple(c.cands)
    if c.block is None and (desired_async != st.async_ or deposed_left != st.deposed
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
    return None


def _hold(c: _Primary, read_only: bool, sd_wait: str | None, sw_wait: str | None) -> Decision:
    """No topology change: say why I keep serving as I do."""
    v, obs, st, sync, tgt, block = c.v, c.obs, c.st, c.sync, c.tgt, c.block
    sync_gone, wants_new_sync = c.sync_gone, c.wants_new_sync
    if sd_wait is not None:
        return Decision(tgt(sync, read_only), rule="primary.cannot_serve",
                        reason=f"my PostgreSQL cannot serve ({obs.cannot_serve}) but {sd_wait}, so I "
                               f"keep trying to serve as primary")
    if sync_gone and sync is not None and not wants_new_sync:
        return Decision(tgt(sync, read_only), rule="primary.sync_gone_no_candidate",
                        reason=f"{_why_sync_gone(c)} and no other standby is live to replace it, so I stay "
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


def _primary_step_down(v: View, sync: Peer | None, hb: bool | None, block: str | None,
                       tgt, cannot_serve: str | None = None) -> tuple[Decision | None, str | None]:
    """S9: a primary whose PostgreSQL cannot serve (obs.cannot_serve: unhealthy for longer than
    primaryStartTimeout, measured by the shell) hands the role to its sync.

    (a) kill PostgreSQL first, so that nothing more is acknowledged (S1); (b) with it stopped,
    write a released switchover (`by` STEP_DOWN_BY) by compare-and-set: the sync then takes
    over by the usual takeover rule, after detaching so its WAL — which holds every
    acknowledged write, since each needed its flush — is final and at least initWal. Only
    with a healthy sync (live, heartbeating me now, its disk not full as its heartbeats say:
    a full sync would fail the same way, and each handover is a new generation) that can take
    over (it has flushed my WAL up to initWal in this generation, or its heartbeat says it
    has received that much: a sync named a moment ago that has not, e.g. after the one
    before it gave way, would refuse, and my stopped PostgreSQL could not send it the rest)
    and a write to ZooKeeper allowed; else I keep trying to serve and say why. A failed
    ZooKeeper read is not a cause: the shell derives cannot_serve from PostgreSQL and its
    config files alone. Once released, the switchover rules keep me stopped (or withdraw the
    release if the sync goes away).

    `cannot_serve` overrides the shell's (my data directory is empty: `_no_data`).

    Returns (decision, None), or (None, why-I-cannot-step-down) or (None, None)."""
    obs, st = v.obs, v.st
    cannot_serve = cannot_serve or obs.cannot_serve
    if cannot_serve is None or (st.switchover is not None and st.switchover.released):
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
    elif latches.disk_full(free := obs.standby_free.get(sync.id)):
        why = f"my sync {sync}'s disk is full too ({free} bytes free): it could not serve either"
    elif not (obs.sync_holds_init_wal or obs.standby_wal.get(sync.id, -1) >= st.init_wal):
        why = (f"my sync {sync} has not shown that it holds my WAL up to {lsn_text(st.init_wal)}, "
               f"so it could not take over")
    if why is not None:
        return None, why
    assert sync is not None
    if obs.running:
        return Decision(Target(UNASSIGNED), rule="primary.step_down_stop", effects=(Effect.STOP_TO_STEP_DOWN,),
                        reason=f"my PostgreSQL cannot serve ({cannot_serve}) and my sync {sync} is healthy, "
                               f"so I stop PostgreSQL at once before I step down in its favour"), None
    new = st.evolve(switchover=Switchover(to=sync.id, requested=f"generation {st.generation}", by=STEP_DOWN_BY,
                                          released=True, released_wal=st.init_wal))
    return Decision(Target(UNASSIGNED), write_state=new, rule="primary.step_down", effects=(Effect.STEP_DOWN,),
                    reason=f"my PostgreSQL cannot serve ({cannot_serve}) and is stopped, so I step down: "
                           f"I release the primary role to my sync {sync}, which holds every acknowledged "
                           f"write"), None


def _switchover_not_ready(obs, sync: Peer, sync_gone: bool, block: str | None) -> str | None:
    """Why a switchover to `sync` cannot go on now (None: it can)."""
    if block is not None:
        return block
    if sync_gone:
        return f"my sync {sync} is gone"
    if latches.disk_full(free := obs.standby_free.get(sync.id)):
        return f"my sync {sync}'s disk is full ({free} bytes free): it could not serve as the primary"
    if (sick := obs.standby_sick.get(sync.id)) is not None:
        return f"my sync {sync} says its PostgreSQL is not healthy ({sick}): it could not serve as the primary yet"
    if not obs.running:
        return "my PostgreSQL is not running"
    if not obs.sync_streaming or not obs.sync_caught_up:
        return f"my sync {sync} has not caught up with me"
    return None


def _primary_switchover(v: View, sync: Peer | None, sync_gone: bool, block: str | None,
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
                        reason=f"I stopped PostgreSQL at WAL {lsn_text(obs.switchover_stopped_wal)}, which my sync "
                               f"{sync} has flushed, so I release the primary role to it"), None
    if (why := _switchover_not_ready(obs, sync, sync_gone, block)) is not None:
        return None, why
    if obs.read_only is not True:
        return Decision(tgt(sync, True), rule="primary.switchover_read_only",
                        reason=f"a switchover to {sync} is requested, so I go read-only first: my WAL must "
                               f"stop growing before it takes over"), None
    if obs.wal is None or obs.sync_flush is None or obs.sync_flush < obs.wal:
        return Decision(tgt(sync, True), rule="primary.switchover_wait_flush",
                        reason=f"a switchover to {sync} is requested and I am read-only: I wait until it has "
                               f"flushed my WAL {lsn_text(obs.wal)} (it has {lsn_text(obs.sync_flush)})"), None
    # Release and stop in one step (the shell writes the state, then kills PostgreSQL): the
    # sync may take over while my PostgreSQL still runs for a few milliseconds, which is safe
    # because it was my only synchronous standby — once it has detached, no commit of mine can
    # be acknowledged (S1), and everything acknowledged before was flushed by it (S2).
    new = st.evolve(switchover=replace(sw, released=True, released_wal=obs.wal))
    return Decision(Target(UNASSIGNED), write_state=new, rule="primary.switchover_stop",
                    effects=(Effect.RELEASE_THEN_STOP,),
                    reason=f"my sync {sync} has flushed my whole WAL {lsn_text(obs.wal)} for the switchover, so I "
                           f"release the primary role to it and stop PostgreSQL at once (no shutdown "
                           f"checkpoint)"), None
