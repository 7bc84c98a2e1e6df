"""Real ZooKeeper servers for tests, the sandbox and benchmarks.

Starts the Debian `zookeeper` package's server (`zkServer.sh start-foreground CFG`) as a
child process in its own process group, with a config written here: short tickTime so
that short session timeouts are accepted, small JVM heap and quick-start JVM flags
(~0.3 s to `imok`), log in BASE_DIR/zookeeper.log. Stopping is by PID (SIGTERM, then
SIGKILL) and keeps the data directory, so a restarted server has the same data and
sessions (ZooKeeper restores sessions from its snapshot/txn log and gives each one a
fresh timeout).

`ZooKeeperEnsemble` runs three such servers on 127.0.0.1 as a quorum; `TcpProxy`
(tcpproxy.py) sits between a client and a server to cut the link (packets black-holed, connections hang)
without stopping ZooKeeper, the way to make a session expire while the server stays up.

Everything here is synchronous (fixtures, CLI). Any server still running when the
interpreter exits is killed by an atexit hook, so a crashed test run leaves no JVM.

Manual use:  python -m manatee_testbed.zookeeper DIR [--port N] [--ensemble]
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

from manatee.core.procs import free_port, kill_tree, pid_alive, terminate
from manatee_testbed.hang import all_stopped

ZK_SERVER_SH = Path("/usr/share/zookeeper/bin/zkServer.sh")
ZK_JAR = Path("/usr/share/java/zookeeper.jar")
ZK_CONF_DIR = Path("/etc/zookeeper/conf")
# The Debian jar has no SLF4J binding on its class path (the server would log nothing);
# slf4j-simple writes plain lines to stderr, which goes to zookeeper.log.
SLF4J_SIMPLE = Path("/usr/share/java/slf4j-simple.jar")

_LIVE: "weakref.WeakSet[ZooKeeperServer]" = weakref.WeakSet()


class ZooKeeperStartError(RuntimeError):
    """A ZooKeeper server did not come up; carries the command and the log's tail."""


def four_letter_word(host: str, port: int, cmd: str = "ruok", timeout: float = 1.0) -> str:
    """Send a ZooKeeper four-letter command and return the reply ('' on any socket error)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(cmd.encode())
            chunks = []
            while True:
                b = s.recv(4096)
                if not b:
                    break
                chunks.append(b)
            return b"".join(chunks).decode(errors="replace")
    except OSError:
        return ""


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class ZooKeeperServer:
    """One ZooKeeper server process (standalone, or one member of an ensemble).

    base_dir holds zoo.cfg, data/ (and data/myid in an ensemble) and zookeeper.log.
    Session timeouts between min_session_ms (default 2×tick) and max_session_ms are
    granted as asked; ZooKeeper clamps anything outside.
    """

    def __init__(
        self,
        base_dir: Path | str,
        host: str = "127.0.0.1",
        port: int | None = None,
        tick_ms: int = 200,
        min_session_ms: int | None = None,
        max_session_ms: int = 60000,
        *,
        heap_mb: int = 192,
        myid: int | None = None,
        peers: list[tuple[int, str, int, int]] | None = None,
        extra_cfg: dict[str, str] | None = None,
    ):
        self.base_dir = Path(base_dir).resolve()
        self.host = host
        self._auto_port = port is None
        self.port = port if port is not None else free_port(host)
        self.tick_ms = tick_ms
        self.min_session_ms = min_session_ms if min_session_ms is not None else 2 * tick_ms
        self.max_session_ms = max_session_ms
        self.heap_mb = heap_mb
        self.myid = myid
        self.peers = peers  # [(myid, host, quorum_port, election_port)] for an ensemble
        self.extra_cfg = dict(extra_cfg or {})
        self.data_dir = self.base_dir / "data"
        self.cfg_path = self.base_dir / "zoo.cfg"
        self.log_path = self.base_dir / "zookeeper.log"
        self._proc: subprocess.Popen | None = None
        self._log_file = None

    # -- properties -------------------------------------------------------------------
    @property
    def connect_string(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None and pid_alive(self._proc.pid)

    def __repr__(self) -> str:
        return f"<ZooKeeperServer {self.connect_string} pid={self.pid} dir={self.base_dir}>"

    # -- config -----------------------------------------------------------------------
    def _config_text(self) -> str:
        cfg = {
            "tickTime": str(self.tick_ms),
            "dataDir": str(self.data_dir),
            "clientPort": str(self.port),
            "clientPortAddress": self.host,
            "minSessionTimeout": str(self.min_session_ms),
            "maxSessionTimeout": str(self.max_session_ms),
            "admin.enableServer": "false",
            "4lw.commands.whitelist": "*",
            "maxClientCnxns": "0",
            # The txn log is pre-allocated in blocks of this many KB (default 64 MB).
            "preAllocSize": "4096",
            "autopurge.purgeInterval": "0",
        }
        if self.peers:
            cfg.update({"initLimit": "50", "syncLimit": "10", "standaloneEnabled": "false"})
            for sid, h, qport, eport in self.peers:
                cfg[f"server.{sid}"] = f"{h}:{qport}:{eport}"
        cfg.update(self.extra_cfg)
        return "".join(f"{k}={v}\n" for k, v in cfg.items())

    def _write_config(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.cfg_path.write_text(self._config_text())
        if self.myid is not None:
            (self.data_dir / "myid").write_text(f"{self.myid}\n")

    def _env(self) -> dict[str, str]:
        cp = [str(ZK_CONF_DIR), str(ZK_JAR)]
        if SLF4J_SIMPLE.exists():
            cp.append(str(SLF4J_SIMPLE))
        flags = [
            f"-Xmx{self.heap_mb}m",
            "-Xms16m",
            "-Xss512k",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",  # C1 only: much faster start, plenty for tests
            "-Xshare:auto",
            "-XX:-UsePerfData",  # no /tmp/hsperfdata_* files
            "-Djava.net.preferIPv4Stack=true",
            "-Dzookeeper.cnxTimeout=1000",  # election connect timeout (ensemble restarts)
            "-Dorg.slf4j.simpleLogger.showDateTime=true",
            "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSS",
            # zkServer.sh puts its own -cp before JVMFLAGS; the last -cp wins in java.
            "-cp",
            ":".join(cp),
        ]
        env = dict(os.environ)
        env.update(
            JMXDISABLE="true",
            JVMFLAGS=" ".join(flags),
            ZOO_LOG_DIR=str(self.base_dir),  # zkEnv.sh may override; unused with slf4j-simple
        )
        env.pop("ZOO_NOEXEC", None)  # keep `exec java`: our child's PID is the JVM's
        env.pop("SERVER_JVMFLAGS", None)
        return env

    # -- lifecycle --------------------------------------------------------------------
    def spawn(self) -> None:
        """Start the JVM without waiting for it to serve (ensembles start all, then wait)."""
        if self.running:
            return
        if not ZK_SERVER_SH.exists():
            raise ZooKeeperStartError(
                f"{ZK_SERVER_SH} not found: install the Debian 'zookeeper' package "
                "(scripts/install-deps.sh)"
            )
        self._write_config()
        self._close_log()
        self._log_file = open(self.log_path, "ab")
        self._log_file.write(f"--- harness start {time.strftime('%F %T')} ---\n".encode())
        self._log_file.flush()
        self._proc = subprocess.Popen(
            [str(ZK_SERVER_SH), "start-foreground", str(self.cfg_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=self._env(),
            cwd=str(self.base_dir),
            start_new_session=True,
        )
        _LIVE.add(self)

    def serving(self) -> bool:
        """True once the server answers `srvr` with a mode (it then accepts sessions)."""
        return "Mode:" in four_letter_word(self.host, self.port, "srvr", timeout=1.0)

    def answering_is_us(self) -> bool:
        """The server on our port uses our data dir (not another test's ZooKeeper that
        grabbed an auto-chosen port first)."""
        conf = four_letter_word(self.host, self.port, "conf", timeout=1.0)
        return f"dataDir={self.data_dir}/" in conf or f"dataDir={self.data_dir}\n" in conf

    def mode(self) -> str | None:
        """'standalone', 'leader' or 'follower'; None when not serving."""
        for line in four_letter_word(self.host, self.port, "srvr").splitlines():
            if line.startswith("Mode:"):
                return line.split(":", 1)[1].strip()
        return None

    def wait_serving(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                raise ZooKeeperStartError(
                    f"ZooKeeper ({ZK_SERVER_SH} start-foreground {self.cfg_path}) exited with "
                    f"status {self._proc.returncode if self._proc else None}; "
                    f"log {self.log_path}:\n{_tail(self.log_path)}"
                )
            if four_letter_word(self.host, self.port, "ruok", 0.5) == "imok" and self.serving():
                if self.answering_is_us():
                    return
                # someone else's server holds the port; ours will exit with a BindException
            time.sleep(0.05)
        pid = self.pid
        self.stop()
        raise ZooKeeperStartError(
            f"ZooKeeper at {self.connect_string} (pid {pid}) not serving after {timeout:.0f}s; "
            f"log {self.log_path}:\n{_tail(self.log_path)}"
        )

    def start(self, timeout: float = 30.0) -> "ZooKeeperServer":
        """Start and wait until it serves. A port taken meanwhile by someone else is
        replaced by a fresh one, but only on a first start with an auto-chosen port."""
        for attempt in range(3):
            fresh = not (self.data_dir / "version-2").exists()
            self.spawn()
            try:
                self.wait_serving(timeout)
                return self
            except ZooKeeperStartError as e:
                self.stop()
                retry = (
                    self._auto_port
                    and fresh
                    and not self.peers
                    and "Address already in use" in str(e)
                    and attempt < 2
                )
                if not retry:
                    raise
                self.port = free_port(self.host)
        raise AssertionError("unreachable")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the JVM by PID (SIGKILL after `timeout`), reap it. Data is kept."""
        proc = self._proc
        if proc is not None:
            terminate(proc.pid, timeout=timeout, group=True)
            with contextlib.suppress(subprocess.TimeoutExpired, ChildProcessError):
                proc.wait(timeout=5)
        self._close_log()
        _LIVE.discard(self)

    def kill(self) -> None:
        """SIGKILL the JVM (a crash, no clean shutdown). Data is kept."""
        proc = self._proc
        if proc is not None:
            kill_tree(proc.pid, signal.SIGKILL, group=True)
        self.stop(timeout=5)

    def pause(self) -> None:
        """SIGSTOP the server (a hung host: connections stay open, nothing answers); returns once
        every thread of it is stopped (at most 2 s), so nothing it answers after this is news."""
        if self.pid is not None:
            kill_tree(self.pid, signal.SIGSTOP, group=True)
            deadline = time.monotonic() + 2.0
            while not all_stopped(self.pid) and time.monotonic() < deadline and pid_alive(self.pid):
                time.sleep(0.005)

    def resume(self) -> None:
        if self.pid is not None:
            kill_tree(self.pid, signal.SIGCONT, group=True)

    def restart(self, timeout: float = 30.0) -> None:
        self.stop()
        self.start(timeout)

    def close(self, remove: bool = False) -> None:
        """Stop; with remove=True also delete base_dir."""
        self.stop()
        if remove:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def _close_log(self) -> None:
        if self._log_file is not None:
            with contextlib.suppress(OSError):
                self._log_file.close()
            self._log_file = None

    def __enter__(self) -> "ZooKeeperServer":
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ZooKeeperEnsemble:
    """`size` ZooKeeper servers on one host forming a quorum (base_dir/zk1, zk2, ...)."""

    def __init__(
        self,
        base_dir: Path | str,
        size: int = 3,
        tick_ms: int = 200,
        host: str = "127.0.0.1",
        min_session_ms: int | None = None,
        max_session_ms: int = 60000,
        *,
        heap_mb: int = 128,
    ):
        self.base_dir = Path(base_dir).resolve()
        self.size = size
        self.host = host
        ports: set[int] = set()
        while len(ports) < 3 * size:
            ports.add(free_port(host))
        it = iter(sorted(ports))
        layout = [(i + 1, next(it), next(it), next(it)) for i in range(size)]
        peers = [(sid, host, q, e) for sid, _c, q, e in layout]
        self.servers = [
            ZooKeeperServer(
                self.base_dir / f"zk{sid}",
                host=host,
                port=cport,
                tick_ms=tick_ms,
                min_session_ms=min_session_ms,
                max_session_ms=max_session_ms,
                heap_mb=heap_mb,
                myid=sid,
                peers=peers,
            )
            for sid, cport, _q, _e in layout
        ]

    @property
    def connect_string(self) -> str:
        return ",".join(s.connect_string for s in self.servers)

    def __getitem__(self, i: int) -> ZooKeeperServer:
        return self.servers[i]

    def __len__(self) -> int:
        return len(self.servers)

    def start(self, timeout: float = 60.0) -> "ZooKeeperEnsemble":
        """Start every server that is not running and wait until all serve."""
        try:
            for s in self.servers:
                s.spawn()
            deadline = time.monotonic() + timeout
            for s in self.servers:
                s.wait_serving(max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise
        return self

    def start_server(self, i: int, wait: bool = True, timeout: float = 30.0) -> None:
        """Start server i; with wait=True until it serves (needs a quorum to be up)."""
        self.servers[i].spawn()
        if wait:
            self.servers[i].wait_serving(timeout)

    def stop_server(self, i: int) -> None:
        self.servers[i].stop()

    def wait_serving(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        for s in self.servers:
            if s.running:
                s.wait_serving(max(1.0, deadline - time.monotonic()))

    def leader_index(self) -> int | None:
        for i, s in enumerate(self.servers):
            if s.mode() == "leader":
                return i
        return None

    def stop(self) -> None:
        for s in self.servers:
            s.stop()

    def close(self, remove: bool = False) -> None:
        self.stop()
        if remove:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> "ZooKeeperEnsemble":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def _kill_leftovers() -> None:
    for s in list(_LIVE):
        with contextlib.suppress(Exception):
            s.kill()


atexit.register(_kill_leftovers)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run a real local ZooKeeper until interrupted.")
    ap.add_argument("dir", type=Path)
    ap.add_argument("--port", type=int)
    ap.add_argument("--tick-ms", type=int, default=200)
    ap.add_argument("--ensemble", action="store_true", help="3 servers instead of 1")
    args = ap.parse_args(argv)
    zk = (
        ZooKeeperEnsemble(args.dir, tick_ms=args.tick_ms)
        if args.ensemble
        else ZooKeeperServer(args.dir, port=args.port, tick_ms=args.tick_ms)
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    zk.start()
    print(zk.connect_string, flush=True)
    try:
        stop.wait()
    finally:
        zk.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
