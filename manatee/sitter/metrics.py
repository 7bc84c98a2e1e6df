"""The sitter's Prometheus metrics (`GET /metrics`, text exposition format 0.0.4).

Why hand-rendered: a dozen gauges read from what the sitter already knows at scrape time
need no registry, and the format is small (HELP/TYPE lines, samples, escaped label values).
Two layers: `collect()` gathers a `MetricsView` (plain data; the few extra reads — lag
queries with a short deadline, the newest snapshot from a cached `zfs get` — happen here),
and the pure `render()` turns a view into text, so rendering is tested without a sitter.

The health predicates `writable_primary` / `streaming_replica` live here too, so that
`/primary`, `/replica` and `manatee_writable` / `manatee_replica_streaming` cannot disagree.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from manatee.sitter.history import ACTIONS
from manatee.sitter.state import CONNECTED, PRIMARY, ROLES, STANDBY

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: the shard-level role label values: a node's place in the persisted state, else its local role
PLACES = ("primary", "sync", "async", "deposed")
ROLE_LABELS = PLACES + tuple(r for r in ROLES if r not in PLACES)
RESTORE_FINISHED = ("done", "failed")
SNAPSHOT_CACHE_S = 30.0     # one `zfs get` per this many seconds at most, whatever the scrape rate
ZFS_TIMEOUT_S = 5.0         # a hung zfs-fuse must not hang the scrape
LAG_QUERY_TIMEOUT_S = 2.0


# ---------------------------------------------------------------------------- health predicates

def writable_primary(sitter) -> bool:
    """The primary accepting writes: the target is a read-write primary and PostgreSQL, as last
    observed, runs healthy, out of recovery and not read-only."""
    return _target_and_fresh_pg(sitter, PRIMARY) is not None and not sitter.target.read_only and (
        sitter.last_pg.healthy and sitter.last_pg.in_recovery is False and not sitter.last_pg.read_only)


def _target_and_fresh_pg(sitter, role: str):
    """The last PostgreSQL observation when the target has `role`, PG ran, and that
    observation is younger than the session timeout. A node resumed after a hang longer
    than that answers from its pre-hang view until its first cycle: not to be trusted
    (meanwhile another node may have been promoted)."""
    t, pgs = sitter.target, sitter.last_pg
    if t is None or t.role != role or pgs is None or not pgs.running:
        return None
    at = getattr(sitter, "last_pg_at", None)
    if at is not None and time.monotonic() - at > sitter.session_timeout:
        return None
    return pgs


def streaming_replica(sitter) -> bool:
    """A standby whose walreceiver is streaming from its upstream."""
    pgs = _target_and_fresh_pg(sitter, STANDBY)
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


# ---------------------------------------------------------------------------- rendering

@dataclass
class Family:
    name: str
    type: str  # gauge | counter
    help: str
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float, labels: Mapping[str, str] | None = None, suffix: str = "") -> "Family":
        self.samples.append((suffix, dict(labels or {}), value))
        return self


def _escape_label(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n")


def _value(v: float) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def render(families: Iterable[Family]) -> str:
    """Families → text format 0.0.4 (HELP, TYPE, then one line per sample)."""
    out: list[str] = []
    for f in families:
        out.append(f"# HELP {f.name} {_escape_help(f.help)}")
        out.append(f"# TYPE {f.name} {f.type}")
        for suffix, labels, value in f.samples:
            lab = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in labels.items())
            out.append(f"{f.name}{suffix}{{{lab}}} {_value(value)}" if lab else f"{f.name}{suffix} {_value(value)}")
    return "\n".join(out) + "\n"


def families(v: MetricsView, now_ms: int) -> list[Family]:
    """The view as metric families (pure: time comes in as `now_ms`)."""
    g = lambda name, help: Family(name, "gauge", help)  # noqa: E731
    fs = [
        g("manatee_sitter_info", "Constant 1, labelled with this sitter's identity.").add(
            1, {"peer_id": v.peer_id, "zone_id": v.zone_id, "shard": v.shard}),
        g("manatee_sitter_uptime_seconds", "Seconds since this sitter started.").add(round(v.uptime_s, 3)),
    ]
    role = g("manatee_role", "1 for this node's place in the shard (primary, sync, async, deposed) "
                             "or, outside the topology, its local role; 0 for the others.")
    for r in ROLE_LABELS:
        role.add(int(v.role == r), {"role": r})
    local = g("manatee_local_role", "1 for what the sitter makes this node's PostgreSQL do now "
                                    "(primary, standby, rebuild, ...); 0 for the others.")
    for r in ROLES:
        local.add(int(v.local_role == r), {"role": r})
    fs += [role, local]
    if v.generation is not None:
        fs.append(g("manatee_generation", "Generation of the shard's persisted state.").add(v.generation))
    fs += [
        g("manatee_pg_up", "1 if PostgreSQL runs and answers queries.").add(int(v.pg_up)),
        g("manatee_zk_connected", "1 if the sitter's ZooKeeper session is connected.").add(int(v.zk_connected)),
        g("manatee_writable", "1 on the primary accepting writes (GET /primary answers 200).").add(int(v.writable)),
        g("manatee_replica_streaming", "1 on a standby streaming from its upstream (GET /replica answers 200).")
        .add(int(v.replica_streaming)),
        g("manatee_safe_mode", "1 while the shard's error node exists (safe mode).").add(int(v.safe_mode)),
        g("manatee_frozen", "1 while the shard is frozen (no automatic transitions).").add(int(v.frozen)),
        g("manatee_zk_quarantined_znodes", "ZooKeeper znodes this sitter ignores as malformed (listed in "
                                           "GET /state, quarantined).").add(v.zk_quarantined),
    ]
    if v.standby_lag_bytes is not None:
        fs.append(g("manatee_standby_lag_bytes", "This standby: bytes of WAL its upstream has that it "
                                                 "has not replayed.").add(v.standby_lag_bytes))
    if v.standby_lag_seconds is not None:
        fs.append(g("manatee_standby_lag_seconds", "This standby: age of the last replayed transaction "
                                                   "while WAL is pending replay (0 when caught up).")
                  .add(v.standby_lag_seconds))
    if v.replication:
        b = g("manatee_replication_lag_bytes", "Each standby streaming from this node (pg_stat_replication): "
                                               "bytes of WAL this node has that it has not replayed.")
        s = g("manatee_replication_lag_seconds", "Each standby streaming from this node: its replay_lag "
                                                 "(pg_stat_replication).")
        for row in v.replication:
            lab = {"application_name": row.application_name, "sync_state": row.sync_state}
            if row.lag_bytes is not None:
                b.add(row.lag_bytes, lab)
            if row.lag_seconds is not None:
                s.add(row.lag_seconds, lab)
        fs += [f for f in (b, s) if f.samples]
    if v.last_snapshot_ms is not None:
        fs.append(g("manatee_last_snapshot_timestamp_seconds", "Time of the newest <dataset>@<epoch-ms> snapshot.")
                  .add(v.last_snapshot_ms / 1000))
        fs.append(g("manatee_last_snapshot_age_seconds", "Age of the newest <dataset>@<epoch-ms> snapshot.")
                  .add(max(0.0, (now_ms - v.last_snapshot_ms) / 1000)))
    r = v.restore or {}
    in_progress = bool(r) and r.get("phase") not in RESTORE_FINISHED
    fs.append(g("manatee_restore_in_progress", "1 while this node restores its dataset from its upstream.")
              .add(int(in_progress)))
    if r:
        fs.append(g("manatee_restore_bytes_done", "Bytes received by the current (or last) restore.")
                  .add(int(r.get("completed") or 0)))
        if r.get("size") is not None:
            fs.append(g("manatee_restore_bytes_total", "The sender's size estimate of the current (or last) restore.")
                      .add(int(r["size"])))
    # 0.0.4 names a counter's HELP/TYPE with its sample name, _total included
    tr = Family("manatee_transitions_total", "counter", "Topology changes this sitter recorded in the shard's "
                                                  "history, by action.")
    for a in (*ACTIONS, *sorted(set(v.transitions) - set(ACTIONS))):
        tr.add(int(v.transitions.get(a, 0)), {"action": a})
    fs.append(tr)
    return fs


def render_view(v: MetricsView, now_ms: int | None = None) -> str:
    return render(families(v, int(time.time() * 1000) if now_ms is None else now_ms))


# ---------------------------------------------------------------------------- collection

def newest_epoch_ms(names: Iterable[str]) -> int | None:
    """Newest of snapshot names that are epoch milliseconds (the snapshotter's); others ignored."""
    ms = [int(n) for n in names if n.isdigit() and len(n) >= 12]
    return max(ms) if ms else None


STANDBY_LAG_SQL = (
    "select greatest(0, pg_wal_lsn_diff((select latest_end_lsn from pg_stat_wal_receiver limit 1),"
    " pg_last_wal_replay_lsn()))::bigint as bytes,"
    " case when pg_last_wal_receive_lsn() is not distinct from pg_last_wal_replay_lsn() then 0::float8"
    " else extract(epoch from now() - pg_last_xact_replay_timestamp())::float8 end as seconds")
PRIMARY_LAG_SQL = (
    "select application_name, coalesce(sync_state, '') as sync_state,"
    " pg_wal_lsn_diff(case when pg_is_in_recovery() then pg_last_wal_receive_lsn()"
    " else pg_current_wal_lsn() end, replay_lsn)::bigint as bytes,"
    " coalesce(extract(epoch from replay_lag), 0)::float8 as seconds"
    " from pg_stat_replication order by application_name")


class MetricsCollector:
    """Builds a MetricsView from a running Sitter (its attributes, plus cheap extra reads)."""

    def __init__(self, sitter, log=None, *, snapshot_cache_s: float = SNAPSHOT_CACHE_S):
        self.sitter, self.log = sitter, log
        self.snapshot_cache_s = snapshot_cache_s
        self._snap_at = -math.inf
        self._snap_ms: int | None = None
        self._snap_lock = asyncio.Lock()

    async def collect(self) -> MetricsView:
        s = self.sitter
        st, pgs = s.state, s.last_pg
        place = st.place_of(s.me.id) if st else None
        standby_bytes = standby_secs = None
        rows: tuple[ReplicationRow, ...] = ()
        pg_up = bool(pgs and pgs.running and pgs.healthy)
        if pg_up and pgs.in_recovery:
            standby_bytes, standby_secs = await self._standby_lag()
        if pg_up and pgs.in_recovery is not None:  # a standby's own downstream (daisy chain) too
            rows = await self._replication()
        return MetricsView(
            peer_id=s.me.id, zone_id=s.me.zone_id, shard=s.cfg.shardPath,
            role=place or s.role, local_role=s.role,
            generation=st.generation if st else None, pg_up=pg_up,
            zk_connected=s.zk_state == CONNECTED, writable=writable_primary(s),
            replica_streaming=streaming_replica(s), safe_mode=s.error is not None,
            frozen=bool(st and st.frozen), standby_lag_bytes=standby_bytes, standby_lag_seconds=standby_secs,
            replication=rows, last_snapshot_ms=await self._last_snapshot_ms(),
            restore=s.restore_progress, transitions=dict(getattr(s, "transitions", {}) or {}),
            uptime_s=time.monotonic() - s.started, zk_quarantined=len(getattr(s, "quarantined", ()) or ()),
        )

    async def render(self) -> str:
        return render_view(await self.collect())

    async def _query(self, sql: str) -> list[dict[str, Any]] | None:
        try:
            return await self.sitter.pg.client.query(sql, timeout=LAG_QUERY_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - a scrape reports what it can; lag is then absent
            if self.log:
                self.log.debug("metrics_query_failed", error=str(e))
            return None

    async def _standby_lag(self) -> tuple[int | None, float | None]:
        rows = await self._query(STANDBY_LAG_SQL)
        if not rows:
            return None, None
        r = rows[0]
        return (None if r["bytes"] is None else int(r["bytes"]),
                None if r["seconds"] is None else max(0.0, float(r["seconds"])))

    async def _replication(self) -> tuple[ReplicationRow, ...]:
        rows = await self._query(PRIMARY_LAG_SQL) or []
        return tuple(ReplicationRow(str(r["application_name"]), str(r["sync_state"]),
                                    None if r["bytes"] is None else max(0, int(r["bytes"])),
                                    None if r["seconds"] is None else float(r["seconds"]))
                     for r in rows)

    async def _last_snapshot_ms(self) -> int | None:
        """Newest epoch-ms snapshot of the sitter's dataset, from one `zfs get` per cache period
        (a failure is cached too, so a broken zfs is not asked on every scrape)."""
        async with self._snap_lock:
            if time.monotonic() - self._snap_at < self.snapshot_cache_s:
                return self._snap_ms
            dataset = self.sitter.cfg.postgresMgrCfg.zfsClientCfg.dataset
            try:
                snaps = await asyncio.wait_for(self.sitter.zfs.list_snapshots(dataset), ZFS_TIMEOUT_S)
                self._snap_ms = newest_epoch_ms(sn.name for sn in snaps)
            except Exception as e:  # noqa: BLE001 - no dataset yet, zfs hung: the metric is absent
                self._snap_ms = None
                if self.log:
                    self.log.debug("metrics_snapshot_list_failed", dataset=dataset, error=str(e) or type(e).__name__)
            self._snap_at = time.monotonic()
            return self._snap_ms
