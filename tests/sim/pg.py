"""A simulated PostgreSQL per node (the PgManager port) and its dataset (the ZfsDataset port).

The WAL is a list of record ids (a position is BASE + its length). A standby streams from
its upstream only while its WAL is a prefix of the upstream's (the world does that, in
tests/sim/shard.py); a promotion appends a timeline-switch record, so an old primary holding
unreplicated WAL can no longer follow anyone. Faults: a process that hangs (its status query
times out), one that hangs at every start, one that will not start, one that answers but
cannot commit (its write probe fails), a standby that streams but never flushes more, and one
that flushes slowly (tests/sim/shard.py streams)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import SimpleNamespace

from manatee.core.lsn import Lsn
from manatee.core.pg import PgError
from manatee.sitter.dataset import UpstreamNotReady
from manatee.sitter.pgmanager import PgConfigError, PgStatus

BASE = 0x1000000  # the WAL position of an empty log
# Node.orphan: a PostgreSQL left running by a sitter that died, whose new sitter's kill will
# fail (KILL_FAILS) or failed (ORPHAN: it runs, but is not the sitter's child)
KILL_FAILS, ORPHAN = "kill_fails", "orphan"


@dataclass
class Conf:
    standby_signal: bool = False
    upstream: str | None = None   # the upstream's peer id (primary_conninfo)
    sync: str | None = None       # synchronous_standby_names (an application_name: a pgUrl)
    read_only: bool = True


class FakeClient:
    """The sitter's own connection: replication slots are not simulated; the write probe
    fails while the node's PostgreSQL cannot commit (pg_fault "no_commit"), or refuses new
    transaction IDs to avoid wraparound ("wraparound"); a query that holds a standby's replay
    ("replay_held") shows as its startup process's lock wait, and ending it lets the
    walreceiver follow the upstream configured meanwhile (manatee.sitter.syncfollow)."""

    def __init__(self, node=None):
        self.node = node

    async def query(self, sql, _params=None, timeout=None):
        held = self.node is not None and self.node.pg_fault == "replay_held"
        if "backend_type = 'startup'" in sql:
            return [{"r": True, "w": "Lock/relation" if held else "Activity/RecoveryWalStream"}]
        if "pg_terminate_backend" in sql:
            if not held:
                return []
            self.node.replay_released()
            self.node.sessions_ended += 1
            return [{"pid": 4242, "app": "report", "ended": True}]
        if self.node is not None and self.node.pg_fault == "no_commit" and "manatee_write_probe" in sql:
            raise PgError("canceling statement due to statement timeout", timed_out=True)
        if self.node is not None and self.node.pg_fault == "wraparound" and "manatee_write_probe" in sql:
            raise PgError('ERROR:  database is not accepting commands to avoid wraparound data loss in '
                          'database "app"', pgcode="54000")
        return []


class FakePg:
    """What the sitter's loop calls on its PostgreSQL; the node holds the data and the process."""

    config_error = None
    parameters_gen = 0
    raised_to_primary: dict = {}  # (never raised here)
    parameters_dirty = False
    ops_timeout = 10.0
    status_timeout = 0.5

    def __init__(self, node, world, health_timeout: float):
        self.node, self.world, self.health_timeout = node, world, health_timeout
        self.spec = None
        self.members: tuple[str, ...] = ()
        self.client = FakeClient(node)

    @property
    def running(self) -> bool:
        return self.node.running and self.node.orphan != ORPHAN  # as PgManager: its own child only

    def has_data(self) -> bool:
        return self.node.has_data

    async def check_data(self, timeout: float) -> bool:
        return self.node.has_data

    def has_standby_signal(self) -> bool:
        return self.node.conf.standby_signal

    def set_parameters(self, parameters) -> bool:
        return False

    async def status(self, sync_app_name: str | None = None) -> PgStatus:
        n = self.node
        if not self.running:
            return PgStatus(False, False, None, None, False, n.diverged, None, None)
        if n.pg_hung:
            return PgStatus(True, False, None, None, False, n.diverged, None, None,
                            error="canceling statement due to statement timeout", timed_out=True)
        rec = n.mode == "standby"
        if rec:
            wal = None if n.streamed is None else Lsn(BASE + n.streamed + n.torn)
        else:
            wal = Lsn(BASE + len(n.log))
        flush = None
        s = self.world.sync_connected(n) if not rec else None
        if s is not None and s.peer.pg_url == sync_app_name:
            flush = Lsn(BASE + len(s.log))
        up = self.world.node(n.applied.upstream) if rec and n.streaming and n.applied.upstream else None
        gone = (rec and not n.streaming and n.applied.upstream is not None
                and n.refused_by == self.world.node(n.applied.upstream).id)
        return PgStatus(True, True, rec, wal, n.streaming, rec and n.diverged, flush, 1, n.applied.read_only,
                        (up.peer.ip, 5432) if up else None, disk_full=n.disk_full,
                        wal_gone="000000010000000000000008" if gone else None)

    async def initdb(self) -> None:
        await self.world.pause_point(self.node)
        self.node.has_data, self.node.log = True, []

    async def configure(self, spec, members) -> None:
        await self.world.pause_point(self.node)
        await self.world.slow_disk(self.node, self.node.config_ticks)
        self.node.config_writes += 1
        if self.node.config_full and self.node.config_writes % 2:
            raise PgConfigError(f"cannot write PostgreSQL's config for the {spec.role} role: "
                                "[Errno 28] No space left on device: '.manatee.conf.tmp'")
        self.spec, self.members = spec, tuple(sorted(set(members)))
        c = self.node.conf
        if spec.role == "primary":
            c.standby_signal, c.upstream, c.sync, c.read_only = False, None, spec.sync_app_name, spec.read_only
        else:
            up = self.world.node_at(spec.upstream[0]) if spec.upstream else None
            c.standby_signal, c.upstream = True, (up.id if up else None)
            # a detached standby about to take over already names its sync and mode (pgconfig)
            c.sync = spec.sync_app_name if spec.upstream is None else None
            c.read_only = spec.read_only if c.sync is not None else True

    async def apply_pending(self) -> str:
        await self.world.pause_point(self.node)
        n = self.node
        if not n.running:
            return "not running"
        if n.mode == "standby" and n.conf.upstream != n.applied.upstream:
            if n.pg_fault == "replay_held":  # the walreceiver restarts only once the replay asks for WAL
                n.applied = replace(n.conf, upstream=n.applied.upstream)
                return "reloaded"
            n.streaming = False  # the walreceiver reconnects to the new upstream
        n.applied = replace(n.conf)
        return "reloaded"

    async def start(self, ready_timeout: float | None = None) -> None:
        await self.world.pause_point(self.node)
        n = self.node
        if n.orphan == ORPHAN:  # PgManager.start kills a PostgreSQL of the data directory it did not start
            self.world.pg_stop(n)
        if n.running:
            return
        if not n.has_data:
            raise PgError("no data directory")
        if n.pg_fault == "no_start":
            raise PgError("postgres exited with status 1 before accepting connections")
        n.pg_hung = n.pg_fault == "hang_sticky"
        if n.pg_fault == "replay_held":  # a restart ends every session
            n.pg_fault = None
        n.disk_full = None  # the sitter reads PostgreSQL's log from this start on
        n.running, n.mode = True, ("standby" if n.conf.standby_signal else "primary")
        n.applied = replace(n.conf)
        n.streaming, n.pending = False, []
        # a standby replays the WAL on its disk first: it reports that position before it
        # streams (pg_last_wal_replay_lsn); a record torn off at the end is not replayed
        n.streamed, n.torn = (len(n.log), 0) if n.mode == "standby" else (None, n.torn)

    async def stop(self, mode: str = "fast") -> None:
        await self.world.pause_point(self.node)
        self.world.pg_stop(self.node)

    async def kill(self) -> None:
        await self.world.pause_point(self.node)
        self.world.pg_stop(self.node)

    async def promote(self) -> None:
        await self.world.pause_point(self.node)
        if not self.node.running:  # killed meanwhile: pg_promote and the polls after it fail
            raise PgError("could not connect to server: Connection refused")
        self.world.promote(self.node)


class FakeDataset:
    """The node's dataset: a restore copies the upstream's WAL (it must be reachable and run
    a healthy PostgreSQL, as the real check asks its status server)."""

    def __init__(self, node, world):
        self.node, self.world = node, world

    async def ensure(self) -> None:
        pass

    async def check_upstream(self, upstream) -> None:
        # as Dataset.check_upstream, by what the upstream's sitter says of its own PostgreSQL: one
        # that a dead sitter left running (its kill failed) is not its child, so not running
        # (seed 914551 of the long runs: an async restored from a deposed primary's orphan,
        # streamed from it as its old sync and so let it acknowledge writes on its fork)
        src = self.world.node(upstream.id)
        if not (self.world.reach(self.node, src) and src.running and src.orphan != ORPHAN and not src.pg_hung):
            raise UpstreamNotReady(f"upstream {upstream.id} has no running, healthy PostgreSQL")

    async def rewind(self, upstream, cause, progress, ahead=()):
        return "the simulation streams every rebuild"

    async def restore(self, upstream, progress, also=()):
        await self.world.pause_point(self.node)
        n, src = self.node, self.world.node(upstream.id)
        await self.world.slow_disk(n, n.restore_ticks)
        if not (self.world.reach(n, src) and src.has_data):
            raise RuntimeError(f"cannot restore from {upstream}")
        self.world.pg_stop(n)
        n.log, n.has_data, n.diverged, n.torn = list(src.log), True, False, 0
        n.memory = "-"  # a received dataset carries no properties
        n.wal_gone_on, n.refused_by = set(), None
        self.world.restores.append((self.world.now, n.id))
        self.node.restore_sources = (upstream.id, tuple(p.id for p in also))  # (upstream, members ahead of it)
        return SimpleNamespace(bytes=len(n.log), seconds=0.0, path="full", reason="simulated")

    async def list_snapshots(self):
        return []

    async def space(self) -> str:
        return ""

    async def interrupted_copies(self) -> list[str]:
        return []

    async def snapshot_bases(self) -> dict[str, str]:
        return {}

    async def available(self, timeout: float) -> int | None:
        return self.node.free

    async def read_memory(self, timeout: float) -> str | None:
        return self.node.memory if self.node.has_data else None

    async def write_memory(self, value: str, timeout: float) -> None:
        self.node.memory = value
