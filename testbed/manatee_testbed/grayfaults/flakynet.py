"""A flaky network for one node: a share of its packets to and from ZooKeeper and its peers
dropped (nftables `numgen random mod 100 < N`; this kernel has no netem) and, through a helper
process (`DelayProxy`), every new TCP connection of the node to ZooKeeper, and of each peer to
the node's PostgreSQL, sent through a proxy that delays each chunk (nftables DNAT in the
output hook). Established connections are closed (`ss -K`) so they reconnect through it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

from manatee.core.pgconfig import WALRECEIVER_TCP_USER_TIMEOUT_MS
from manatee.core.procs import free_port
from manatee_testbed import cgroups, network
from manatee_testbed.grayfaults.record import spawn_helper, stop_helper, update, wait_ready
from manatee_testbed.sandbox import Sandbox
from manatee_testbed.sandbox_state import SandboxError

FLAKY_PREFIX = "manatee_flaky"
DELAY_PREFIX = "manatee_delay"


def flaky_rules(ip: str, peers: list[str], loss_pct: int, *, cgroup: str | None,
                peer_cgroups: list[str], table_prefix: str = FLAKY_PREFIX) -> str:
    """nft script: drop `loss_pct` % of the packets between `ip` and its peers (random) —
    a partition's rules (`network.rules_script`) with a random share as the verdict."""
    if not 0 < loss_pct < 100:
        raise ValueError(f"loss_pct must be between 1 and 99, not {loss_pct}")
    return network.rules_script(ip, peers, table_prefix, cgroup=cgroup, peer_cgroups=peer_cgroups,
                                verdict=f"numgen random mod 100 < {loss_pct} drop")


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
        pid = spawn_helper(sb, key, ["delay", "--dir", str(sb.dir), "--key", key, "--routes", spec,
                                      "--delay-ms", str(delay_ms), "--for", str(for_s)])
        wait_ready(sb, key, pid, 30)
        try:
            network._nft(["-f", "-"], delay_rules(network.table_name(node.ip, DELAY_PREFIX), redirects),
                         cgroup_ns=True)
        except network.NftError as e:
            stop_helper(sb, key)
            raise SandboxError(f"latency for node {name} failed: {e}") from None
        info["proxyPid"] = pid
    try:
        network._nft(["-f", "-"], flaky_rules(node.ip, peers, loss_pct, cgroup=node.cgroup,
                                              peer_cgroups=[o.cgroup for o in others if o.cgroup]),
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
    update(sb, f"net:{name}", info)
    return info


def unflaky(sb: Sandbox, name: str) -> bool:
    had = heal_flaky(sb, name)
    return stop_helper(sb, f"flaky:{name}") or had


def heal_flaky(sb: Sandbox, name: str) -> bool:
    """The loss and the redirects to the latency proxy removed (the proxy is left running);
    also what the proxy runs itself when its time is up, so no connection is sent to a closed
    port (which would cut the node off from ZooKeeper instead of making it flaky)."""
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
    update(sb, f"net:{name}", None)
    return had


class DelayProxy:
    """Forwards each route's connections after `delay` seconds per chunk, keeping order and
    pipelining (a chunk read at t is written at t + delay); the upstream connection leaves
    from the route's source address (pg_hba and the partition rules see the real client).

    The proxy completes the client's TCP handshake itself, so the client's own bound on a
    connect whose SYNs are lost (a walreceiver's `tcp_user_timeout` in primary_conninfo) cannot
    act: the client would wait, connected, while the proxy's connect waits on the kernel's SYN
    back-off (18 s seen). The upstream socket therefore carries that bound (WALRECEIVER_TCP_USER_TIMEOUT_MS),
    and the client's connection is closed when the upstream one fails, as its own would."""

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
                ur, uw = await _connect_bounded(target, port, source)
            except OSError:
                writer.close()
                return
            await asyncio.gather(self._pump(reader, uw), self._pump(ur, writer), return_exceptions=True)

        return handle

    async def serve(self, for_s: float, ready: Path | None, expire: Callable[[], object] | None = None) -> None:
        """Forward for `for_s` seconds; then `expire()` (the redirects removed) before the
        listening sockets close, so that reconnecting clients go straight to their server."""
        servers = [await asyncio.start_server(self._handler(t, p, s), "127.0.0.1", lp)
                   for lp, t, p, s in self.routes]
        if ready is not None:
            ready.write_text("ok")
        await asyncio.sleep(for_s)
        if expire is not None:
            expire()
        for s in servers:
            s.close()


async def _connect_bounded(target: str, port: int, source: str):
    """asyncio.open_connection from `source`, the socket bounded by TCP_USER_TIMEOUT."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, WALRECEIVER_TCP_USER_TIMEOUT_MS)
        sock.bind((source, 0))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (target, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


def parse_routes(spec: str) -> list[tuple[int, str, int, str]]:
    out = []
    for part in spec.split(","):
        lp, rest = part.split("=", 1)
        target, src = rest.split("@", 1)
        host, port = target.rsplit(":", 1)
        out.append((int(lp), host, int(port), src))
    return out

