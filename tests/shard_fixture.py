"""A real shard for fault tests: a manatee Sandbox plus what the tests ask of it.

Why a wrapper: every fault test needs the same few things around the Sandbox's public
API — a writable primary's DSN for the RecordingWriter (asked of the sitters' /primary
endpoints, so the writer follows failovers as a client would), the roles the sitters
report, the topology and history from ZooKeeper, bounded waits that say what they were
waiting for, and the data checks of ACCEPTANCE S1–S4/S7 in one call.

Clients connect over TCP as the superuser with the admin password (the sandbox's
adminAuth admits it from 127.0.0.0/8; the replication password opens no database), and over TCP the writer's `node` column names the node
that executed each insert (over the unix socket every node would be "local:5432",
and S1 could not tell writers apart).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from manatee.core.procs import pid_alive
from manatee_testbed.checks import (
    check_data,
    history_one_primary_per_generation,
    promoted_from,
    summarise,
)
from manatee_testbed.proctable import postmaster_pid
from manatee_testbed.sandbox_nodes import DAEMONS
from manatee_testbed.sandbox import Sandbox
from manatee_testbed.sandbox_state import NodeState, SandboxError
from manatee_testbed.shardview import ShardView
from manatee_testbed.writer import RecordingWriter
from manatee_testbed.zookeeper import ZK_SERVER_SH
from tests.shard_pool import pooled_shard

#: pytestmark for modules that bring up a sandbox shard: slow, and only where it can run.
NEEDS_SHARD = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("nft") is None or not ZK_SERVER_SH.exists()
                       or not os.path.exists("/usr/lib/postgresql/15/bin/postgres"),
                       reason="needs root, nftables, ZooKeeper and PostgreSQL 15"),
]


def say(msg: str) -> None:
    """A timestamped progress line (shown with pytest -s; measured figures go here)."""
    print(f"[{time.strftime('%T')}] {msg}", flush=True)


def names(top: dict) -> tuple[str, str, str]:
    """(primary, sync, last async) of a Shard.topology(); fails unless all three exist."""
    assert top["primary"] and top["sync"] and len(top["async"]) >= 1, f"not primary+sync+async: {top}"
    return top["primary"], top["sync"], top["async"][-1]


class WaitTimeout(AssertionError):
    pass


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.25,
             detail: Callable[[], str] | None = None) -> Any:
    """Poll `pred` until it returns something truthy (returned); AssertionError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            extra = f"\n{detail()}" if detail else ""
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(interval)


class Shard(ShardView):
    """A Sandbox shard on a random 127.x.y.0/24 (so parallel runs do not collide), with
    the client's view of it (ShardView) and what the fault tests do to it."""

    def __init__(self, base_dir: Path, session_timeout_ms: int = 5000, nodes: int = 3, zk_servers: int = 1,
                 secure: bool = False, zk_auth: bool | None = None):
        self.session_timeout_ms = session_timeout_ms
        self.secure = secure  # up --tls --zk-auth: HTTPS with client certificates, ZooKeeper ACLs
        self.zk_auth = secure if zk_auth is None else zk_auth  # up --zk-auth alone
        self.n = nodes
        self.zk_servers = zk_servers  # 3: a ZooKeeper ensemble instead of one standalone server
        self.base_dir = Path(base_dir)
        self.user = ""  # the test module using it now (SharedShard.name)
        self._fresh()

    def _fresh(self) -> None:
        self.dir = self.base_dir / f"sb-{uuid.uuid4().hex[:6]}"
        self.shard = f"t{uuid.uuid4().hex[:8]}"
        self.first_ip = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}.11"
        self.lines: list[str] = []
        self.sb = Sandbox(self.dir, out=self._out)
        self.passfile = self.dir / "test.pgpass"
        self._zk = None
        self.logs_from: dict[str, int] = {}  # log path -> where the module using the shard began
        self.pristine: list = []  # makeup() when it came up

    # ------------------------------------------------------------------ lifecycle
    def _out(self, line: str) -> None:
        self.lines.append(f"{time.strftime('%T')} {line}")
        print(line)

    @property
    def session_s(self) -> float:
        return self.session_timeout_ms / 1000

    def up(self, timeout: float = 300) -> "Shard":
        self.sb.up(nodes=self.n, session_timeout_ms=self.session_timeout_ms, shard=self.shard,
                   first_ip=self.first_ip, timeout=timeout, zk_servers=self.zk_servers,
                   tls=self.secure, zk_auth=self.zk_auth)
        self.pristine = self.makeup()
        return self

    def makeup(self) -> list:
        """What a test module may change for good: the nodes and their daemons' configs (an
        empty postgresMgrCfg.parameters is none). A shard whose makeup is not what it came up
        with is not handed to another module (tests/shard_pool.py)."""
        out = []
        for n in self.nodes:
            for daemon in DAEMONS:
                try:
                    cfg = json.loads(n.config_path(daemon).read_text())
                except (OSError, ValueError):
                    cfg = None
                if isinstance(cfg, dict) and (cfg.get("postgresMgrCfg") or {}).get("parameters") == {}:
                    del cfg["postgresMgrCfg"]["parameters"]
                out.append((n.name, daemon, cfg))
        return out

    def handed_over(self) -> None:
        """Another module takes this running shard: its own ZooKeeper client, and its sitter
        logs read from here on (so its log assertions see only its own lines)."""
        self.drop_zk_client()
        self.logs_from = {str(n.log_path("sitter")): _size(n.log_path("sitter")) for n in self.nodes}

    def reset(self, timeout: float = 300) -> "Shard":
        """A broken shared shard is replaced by a new one (so one failed test does not
        fail every later one); what the old one left is reported, not hidden."""
        problems = self.down()
        if problems:
            raise AssertionError("the broken shard could not be removed: " + "; ".join(problems))
        self._fresh()
        return self.up(timeout)

    def drop_zk_client(self) -> None:
        """Throw the test's own ZooKeeper client away (after a ZooKeeper fault, or at the
        end); the next use of `zk` connects a new one."""
        if self._zk is not None:
            with contextlib.suppress(Exception):
                self._zk.stop()
                self._zk.close()
            self._zk = None

    def keep_logs(self, dest: Path) -> None:
        """Copy the nodes' daemon logs out of the sandbox (which `down` removes)."""
        for n in self.nodes:
            for log in Path(n.dir).glob("*.log"):
                with contextlib.suppress(OSError):
                    (dest / n.name).mkdir(parents=True, exist_ok=True)
                    shutil.copy(log, dest / n.name / log.name)

    def down(self) -> list[str]:
        self.drop_zk_client()
        if not self.sb.exists():
            return []
        keep = os.environ.get("MANATEE_KEEP_LOGS")  # the logs survive `down` in $MANATEE_KEEP_LOGS/<sandbox>
        if keep:
            self.keep_logs(Path(keep) / self.dir.name)
        problems = self.sb.down()
        if problems:
            self._out(f"down of {self.dir} left: {problems}")
        return problems

    # ------------------------------------------------------------------ nodes
    def node(self, name: str) -> NodeState:
        return self.sb.st.node(name)

    def by_peer(self, peer: dict | None) -> NodeState | None:
        return None if not peer else self.by_ip(peer["ip"])

    def find_primary(self) -> str | None:
        """For the writer: the DSN of the one node whose sitter says it is the writable
        primary (None if none or — which S1 forbids — more than one)."""
        ok = [n for n in self.nodes if self.writable(n)]
        if len(ok) > 1:
            self._out(f"S1?: several nodes answer /primary 200: {[n.name for n in ok]}")
        return self.dsn(ok[0]) if len(ok) == 1 else None

    def writer(self, name: str, **kw: Any) -> RecordingWriter:
        kw.setdefault("table", f"w_{name}_{uuid.uuid4().hex[:6]}")
        kw.setdefault("interval", 0.02)
        kw.setdefault("commit_timeout", 8.0)
        kw.setdefault("connect_timeout", 2.0)
        return RecordingWriter(self.find_primary, name=name, **kw)

    def postmaster(self, node: NodeState) -> int | None:
        """The postmaster pid from DATA/postmaster.pid (first line), else found in /proc."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((Path(node.data_dir) / "postmaster.pid").read_text().splitlines()[0])
            if pid_alive(pid) and Path(f"/proc/{pid}/exe").resolve().name == "postgres":
                return pid
        return postmaster_pid(node.data_dir)

    # ------------------------------------------------------------------ ZooKeeper
    @property
    def zk(self):
        if self._zk is None:
            from manatee.core.zksession import resuming_kazoo

            zk = resuming_kazoo(self.sb.st.zk_connect, 5)
            zk.start(timeout=15)
            self._zk = zk
        return self._zk

    def zk_state(self) -> dict | None:
        """/manatee/<shard>/state (the authoritative topology)."""
        try:
            data, _ = self.zk.get(self.sb.st.layout.state)
        except Exception:  # noqa: BLE001 - absent, or ZK reconnecting: "not known now"
            return None
        return json.loads(data) if data else None

    def leaders_after(self, gen: int) -> list[dict]:
        """AssumeLeader records of generations after `gen` (a new primary was assumed)."""
        return [r for r in self.history()
                if r["action"] == "AssumeLeader" and isinstance(r.get("generation"), int) and r["generation"] > gen]

    def leader_ips(self) -> list[str]:
        """ips of the AssumeLeader records in order: the shard's primaries by tenure."""
        return [r["ip"] for r in self.history() if r["action"] == "AssumeLeader"]

    # ------------------------------------------------------------------ waits
    def wait(self, pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
        return wait_for(pred, timeout, what, interval, detail=self.describe)

    def rejoined_at_tail(self, name: str) -> bool:
        """`name` is the last async of the ZK state, says async in /state, and streams."""
        top = self.topology()
        if not top["async"] or top["async"][-1] != name:
            return False
        s = self.state_of(self.node(name))
        return bool(s and s.get("role") == "async" and self.streaming(self.node(name)))

    def wait_healthy(self, timeout: float = 120) -> None:
        """primary + sync + asyncs, by the sitters and ZK, and a write commits."""
        try:
            self.sb.wait_healthy(timeout)
        except SandboxError as e:
            raise AssertionError(f"shard not healthy: {e}") from None
        self.wait(lambda: all(self.streaming(n) for n in self.standbys()), 60,
                  "every standby streaming (/replica 200)")

    def standbys(self) -> list[NodeState]:
        t = self.topology()
        return [self.node(x) for x in [t["sync"], *t["async"]] if x]

    def ensure_healthy(self, timeout: float = 150) -> None:
        """Start any node that is down, then wait for a healthy shard (tests restore it)."""
        for n in self.nodes:
            if not n.pids or not all(pid_alive(p) for p in n.pids.values()):
                self.sb.start(n.name)
        self.wait_healthy(timeout)

    # ------------------------------------------------------------------ checks
    def check(self, writer: RecordingWriter, prev: dict | None = None, *,
              expect_leader: str | None = None, since_gen: int | None = None) -> list[str]:
        """S1/S2/S4/S5 on the data (check_data on the current primary and every running
        standby), S3 (promoted_from the previous ZK state `prev`), S7 (history: one primary
        per generation; an AssumeLeader for the current primary in the current generation).
        Returns the problems (empty: all good)."""
        st = self.zk_state()
        assert st, "no shard state in ZooKeeper"
        primary = self.by_peer(st["primary"])
        standbys = {}
        for p in [st.get("sync"), *(st.get("async") or [])]:
            if p:
                n = self.by_peer(p)
                if self.state_of(n) and self.sb.node_pids(n):
                    standbys[n.name] = self.dsn(n)
        # give standbys a moment to replay what the primary committed last
        time.sleep(1.0)
        leaders = self.leader_ips()
        problems = check_data(writer.acked, (primary.name, self.dsn(primary)), standbys,
                              table=writer.table, warned=writer.warned, primaries=leaders)
        if prev is not None:
            problems += promoted_from(prev, st["primary"])
        hist = self.history()
        problems += history_one_primary_per_generation(hist)
        if expect_leader is not None:
            gen = st["generation"]
            ok = [r for r in hist if r["action"] == "AssumeLeader" and r["ip"] == self.node(expect_leader).ip
                  and (since_gen is None or (isinstance(r.get("generation"), int) and r["generation"] > since_gen))]
            if not ok:
                problems.append(f"S7: no AssumeLeader record for {expect_leader} ({self.node(expect_leader).ip}) "
                                f"after generation {since_gen} (state generation {gen}); history: "
                                f"{[(r['ip'], r['action'], r.get('generation')) for r in hist]}")
        return problems

    def assert_checks(self, writer: RecordingWriter, prev: dict | None = None, **kw: Any) -> None:
        problems = self.check(writer, prev, **kw)
        assert not problems, summarise(problems) + f"\nwriter: {writer.stats()}\n{self.describe()}"

    # ------------------------------------------------------------------ F14
    def add_node(self) -> NodeState:
        """A further node (next letter, next address), created and started by the Sandbox."""
        return self.sb.add_node()

    def sitter_log(self, node: NodeState) -> str:
        """The node's sitter log since this module took the shard (all of it on a new shard)."""
        path = node.log_path("sitter")
        return log_since(path, self.logs_from.get(str(path), 0))


def log_since(path: Path, start: int) -> str:
    """What a log file holds from byte `start` (all of it if it is shorter now: rotated); '' if gone."""
    try:
        with open(path, "rb") as f:
            f.seek(start if start <= os.fstat(f.fileno()).st_size else 0)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def shared_shard(tmp_path_factory, name: str, session_timeout_ms: int = 5000,
                 before_down: Callable[[Shard], None] | None = None, zk_servers: int = 1,
                 secure: bool = False, zk_auth: bool | None = None) -> Iterator[Shard]:
    """Body of a module-scoped fixture: one shard for the module's tests, removed at the
    end (`before_down` first, e.g. to undo a fault or keep logs); what `down` could not
    remove fails the module."""
    sh = Shard(tmp_path_factory.mktemp(name), session_timeout_ms=session_timeout_ms, zk_servers=zk_servers,
               secure=secure, zk_auth=zk_auth)
    try:
        sh.up()
        yield sh
    finally:
        if before_down is not None and sh.sb.exists():
            with contextlib.suppress(Exception):
                before_down(sh)
        problems = sh.down()
    assert not problems, f"down left things behind: {problems}"


@dataclass(frozen=True)
class SharedShard:
    """A real-shard test module's shard, declared once as `SHARD = SharedShard(...)`; the
    `shared` (module-scoped: up, then down) and `shard` (per test: healthy) fixtures below
    build it. `undo` clears what a failed test may leave behind (before every test and
    before `down`); `before_down` runs after it at the end (e.g. to keep the logs).
    heal_each_test=False: the tests share the shard as each left it (no undo, no health
    check between them; the module's tests are one story) — and the module keeps its own.
    With heal_each_test=True, modules whose specs have the same `pool_key` run one after the
    other on one shard (tests/shard_pool.py); retire=True: the module changes the shard for
    good (adds a node, changes configs), so it runs last of them and the shard goes down after it."""

    name: str
    session_timeout_ms: int = 5000
    undo: Callable[[Shard], None] | None = None
    before_down: Callable[[Shard], None] | None = None
    zk_servers: int = 1
    secure: bool = False
    zk_auth: bool | None = None
    heal_each_test: bool = True
    retire: bool = False

    def pool_key(self) -> tuple | None:
        """What a shard shared with other modules must agree on (None: the module keeps its own)."""
        if not self.heal_each_test:
            return None
        return (self.session_timeout_ms, self.zk_servers, self.secure, self.secure if self.zk_auth is None
                else self.zk_auth)

    def finish(self, sh: Shard) -> None:
        for step in (self.undo, self.before_down):
            if step is not None:
                step(sh)


@pytest.fixture(scope="module")
def shared(request, zfs_fuse, tmp_path_factory, shard_pool) -> Iterator[Shard]:
    """The module's shard as its `SHARD` says, for all of the module's tests (taken from and
    handed back to the pool of shards shared between modules, see tests/shard_pool.py)."""
    spec: SharedShard = request.module.SHARD
    key = spec.pool_key()
    if key is not None:
        def make() -> Shard:
            return Shard(tmp_path_factory.mktemp(spec.name), session_timeout_ms=spec.session_timeout_ms,
                         zk_servers=spec.zk_servers, secure=spec.secure, zk_auth=spec.zk_auth)

        yield from pooled_shard(shard_pool, key, make, spec.name, spec.finish, spec.retire)
        return
    yield from shared_shard(tmp_path_factory, spec.name, spec.session_timeout_ms, before_down=spec.finish,
                            zk_servers=spec.zk_servers, secure=spec.secure, zk_auth=spec.zk_auth)


@pytest.fixture
def shard(request, shared: Shard) -> Shard:
    """The module's shared shard, healthy (primary + sync + async) at the start of the test."""
    spec: SharedShard = request.module.SHARD
    return healthy(shared, prepare=spec.undo) if spec.heal_each_test else shared


def zk_back(sh: Shard) -> None:
    """A test that failed mid-outage leaves ZooKeeper (or some of its servers) stopped:
    `down` and the next test want it all running."""
    if sh.sb.exists() and not sh.sb.zk_running():
        sh.sb.zk_start()


def healthy(shared: Shard, prepare: Callable[[Shard], None] | None = None) -> Shard:
    """Body of a per-test fixture: the shared shard, healthy (primary + sync + async) at
    the start of the test (`prepare` first undoes what an earlier failed test left); a
    shard that cannot be made healthy is replaced by a new one."""
    try:
        if prepare is not None:
            prepare(shared)
        shared.ensure_healthy()
    except AssertionError as e:
        say(f"shared shard not healthy, replacing it: {e}")
        shared.reset()
    return shared


def acks_on(writer: RecordingWriter, node: NodeState, after: float) -> list[float]:
    """Finish times of acked commits that went to `node` and finished after `after`."""
    return sorted(a.finished for a in writer.attempts()
                  if a.outcome == "acked" and f"host={node.ip} " in a.dsn and a.finished >= after)


def first_ack_on(writer: RecordingWriter, node: NodeState, after: float) -> float | None:
    t = acks_on(writer, node, after)
    return t[0] if t else None


def longest_ack_gap(writer: RecordingWriter, t_from: float, t_to: float) -> float:
    """The longest time between two acknowledged commits from t_from - 1 s to t_to (the
    outage a client saw); the whole span if there were fewer than two."""
    ok = sorted(a.finished for a in writer.attempts() if a.outcome == "acked" and t_from - 1 <= a.finished <= t_to)
    return max((b - a for a, b in zip(ok, ok[1:])), default=t_to - t_from)


def assert_roles_held(what: str, seen_roles: list[dict], writable: set[str], p: str, s: str, a: str) -> None:
    """Through a ZooKeeper fault, only the primary answered /primary 200 and no role changed."""
    assert writable == {p}, f"{what}: /primary 200 seen on {sorted(writable)} (want only {p})"
    bad = [r for r in seen_roles if r[p] != "primary" or r[s] != "sync" or r[a] != "async"]
    assert not bad, f"{what}: roles changed: {bad[:3]}"


def assert_topology_unchanged(sh: Shard, what: str, gen0: int, p: str, s: str, a: str, t_back: float) -> None:
    """After ZooKeeper is whole again: every sitter reconnected with its session, no late
    expiry, the same topology and generation."""
    sh.wait(lambda: all((st := sh.state_of(n)) and st.get("zk") == "connected" for n in sh.nodes),
            30, "every sitter reconnected to ZooKeeper")
    say(f"{what}: all sitters connected {time.monotonic() - t_back:.1f}s after ZooKeeper was whole again")
    time.sleep(sh.session_s + 2)  # a late expiry would show up now
    top = sh.topology()
    assert (top["generation"], top["primary"], top["sync"], top["async"]) == (gen0, p, s, [a]), \
        f"{what}: topology changed: {top} (was generation {gen0}: {p}, {s}, [{a}])\n{sh.describe()}"
    assert all(len(st.get("election") or []) == 3 for st in map(sh.state_of, sh.nodes) if st), \
        f"{what}: a node left the election (its session expired)"


def wall_to_mono(wall_ms: int | str) -> float:
    """A wall-clock ms timestamp (history records) on the monotonic clock (the writer's)."""
    return time.monotonic() - (time.time() - int(wall_ms) / 1000)


__all__ = ["Shard", "wait_for", "WaitTimeout", "acks_on", "first_ack_on", "wall_to_mono", "NEEDS_SHARD",
           "say", "names", "shared_shard", "healthy", "zk_back", "longest_ack_gap", "assert_roles_held",
           "assert_topology_unchanged"]
