"""A simulated shard running the production sitter loop on in-memory fakes.

Each node has a simulated PostgreSQL (tests/sim/pg.py) and a real `Sitter` wired to a fake
session and store over one simulated ZooKeeper (tests/sim/zk.py) and a fake clock; one tick
is one second. Every tick: clients commit on every node that takes writes; standbys stream;
a commit is acknowledged only when the primary's configured sync has received it (an empty
synchronous_standby_names acknowledges at once, as PostgreSQL does); standbys heartbeat the
upstream their sitter names; then each running sitter gets one slice of its loop. A cycle
may stop at its first change to PostgreSQL and go on at the next tick (the world moves on
between observing and acting, as it does for the real shell).

Checked all along: S1 (at most one node acknowledges in a tick, and every node that
acknowledges holds every write acknowledged before), S2/S4 (a promoted node holds every
acknowledged write and is not diverged) and S3 (every state write that changes the primary
names the previous primary or sync; generation bumps exactly when primary/sync change).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Coroutine

from manatee.shard.state import CONNECTED, UNASSIGNED, Peer
from manatee.sitter.heartbeat import Heartbeat
from manatee.sitter.loop import Sitter
from tests.sim.clock import FakeClock, SimLog, format_record
from tests.sim.pg import KILL_FAILS, ORPHAN, Conf, FakeDataset, FakePg
from tests.sim.zk import FakeSession, FakeStore, SimZK, Violation

SESSION_TIMEOUT = 6
HB_TIMEOUT = 4
SETTLE = 120  # ticks allowed to converge after faults heal
HUNG_TICKS = 2  # healthChkTimeout: a PG unanswered this long is killed and restarted
PST_TICKS = 2 * SESSION_TIMEOUT  # primaryStartTimeout: a primary failing this long steps down

__all__ = ["Shard", "Node", "Violation", "new_shard", "acked_count_grows", "mkpeer", "SESSION_TIMEOUT",
           "HB_TIMEOUT", "SETTLE", "HUNG_TICKS", "PST_TICKS"]


def mkpeer(i: int) -> Peer:
    ip = f"127.0.0.{10 + i}"
    return Peer(id=f"{ip}:5432:10002:5433", zone_id=f"zone-{i}", ip=ip,
                pg_url=f"tcp://postgres@{ip}:5432/postgres", backup_url=f"http://{ip}:10002",
                status_url=f"http://{ip}:5433")


def sitter_config(peer: Peer, onwm: bool, *, session_timeout: float = SESSION_TIMEOUT, interval: float = 1.0,
                  primary_start_timeout: float | None = PST_TICKS) -> SimpleNamespace:
    """The part of a SitterConfig the loop reads (durations in seconds here)."""
    return _sim_config(peer, onwm, SimpleNamespace, session_timeout, interval, primary_start_timeout)


def _sim_config(peer, onwm, ns, session_timeout, interval, primary_start_timeout) -> SimpleNamespace:
    pst_ms = primary_start_timeout * 1000 if primary_start_timeout else None
    return ns(peer_id=peer.id, zoneId=peer.zone_id, ip=peer.ip, pg_url=peer.pg_url, backup_url=peer.backup_url,
              status_url=peer.status_url, tags=ns(nofailover=False, nosync=False, priority=0),
              postgresMgrCfg=ns(healthChkInterval=interval * 1000, health_interval_s=interval,
                                oneNodeWriteMode=onwm, opsTimeout=10000, ops_timeout_s=10.0,
                                synchronousCommit="on"),
              zkCfg=ns(sessionTimeout=session_timeout * 1000, session_timeout_s=session_timeout, auth="sim"),
              heartbeatCfg=ns(expirationTime=HB_TIMEOUT * 1000, heartbeatInterval=1000, requestTimeout=1000,
                              expiration_s=HB_TIMEOUT, interval_s=1.0, request_timeout_s=1.0),
              shardPath="/manatee/sim", ttl=60, hooks=None, primaryStartTimeout=pst_ms,
              insecure=True, tls=None)


@dataclass
class Node:
    i: int
    peer: Peer
    alive: bool = True
    hung: bool = False
    # PostgreSQL alone (issue 8): None | "hang" (this process hangs; a kill cures it) |
    # "hang_sticky" (every new process hangs too: stuck storage) | "no_start" (crash loop, full disk) |
    # "no_commit" (answers, but no commit succeeds) | "wraparound" (no commit either: it refuses new
    # transaction IDs, as every node with the same data does) | "stall" (a standby streams but flushes nothing
    # more) | "slow" (a standby flushes one record every third tick: slower than the writes) |
    # "panicked_full" (it PANICked for lack of space and the postmaster restarted it: it serves
    # again, but its log since the sitter started it names the crash: `disk_full`) | "replay_held" (a
    # standby's query holds its replay: a new primary_conninfo takes effect only once its session ends)
    pg_fault: str | None = None
    sessions_ended: int = 0  # sessions its sitter ended (pg_terminate_backend)
    disk_full: str | None = None
    free: int | None = None  # bytes free on its dataset (None: ZFS does not say)
    # PostgreSQL's config files cannot be written (ENOSPC) every other time, as on a real full
    # dataset where ZFS frees a little now and then (the 2026-12-05 sandbox trial)
    config_full: bool = False
    config_writes: int = 0
    # each write of PostgreSQL's config takes this many ticks (a loaded disk's fsync: 3.9 s in
    # the 2026-12-05 soak)
    config_ticks: int = 0
    # a rebuild takes this many ticks before its copy lands (a full stream of a big dataset)
    restore_ticks: int = 0
    pg_hung: bool = False
    zk_cut: bool = False
    peers_cut: bool = False
    # the sitter process and its loop
    sitter: Sitter | None = None
    session: FakeSession | None = None
    cycle: Coroutine | None = None  # the sitter's cycle in progress (parked at a pause)
    # a new sitter process waits for its first ZooKeeper session before anything else
    # (`Sitter.run`: view.connect, then kill_orphan, then the cycles); set by _boot
    connecting: bool = False
    # a PostgreSQL left running by a sitter that died, as the new sitter sees it: None (its own
    # child, or none runs); KILL_FAILS (the new sitter's kill of it will fail at its start:
    # pg_orphan_check_failed); ORPHAN (that kill failed: it runs but is not the sitter's child,
    # so the sitter sees it as not running, PgManager.running, and its next start or kill kills
    # every process of the data directory first)
    orphan: str | None = None
    pause_wanted: bool = False
    # postgres
    has_data: bool = False
    memory: str = "-"  # its dataset's manatee:state-memory ("-": unset)
    log: list = field(default_factory=list)
    running: bool = False
    mode: str = "standby"
    conf: Conf = field(default_factory=Conf)
    applied: Conf = field(default_factory=Conf)
    streamed: int | None = None
    # received beyond the last whole record (positions): the first part of a record whose
    # writer died half-way (F19); reported in the receive position, dropped by a promotion
    torn: int = 0
    streaming: bool = False
    diverged: bool = False
    # upstreams that recycled the WAL this node needs next (no slot kept it): they refuse to
    # stream to it until it is rebuilt; `refused_by` is the last one that refused it
    wal_gone_on: set = field(default_factory=set)
    refused_by: str | None = None
    pending: list = field(default_factory=list)

    def replay_released(self) -> None:
        """The query that held the replay ended: the walreceiver starts again, for the upstream
        configured meanwhile (if that changed)."""
        self.pg_fault = None
        if self.applied.upstream != self.conf.upstream:
            self.applied = replace(self.applied, upstream=self.conf.upstream)
            self.streaming = False

    @property
    def id(self) -> str:
        return self.peer.id

    @property
    def role(self) -> str:
        return self.sitter.role if self.sitter else UNASSIGNED

    @property
    def target(self):
        return self.sitter.target if self.sitter else None

    @property
    def last_decision(self):
        return self.sitter.last_decided if self.sitter else None

    def up(self) -> bool:
        return self.alive and not self.hung


class _Park:
    """What a parked cycle yields to the simulation (nothing else may suspend the loop)."""

    def __await__(self):
        yield self


class Shard:
    def __init__(self, n: int = 3, seed: int = 0, onwm: bool = False, commits_per_tick: int = 1) -> None:
        self.commits_per_tick = commits_per_tick
        self.rng = random.Random(seed)
        self.clock = FakeClock()
        self.zk = SimZK(SESSION_TIMEOUT)
        self.records: list = []
        self.nodes = [Node(i, mkpeer(i)) for i in range(n)]
        self.now = 0
        self.onwm = onwm
        self.rec = itertools.count(1)
        self.acked: list = []
        self.acked_set: set = set()
        self.ackers: list[str] = []
        self.heartbeat_wal = True  # False: heartbeats carry no WAL position (an older sitter's do not)
        self.promotions: list[tuple[int, str]] = []
        self.restores: list[tuple[int, str]] = []
        self.violations: list[Violation] = []
        for node in self.nodes:
            self._boot(node)


    @property
    def trace(self) -> list[str]:
        return [format_record(r) for r in self.records]

    # -- lookups --------------------------------------------------------------------------
    def node(self, key) -> Node:
        if isinstance(key, Node):
            return key
        if isinstance(key, int):
            return self.nodes[key]
        return next(n for n in self.nodes if n.id == key or n.peer.pg_url == key)

    def node_at(self, ip: str) -> Node:
        return next(n for n in self.nodes if n.peer.ip == ip)

    def by_role(self, place: str) -> Node | None:
        st = self.zk.state()
        if st is None:
            return None
        p = {"primary": st.primary, "sync": st.sync}.get(place)
        return self.node(p.id) if p else None

    def reach(self, a: Node, b: Node) -> bool:
        return a.up() and b.up() and not a.peers_cut and not b.peers_cut

    def zk_ok(self, n: Node) -> bool:
        return self.zk.up and not n.zk_cut and n.up()

    # -- the sitter process ---------------------------------------------------------------
    def _boot(self, n: Node) -> None:
        log = SimLog(self.clock, n.peer.ip, self.records)
        n.session = FakeSession(self.zk, lambda: self.zk_ok(n))
        n.sitter = Sitter(sitter_config(n.peer, self.onwm), log, store=FakeStore(self.zk, n.session, log),
                          session=n.session, pg=FakePg(n, self, float(HUNG_TICKS)), dataset=FakeDataset(n, self),
                          clock=self.clock)
        n.sitter.view.listen()
        n.sitter.view.watch()
        n.connecting = True

    def _halt(self, n: Node) -> None:
        if n.cycle is not None:
            n.cycle.close()  # the process dies in the middle of its cycle
        if n.session is not None:
            n.session.drop()
        n.cycle = n.sitter = n.session = None

    async def pause_point(self, n: Node) -> None:
        """A cycle's first change to PostgreSQL may wait for the next tick."""
        if n.pause_wanted:
            n.pause_wanted = False
            await _Park()

    async def slow_disk(self, n: Node, ticks: int) -> None:
        """A write that takes `ticks` ticks (the rest of the shard runs on meanwhile)."""
        for _ in range(ticks):
            await _Park()

    def _run_sitter(self, n: Node) -> None:
        """One slice of the sitter's loop: a new cycle, or the rest of a parked one. The fakes
        answer at once, so the coroutine is driven by hand (no event loop, no real time)."""
        n.session.poll(self.clock.now)
        if n.connecting:  # as `Sitter.run`: no cycle before the first session; then the
            if n.session.state != CONNECTED:  # PostgreSQL a dead sitter left is killed
                return
            n.connecting = False
            if n.running and n.orphan == KILL_FAILS:
                n.orphan = ORPHAN
                n.sitter.log.error("pg_orphan_check_failed", error="simulated: the kill failed")
            elif n.running:
                self.pg_stop(n)
                n.sitter.log.warning("pg_orphan_killed", why="simulated: left running by a sitter that died")
        if n.cycle is None:
            n.pause_wanted = self.rng.random() < 0.5
            n.cycle = n.sitter.cycle_once()
        try:
            got = n.cycle.send(None)
        except StopIteration:
            n.cycle = None
        else:
            if not isinstance(got, _Park):
                raise AssertionError(f"the loop waited for {got!r}: only the simulation's pause may suspend it")
        if self.violations:
            raise self.violations[0]

    def violation(self, msg: str) -> Violation:
        v = Violation(msg)
        self.violations.append(v)
        return v

    # -- faults ---------------------------------------------------------------------------
    def kill(self, k) -> None:
        n = self.node(k)
        n.alive = False
        self.pg_stop(n)
        self._halt(n)

    def start(self, k) -> None:
        n = self.node(k)
        if n.alive:
            return
        n.alive, n.hung = True, False
        self._boot(n)

    def kill_pg(self, k) -> None:
        self.pg_stop(self.node(k))

    def sitter_crash(self, k, orphan_survives: bool = False) -> None:
        """The sitter alone is killed (PostgreSQL runs on) and a new one starts at once, with a
        new ZooKeeper session (`manatee-sandbox sitter-crash`; SMF restarting the service).
        `orphan_survives`: the new sitter's kill of the PostgreSQL left running fails."""
        n = self.node(k)
        if n.alive:
            self._halt(n)
            n.hung = False
            self._boot(n)
            n.orphan = KILL_FAILS if orphan_survives and n.running else None

    def pg_fault(self, k, fault: str | None) -> None:
        """F18/F19/F22: the node's sitter runs on, its PostgreSQL is sick (None: cured)."""
        n = self.node(k)
        if n.pg_fault == "replay_held" and fault != n.pg_fault:
            n.replay_released()
        n.pg_fault = fault
        n.pg_hung = n.running and fault in ("hang", "hang_sticky")
        if fault == "no_start":  # it crashes (a full disk makes PostgreSQL PANIC) and cannot start again
            self.pg_stop(n)
        if fault == "panicked_full" and n.running:
            n.disk_full = f"PANIC:  could not write to file \"pg_wal/xlogtemp.{self.now}\": No space left on device"

    def tear_wal(self, k, extra: int) -> None:
        """F19 on the primary: its last WAL write failed half-way through a record after the
        standby `k` had received the record's first part (`extra` positions past its last whole
        record), which it reports as received but PostgreSQL drops when it ends recovery."""
        self.node(k).torn = extra

    def hang(self, k) -> None:
        self.node(k).hung = True

    def resume(self, k) -> None:
        self.node(k).hung = False

    def partition(self, k, zk: bool = True, peers: bool = True) -> None:
        n = self.node(k)
        n.zk_cut, n.peers_cut = n.zk_cut or zk, n.peers_cut or peers

    def heal(self, k) -> None:
        n = self.node(k)
        n.zk_cut = n.peers_cut = False

    def zk_down(self) -> None:
        self.zk.up = False

    def zk_up(self) -> None:
        if not self.zk.up:
            self.zk.up = True
            self.zk.restart_clock(self.now)

    def fork(self, k) -> None:
        """F16: a standby started without standby.signal: it runs as a primary of its own timeline."""
        n = self.node(k)
        assert n.running
        n.mode = "primary"
        n.log.append(("fork", next(self.rec)))
        n.streaming = False

    def recycle_wal_for(self, k, upstream) -> None:
        """`upstream` no longer keeps the WAL node `k` needs next (its slot was lost): from
        now on it refuses to stream to k, as PostgreSQL does, until k is rebuilt."""
        self.node(k).wal_gone_on.add(self.node(upstream).id)

    def destroy_data(self, k) -> None:
        n = self.node(k)
        self.pg_stop(n)
        n.has_data, n.log, n.memory = False, [], "-"

    def heal_all(self) -> None:
        self.zk_up()
        for n in self.nodes:
            self.heal(n)
            self.resume(n)
            self.start(n)
            self.pg_fault(n, None)
            n.free = None  # the operator freed space

    # -- postgres -------------------------------------------------------------------------
    def pg_stop(self, n: Node) -> None:
        n.running = n.pg_hung = False
        n.orphan = None
        n.streaming = False
        n.streamed = None
        n.pending = []

    def promote(self, n: Node) -> None:
        if not (n.running and n.mode == "standby"):
            return
        if n.diverged:
            raise self.violation(f"S4: diverged {n.id} promoted")
        missing = self.acked_set - set(n.log)
        if missing:
            raise self.violation(f"S2: {n.id} promoted without acknowledged writes {sorted(missing)[:5]}")
        n.mode = "primary"
        n.torn = 0  # an incomplete last record is not replayed: the new timeline starts before it
        n.log.append(("timeline", next(self.rec)))
        n.conf.standby_signal = False
        n.applied = Conf(**vars(n.conf))
        n.streaming = False
        self.promotions.append((self.now, n.id))

    def writable(self, n: Node) -> bool:
        return (n.up() and n.running and not n.pg_hung and n.mode == "primary" and not n.applied.read_only
                and n.pg_fault not in ("no_commit", "wraparound"))

    def sync_connected(self, n: Node) -> Node | None:
        """The node named in n's synchronous_standby_names if it is streaming from n now."""
        if n.applied.sync is None:
            return None
        s = next((x for x in self.nodes if x.peer.pg_url == n.applied.sync), None)
        if (s is not None and s.running and not s.pg_hung and s.mode == "standby" and s.applied.upstream == n.id
                and s.streaming and self.reach(n, s)):
            return s
        return None

    # -- the tick -------------------------------------------------------------------------
    def tick(self, order=None) -> None:
        self.now += 1
        self.clock.now = float(self.now)
        self.zk.tick(self.now)
        # clients commit on every node that takes writes (a stale primary included)
        for n in self.nodes:
            for _ in range(self.commits_per_tick if self.writable(n) else 0):
                r = next(self.rec)
                n.log.append(r)
                n.pending.append((r, len(n.log)))
        # streaming replication (random order: cascades take a few ticks)
        for n in self.rng.sample(self.nodes, len(self.nodes)):
            self._stream(n)
        self._acknowledge()
        self._heartbeats()
        for n in order or self.rng.sample(self.nodes, len(self.nodes)):
            if n.up():
                self._run_sitter(n)

    def _acknowledge(self) -> None:
        ackers = set()
        for n in self.nodes:
            if not (n.up() and n.running and not n.pg_hung and n.mode == "primary" and n.pending):
                continue
            s = self.sync_connected(n)
            keep = []
            for r, pos in n.pending:
                if n.applied.sync is None or (s is not None and len(s.log) >= pos and s.log[pos - 1] == r):
                    missing = self.acked_set - set(n.log)
                    if missing:
                        raise Violation(f"S1/S2: {n.id} acknowledged {r} but lacks acknowledged {sorted(missing)[:5]}")
                    self.acked.append(r)
                    self.acked_set.add(r)
                    ackers.add(n.id)
                else:
                    keep.append((r, pos))
            n.pending = keep
        if len(ackers) > 1:
            raise Violation(f"S1: {sorted(ackers)} acknowledged writes in the same tick")
        self.ackers.extend(ackers)

    def _heartbeats(self) -> None:
        """Standbys heartbeat the upstream their sitter names (HeartbeatSender.upstream_url)."""
        for n in self.nodes:
            sender = n.sitter.hb_sender if n.sitter and n.up() else None
            leaving = sender.take_leaving() if sender else None  # the last word of one that gives way
            for url, why in ([leaving] if leaving else []) + ([(sender.upstream_url, None)] if sender else []):
                u = next((x for x in self.nodes if x.peer.status_url == url), None) if url else None
                if u is not None and u.sitter is not None and self.reach(n, u):
                    said = sender.status()
                    wal = said["wal"] if self.heartbeat_wal else None
                    u.sitter.heartbeat_received(Heartbeat(n.id, n.peer.pg_url, wal, n.streaming,
                                                          self.clock.now, leaving=why, free=said["free"]))

    def _stream(self, n: Node) -> None:
        if not (n.up() and n.running and not n.pg_hung and n.mode == "standby" and n.applied.upstream):
            n.streaming = False
            return
        u = self.node(n.applied.upstream)
        if not (self.reach(n, u) and u.running and not u.pg_hung and u.has_data):
            n.streaming = False
            return
        mine, theirs = n.log, u.log
        if u.id in n.wal_gone_on and len(theirs) > len(mine):
            n.streaming, n.refused_by = False, u.id  # "requested WAL segment ... has already been removed"
            return
        if theirs[:len(mine)] == mine:
            step = self.rng.choice((1, 2, 3, 5))  # replication lag
            if n.pg_fault == "stall" or (n.pg_fault == "slow" and self.now % 3):
                step = 0  # connected and streaming, but its flush position does not move
            elif n.pg_fault == "slow":
                step = 1
            n.log = list(theirs[:len(mine) + step])
            n.streaming = True
            n.streamed, n.torn = len(n.log), 0
        elif mine[:len(theirs)] == theirs and not any(isinstance(r, tuple) for r in mine[len(theirs):]):
            n.streaming = False  # ahead on the same timeline: waits for the upstream to catch up
        else:
            n.streaming, n.diverged = False, True

    # -- drivers and checks ---------------------------------------------------------------
    def run(self, ticks: int) -> None:
        for _ in range(ticks):
            self.tick()

    def healthy(self) -> bool:
        st = self.zk.state()
        if st is None or self.zk.error is not None:
            return False
        live = [n for n in self.nodes if n.up()]
        chain = st.chain()
        if {p.id for p in chain} != {n.id for n in live}:
            return False
        p = self.node(st.primary.id)
        if not (self.writable(p) and st.sync is not None and p.applied.sync == st.sync.pg_url
                and self.sync_connected(p) is not None):
            return False
        for prev, cur in zip(chain, chain[1:]):
            c = self.node(cur.id)
            if not (c.running and c.mode == "standby" and c.applied.upstream == prev.id and c.streaming):
                return False
        return True

    def lost_acknowledged(self) -> list:
        """Acknowledged writes the current primary's WAL lacks (S2: must stay empty): the
        primary of the state znode or, while it cannot be parsed, is missing or was put back
        at an older generation (a test's doing), of the last state a sitter wrote."""
        last = self.zk.writes[-1] if self.zk.writes else None
        try:
            st = self.zk.state()
        except ValueError:
            st = None
        if st is None or (last is not None and st.generation < last.generation):
            st = last
        return [] if st is None else sorted(set(self.acked) - set(self.node(st.primary.id).log), key=str)

    def events(self, node, event: str) -> list[float]:
        """When `node`'s sitter logged `event`."""
        ip = self.node(node).peer.ip
        return [t for t, who, _lv, ev, _kw in self.records if who == ip and ev == event]

    def settle(self, limit: int = SETTLE) -> int:
        for i in range(limit):
            if self.healthy():
                return i
            self.tick()
        if self.healthy():
            return limit
        raise Violation("did not converge to primary + sync + asyncs:\n" + self.describe())

    def describe(self) -> str:
        try:
            st = self.zk.state()
        except ValueError:
            st = None
        lines = [f"tick {self.now} zk_up={self.zk.up} error={self.zk.error}",
                 f"state: {st and st.to_json()}"]
        for n in self.nodes:
            d = n.last_decision
            lines.append(f"  {n.peer.ip} alive={n.alive} hung={n.hung} cut={n.zk_cut},{n.peers_cut} role={n.role} "
                         f"pg={'up' if n.running else 'down'}/{n.mode} log={len(n.log)} streamed={n.streamed} "
                         f"streaming={n.streaming} div={n.diverged} conf={vars(n.conf)} "
                         f"rule={getattr(d, 'rule', None)} reason={getattr(d, 'reason', None)}")
        lines += self.trace[-30:]
        return "\n".join(lines)

    def bootstrap(self) -> Shard:
        """The first tick runs the sitters in index order, so node 0 joins first and leads."""
        self.tick(order=self.nodes)
        self.settle()
        return self


def new_shard(n: int = 3, seed: int = 0, onwm: bool = False) -> Shard:
    return Shard(n, seed, onwm).bootstrap()


def acked_count_grows(sh: Shard, ticks: int = 10) -> bool:
    before = len(sh.acked)
    sh.run(ticks)
    return len(sh.acked) > before
