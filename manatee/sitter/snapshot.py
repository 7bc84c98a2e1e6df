"""What the sitter's loop publishes for the status server and the metrics: a frozen snapshot,
replaced (never changed) after every observation and cycle, and when a restore makes
progress. Readers never touch the live loop; what they ask of it goes through the Sitter's
request_* methods."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from manatee.shard import latches
from manatee.shard.latches import WRITE_PROBE_FAILURES
from manatee.shard.rebuildpath import RESTORE_FINISHED
from manatee.shard.state import REBUILD, ClusterState, Peer, Target


@dataclass(frozen=True)
class SitterSnapshot:
    me: Peer
    role: str = "unassigned"                 # the local role (manatee.shard.state.ROLES)
    target: Target | None = None
    reason: str | None = None                # the last decision's reason and rule
    rule: str | None = None
    state: ClusterState | None = None
    error: Mapping[str, Any] | None = None   # the shard's error node (safe mode)
    election: tuple[Peer, ...] = ()
    zk_state: str = "lost"
    last_pg: Any = None                      # PgStatus as last observed, or None
    last_pg_at: float = 0.0                  # clock.monotonic() of last_pg (0.0: never)
    pg_running: bool | None = None           # my PostgreSQL child runs as of this snapshot (None: not said)
    pg_config_error: str | None = None
    pg_parameters_gen: int = 0
    pg_raised: Mapping[str, int] = field(default_factory=dict)  # PrimaryFloors.values
    restore_progress: Mapping[str, Any] | None = None
    restarts_done: int = 0
    restart_requested: bool = False
    transitions: Mapping[str, int] = field(default_factory=dict)
    slots: tuple[Any, ...] | None = None     # replication slots as last reconciled (slots.Slot)
    quarantined: tuple[str, ...] = ()
    state_unreadable: str | None = None
    state_lost: str | None = None            # the state znode is missing, and what says the shard had one
    state_older: str | None = None           # the state znode is older than I remember: why
    remembers: Mapping[str, Any] | None = None  # the newest generation (and primary) my data belongs to
    session_timeout: float = 60.0            # negotiated (s)
    negotiated_session_timeout: float | None = None
    started: float = 0.0                     # clock.monotonic() at start
    sick_since: float | None = None
    sick_why: str | None = None
    cannot_serve: str | None = None
    hung_kills: int = 0
    heartbeats_withheld: bool = False
    diverged: bool = False                   # latched until a restore succeeds: my WAL cannot follow
    rebuild_requested: bool = False          # an operator's rebuild not begun: no divergence (yet)
    # the gray-failure latches (manatee.shard.latches, kept by sitter.health.PgHealth)
    write_probe_failures: int = 0            # consecutive failed write probes of my primary
    write_probe_error: str | None = None     # the last failed probe's error (kept after a success)
    wraparound_since: float | None = None    # my primary refuses new XIDs to avoid wraparound, since
    wraparound_error: str | None = None      # ... PostgreSQL's words (kept after the episode)
    sync_flush_stalled_s: float = 0.0        # my sync's flush not advanced while my WAL waits, as of last_pg_at
    sync_flush_stall_bound: float | None = None  # ... after which the primary replaces its sync
    start_failures: int = 0                  # consecutive failed starts of my PostgreSQL
    start_retry_at: float | None = None      # clock.monotonic() before which no start is attempted
    restore_tries: Any = None                # failed rebuilds in a row (latches.RestoreTries)
    standbys: tuple[Any, ...] = ()           # the last heartbeat of each standby (heartbeat.Heartbeat)
    hb_expiration_s: float = 0.0             # heartbeatCfg.expirationTime (s)
    hb_refused: str | None = None            # why my upstream refuses my heartbeats (401/403), if it does
    cycle_failures: int = 0                  # my cycles that failed in a row (loop.cycle_once)
    cycle_error: str | None = None           # ... the last one's error
    replay_paused_since: float | None = None  # my standby's replay paused by hand since (replaypause.py)

    @property
    def place(self) -> str | None:
        return self.state.place_of(self.me.id) if self.state else None

    @property
    def restoring(self) -> bool:
        r = self.restore_progress
        return bool(r) and r.get("phase") not in RESTORE_FINISHED

    @property
    def pg_serving(self) -> bool:
        """PostgreSQL runs, answers and holds a database (not restoring, not rebuilding)."""
        pgs = self.last_pg
        return (bool(pgs and pgs.running and pgs.healthy) and self.pg_running is not False
                and not self.restoring and self.role != REBUILD)


def snapshot_of(sitter) -> SitterSnapshot:
    """What the loop (manatee.sitter.loop.Sitter) publishes now."""
    v, h, d = sitter.view, sitter.health, sitter.last
    pending = sitter.rebuild_pending()  # a request not begun is no divergence (Observation.rebuild_requested)
    return SitterSnapshot(
        me=sitter.me, role=sitter.role, target=sitter.target, reason=d.reason if d else None,
        rule=d.rule if d else None, state=v.state, error=v.error, election=v.election, zk_state=v.zk_state,
        last_pg=sitter.last_pg, last_pg_at=sitter.last_pg_at, pg_running=sitter.pg.running,
        pg_config_error=sitter.pg.config_error,
        pg_parameters_gen=sitter.pg.parameters_gen, pg_raised=dict(sitter.pg.raised_to_primary), restore_progress=sitter.steps.restore_progress,
        restarts_done=sitter.pg_restarts, restart_requested=sitter.restart_request is not None,
        transitions=dict(sitter.transitions), slots=sitter.slots, quarantined=v.quarantined,
        state_unreadable=v.state_unreadable, session_timeout=v.session_timeout,
        state_lost=sitter.memory.lost(v.state) if v.state_missing else None, state_older=v.state_older,
        remembers=sitter.memory.as_json(v.state),
        negotiated_session_timeout=sitter.session.negotiated_session_timeout, started=sitter.started,
        sick_since=h.sick_since, sick_why=h.sick_why, cannot_serve=h.cannot_serve, hung_kills=h.hung_kills,
        heartbeats_withheld=h.hb_withheld, diverged=sitter.diverged and not pending,
        rebuild_requested=pending,
        write_probe_failures=h.probe_failures, write_probe_error=h.probe_error,
        wraparound_since=h.wraparound_since, wraparound_error=h.wraparound_error,
        sync_flush_stalled_s=max(0.0, sitter.last_pg_at - h.stall[2]) if h.stall else 0.0,
        sync_flush_stall_bound=h.sync_stall_bound, start_failures=h.starts.failures,
        start_retry_at=h.starts.retry_at, restore_tries=sitter.steps.restore_tries,
        standbys=tuple(sitter.heartbeats.beats.values()),
        hb_expiration_s=sitter.heartbeats.expiration_s, hb_refused=sitter.hb_sender.refused,
        replay_paused_since=sitter.replay.paused_since, cycle_failures=sitter.failures,
        cycle_error=sitter.failure_msg)


def debug_state(s: SitterSnapshot, cfg, now: float) -> dict:
    """GET /state: what the sitter knows and decided (docs/observability.md)."""
    st, pgs, t = s.state, s.last_pg, s.target
    return {
        "id": s.me.id, "zoneId": s.me.zone_id, "ip": s.me.ip, "pgUrl": s.me.pg_url,
        "role": s.place or s.role, "target": t.describe() if t else None,
        "localRole": s.role, "generation": st.generation if st else None,
        "zk": s.zk_state, "reason": s.reason, "rule": s.rule,
        "pg": None if pgs is None else {
            "running": pgs.running, "healthy": pgs.healthy, "inRecovery": pgs.in_recovery,
            "wal": str(pgs.wal) if pgs.wal else None, "streaming": pgs.streaming,
            "diverged": pgs.diverged or s.diverged, "rebuildRequested": s.rebuild_requested,
            "syncFlush": str(pgs.sync_flush) if pgs.sync_flush else None,
            "known": pgs.known, "error": pgs.error, "configError": s.pg_config_error,
            "unhealthyFor": round(now - s.sick_since, 1) if s.sick_since else None,
            "replayPausedFor": round(now - s.replay_paused_since, 1) if s.replay_paused_since is not None else None,
            "notSuperuser": pgs.not_superuser,
            "archiveFailing": pgs.archive_failing,
            "unhealthyWhy": s.sick_why, "cannotServe": s.cannot_serve,
            "hungKills": s.hung_kills, "heartbeatsWithheld": s.heartbeats_withheld,
            "pendingRestart": list(pgs.pending_restart), "parametersPending": pgs.parameters_gen != s.pg_parameters_gen,
            "raisedToPrimary": dict(s.pg_raised), "belowPrimary": pgs.below_primary},
        "readOnly": t.read_only if t else True,
        "state": st.to_json() if st else None, "error": s.error,
        "restore": s.restore_progress, "restartsDone": s.restarts_done,
        "restartRequested": s.restart_requested,
        "election": [p.id for p in s.election],
        "insecure": cfg.insecure,
        "zkAuth": cfg.zkCfg.auth is not None, "tls": getattr(cfg, "tls", None) is not None,
        "quarantined": list(s.quarantined), "stateUnreadable": s.state_unreadable,
        "stateLost": f"the shard state znode is gone; {s.state_lost}" if s.state_lost else None,
        "stateOlder": s.state_older,  # older than I remember, or other leaders at my generation: why
        "remembers": s.remembers,
        "zkSessionTimeout": {"configured": cfg.zkCfg.session_timeout_s,
                             "negotiated": s.negotiated_session_timeout},
        "pgObservedAgo": round(now - s.last_pg_at, 3) if pgs else None,
        "standbys": standbys(s, now),
        "heartbeatRefused": s.hb_refused,
        **gray_latches(s, now),
    }


def standbys(s: SitterSnapshot, now: float) -> dict:
    """GET /state `standbys`: each standby that heartbeats me, by election id: seconds since its
    last heartbeat, what it said (its WAL, whether it streams), and `leaving` (why) if its last
    heartbeat said it gives way. One silent for longer than `expirationS`, or leaving, counts
    as gone."""
    return {
        "expirationS": s.hb_expiration_s,
        "heard": {hb.peer_id: {"ageS": round(max(0.0, now - hb.received), 1), "wal": hb.wal,
                               "streaming": hb.streaming, "leaving": hb.leaving}
                  for hb in sorted(s.standbys, key=lambda b: b.peer_id)},
    }


def gray_latches(s: SitterSnapshot, now: float) -> dict:
    """The gray-failure latches as /state shows them (docs/operators-guide.md): the primary's
    write probe, its sync's flush stall, the start back-off of my PostgreSQL, the back-off of
    my failed rebuilds, and my cycles that fail in a row."""
    return {
        "writeProbe": {"failures": s.write_probe_failures, "limit": WRITE_PROBE_FAILURES,
                       "lastError": s.write_probe_error,
                       "wraparoundFor": (None if s.wraparound_since is None
                                         else round(max(0.0, now - s.wraparound_since), 1)),
                       "wraparoundError": s.wraparound_error},
        "syncFlushStall": {"seconds": round(s.sync_flush_stalled_s, 1), "bound": s.sync_flush_stall_bound},
        "startBackoff": {"failures": s.start_failures, "nextTryIn": start_held_s(s, now)},
        "restoreBackoff": restore_backoff(s.restore_tries, now),
        "cycles": {"failedInARow": s.cycle_failures, "lastError": s.cycle_error},
    }


def restore_backoff(t, now: float) -> dict:
    """My rebuilds that failed in a row, the last one's error, seconds until the next (0: now)."""
    if t is None:
        return {"failures": 0, "nextTryIn": 0.0, "lastError": None}
    return {"failures": t.failures, "nextTryIn": round(latches.restore_held_s(t, now) or 0.0, 1),
            "lastError": t.last_error}


def start_held_s(s: SitterSnapshot, now: float) -> float:
    """Seconds until my PostgreSQL's next start may be attempted (0: now)."""
    return round(max(0.0, s.start_retry_at - now), 1) if s.start_retry_at is not None else 0.0
