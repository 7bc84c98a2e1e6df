"""The sandbox's ZooKeeper: one standalone server or an ensemble of three on the
ZooKeeper address, started by `up`, stopped and started again by the outage faults (F10,
F11, the nemesis) with the same ports, myids and data, and stopped by `down`."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Any

from manatee.core.procs import kill_tree, pid_alive, terminate
from manatee.shard.state import parse_state
from manatee_testbed import zookeeper as zkmod
from manatee_testbed.proctable import _CHILDREN, cmdline
from manatee_testbed.sandbox_config import port_free
from manatee_testbed.sandbox_state import SandboxBase, SandboxError, ZkServerState, dir_lock


class ZooKeeperOps(SandboxBase):
    """ZooKeeper's life (a part of `Sandbox`)."""

    def _start_zookeeper(self, zk_ip: str) -> None:
        st = self.st
        server = self._zk_server(zk_ip, 2181 if port_free(zk_ip, 2181) else None)
        self.out(f"starting ZooKeeper on {server.connect_string}")
        server.start(timeout=60)
        self._outlive(server)
        st.zk_host, st.zk_port, st.zk_pid = zk_ip, server.port, server.pid
        self.save()

    def _start_zk_ensemble(self, zk_ip: str, size: int) -> None:
        """`size` servers on the ZooKeeper address (base dirs zookeeper/zk1..zkN), with the
        standalone's tick and max session; ports and pids are recorded as soon as they exist."""
        st = self.st
        ens = zkmod.ZooKeeperEnsemble(
            self.dir / "zookeeper", size=size, tick_ms=st.zk_tick_ms, host=zk_ip,
            max_session_ms=st.zk_max_session_ms,
        )
        quorum = {sid: (q, e) for sid, _h, q, e in ens.servers[0].peers}
        st.zk_host = zk_ip
        st.zk_servers = [ZkServerState(myid=s.myid, client_port=s.port, quorum_port=quorum[s.myid][0],
                                       election_port=quorum[s.myid][1]) for s in ens.servers]
        st.zk_port = st.zk_servers[0].client_port
        self.save()
        self.out(f"starting a ZooKeeper ensemble of {size} on {st.zk_connect}")
        try:
            for server, rec in zip(ens.servers, st.zk_servers):
                server.spawn()
                rec.pid = server.pid
            self.save()
            deadline = time.monotonic() + 60
            for server in ens.servers:
                server.wait_serving(max(1.0, deadline - time.monotonic()))
        except BaseException:
            ens.stop()
            for rec in st.zk_servers:
                rec.pid = None
            self.save()
            raise
        for server in ens.servers:
            self._outlive(server)
        self.save()

    @staticmethod
    def _outlive(server) -> None:
        """A server this command started keeps running after it (the harness would kill it
        at interpreter exit); reaped here while this process lives."""
        zkmod._LIVE.discard(server)
        if server._proc is not None:
            _CHILDREN.append(server._proc)

    def _zk_server(self, host: str, port: int | None):
        """A handle on the sandbox's standalone ZooKeeper with the config `up` gives it (its
        tick and data dir; a restart passes the recorded address and port), so a restart
        serves the same znodes and sessions."""
        st = self.st
        return zkmod.ZooKeeperServer(
            self.dir / "zookeeper", host=host, port=port, tick_ms=st.zk_tick_ms,
            max_session_ms=st.zk_max_session_ms,
        )

    def _zk_member(self, i: int):
        """A handle on ensemble server `i` (0-based; base dir zookeeper/zk<myid>) with the
        config `up` gave it, so that it rejoins with the same ports, myid and data."""
        st = self.st
        rec = self._zk_rec(i)
        peers = [(z.myid, st.zk_host, z.quorum_port, z.election_port) for z in st.zk_servers]
        return zkmod.ZooKeeperServer(
            self.dir / "zookeeper" / f"zk{rec.myid}", host=st.zk_host, port=rec.client_port,
            tick_ms=st.zk_tick_ms, max_session_ms=st.zk_max_session_ms,
            heap_mb=128, myid=rec.myid, peers=peers,
        )

    def _zk_rec(self, i: int) -> ZkServerState:
        servers = self.st.zk_servers
        if not servers:
            raise SandboxError("this sandbox runs one standalone ZooKeeper, not an ensemble (`up --zk-servers 3`)")
        if not 0 <= i < len(servers):
            raise SandboxError(f"no ZooKeeper server {i}: servers are 0..{len(servers) - 1}")
        return servers[i]

    def _zk_rec_running(self, rec: ZkServerState) -> bool:
        return bool(rec.pid and pid_alive(rec.pid) and self._is_our_zk(rec.pid, rec.myid))

    def zk_pids(self) -> list[int | None]:
        """The live pid of every ZooKeeper server (one entry for a standalone; None: down)."""
        st = self.st
        if st.zk_servers:
            return [r.pid if self._zk_rec_running(r) else None for r in st.zk_servers]
        return [st.zk_pid if self.zk_running() else None]

    def zk_modes(self) -> list[str | None]:
        """Each server's `srvr` mode: 'standalone', 'leader', 'follower'; None when it does
        not serve (down, or a member without a quorum)."""
        st = self.st
        ports = [r.client_port for r in st.zk_servers] if st.zk_servers else [st.zk_port]
        modes: list[str | None] = []
        for port in ports:
            mode = None
            for line in zkmod.four_letter_word(st.zk_host, port, "srvr").splitlines():
                if line.startswith("Mode:"):
                    mode = line.split(":", 1)[1].strip()
            modes.append(mode)
        return modes

    def zk_leader(self) -> int | None:
        """Index (0-based) of the ensemble's leader now; None if none (or a standalone)."""
        if not self.st.zk_servers:
            return None
        modes = self.zk_modes()
        return modes.index("leader") if "leader" in modes else None

    def zk_running(self) -> bool:
        """True if the sandbox's ZooKeeper process is alive (not whether it serves yet);
        with an ensemble, every server's."""
        if self.st.zk_servers:
            return all(self._zk_rec_running(r) for r in self.st.zk_servers)
        pid = self.st.zk_pid
        return bool(pid and pid_alive(pid) and self._is_our_zk(pid))

    def zk_stop(self, timeout: float = 10.0) -> bool:
        """All of ZooKeeper down: SIGTERM the server (SIGKILL after `timeout`), data kept.
        Every client loses its connection; sessions survive in the data dir, and a
        restarted server gives each one a fresh timeout. False if it was not running.
        With an ensemble, every server at once."""
        if self.st.zk_servers:
            return self._zk_stop_ensemble(None, timeout, kill=False)
        with dir_lock(self.dir):
            st = self.st
            pid = st.zk_pid
            if not (pid and pid_alive(pid) and self._is_our_zk(pid)):
                return False
            terminate(pid, timeout=timeout, group=True)
            if pid_alive(pid):
                raise SandboxError(f"ZooKeeper pid {pid} survives SIGTERM and SIGKILL")
            st.zk_pid = None
            self.save()
        self.out(f"ZooKeeper {st.zk_connect} stopped (pid {pid}); data kept in {self.dir / 'zookeeper'}")
        return True

    def zk_stop_server(self, i: int, timeout: float = 10.0, *, kill: bool = False) -> bool:
        """One ensemble server down (index 0-based; e.g. zk_leader()), data kept: SIGTERM,
        or with kill=True SIGKILL (a crash). False if it was not running."""
        self._zk_rec(i)
        return self._zk_stop_ensemble(i, timeout, kill=kill)

    def _zk_stop_ensemble(self, only: int | None, timeout: float, kill: bool) -> bool:
        with dir_lock(self.dir):
            st = self.st
            recs = [r for i, r in enumerate(st.zk_servers) if only is None or i == only]
            live = [r for r in recs if self._zk_rec_running(r)]
            for r in live:  # every one at once: an outage, not a rolling restart
                kill_tree(r.pid, signal.SIGKILL if kill else signal.SIGTERM, group=True)
            for r in live:
                terminate(r.pid, timeout=timeout, group=True)
                if pid_alive(r.pid):
                    raise SandboxError(f"ZooKeeper server {r.myid} pid {r.pid} survives SIGTERM and SIGKILL")
            stopped = {r.myid: r.pid for r in live}
            for r in recs:
                r.pid = None
            self.save()
        if stopped:
            which = ", ".join(f"{st.zk_host}:{r.client_port} (myid {r.myid}, pid {stopped[r.myid]})"
                              for r in recs if r.myid in stopped)
            self.out(f"ZooKeeper {which} {'killed' if kill else 'stopped'}; data kept in {self.dir / 'zookeeper'}")
        return bool(stopped)

    def zk_start_server(self, i: int, timeout: float = 60.0, *, wait: bool = True) -> int:
        """Start ensemble server `i` again (same ports, myid and data); with wait=True until
        it serves, which needs a quorum. Returns its pid."""
        self._zk_rec(i)
        return self._zk_start_ensemble(i, timeout, wait)[i]

    def _zk_start_ensemble(self, only: int | None, timeout: float, wait: bool = True) -> list[int | None]:
        with dir_lock(self.dir):
            st = self.st
            idx = [i for i in range(len(st.zk_servers)) if only is None or i == only]
            started = []
            for i in idx:
                rec = st.zk_servers[i]
                if self._zk_rec_running(rec):
                    continue
                server = self._zk_member(i)
                try:
                    server.spawn()
                except zkmod.ZooKeeperStartError as e:
                    for s in started:
                        s.stop()
                    raise SandboxError(f"ZooKeeper server {rec.myid} did not start again: {e}") from None
                rec.pid = server.pid
                started.append(server)
            self.save()
            if wait:
                deadline = time.monotonic() + timeout
                try:
                    for server in started:
                        server.wait_serving(max(1.0, deadline - time.monotonic()))
                except zkmod.ZooKeeperStartError as e:
                    for server in started:
                        server.stop()
                    for i in idx:
                        if not self._zk_rec_running(st.zk_servers[i]):
                            st.zk_servers[i].pid = None
                    self.save()
                    raise SandboxError(f"ZooKeeper ensemble {st.zk_connect} did not serve again: {e}") from None
            for server in started:
                self._outlive(server)
            pids = [r.pid for r in st.zk_servers]
        if started:
            self.out(f"ZooKeeper {', '.join(s.connect_string for s in started)} started again "
                     f"(pids {' '.join(str(s.pid) for s in started)})")
        return pids

    def zk_start(self, timeout: float = 60.0) -> int:
        """Start the sandbox's ZooKeeper again (same address, port and data) and wait until
        it serves; returns its pid (the running one's if it was not stopped). With an
        ensemble: every stopped server, all serving; returns server 0's pid (zk_pids())."""
        if self.st.zk_servers:
            return self._zk_start_ensemble(None, timeout)[0]
        with dir_lock(self.dir):
            st = self.st
            if st.zk_pid and pid_alive(st.zk_pid) and self._is_our_zk(st.zk_pid):
                return st.zk_pid
            if not st.zk_port:
                raise SandboxError("this sandbox has no ZooKeeper address recorded (was `up` interrupted?)")
            server = self._zk_server(st.zk_host, st.zk_port)
            try:
                server.start(timeout=timeout)
            except zkmod.ZooKeeperStartError as e:
                raise SandboxError(f"ZooKeeper {st.zk_connect} did not start again: {e}") from None
            self._outlive(server)  # like the one `up` started
            st.zk_pid = server.pid
            self.save()
        self.out(f"ZooKeeper {st.zk_connect} started again (pid {st.zk_pid})")
        return st.zk_pid

    def _is_our_zk(self, pid: int, myid: int | None = None) -> bool:
        """`pid` runs this sandbox's ZooKeeper (its zoo.cfg on the command line); with
        `myid`, that ensemble server's (zookeeper/zk<myid>/zoo.cfg)."""
        line = cmdline(pid)
        if line is None:
            return False
        if myid is not None:
            return str(self.dir / "zookeeper" / f"zk{myid}" / "zoo.cfg") in line
        return str(self.dir / "zookeeper") in line

    def zk_state(self, timeout: float = 3.0) -> Any:
        """The shard's state znode from ZooKeeper (None if absent or unreachable)."""
        from kazoo.client import KazooClient
        from kazoo.handlers.threading import KazooTimeoutError

        zk = KazooClient(hosts=self.st.zk_connect, timeout=timeout)
        try:
            zk.start(timeout=timeout)
        except KazooTimeoutError:
            return None
        try:
            data, _ = zk.get(self.st.layout.state)
            return parse_state(data).to_json()
        except Exception:  # noqa: BLE001 - absent node, bad JSON: "no state yet"
            return None
        finally:
            with contextlib.suppress(Exception):
                zk.stop()
                zk.close()

    def _zk_teardown(self, problems: list[str]) -> None:
        """`down`: every server of this sandbox stopped (a hung one too); what survives is a problem."""
        st = self.st
        if st.zk_pid and pid_alive(st.zk_pid) and self._is_our_zk(st.zk_pid):
            terminate(st.zk_pid, timeout=10, group=True)
            if pid_alive(st.zk_pid):
                problems.append(f"ZooKeeper pid {st.zk_pid} survives")
        zk_live = [r for r in st.zk_servers if self._zk_rec_running(r)]
        for r in zk_live:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(r.pid, signal.SIGTERM)
                os.killpg(r.pid, signal.SIGCONT)  # a hung (stopped) server handles it now
        for r in zk_live:
            terminate(r.pid, timeout=10, group=True)
            if pid_alive(r.pid):
                problems.append(f"ZooKeeper server {r.myid} pid {r.pid} survives")
