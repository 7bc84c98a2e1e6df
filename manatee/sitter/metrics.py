"""The sitter's Prometheus metrics (`GET /metrics`) and the health predicates the status
server answers from.

Exposition is prometheus_client's: a custom collector over the sitter's own registry (no
global state; `process_*` from prometheus_client's ProcessCollector), names and units per the
Prometheus conventions (counters end in `_total`, bytes in `_bytes`, seconds in `_seconds`),
and `shard` and `node` labels on every series, process_* included.

Scrapes never query anything themselves. `MetricsCollector.observe()` gathers a
`MetricsView` (plain data) at most once per CACHE_S whatever the scrape rate; concurrent
scrapes share the one collection in flight. The PostgreSQL part is one query over the
sitter's own client (`pg.client.query`), the ZFS part (newest snapshot, the dataset's
available/used/quota) cached `zfs` calls with a deadline (manatee.sitter.zfsview). The pure
`families()` turns a view into metric families, so rendering is tested without a sitter.

The health predicates `writable_primary` / `streaming_replica` live here too, so that
`/primary`, `/replica` and `manatee_writable` / `manatee_replica_streaming` cannot disagree;
`lag_within()` is what `/replica?lag=` and friends compare (docs/observability.md).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

from manatee.core.pg.walpos import NODE_WAL_SQL
from manatee.shard.history import ACTIONS
from manatee.shard.layout import shard_name
from manatee.shard.rebuildpath import RESTORE_FINISHED
from manatee.shard.state import CONNECTED, PRIMARY, ROLES, STANDBY
from manatee.sitter.snapshot import start_held_s
from manatee.sitter.zfsview import SLOW_CACHE_S, DatasetCache, newest_epoch_ms, parse_space  # noqa: F401

#: the text format generate_latest writes (classic names, so 0.0.4 for every Prometheus)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: the shard-level role label values: a node's place in the persisted state, else its local role
PLACES = ("primary", "sync", "async", "deposed")
ROLE_LABELS = PLACES + tuple(r for r in ROLES if r not in PLACES)
CACHE_S = 1.0               # PostgreSQL is asked at most once per this, however many scrapes
SNAPSHOT_CACHE_S = SLOW_CACHE_S
LAG_QUERY_TIMEOUT_S = 2.0


# ---------------------------------------------------------------------------- health predicates

def writable_primary(snap) -> bool:
    """The primary accepting writes: the target is a read-write primary and PostgreSQL, as last
    observed, runs healthy, out of recovery and not read-only. `snap`: a SitterSnapshot."""
    return _target_and_fresh_pg(snap, PRIMARY) is not None and not snap.target.read_only and (
        snap.last_pg.healthy and snap.last_pg.in_recovery is False and not snap.last_pg.read_only)


def _target_and_fresh_pg(snap, role: str):
    """The last PostgreSQL observation when the target has `role`, PG ran, and that
    observation is younger than the session timeout. A node resumed after a hang longer
    than that answers from its pre-hang view until its first cycle: not to be trusted
    (meanwhile another node may have been promoted). Nor is one of a PostgreSQL the sitter has
    killed or stopped since (a rebuild kills it at its start and observes nothing until its end)."""
    t, pgs = snap.target, snap.last_pg
    if t is None or t.role != role or pgs is None or not pgs.running or snap.pg_running is False:
        return None
    if time.monotonic() - snap.last_pg_at > snap.session_timeout:
        return None
    return pgs


def streaming_replica(snap) -> bool:
    """A standby whose walreceiver is streaming from its upstream."""
    pgs = _target_and_fresh_pg(snap, STANDBY)
    return pgs is not None and bool(pgs.streaming)


# ---------------------------------------------------------------------------- the view

@dataclass(frozen=True)
class ReplicationRow:
    """One row of the primary's pg_stat_replication."""

    application_name: str
    sync_state: str
    lag_bytes: int | None
    lag_seconds: float | None


@dataclass(frozen=True)
class MetricsView:
    peer_id: str
    zone_id: str
    shard: str
    role: str                       # one of ROLE_LABELS
    local_role: str                 # one of ROLES
    generation: int | None = None
    pg_up: bool = False
    zk_connected: bool = False
    writable: bool = False
    replica_streaming: bool = False
    safe_mode: bool = False
    frozen: bool = False
    standby_lag_bytes: int | None = None
    standby_lag_seconds: float | None = None
    replication: tuple[ReplicationRow, ...] = ()
    last_snapshot_ms: int | None = None
    restore: Mapping[str, Any] | None = None
    transitions: Mapping[str, int] = field(default_factory=dict)
    uptime_s: float = 0.0
    zk_quarantined: int = 0  # znodes the sitter ignores as malformed (its /state "quarantined")
    dataset_space: Mapping[str, int | None] | None = None  # {available, used, quota} bytes (quota 0: none)
    pg_observed_age_s: float | None = None                 # age of the cached PostgreSQL answers
    pg_pending_restart: int | None = None                  # settings only a restart applies (None: unknown)
    pg_archive_failing: int | None = None                  # 1: archive_command fails (None: unknown)
    slots: tuple[Any, ...] = ()  # manatee's replication slots on this node (snapshot.slots: slots.Slot)
    # the gray-failure latches (snapshot.gray_latches; docs/operators-guide.md)
    write_probe_failures: int = 0
    wraparound_refused_s: float | None = None  # the primary refuses new XIDs (wraparound) for this long
    sync_flush_stalled_s: float = 0.0
    sync_flush_stall_bound_s: float | None = None
    pg_start_failures: int = 0
    cycle_failures: int = 0  # the sitter's cycles that failed in a row
    pg_start_held_s: float = 0.0
    replay_paused_s: float | None = None  # a standby's replay paused by hand for this long (None: not paused)
    pg_xid_age: int | None = None         # largest age(datfrozenxid) over pg_database (None: not known)
    pg_multixact_age: int | None = None   # largest mxid_age(datminmxid)
    pg_checksum_failures: int | None = None  # data checksum failures counted (pg_stat_database)
    rule: str | None = None      # the latest decision's rule (manatee/shard/decide.py)


# ---------------------------------------------------------------------------- metric families

class _Families:
    """Collects metric families; every series carries `shard` and `node`."""

    def __init__(self, v: MetricsView):
        self.base = {"shard": shard_name(v.shard), "node": v.zone_id}
        self.fs: list[Metric] = []

    def g(self, name: str, help_: str, value: float | None = None, **labels: str) -> GaugeMetricFamily:
        m = GaugeMetricFamily(name, help_, labels=[*self.base, *labels])
        if value is not None:
            m.add_metric([*self.base.values(), *labels.values()], value)
        self.fs.append(m)
        return m

    def add(self, m: Metric, value: float, **labels: str) -> None:
        m.add_metric([*self.base.values(), *labels.values()], value)


def families(v: MetricsView, now_ms: int) -> list[Metric]:
    """The view as metric families (pure: time comes in as `now_ms`). Every series carries
    `shard` and `node` (the zoneId)."""
    f = _Families(v)
    _node_families(f, v)
    _replication_families(f, v)
    _storage_families(f, v, now_ms)
    _restore_and_pg_families(f, v)
    _gray_families(f, v)
    tr = CounterMetricFamily("manatee_transitions", "Topology changes this sitter recorded in the shard's "
                                                    "history, by action.", labels=[*f.base, "action"])
    for a in (*ACTIONS, *sorted(set(v.transitions) - set(ACTIONS))):
        tr.add_metric([*f.base.values(), a], int(v.transitions.get(a, 0)))
    f.fs.append(tr)
    return f.fs


def _node_families(f: _Families, v: MetricsView) -> None:
    g, add = f.g, f.add
    g("manatee_sitter_info", "Constant 1, labelled with this sitter's identity.", 1, peer_id=v.peer_id)
    g("manatee_sitter_uptime_seconds", "Seconds since this sitter started.", round(v.uptime_s, 3))
    role = g("manatee_role", "1 for this node's place in the shard (primary, sync, async, deposed) "
                             "or, outside the topology, its local role; 0 for the others.", None, role="")
    for r in ROLE_LABELS:
        add(role, int(v.role == r), role=r)
    local = g("manatee_local_role", "1 for what the sitter makes this node's PostgreSQL do now "
                                    "(primary, standby, rebuild, ...); 0 for the others.", None, role="")
    for r in ROLES:
        add(local, int(v.local_role == r), role=r)
    if v.generation is not None:
        g("manatee_generation", "Generation of the shard's persisted state.", v.generation)
    g("manatee_pg_up", "1 if PostgreSQL runs and answers queries.", int(v.pg_up))
    g("manatee_zk_connected", "1 if the sitter's ZooKeeper session is connected.", int(v.zk_connected))
    g("manatee_writable", "1 on the primary accepting writes (GET /primary answers 200).", int(v.writable))
    g("manatee_replica_streaming", "1 on a standby streaming from its upstream (GET /replica answers 200).",
      int(v.replica_streaming))
    g("manatee_safe_mode", "1 while the shard's error node exists (safe mode).", int(v.safe_mode))
    g("manatee_frozen", "1 while the shard is frozen (no automatic transitions).", int(v.frozen))
    g("manatee_zk_quarantined_znodes", "ZooKeeper znodes this sitter ignores as malformed (listed in "
                                       "GET /state, quarantined).", v.zk_quarantined)


def _replication_families(f: _Families, v: MetricsView) -> None:
    g, add = f.g, f.add
    if v.standby_lag_bytes is not None:
        g("manatee_standby_lag_bytes", "This standby: bytes of WAL its upstream has that it has not replayed.",
          v.standby_lag_bytes)
    if v.standby_lag_seconds is not None:
        g("manatee_standby_lag_seconds", "This standby: age of the last replayed transaction while WAL is "
                                         "pending replay (0 when caught up).", v.standby_lag_seconds)
    rows_b = [r for r in v.replication if r.lag_bytes is not None]
    rows_s = [r for r in v.replication if r.lag_seconds is not None]
    if rows_b:
        b = g("manatee_replication_lag_bytes", "Each standby streaming from this node (pg_stat_replication): "
                                               "bytes of WAL this node has that it has not replayed.",
              None, application_name="", sync_state="")
        for row in rows_b:
            add(b, row.lag_bytes, application_name=row.application_name, sync_state=row.sync_state)
    if rows_s:
        sm = g("manatee_replication_lag_seconds", "Each standby streaming from this node: its replay_lag "
                                                  "(pg_stat_replication).", None, application_name="", sync_state="")
        for row in rows_s:
            add(sm, row.lag_seconds, application_name=row.application_name, sync_state=row.sync_state)
    if v.slots:
        sb = g("manatee_replication_slot_retained_bytes", "Each replication slot manatee keeps on this node for a "
                                                          "downstream: bytes of WAL it holds back (capped by "
                                                          "postgresMgrCfg.maxSlotWalKeepSize).", None, slot="")
        sa = g("manatee_replication_slot_active", "1 while the slot's standby streams through it.", None, slot="")
        for sl in v.slots:
            if sl.retained_bytes is not None:
                add(sb, sl.retained_bytes, slot=sl.name)
            add(sa, int(sl.active), slot=sl.name)


def _storage_families(f: _Families, v: MetricsView, now_ms: int) -> None:
    g = f.g
    if v.last_snapshot_ms is not None:
        g("manatee_last_snapshot_timestamp_seconds", "Time of the newest <dataset>@<epoch-ms> snapshot.",
          v.last_snapshot_ms / 1000)
        g("manatee_last_snapshot_age_seconds", "Age of the newest <dataset>@<epoch-ms> snapshot.",
          max(0.0, (now_ms - v.last_snapshot_ms) / 1000))
    sp = v.dataset_space or {}
    for key, help_ in (("available", "Bytes the dataset can still grow by (zfs get available)."),
                       ("used", "Bytes the dataset and its snapshots use (zfs get used)."),
                       ("quota", "The dataset's quota in bytes; 0 when it has none (zfs get quota).")):
        if sp.get(key) is not None:
            g(f"manatee_dataset_{key}_bytes", help_, sp[key])


def _restore_and_pg_families(f: _Families, v: MetricsView) -> None:
    g = f.g
    r = v.restore or {}
    in_progress = bool(r) and r.get("phase") not in RESTORE_FINISHED
    g("manatee_restore_in_progress", "1 while this node restores its dataset from its upstream.", int(in_progress))
    if r:
        g("manatee_restore_received_bytes", "Bytes received by the current (or last) restore.",
          int(r.get("completed") or 0))
        if r.get("size") is not None:
            g("manatee_restore_size_bytes", "The sender's size estimate of the current (or last) restore.",
              int(r["size"]))
    if v.pg_pending_restart is not None:
        g("manatee_pg_pending_restart", "Settings PostgreSQL has read but only a restart applies "
                                        "(pg_settings.pending_restart; they apply at its next restart).",
          v.pg_pending_restart)
    if v.pg_archive_failing is not None:
        g("manatee_pg_archive_failing", "1 while archive_command has failed since it last succeeded "
                                        "(pg_stat_archiver): the WAL not archived stays in pg_wal.",
          v.pg_archive_failing)
    if v.pg_xid_age is not None:
        g("manatee_pg_xid_age", "Largest age(datfrozenxid) over the databases, in transactions: PostgreSQL "
                                "refuses new transaction IDs 3 million short of 2^31 (wraparound).", v.pg_xid_age)
    if v.pg_multixact_age is not None:
        g("manatee_pg_multixact_age", "Largest mxid_age(datminmxid) over the databases: PostgreSQL refuses new "
                                      "MultiXact IDs 3 million short of 2^31.", v.pg_multixact_age)
    if v.pg_checksum_failures is not None:
        g("manatee_pg_checksum_failures", "Data checksum failures PostgreSQL counted on this node since its "
                                          "statistics were reset (pg_stat_database): pages its storage returned "
                                          "that are not what it wrote.", v.pg_checksum_failures)
    if v.pg_observed_age_s is not None:
        g("manatee_pg_observation_age_seconds", "Age of the PostgreSQL answers these metrics show "
                                                "(they are cached; see docs/observability.md).",
          round(v.pg_observed_age_s, 3))


def _gray_families(f: _Families, v: MetricsView) -> None:
    g = f.g
    g("manatee_write_probe_failures", "The primary's write probes that failed in a row (0 on other nodes); "
                                      "from 2 on its PostgreSQL counts as unable to commit (step-down after "
                                      "primaryStartTimeout).", v.write_probe_failures)
    g("manatee_pg_wraparound_refusal_seconds", "How long this primary's PostgreSQL has refused new transaction "
                                               "IDs to avoid wraparound (0: it does not): no write commits, "
                                               "and no failover follows (every standby has the same IDs).",
      round(v.wraparound_refused_s or 0.0, 3))
    g("manatee_sync_flush_stalled_seconds", "On the primary: how long its sync's flush position has not advanced "
                                            "while WAL waits for it (0: not stalled).",
      round(v.sync_flush_stalled_s, 3))
    if v.sync_flush_stall_bound_s is not None:
        g("manatee_sync_flush_stall_bound_seconds", "How long the sync's flush may stall before the primary "
                                                    "replaces its sync.", v.sync_flush_stall_bound_s)
    g("manatee_cycle_failures", "The sitter's cycles that failed in a row (0: the last one completed); the last "
                                "error is in GET /state cycles.lastError.", v.cycle_failures)
    g("manatee_pg_start_failures", "Failed starts of this node's PostgreSQL in a row (a back-off holds the next "
                                   "start from 3 on).", v.pg_start_failures)
    g("manatee_pg_start_held_seconds", "Seconds until the next start of PostgreSQL may be attempted "
                                       "(0: not held back).", round(v.pg_start_held_s, 3))
    g("manatee_pg_replay_paused_seconds", "How long this standby's WAL replay has been paused by hand "
                                          "(pg_wal_replay_pause(); 0: not paused). A sync's is resumed by its "
                                          "sitter unless the shard is frozen.", round(v.replay_paused_s or 0.0, 3))
    if v.rule:
        g("manatee_decision_info", "Constant 1, labelled with the rule of the sitter's latest decision "
                                   "(its reason: GET /state).", 1, rule=v.rule)


class _ViewCollector:
    """A prometheus_client collector over a function returning the current families."""

    def __init__(self, fams):
        self._fams = fams

    def collect(self):
        return iter(self._fams())


class _Labelled:
    """Another collector's families with extra labels on every sample (process_* get shard/node)."""

    def __init__(self, inner, labels: Mapping[str, str]):
        self.inner, self.labels = inner, dict(labels)

    def collect(self):
        for m in self.inner.collect():
            m.samples = [s._replace(labels={**self.labels, **s.labels}) for s in m.samples]
            yield m


def make_registry(fams, labels: Mapping[str, str], process: bool = True) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_ViewCollector(fams))
    if process:
        reg.register(_Labelled(ProcessCollector(registry=None), labels))
    return reg


def render_view(v: MetricsView, now_ms: int | None = None, *, process: bool = False) -> str:
    """The exposition text of one view (what GET /metrics serves, without process_* by default)."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    reg = make_registry(lambda: families(v, now), {"shard": shard_name(v.shard), "node": v.zone_id}, process)
    return generate_latest(reg).decode()


# ---------------------------------------------------------------------------- lag thresholds

_SIZE_UNITS = {"": 1, "b": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30, "tb": 1 << 40}
_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}
_LAG = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_lag(text: str) -> tuple[str, float]:
    """`?lag=` → ("bytes", n) or ("seconds", s). Sizes as PostgreSQL writes them (1024-based:
    16kB, 1MB, 2GB; a bare number is bytes), durations us/ms/s/min/h. ValueError naming it."""
    m = _LAG.match(text or "")
    if not m:
        raise ValueError(f"lag={text!r}: expected bytes (e.g. 16kB, 1MB) or a duration (e.g. 500ms, 10s)")
    num, unit = float(m.group(1)), m.group(2)
    if unit.lower() in _SIZE_UNITS and unit not in ("m",):
        return "bytes", num * _SIZE_UNITS[unit.lower()]
    if unit in _TIME_UNITS:
        return "seconds", num * _TIME_UNITS[unit]
    raise ValueError(f"lag={text!r}: unknown unit {unit!r} (bytes: B, kB, MB, GB, TB; time: us, ms, s, min, h)")


def lag_within(v: MetricsView, kind: str, limit: float) -> bool | None:
    """This standby's lag against `limit`; None when the lag is not known (treated as too far
    by the endpoints: unknown is not healthy)."""
    have = v.standby_lag_bytes if kind == "bytes" else v.standby_lag_seconds
    return None if have is None else have <= limit


# ---------------------------------------------------------------------------- collection

PG_SQL = (
    # one statement, so one round trip per observation: this node's own lag as a standby,
    # and the standbys streaming from it (a daisy chain: a standby has its own downstream)
    # (no greatest(0, ...) here: it would turn "no walreceiver" (NULL) into 0 bytes behind)
    "select case when pg_is_in_recovery() then pg_wal_lsn_diff("
    " (select latest_end_lsn from pg_stat_wal_receiver limit 1), pg_last_wal_replay_lsn())::bigint end"
    " as standby_bytes,"
    " case when not pg_is_in_recovery() then null"
    " when pg_last_wal_receive_lsn() is not distinct from pg_last_wal_replay_lsn() then 0::float8"
    " else extract(epoch from now() - pg_last_xact_replay_timestamp())::float8 end as standby_seconds,"
    " coalesce((select json_agg(json_build_object('application_name', application_name,"
    "  'sync_state', coalesce(sync_state, ''),"
    f"  'bytes', pg_wal_lsn_diff({NODE_WAL_SQL}, replay_lsn)::bigint,"
    "  'seconds', coalesce(extract(epoch from replay_lag), 0)::float8) order by application_name)"
    "  from pg_stat_replication), '[]'::json) as replication,"
    # transaction-ID and MultiXact wraparound ahead (manatee-adm verify names what holds it)
    " (select max(age(datfrozenxid)) from pg_database)::bigint as xid_age,"
    " (select max(mxid_age(datminmxid)) from pg_database)::bigint as multixact_age,"
    " (select coalesce(sum(checksum_failures), 0) from pg_stat_database)::bigint as checksum_failures")


class MetricsCollector:
    """Builds MetricsViews from a running Sitter's published snapshot, plus one PostgreSQL
    query per CACHE_S (over sitter.pg.client) and the cached zfs calls of zfsview.DatasetCache
    (over sitter.dataset), shared by every scrape and endpoint."""

    def __init__(self, sitter, log=None, *, snapshot_cache_s: float = SLOW_CACHE_S, cache_s: float = CACHE_S):
        self.sitter, self.log = sitter, log
        self.cache_s = cache_s
        self.zfs = DatasetCache(sitter, log, cache_s=snapshot_cache_s)  # snapshots and space
        self._pg_at = -math.inf
        self._pg: tuple[int | None, float | None, tuple[ReplicationRow, ...]] = (None, None, ())
        self._ages: tuple[int | None, ...] = (None, None, None)  # xid_age, multixact_age, checksum_failures
        self._inflight: asyncio.Task | None = None
        self.pg_queries = 0  # how many PostgreSQL queries the metrics made (tests, /state)
        self.registry = make_registry(self._families, {}, process=False)
        self._process = None

    def _families(self):
        v = self._last_view
        return families(v, int(time.time() * 1000)) if v is not None else []

    _last_view: MetricsView | None = None

    async def observe(self) -> MetricsView:
        """A view no older than CACHE_S in its PostgreSQL part (shared by concurrent callers)."""
        if time.monotonic() - self._pg_at >= self.cache_s:
            if self._inflight is None or self._inflight.done():
                self._inflight = asyncio.ensure_future(self._refresh_pg())
            await asyncio.shield(self._inflight)
        v = await self.collect()
        self._last_view = v
        return v

    async def collect(self) -> MetricsView:
        """The view from the cached observations and the sitter's snapshot (no query here)."""
        s = self.sitter.snapshot
        st, pgs = s.state, s.last_pg
        place = s.place
        pg_up = bool(pgs and pgs.running and pgs.healthy)
        standby_bytes, standby_secs, rows = self._pg if pg_up else (None, None, ())
        xid_age, mxid_age, checksum_failures = self._ages if pg_up else (None, None, None)
        if not (pg_up and pgs.in_recovery):
            standby_bytes = standby_secs = None
        return MetricsView(
            peer_id=s.me.id, zone_id=s.me.zone_id, shard=self.sitter.cfg.shardPath,
            role=place or s.role, local_role=s.role,
            generation=st.generation if st else None, pg_up=pg_up,
            zk_connected=s.zk_state == CONNECTED, writable=writable_primary(s),
            replica_streaming=streaming_replica(s), safe_mode=s.error is not None,
            frozen=bool(st and st.frozen), standby_lag_bytes=standby_bytes, standby_lag_seconds=standby_secs,
            replication=rows, last_snapshot_ms=await self.zfs.refresh(),
            restore=s.restore_progress, transitions=dict(s.transitions),
            uptime_s=time.monotonic() - s.started, dataset_space=self.zfs.space,
            zk_quarantined=len(s.quarantined),
            pg_observed_age_s=None if self._pg_at == -math.inf else time.monotonic() - self._pg_at,
            pg_pending_restart=len(pgs.pending_restart) if pg_up else None,
            pg_archive_failing=int(pgs.archive_failing is not None) if pg_up else None,
            slots=tuple(s.slots or ()) if pg_up else (),
            write_probe_failures=s.write_probe_failures,
            wraparound_refused_s=None if s.wraparound_since is None else time.monotonic() - s.wraparound_since,
            sync_flush_stalled_s=s.sync_flush_stalled_s,
            sync_flush_stall_bound_s=s.sync_flush_stall_bound, pg_start_failures=s.start_failures,
            cycle_failures=s.cycle_failures,
            pg_start_held_s=start_held_s(s, time.monotonic()), rule=s.rule,
            replay_paused_s=None if s.replay_paused_since is None else time.monotonic() - s.replay_paused_since,
            pg_xid_age=xid_age, pg_multixact_age=mxid_age, pg_checksum_failures=checksum_failures,
        )

    async def render(self) -> bytes:
        await self.observe()
        if self._process is None:
            s = self.sitter
            labels = {"shard": shard_name(s.cfg.shardPath), "node": s.snapshot.me.zone_id}
            self.registry.register(_Labelled(ProcessCollector(registry=None), labels))
            self._process = True
        return generate_latest(self.registry)

    async def _refresh_pg(self) -> None:
        pgs = self.sitter.snapshot.last_pg
        result: tuple[int | None, float | None, tuple[ReplicationRow, ...]] = (None, None, ())
        xid: tuple[int | None, ...] = (None, None, None)
        if pgs and pgs.running and pgs.healthy:
            rows = await self._query(PG_SQL)
            if rows:
                r = rows[0]
                repl = tuple(ReplicationRow(str(x["application_name"]), str(x["sync_state"]),
                                            None if x["bytes"] is None else max(0, int(x["bytes"])),
                                            None if x["seconds"] is None else float(x["seconds"]))
                             for x in (r["replication"] or []))
                result = (None if r["standby_bytes"] is None else max(0, int(r["standby_bytes"])),
                          None if r["standby_seconds"] is None else max(0.0, float(r["standby_seconds"])),
                          repl)
                xid = tuple(None if r.get(k) is None else int(r[k])
                            for k in ("xid_age", "multixact_age", "checksum_failures"))
        self._pg, self._ages = result, xid
        self._pg_at = time.monotonic()

    async def _query(self, sql: str) -> list[dict[str, Any]] | None:
        self.pg_queries += 1
        try:
            return await self.sitter.pg.client.query(sql, timeout=LAG_QUERY_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - a scrape reports what it can; lag is then absent
            if self.log:
                self.log.debug("metrics_query_failed", error=str(e))
            return None

    @property
    def space(self) -> dict[str, int | None] | None:
        """The dataset's {available, used, quota} bytes as last read (None: not known)."""
        return self.zfs.space

    def refresh_slow_soon(self) -> asyncio.Future | None:
        """Start refreshing the zfs observations in the background if they are stale."""
        return self.zfs.refresh_soon()
