"""Gray failures on a sandbox node: the node is alive, keeps its ZooKeeper session, and is sick.

Each fault has a matching undo, is bounded, and is undone by `undo_all` (which
`Sandbox.down` calls):

- `pg_hang` / `pg_resume`: SIGSTOP PostgreSQL only (the postmaster and every child; the
  sitter runs on) / SIGCONT.
- `disk_full` / `disk_lift`: `zfs set quota=` just above the dataset's `used` (PostgreSQL's
  next writes fill it) / `quota=none`.
- `storm` / `storm_release`: a helper process opens connections to the node's PostgreSQL as
  the superuser until the server refuses more (so the superuser-reserved slots are taken
  too) and holds them for at most `hold_s`.
- `crash_loop` / `crash_stop`: a helper process SIGKILLs the node's postmaster every
  `every_s` seconds for at most `for_s`.
- `rogue_election_node` / `remove_rogue_election_node`: a persistent election node
  `<ip>:5432:10002:5433-<seq>` whose data lacks most keys (`{"ip": "127.0.0.99"}`).
- `corrupt_state` / `restore_state`: the shard's `state` znode set to bytes that are not
  JSON; the restore writes the saved state back only if the znode still holds the garbage
  (a sitter that wrote a fresh state meanwhile is not overwritten).
- `flaky` / `unflaky`: 30 % of the node's packets to and from ZooKeeper and its peers
  dropped (nftables `numgen random mod 100 < 30`) and, through a helper process, every
  new TCP connection of the node to ZooKeeper, and of each peer to the node's PostgreSQL,
  sent through a proxy that delays each chunk by `delay_ms` (nftables DNAT in the output
  hook; this kernel has no netem). Established connections are closed (`ss -K`) so they
  reconnect through the proxy.

What outlives one command (helper pids, the saved state, the rogue node's path) is kept
in DIR/grayfaults.json, so `manatee-sandbox` sub-commands and `down` find it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from manatee.core.procs import free_port, pid_alive, terminate
from manatee.shard.layout import ShardLayout
from manatee_testbed import cgroups, network
from manatee_testbed.proctable import descendants, postgres_pids, postmaster_pid
from manatee_testbed.sandbox import Sandbox
from manatee_testbed.sandbox_config import ZFS_BIN
from manatee_testbed.sandbox_state import NodeState, SandboxError
from manatee_testbed.hang import stopped as _stopped
from manatee_testbed.shardview import ShardView

FAULTS_FILE = "grayfaults.json"
FLAKY_PREFIX = "manatee_flaky"
DELAY_PREFIX = "manatee_delay"
ROGUE_IP = "127.0.0.99"
BAD_STATE = b"{not json: a malformed state written by manatee-sandbox bad-state"
#: Margin above `used` for the disk-full quota: a few WAL writes fill it.
QUOTA_MARGIN = 4 * 1024 * 1024


# ------------------------------------------------------------------ the record


def _path(sb: Sandbox) -> Path:
    return sb.dir / FAULTS_FILE


def load(sb: Sandbox) -> dict[str, Any]:
    try:
        return json.loads(_path(sb).read_text())
    except (OSError, ValueError):
        return {}


def _save(sb: Sandbox, rec: dict[str, Any]) -> None:
    p = _path(sb)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=2))
    os.replace(tmp, p)


def _update(sb: Sandbox, key: str, value: Any) -> None:
    rec = load(sb)
    if value is None:
        rec.pop(key, None)
    else:
        rec[key] = value
    _save(sb, rec)


def active(sb: Sandbox) -> dict[str, Any]:
    """The faults in force, as recorded (helpers that died on their own are left out)."""
    rec = load(sb)
    return {k: v for k, v in rec.items() if not (isinstance(v, dict) and v.get("pid") and not pid_alive(v["pid"]))}


# ------------------------------------------------------------------ PostgreSQL hung


def pg_pids(node: NodeState) -> list[int]:
    """The node's postmaster and every process under it."""
    roots = postgres_pids(node.data_dir)
    out: list[int] = []
    for p in roots + descendants(roots):
        if p not in out:
            out.append(p)
    return out


def pg_hang(sb: Sandbox, name: str) -> list[int]:
    """SIGSTOP the node's PostgreSQL (postmaster first, then its children) but not its daemons."""
    pids = pg_pids(sb.st.node(name))
    if not pids:
        raise SandboxError(f"node {name}: PostgreSQL is not running, nothing to hang")
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGSTOP)
    # a child forked between the listing and the stop
    for p in pg_pids(sb.st.node(name)):
        if p not in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGSTOP)
            pids.append(p)
    return pids


def pg_resume(sb: Sandbox, name: str) -> list[int]:
    pids = pg_pids(sb.st.node(name))
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGCONT)
    return pids


# ------------------------------------------------------------------ disk full


def _zfs(*args: str) -> str:
    cp = subprocess.run([ZFS_BIN, *args], capture_output=True, text=True, timeout=30)
    if cp.returncode != 0:
        raise SandboxError(f"zfs {' '.join(args)} failed: {cp.stderr.strip()}")
    return cp.stdout.strip()


def dataset_used(node: NodeState) -> int:
    return int(_zfs("get", "-Hpo", "value", "used", node.dataset))


def disk_full(sb: Sandbox, name: str, margin: int = QUOTA_MARGIN) -> int:
    """Set the node's dataset quota to `used` + margin; returns the quota (bytes)."""
    node = sb.st.node(name)
    for attempt in range(5):  # `used` may grow between the read and the set (a standby replaying)
        quota = dataset_used(node) + margin
        try:
            _zfs("set", f"quota={quota}", node.dataset)
            break
        except SandboxError:
            if attempt == 4:
                raise
    _update(sb, f"quota:{name}", {"dataset": node.dataset, "quota": quota})
    return quota


def fill_wal(dsn: str, mbytes: int = 12, timeout_s: float = 60.0) -> str:
    """Write about `mbytes` of table and WAL through `dsn` (the primary), committed locally
    (synchronous_commit=local: a standby that cannot take it does not block the filler), so
    that a quota set by `disk_full` on the primary or a standby fills now rather than after
    minutes of small writes. Returns how it ended (a full disk makes it fail: expected)."""
    import psycopg2

    try:
        conn = psycopg2.connect(dsn, connect_timeout=5, options=f"-c statement_timeout={int(timeout_s * 1000)}")
    except psycopg2.Error as e:
        return f"no connection: {str(e).strip()}"
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("set synchronous_commit = local")
            table = f"gray_fill_{os.getpid()}_{int(time.time() * 1000)}"
            cur.execute(f"create table {table} as select g, repeat(md5(g::text), 32) as pad "
                        f"from generate_series(1, %s) g", (mbytes * 1024 * 1024 // 1100,))
            return f"wrote {mbytes} MB into {table}"
    except psycopg2.Error as e:
        return f"failed: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def disk_lift(sb: Sandbox, name: str) -> bool:
    node = sb.st.node(name)
    had = f"quota:{name}" in load(sb)
    with contextlib.suppress(SandboxError):  # a dataset being rebuilt
        _zfs("set", "quota=none", node.dataset)
    _update(sb, f"quota:{name}", None)
    return had


# ------------------------------------------------------------------ helper processes


def _spawn_helper(sb: Sandbox, key: str, args: list[str]) -> int:
    """Start `python -m manatee_testbed.grayfaults ARGS` detached; recorded under `key`."""
    old = load(sb).get(key)
    if isinstance(old, dict) and old.get("pid") and pid_alive(old["pid"]):
        raise SandboxError(f"{key.replace(':', ' on node ')} is already in force (pid {old['pid']})")
    log = open(sb.dir / f"grayfault-{key.replace(':', '-')}.log", "ab")
    try:
        proc = subprocess.Popen([sys.executable, "-m", "manatee_testbed.grayfaults", *args],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    finally:
        log.close()
    _update(sb, key, {"pid": proc.pid, "args": args, "since": time.time()})
    from manatee_testbed.proctable import _CHILDREN  # reaped with the sandbox's own children

    _CHILDREN.append(proc)
    return proc.pid


def _wait_ready(sb: Sandbox, key: str, pid: int, timeout: float) -> None:
    ready = sb.dir / f"grayfault-{key.replace(':', '-')}.ready"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready.exists():
            ready.unlink(missing_ok=True)
            return
        if not pid_alive(pid):
            break
        time.sleep(0.1)
    log = sb.dir / f"grayfault-{key.replace(':', '-')}.log"
    _stop_helper(sb, key)
    tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
    raise SandboxError(f"{key}: the helper did not get ready within {timeout:.0f}s: {tail}")


def _stop_helper(sb: Sandbox, key: str) -> bool:
    rec = load(sb).get(key)
    if not isinstance(rec, dict):
        return False
    pid = rec.get("pid")
    if pid and pid_alive(pid):
        terminate(pid, timeout=10, group=True)
    _update(sb, key, None)
    return True


def _ready_file(dir: str, key: str) -> Path:
    return Path(dir) / f"grayfault-{key.replace(':', '-')}.ready"


# ------------------------------------------------------------------ connection storm


def storm(sb: Sandbox, name: str, hold_s: float = 300.0, max_conns: int = 1000) -> int:
    """Fill every connection slot of the node's PostgreSQL (superuser slots too); returns
    the helper's pid. The helper reports how many it holds in its log."""
    node = sb.st.node(name)
    dsn = ShardView(sb).dsn(node)
    key = f"storm:{name}"
    pid = _spawn_helper(sb, key, ["storm", "--dir", str(sb.dir), "--key", key, "--dsn", dsn,
                                  "--for", str(hold_s), "--max", str(max_conns)])
    _wait_ready(sb, key, pid, 60)
    return pid


def storm_release(sb: Sandbox, name: str) -> bool:
    return _stop_helper(sb, f"storm:{name}")


def _hold_storm(dir: str, key: str, dsn: str, for_s: float, max_conns: int) -> int:
    import psycopg2

    conns = []
    refused = None
    deadline = time.monotonic() + for_s
    while len(conns) < max_conns:
        try:
            conns.append(psycopg2.connect(dsn, connect_timeout=3))
        except psycopg2.Error as e:
            refused = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
            break
    print(f"holding {len(conns)} connection(s); refused: {refused}", flush=True)
    _ready_file(dir, key).write_text(str(len(conns)))
    while time.monotonic() < deadline:
        time.sleep(0.5)
        # a slot freed by a dead connection (PostgreSQL restarted) is taken again
        if refused is not None and len(conns) < max_conns:
            with contextlib.suppress(psycopg2.Error):
                conns.append(psycopg2.connect(dsn, connect_timeout=1))
    for c in conns:
        with contextlib.suppress(Exception):
            c.close()
    return 0


# ------------------------------------------------------------------ crash loop


def crash_loop(sb: Sandbox, name: str, for_s: float = 60.0, every_s: float = 1.0, sig: str = "KILL") -> int:
    """SIGKILL the node's postmaster every `every_s` for at most `for_s` (a helper).
    sig="STOP": a sticky hang instead: every process of the node's PostgreSQL, each new one
    too, is SIGSTOPped (a restart does not cure it; `crash_stop` then `pg_resume` end it)."""
    if sig not in ("KILL", "STOP"):
        raise ValueError(f"sig must be KILL or STOP, not {sig!r}")
    node = sb.st.node(name)
    key = f"crashloop:{name}"
    return _spawn_helper(sb, key, ["crashloop", "--data-dir", node.data_dir, "--for", str(for_s),
                                   "--every", str(every_s), "--signal", sig])


def crash_stop(sb: Sandbox, name: str) -> bool:
    return _stop_helper(sb, f"crashloop:{name}")


def _run_crash_loop(data_dir: str, for_s: float, every_s: float, sig: str = "KILL") -> int:
    deadline = time.monotonic() + for_s
    kills = 0
    while time.monotonic() < deadline and sig == "STOP":
        roots = postgres_pids(data_dir)
        for p in roots + descendants(roots):
            if not _stopped(p):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGSTOP)
                    kills += 1
        time.sleep(every_s)
    while time.monotonic() < deadline:
        pm = postmaster_pid(data_dir)
        if pm is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pm, signal.SIGKILL)
                kills += 1
                print(f"{time.strftime('%T')} killed postmaster {pm}", flush=True)
        time.sleep(every_s)
    print(f"crash loop over: {kills} kill(s)", flush=True)
    return 0


# ------------------------------------------------------------------ malformed ZooKeeper data


def _zk(sb: Sandbox):
    from kazoo.client import KazooClient

    auth = [("digest", sb.st.zk_auth)] if getattr(sb.st, "zk_auth", "") else None  # a --zk-auth sandbox
    zk = KazooClient(hosts=sb.st.zk_connect, timeout=5, auth_data=auth)
    zk.start(timeout=15)
    return zk


def rogue_election_node(sb: Sandbox, ip: str = ROGUE_IP) -> str:
    """A persistent sequential election node with data that lacks every key but `ip`."""
    zk = _zk(sb)
    try:
        path = zk.create(ShardLayout(sb.st.shard_path).election_node(f"{ip}:5432:10002:5433-"),
                         json.dumps({"ip": ip}).encode(), sequence=True)
    finally:
        zk.stop()
        zk.close()
    rec = load(sb).get("rogue", [])
    _update(sb, "rogue", [*rec, path])
    return path


def remove_rogue_election_node(sb: Sandbox) -> list[str]:
    paths = load(sb).get("rogue", [])
    if paths:
        zk = _zk(sb)
        try:
            for p in paths:
                with contextlib.suppress(Exception):
                    zk.delete(p)
        finally:
            zk.stop()
            zk.close()
    _update(sb, "rogue", None)
    return paths


def corrupt_state(sb: Sandbox) -> dict[str, Any]:
    """Overwrite the shard's state znode with bytes that are not JSON (the good state is saved)."""
    if "bad_state" in load(sb):
        raise SandboxError("the state znode is already corrupted (bad-state-undo first)")
    zk = _zk(sb)
    try:
        path = ShardLayout(sb.st.shard_path).state
        data, _stat = zk.get(path)
        new = zk.set(path, BAD_STATE)
    finally:
        zk.stop()
        zk.close()
    rec = {"path": path, "saved": data.decode(), "version": new.version}
    _update(sb, "bad_state", rec)
    return rec


def restore_state(sb: Sandbox) -> str:
    """Put the saved state back if the znode still holds our garbage. Returns what was done."""
    rec = load(sb).get("bad_state")
    if not rec:
        return "nothing to restore"
    zk = _zk(sb)
    try:
        data, stat = zk.get(rec["path"])
        if data == BAD_STATE:
            zk.set(rec["path"], rec["saved"].encode(), version=stat.version)
            done = "restored the saved state"
        else:
            done = "left alone: a sitter wrote a new state meanwhile"
    finally:
        zk.stop()
        zk.close()
    _update(sb, "bad_state", None)
    return done


# ------------------------------------------------------------------ flaky network


def _addr_set(addrs: list[str]) -> str:
    return addrs[0] if len(addrs) == 1 else "{ " + ", ".join(addrs) + " }"


def flaky_rules(ip: str, peers: list[str], loss_pct: int, *, cgroup: str | None,
                peer_cgroups: list[str], table: str) -> str:
    """nft script: drop `loss_pct` % of the packets between `ip` and its peers (random)."""
    if not 0 < loss_pct < 100:
        raise ValueError(f"loss_pct must be between 1 and 99, not {loss_pct}")
    others = _addr_set(sorted(set(peers) - {ip}))
    drop = f"numgen random mod 100 < {loss_pct} drop"
    rules = [f"ip saddr {ip} ip daddr {others} {drop}", f"ip saddr {others} ip daddr {ip} {drop}"]
    if cgroup:
        rules.append(f'socket cgroupv2 level {cgroups.level_of(cgroup)} "{cgroup.strip("/")}" '
                     f"ip daddr {others} {drop}")
    for pc in peer_cgroups:
        rules.append(f'socket cgroupv2 level {cgroups.level_of(pc)} "{pc.strip("/")}" ip daddr {ip} {drop}')
    body = "\n".join(f"    {r}" for r in rules)
    return (f"add table inet {table}\ndelete table inet {table}\n"
            f"table inet {table} {{\n  chain out {{\n    type filter hook output priority -10; policy accept;\n"
            f"{body}\n  }}\n}}\n")


def delay_rules(table: str, redirects: list[tuple[str, str, int, str, int]]) -> str:
    """nft script: DNAT new connections (cgroup-or-source match, daddr, dport) to a proxy.
    redirects: (match, daddr, dport, proxy_ip, proxy_port); match is an nft expression."""
    rules = [f"{m} ip daddr {d} tcp dport {p} dnat ip to {pi}:{pp}" for m, d, p, pi, pp in redirects]
    body = "\n".join(f"    {r}" for r in rules)
    return (f"add table ip {table}\ndelete table ip {table}\n"
            f"table ip {table} {{\n  chain out {{\n    type nat hook output priority -100; policy accept;\n"
            f"{body}\n  }}\n}}\n")


def _cg_match(cg: str) -> str:
    return f'socket cgroupv2 level {cgroups.level_of(cg)} "{cg.strip("/")}"'


def _kill_sockets(conns: list[tuple[list[int], str, int]]) -> int:
    """Close the established TCP connections that processes `pids` hold to an address and
    port, so that they reconnect (through the delaying proxy): (pids, destination, port).
    Best effort (`ss -K` needs the kernel's INET_DIAG_DESTROY). Returns how many."""
    killed = 0
    for pids, dst, port in conns:
        want = set(pids)
        try:
            out = subprocess.run(["ss", "-tnpH", "state", "established", "dst", f"{dst}:{port}"],
                                 capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        for line in out.splitlines():
            f = line.split()
            if len(f) < 5 or not any(f"pid={p}," in line for p in want):
                continue
            local = f[2]
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(["ss", "-K", "-tnH", "src", local, "dst", f"{dst}:{port}"],
                               capture_output=True, timeout=10)
                killed += 1
    return killed


def flaky(sb: Sandbox, name: str, loss_pct: int = 30, delay_ms: int = 200, for_s: float = 300.0) -> dict:
    """Packet loss between the node and ZooKeeper/its peers, plus `delay_ms` on the node's
    new connections to ZooKeeper and its peers' new connections to its PostgreSQL."""
    st = sb.st
    node = st.node(name)
    peers = sb.peers_of(node)
    others = [n for n in st.nodes if n.name != name]
    key = f"flaky:{name}"
    info: dict[str, Any] = {"lossPct": loss_pct, "delayMs": delay_ms}
    if delay_ms > 0:
        zk_hostports = [hp.rsplit(":", 1) for hp in st.zk_connect.split(",")]
        routes = []  # (listen_port, target_ip, target_port, source_ip)
        redirects = []
        for host, port in zk_hostports:
            lp = free_port("127.0.0.1")
            routes.append((lp, host, int(port), node.ip))
            if node.cgroup:
                redirects.append((_cg_match(node.cgroup), host, int(port), "127.0.0.1", lp))
        for o in others:
            lp = free_port("127.0.0.1")
            routes.append((lp, node.ip, node.pg_port, o.ip))
            if o.cgroup:
                redirects.append((_cg_match(o.cgroup), node.ip, node.pg_port, "127.0.0.1", lp))
        spec = ",".join(f"{lp}={ip}:{port}@{src}" for lp, ip, port, src in routes)
        pid = _spawn_helper(sb, key, ["delay", "--dir", str(sb.dir), "--key", key, "--routes", spec,
                                      "--delay-ms", str(delay_ms), "--for", str(for_s)])
        _wait_ready(sb, key, pid, 30)
        try:
            network._nft(["-f", "-"], delay_rules(network.table_name(node.ip, DELAY_PREFIX), redirects),
                         cgroup_ns=True)
        except network.NftError as e:
            _stop_helper(sb, key)
            raise SandboxError(f"latency for node {name} failed: {e}") from None
        info["proxyPid"] = pid
    try:
        network._nft(["-f", "-"], flaky_rules(node.ip, peers, loss_pct, cgroup=node.cgroup,
                                              peer_cgroups=[o.cgroup for o in others if o.cgroup],
                                              table=network.table_name(node.ip, FLAKY_PREFIX)),
                     cgroup_ns=True)
    except network.NftError as e:
        unflaky(sb, name)
        raise SandboxError(f"packet loss for node {name} failed: {e}") from None
    if delay_ms > 0:
        # established connections go on unproxied: close them, they reconnect through the proxy
        mine = sb.node_pids(node)
        theirs = [p for o in others for p in sb.node_pids(o)]
        info["reconnected"] = _kill_sockets([(mine, h, int(p)) for h, p in zk_hostports]
                                            + [(theirs, node.ip, node.pg_port)])
    _update(sb, f"net:{name}", info)
    return info


def unflaky(sb: Sandbox, name: str) -> bool:
    node = sb.st.node(name)
    had = False
    with contextlib.suppress(network.NftError, OSError):
        had = network.heal(node.ip, FLAKY_PREFIX) or had
    with contextlib.suppress(network.NftError, OSError):
        name_t = network.table_name(node.ip, DELAY_PREFIX)
        out = network._nft(["list", "tables", "ip"])
        if f"table ip {name_t}" in out:
            network._nft(["delete", "table", "ip", name_t])
            had = True
    had = _stop_helper(sb, f"flaky:{name}") or had
    _update(sb, f"net:{name}", None)
    return had


class DelayProxy:
    """Forwards each route's connections after `delay` seconds per chunk, keeping order and
    pipelining (a chunk read at t is written at t + delay); the upstream connection leaves
    from the route's source address (pg_hba and the partition rules see the real client)."""

    def __init__(self, routes: list[tuple[int, str, int, str]], delay_s: float):
        self.routes = routes
        self.delay = delay_s

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        q: asyncio.Queue = asyncio.Queue()

        async def writer() -> None:
            while True:
                t, data = await q.get()
                if data is None:
                    break
                wait = t + self.delay - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                dst.write(data)
                await dst.drain()

        wt = asyncio.ensure_future(writer())
        try:
            while True:
                data = await src.read(65536)
                if not data:
                    break
                q.put_nowait((time.monotonic(), data))
            q.put_nowait((time.monotonic(), None))
            await wt
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            wt.cancel()
            with contextlib.suppress(Exception):
                dst.close()

    def _handler(self, target: str, port: int, source: str):
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                ur, uw = await asyncio.open_connection(target, port, local_addr=(source, 0))
            except OSError:
                writer.close()
                return
            await asyncio.gather(self._pump(reader, uw), self._pump(ur, writer), return_exceptions=True)

        return handle

    async def serve(self, for_s: float, ready: Path | None) -> None:
        servers = [await asyncio.start_server(self._handler(t, p, s), "127.0.0.1", lp)
                   for lp, t, p, s in self.routes]
        if ready is not None:
            ready.write_text("ok")
        await asyncio.sleep(for_s)
        for s in servers:
            s.close()


def _parse_routes(spec: str) -> list[tuple[int, str, int, str]]:
    out = []
    for part in spec.split(","):
        lp, rest = part.split("=", 1)
        target, src = rest.split("@", 1)
        host, port = target.rsplit(":", 1)
        out.append((int(lp), host, int(port), src))
    return out


# ------------------------------------------------------------------ all of it


def undo_all(sb: Sandbox, zk: bool = True) -> list[str]:
    """Undo every gray fault recorded for the sandbox (for `down` and the tests' heal);
    zk=False leaves ZooKeeper's data alone (`down` removes it anyway). Returns what was undone."""
    done: list[str] = []
    if not sb.exists():
        return done
    rec = load(sb)
    for n in sb.st.nodes:
        with contextlib.suppress(Exception):
            if pg_pids(n):
                pg_resume(sb, n.name)
        if f"quota:{n.name}" in rec:
            disk_lift(sb, n.name)
            done.append(f"quota of {n.name} lifted")
        with contextlib.suppress(Exception):
            if unflaky(sb, n.name):
                done.append(f"network of {n.name} steady")
        if storm_release(sb, n.name):
            done.append(f"connections to {n.name} released")
        if crash_stop(sb, n.name):
            done.append(f"crash loop of {n.name} stopped")
    if not zk:
        return done
    if rec.get("rogue"):
        with contextlib.suppress(Exception):
            done.append(f"removed {len(remove_rogue_election_node(sb))} rogue election node(s)")
    if rec.get("bad_state"):
        with contextlib.suppress(Exception):
            done.append(f"state znode: {restore_state(sb)}")
    return done


def main(argv: list[str] | None = None) -> int:
    """The helpers' entry point (run by `_spawn_helper`, not by people)."""
    ap = argparse.ArgumentParser(prog="python -m manatee_testbed.grayfaults")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("storm")
    s.add_argument("--dir", required=True)
    s.add_argument("--key", required=True)
    s.add_argument("--dsn", required=True)
    s.add_argument("--for", dest="for_s", type=float, required=True)
    s.add_argument("--max", type=int, default=1000)
    c = sub.add_parser("crashloop")
    c.add_argument("--data-dir", required=True)
    c.add_argument("--for", dest="for_s", type=float, required=True)
    c.add_argument("--every", type=float, default=1.0)
    c.add_argument("--signal", choices=["KILL", "STOP"], default="KILL")
    d = sub.add_parser("delay")
    d.add_argument("--dir", required=True)
    d.add_argument("--key", required=True)
    d.add_argument("--routes", required=True)
    d.add_argument("--delay-ms", type=int, required=True)
    d.add_argument("--for", dest="for_s", type=float, required=True)
    a = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if a.cmd == "storm":
        return _hold_storm(a.dir, a.key, a.dsn, a.for_s, a.max)
    if a.cmd == "crashloop":
        return _run_crash_loop(a.data_dir, a.for_s, a.every, a.signal)
    proxy = DelayProxy(_parse_routes(a.routes), a.delay_ms / 1000)
    asyncio.run(proxy.serve(a.for_s, _ready_file(a.dir, a.key)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
