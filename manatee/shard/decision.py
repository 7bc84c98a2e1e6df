"""What the decision core reads and returns: the shell's Observation of one cycle, the
Decision with its explicit Effects, and the View of derived facts every rule shares. Pure
data; the rules are in manatee.shard.decide (and manatee.shard.primary_rules)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Mapping

from manatee.shard.state import CONNECTED, ZK_STATES, ClusterState, Peer, Target, dedupe_peers, format_lsn

__all__ = ["Observation", "Decision", "Effect", "View", "STEP_DOWN_BY", "PG_UNKNOWN", "lsn_text"]

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
    wal: primary: its current WAL position. Standby: the WAL it holds from its upstream, the
      greater of received and replayed (after a restart, pg_last_wal_receive_lsn reads the
      segment start it asks to stream from, below what its disk holds), and None until it
      has been seen streaming from the upstream it is configured for (latches.standby_wal;
      forgotten while it runs as a primary) — so a node whose WAL forked can never look
      caught up.
    streaming: my walreceiver is streaming. upstream_id: the peer my primary_conninfo names
      (None when detached or not a standby).
    read_only: default_transaction_read_only as my running primary reports it (None: unknown).
    diverged: PG refused to follow its upstream (timeline fork, "not a child" ...).
    rebuild_requested: an operator asked for my rebuild (manatee-adm rebuild) and no
      restore has begun: I rebuild from a live upstream, but my data is as it was, so this
      is no divergence (a sync in this state may still take over from a primary that is gone).
    wal_gone: (standby, running, not streaming) the WAL segment my upstream (the one
      upstream_id names) refused to send because it has removed it (no slot held it, or its
      slot passed max_slot_wal_keep_size), as my walreceiver was told repeatedly since that
      upstream was set: I can follow it again only after a rebuild. None otherwise. Not a
      divergence: my WAL is a prefix of the upstream's, so a sync in this state may still
      take over from a primary that is gone.
    sync_caught_up: (primary) the sync named in the state is connected and its flush
      position has reached my WAL at least once since it connected (latched by the shell
      so that a busy primary does not flap read-only).
    sync_holds_init_wal: (primary) the state's sync has flushed my WAL up to initWal in this
      generation (seen by the shell while my PostgreSQL ran; kept while it is stopped, and
      when the sync disconnects: its WAL does not go back). A step-down needs it (or the
      sync's heartbeat saying as much, standby_wal): a sync without it could not take over.
    has_data: my data directory is initialised.
    heartbeats: peer id -> fresh, for standbys that heartbeat me; absent = no verdict yet.
    gave_way: peer id -> why, for standbys whose last heartbeat said they give way (their
      PostgreSQL cannot serve); such a peer's heartbeats entry is False.
    standby_free: peer id -> bytes free on its dataset, as the standby's last heartbeat
      within the expiration time said (absent: unknown). A primary that cannot serve does
      not step down to a sync whose disk is full too (it would fail the same way).
    standby_wal: peer id -> the WAL position the standby's last heartbeat within the
      expiration time said it has received (absent: unknown). A primary that cannot serve
      steps down only to a sync that holds its WAL up to initWal (this, or
      sync_holds_init_wal): one that does not could not take over.
    standby_sick: peer id -> why its PostgreSQL is not healthy, as the standby's last heartbeat
      within the expiration time said (its sitter found it down, hung or not streaming and it
      has not been healthy for long since; absent: healthy or unknown). A switchover waits for
      a sync that says so (it would take over on a PostgreSQL that may hang again).
    one_node_write_mode: the operator allows a primary without a sync to take writes.
    expiry_passed: (suspended) the session-expiry deadline has passed (last heard from the
      server + negotiated timeout, ZKClient.session_expiry_deadline): it may have expired.
    fenced: my PostgreSQL is stopped because I fenced myself (the shell's role is FENCED): it
      stays so until my session is connected, whatever a stale observation says.
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
    state_lost: the state znode does not exist, yet I know this shard had a state: the shell
      remembers the last one it read (then `state` is that one, `state_version` -1), or my
      dataset's memory names a generation (`state` None after a restart), or that memory
      could not be read. The text says which. Not "no state": no new generation 1 is
      declared; nobody writes, promotes or rebuilds, as with state_unreadable, except that
      the remembered primary re-creates the znode when `session_unbroken`.
    state_older: the state znode does not follow from the newest state I remember (my last
      state read, or my dataset's memory): an older generation (ZooKeeper was restored from
      an older copy, or someone wrote an old state back), or the same generation with another
      primary or sync (written by hand: no sitter does that without a new generation; the
      text says which, statememory.not_following). `state` is then the remembered one, or None.
      Held like state_lost, never re-created: following the older state could make a node
      that lacks the newer generations' writes lead.
    session_unbroken: my ZooKeeper session has not been lost since I read `state` (the
      same session wrote or saw it, so nobody can have replaced it since without my
      seeing the write: every takeover is a compare-and-set of that znode).
    sync_stalled_s: (primary) how long the state's sync has not flushed WAL I have, its
      flush position not advancing (or it not streaming from me) — set only once that is at
      least the bound (latches.sync_flush_stall / stalled_for); None otherwise, and whenever
      my own PostgreSQL did not answer.
    start_held: (standby) why my PostgreSQL is not started now: its starts failed
      START_FAILURES_BEFORE_BACKOFF times or more in a row and the next one waits (the
      shell's back-off, latches.start_outcome); None when a start may be attempted.
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
    rebuild_requested: bool = False
    wal_gone: str | None = None
    sync_caught_up: bool = False
    sync_holds_init_wal: bool = False
    has_data: bool = False
    heartbeats: Mapping[str, bool] = field(default_factory=dict)
    gave_way: Mapping[str, str] = field(default_factory=dict)
    standby_free: Mapping[str, int] = field(default_factory=dict)
    standby_wal: Mapping[str, int] = field(default_factory=dict)
    standby_sick: Mapping[str, str] = field(default_factory=dict)
    one_node_write_mode: bool = False
    expiry_passed: bool = False
    fenced: bool = False
    sync_streaming: bool = False
    sync_flush: int | None = None
    switchover_stopped_wal: int | None = None
    switchover_expired: bool = False
    cannot_serve: str | None = None
    state_unreadable: bool = False
    state_lost: str | None = None
    state_older: str | None = None
    session_unbroken: bool = False
    sync_stalled_s: float | None = None
    start_held: str | None = None

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


def lsn_text(v: int | None) -> str:
    """A WAL position for a reason sentence ("none" when unknown)."""
    return "none" if v is None else format_lsn(v)


class View:
    """Derived facts the rules share (built once per decision)."""

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
        if self.obs.state_lost:
            return "the shard state znode is missing"
        if self.obs.state_older:
            return "the shard state znode is older than the state I remember"
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
