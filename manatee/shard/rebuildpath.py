"""Which way a rebuild runs: ``pg_rewind`` of the data in place, or a ZFS stream from a
backupserver (an increment since a common snapshot, else the whole dataset). Pure: the
shell (manatee.sitter.rewinder) gathers the facts and carries the choice out.

pg_rewind copies what changed since the fork, so it wins when the divergence is small
next to the data; a stream replaces everything and fixes any damage. Rewind is chosen only
on facts, never on unknowns ("unknown is not a fact"): the rebuild is for a WAL
divergence (not missing data, not an operator's rebuild, which may be for damage), the
control file is readable and says checksums or wal_log_hints were on (without them a
rewind can miss changed blocks), there are credentials for the source, and pg_rewind's own
dry run measured a copy well below a full stream (at most rewindMaxPercent of it, and below
an increment, when its size is known). Every "no" says why; the history and the restore's result carry it.
"""

from __future__ import annotations

from dataclasses import dataclass

REWIND = "rewind"
STREAM = "stream"  # a ZFS restore (it says itself whether incremental or full)

#: pg_rewind runs only if it copies at most this share of what a full stream sends (the
#: default of postgresMgrCfg.rewindMaxPercent): it copies through SQL functions and fsyncs
#: the whole directory, about ten times slower per byte than a ZFS stream measured here
#: (docs/benchmarks.md, P6c).
REWIND_MAX_SHARE = 0.10

#: Cluster states (pg_controldata) pg_rewind can start from: shut down, or stopped while
#: running (pg_rewind then lets PostgreSQL finish crash recovery in single-user mode first).
REWINDABLE_STATES = frozenset({"shut down", "shut down in recovery", "in production", "in archive recovery",
                               "in crash recovery"})

CAUSE_DIVERGED = "diverged"  # PostgreSQL said its WAL cannot follow the upstream's (or it forked)
CAUSE_REQUESTED = "requested"  # manatee-adm rebuild
CAUSE_WAL_GONE = "wal_gone"  # my upstream removed the WAL I need next (my WAL did not diverge)


def cannot_restore_from(sitter_state: object) -> str | None:
    """Why a member cannot be restored from, by its sitter's `/state` (None: it can). Its
    PostgreSQL must run and answer: a snapshot taken while it is being created (initdb) or
    restored, or of a dataset whose data is gone, is not a database. An answer that does not
    say counts as cannot (unknown is not a fact)."""
    pg = sitter_state.get("pg") if isinstance(sitter_state, dict) else None
    if isinstance(pg, dict) and pg.get("running") and pg.get("healthy"):
        return None
    return "it has no running, healthy PostgreSQL"


def rebuild_request_refusal(place: str | None, upstream_unready: str | None, *, known: bool) -> str | None:
    """Why a sitter refuses an operator's rebuild request now (None: it takes it).
    `upstream_unready`: why its upstream cannot be restored from now, or (not `known`) why
    its upstream's sitter could not be asked; None: it can. The restore starts only once its
    upstream serves, so a request asked while it cannot holds a sound node out of service,
    and the sync, the one node that can take over when its primary's data is gone, even from
    taking over. Not known refuses the sync only: an async's upstream may be replaced meanwhile."""
    sync = "; this node is the sync, the one node that can take over" if place == "sync" else ""
    if upstream_unready is None or (not known and not sync):
        return None
    said = upstream_unready if not known else f"this node would restore from {upstream_unready}"
    return f"{said}{sync}. Nothing requested"


@dataclass(frozen=True)
class Choice:
    path: str  # REWIND or STREAM
    reason: str


@dataclass(frozen=True)
class RewindFacts:
    """What is known before any dry run. None: unknown."""

    enabled: bool  # postgresMgrCfg.rebuildRewind
    cause: str | None  # CAUSE_DIVERGED, CAUSE_REQUESTED, CAUSE_WAL_GONE, or None (missing data / not known)
    has_credentials: bool  # a password for the rewind role (derived from the shard secret)
    cluster_state: str | None  # pg_controldata's "Database cluster state"; None: unreadable
    checksums: bool | None  # "Data page checksum version" != 0
    wal_log_hints: bool | None  # "wal_log_hints setting" == on


def facts_of_control(control: dict[str, str] | None) -> tuple[str | None, bool | None, bool | None]:
    """(cluster state, checksums on, wal_log_hints on) from pg_controldata's fields; None
    for each field it did not show (or for all: no control file)."""
    if control is None:
        return None, None, None
    state = control.get("Database cluster state") or None
    ver = control.get("Data page checksum version")
    hints = control.get("wal_log_hints setting")
    return (state, None if ver is None or not ver.isdigit() else ver != "0",
            None if hints not in ("on", "off") else hints == "on")


def why_not_rewind(f: RewindFacts) -> str | None:
    """Why pg_rewind must not be tried on these facts, or None (it may: measure it)."""
    if not f.enabled:
        return "pg_rewind is off (postgresMgrCfg.rebuildRewind)"
    if f.cause == CAUSE_REQUESTED:
        return "an operator asked for this rebuild (it may be for damaged data): a stream replaces it all"
    if f.cause == CAUSE_WAL_GONE:
        return ("my upstream no longer keeps the WAL I need, and my WAL did not diverge: pg_rewind "
                "has nothing to rewind, a stream brings me up to date")
    if f.cause != CAUSE_DIVERGED:
        return "the rebuild is not for a WAL divergence (data missing or cause unknown)"
    if not f.has_credentials:
        return "no credentials for pg_rewind's connection (it needs the shard secret)"
    if f.cluster_state is None:
        return "my control file cannot be read"
    if f.cluster_state not in REWINDABLE_STATES:
        return f"my control file says the cluster is {f.cluster_state!r}"
    if not (f.checksums or f.wal_log_hints):
        known = f.checksums is not None and f.wal_log_hints is not None
        return ("neither data checksums nor wal_log_hints are on" if known
                else "whether data checksums or wal_log_hints are on is unknown")
    return None


def next_cause(cause: str | None, *, diverged: bool, wal_gone: bool, streaming: bool) -> str | None:
    """Why the next rebuild will be needed, after one more observation of my PostgreSQL:
    a divergence (a rewind may fix it) outranks a removed WAL segment; a removed segment is
    forgotten once I stream again (no rebuild followed); an operator's request stands."""
    if diverged and cause in (None, CAUSE_WAL_GONE):
        return CAUSE_DIVERGED
    if cause is None and wal_gone:
        return CAUSE_WAL_GONE
    if cause == CAUSE_WAL_GONE and streaming:
        return None
    return cause


def choose_by_cost(copy_mb: int | None, source_mb: int | None, needed: bool | None,
                   increment_mb: int | None = None, max_share: float = REWIND_MAX_SHARE) -> Choice:
    """Rewind or stream, from pg_rewind's dry run (MB it would copy, the source's size,
    whether it found anything to rewind; None: it did not say) and, if known, the
    increment a ZFS stream would send (MB). `max_share`: of the source's size."""
    if needed is None or copy_mb is None and needed:
        return Choice(STREAM, "pg_rewind's dry run did not say what it would copy")
    if not needed:
        return Choice(STREAM, "pg_rewind finds my data on the source's history, yet PostgreSQL said it "
                              "diverged: a stream replaces it")
    if source_mb is None or source_mb <= 0:
        return Choice(STREAM, "pg_rewind's dry run did not say the source's size")
    if copy_mb > max_share * source_mb:
        return Choice(STREAM, f"pg_rewind would copy {copy_mb} MB of {source_mb} MB: more than "
                              f"{max_share:.0%}, a stream is cheaper")
    if increment_mb is not None and increment_mb < copy_mb:
        return Choice(STREAM, f"a ZFS increment ({increment_mb} MB) is smaller than pg_rewind's copy ({copy_mb} MB)")
    return Choice(REWIND, f"my WAL diverged and pg_rewind copies {copy_mb} MB of {source_mb} MB")


#: the restore phase of an operator's rebuild that has been accepted but not yet begun (no
#: attempt has passed its upstream's readiness check: the data is as it was)
PHASE_REQUESTED = "requested"
#: the phase from a restore attempt's passing its upstream's check: it has begun
PHASE_STARTING = "starting"
#: the phase of a request that lapsed before it began (withdrawn_request says why)
PHASE_WITHDRAWN = "withdrawn"
#: restore phases after which nothing more happens until the next need or request
RESTORE_FINISHED = ("done", "failed", PHASE_WITHDRAWN)


def withdrawn_request(forced: bool | None, place: str | None, phase: str | None,
                      upstream_unready: str | None = None) -> str | None:
    """Why an operator's rebuild request lapses now (None: it stands). `forced`: whether
    it was the sync's rebuild, forced (--force on an async or a deposed node forces nothing),
    or None when no request is pending or my WAL has since been seen to diverge (then the
    rebuild is needed whoever asked); `place`: mine in the shard state; `phase`: my restore's;
    `upstream_unready`: why my last attempt found my upstream unable to serve (known, not a
    timeout), else None. Only a request whose restore has not begun lapses (my data is as it
    was). A sync's rebuild needs --force, because the primary cannot take writes while its
    sync rebuilds and no other node can take over from it:
    - a node that accepted the request unforced (an async, or a deposed node) and is named
      the sync keeps its data and serves as the sync (the random simulation, seed 560392:
      such a sync waited for a primary whose data was gone, which waited for its sync's
      heartbeats, until an operator acted);
    - a sync whose primary cannot serve (the request is refused in that case; seed 602738:
      the primary fenced and lost its data after a forced request was taken) keeps its data
      and serves, so that the primary can give way to it;
    - a node that has become the primary (its primary died first: the request is no
      divergence, so it took over) is never rebuilt."""
    if forced is None or phase != PHASE_REQUESTED:
        return None
    before = "before the rebuild I was asked for began"
    if place == "primary":
        return f"I became the primary {before}: a primary is never rebuilt (switch over first, then ask again)"
    if place != "sync":
        return None
    if not forced:
        return (f"I was named the sync {before}, and it was not forced: the primary cannot take writes while its "
                "sync rebuilds, so I keep my data and serve as the sync (ask again with --force to rebuild the sync)")
    if upstream_unready is not None:
        return (f"my primary cannot be restored from ({upstream_unready}) {before}: I keep my data and serve as "
                "its sync, so that it can give way to me (ask again once it serves)")
    return None
