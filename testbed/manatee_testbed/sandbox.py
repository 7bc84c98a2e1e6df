"""A real local shard for people and fault tests: ZooKeeper, a file-backed ZFS pool and N
nodes (sitter + snapshotter + backupserver each) on their own 127.0.0.x addresses.

Everything the sandbox starts is recorded in DIR/sandbox.json as soon as it exists, so a
later, separate invocation (`status`, `kill b`, `down`) finds the shard, and `down` can
clean up after a half-finished `up`. Each node's processes run in a cgroup of their
own (when cgroup2 is writable): that is how `kill`/`hang` reach every process of a
"host" (PostgreSQL included, whoever its parent is now) and how partitions also cut
sockets that send from 127.0.0.1.

Layout of DIR:
    sandbox.json   state (the source of truth for every command)
    lock           serialises commands that change the sandbox
    zookeeper/     zoo.cfg, data/, zookeeper.log
    zpool/         the pool's sparse file
    nodes/<name>/  sitter.json snapshotter.json backupserver.json, <daemon>.log,
                   pg/ (the dataset's mountpoint: data/, postgresql.log)
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import ipaddress
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from manatee.core.config import ConfigError, validate
from manatee.core.procs import free_port, pid_alive, terminate
from manatee_testbed import cgroups, network
from manatee_testbed.hang import hang as _hang_pids
from manatee_testbed.hang import resume as _resume_pids
from manatee_testbed.hang import stopped

STATE_FILE = "sandbox.json"
STATE_VERSION = 1
#: The role sandbox standbys replicate as (REPLICATION, not a superuser).
REPLICATION_USER = "replicator"
DAEMONS = ("sitter", "snapshotter", "backupserver")
MODULES = {
    "sitter": "manatee.sitter.main",
    "snapshotter": "manatee.snapshotter.main",
    "backupserver": "manatee.backupserver.main",
}
DEFAULT_FIRST_IP = "127.0.0.11"
DEFAULT_SESSION_TIMEOUT_MS = 6000
DEFAULT_PORTS = {"pg": 5432, "status": 5433, "zfs": 10001, "backup": 10002}
PG_BIN = "/usr/lib/postgresql/15/bin"
ZFS_BIN = "/usr/sbin/zfs"
NFT_PREFIX = "manatee_part"
CGROUP_PREFIX = "manatee-sandbox"


# Daemons started by this process: reaped here while it lives (PID 1 reaps lazily).
_CHILDREN: list[subprocess.Popen] = []


def reap_children() -> None:
    for p in list(_CHILDREN):
        if p.poll() is not None:
            _CHILDREN.remove(p)


class SandboxError(Exception):
    """Something the operator must act on; the message is one clear line."""


# ------------------------------------------------------------------------------ state


@dataclass
class NodeState:
    name: str
    ip: str
    pg_port: int
    status_port: int
    backup_port: int
    zfs_port: int
    dataset: str
    mountpoint: str
    dir: str
    cgroup: str | None = None
    pids: dict[str, int] = field(default_factory=dict)
    #: TLS (manatee-sandbox up --tls): the node's certificate/key and the sandbox CA ("": none)
    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""

    @property
    def data_dir(self) -> str:
        return str(Path(self.mountpoint) / "data")

    @property
    def socket_dir(self) -> str:
        # The sitter's default place (0700 under root's /run/manatee), not a guessable /tmp name.
        return f"/run/manatee/{self.ip}-{self.pg_port}"

    @property
    def pg_url(self) -> str:
        return f"tcp://postgres@{self.ip}:{self.pg_port}/postgres"

    @property
    def status_url(self) -> str:
        return f"{'https' if self.cert_file else 'http'}://{self.ip}:{self.status_port}"

    def tls_cfg(self, **over: Any) -> dict[str, Any] | None:
        """The `tls` section of this node's daemons (None without TLS)."""
        if not self.cert_file:
            return None
        return {"certFile": self.cert_file, "keyFile": self.key_file, "caFile": self.ca_file, **over}

    def client_ctx(self) -> Any:
        """An SSL context that verifies this node's servers and presents its certificate (None without TLS)."""
        return _client_ctx(self.ca_file, self.cert_file, self.key_file) if self.cert_file else None

    def config_path(self, daemon: str) -> Path:
        return Path(self.dir) / f"{daemon}.json"

    def log_path(self, daemon: str) -> Path:
        return Path(self.dir) / f"{daemon}.log"


@functools.lru_cache(maxsize=64)
def _client_ctx(ca: str, cert: str, key: str) -> Any:
    from manatee.core.tls import client_context

    return client_context(ca, cert, key)


@dataclass
class ZkServerState:
    """One member of the sandbox's ZooKeeper ensemble (all on SandboxState.zk_host)."""

    myid: int
    client_port: int
    quorum_port: int
    election_port: int
    pid: int | None = None


ZK_SERVER_COUNTS = (1, 3)


@dataclass
class SandboxState:
    id: str
    dir: str
    shard: str
    session_timeout_ms: int
    nodes: list[NodeState] = field(default_factory=list)
    zk_host: str = ""
    zk_port: int = 0
    zk_pid: int | None = None
    zk_tick_ms: int = 200
    # An ensemble's servers (empty: the standalone server of zk_port/zk_pid; an older
    # sandbox.json has no such key). With an ensemble, zk_port is server 0's client port
    # and zk_pid stays None.
    zk_servers: list[ZkServerState] = field(default_factory=list)
    pool: str | None = None
    pool_file: str | None = None
    zfs_fuse_pid: int | None = None  # set only when this sandbox started the daemon
    cgroup: str | None = None
    nft_prefix: str = NFT_PREFIX
    data_root: str | None = None  # where mountpoints live when DIR is not reachable by postgres
    secret: str = ""
    repl_password: str = ""
    #: The superuser's password over TCP (adminAuth): the harness's clients use it; the
    #: replication password opens no database session.
    admin_password: str = ""
    auth_method: str = "scram-sha-256"
    #: `up --tls`: a throwaway CA in DIR/tls and a certificate per node for every HTTP surface
    tls: bool = False
    #: `up --zk-auth`: the shard's ZooKeeper digest credential 'user:password' ("": none)
    zk_auth: str = ""
    created: float = field(default_factory=time.time)
    version: int = STATE_VERSION

    @property
    def secret_file(self) -> str:
        """The shard secret's file (0600), read by every node's sitter and backupserver."""
        return os.path.join(os.path.abspath(self.dir), "shard.secret")

    @property
    def shard_path(self) -> str:
        return f"/manatee/{self.shard}"

    @property
    def tls_dir(self) -> str:
        return os.path.join(os.path.abspath(self.dir), "tls")

    @property
    def zk_auth_file(self) -> str:
        """The ZooKeeper credential's file (0600), read by the sitters and the tools."""
        return os.path.join(os.path.abspath(self.dir), "zk.auth")

    @property
    def zk_ensemble(self) -> bool:
        return bool(self.zk_servers)

    @property
    def zk_connect(self) -> str:
        if self.zk_servers:
            return ",".join(f"{self.zk_host}:{s.client_port}" for s in self.zk_servers)
        return f"{self.zk_host}:{self.zk_port}"

    def node(self, name: str) -> NodeState:
        for n in self.nodes:
            if n.name == name:
                return n
        names = ", ".join(n.name for n in self.nodes) or "none"
        raise SandboxError(f"no node named {name!r} in this sandbox (nodes: {names})")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "SandboxState":
        if data.get("version") != STATE_VERSION:
            raise SandboxError(f"sandbox state version {data.get('version')!r} is not {STATE_VERSION}")
        data = dict(data)
        data["nodes"] = [NodeState(**n) for n in data.get("nodes", [])]
        data["zk_servers"] = [ZkServerState(**z) for z in data.get("zk_servers") or []]
        return cls(**data)


def state_path(dir: Path | str) -> Path:
    return Path(dir) / STATE_FILE


def save_state(st: SandboxState) -> None:
    """Atomic write: a reader never sees half a file."""
    p = state_path(st.dir)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(st.to_json(), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, p)


def load_state(dir: Path | str) -> SandboxState:
    p = state_path(dir)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise SandboxError(f"no sandbox in {Path(dir).resolve()} (no {STATE_FILE}; start one with `up`)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise SandboxError(f"cannot read {p}: {e}") from None
    try:
        return SandboxState.from_json(data)
    except TypeError as e:
        raise SandboxError(f"{p} is not a sandbox state file: {e}") from None


@contextlib.contextmanager
def dir_lock(dir: Path | str):
    """One changing command at a time per sandbox directory."""
    Path(dir).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(dir) / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# ------------------------------------------------------------------------------ configs


def node_names(n: int) -> list[str]:
    if not 1 <= n <= 26:
        raise SandboxError(f"--nodes must be between 1 and 26, not {n}")
    return [chr(ord("a") + i) for i in range(n)]


def node_addresses(first_ip: str, n: int) -> tuple[str, list[str]]:
    """(ZooKeeper's address, the nodes' addresses): ZK just below the first node."""
    try:
        first = ipaddress.IPv4Address(first_ip)
    except ValueError:
        raise SandboxError(f"--first-ip {first_ip!r} is not an IPv4 address") from None
    if first not in ipaddress.IPv4Network("127.0.0.0/8"):
        raise SandboxError(f"--first-ip {first_ip} is not a loopback address (127.x.y.z)")
    last = first + (n - 1)
    zk = first - 1
    if zk not in ipaddress.IPv4Network("127.0.0.0/8") or last not in ipaddress.IPv4Network("127.0.0.0/8") \
            or int(zk) & 0xFF in (0, 255) or int(first) & 0xFF in (0, 255) or (int(last) & 0xFF) in (0, 255) \
            or (int(last) >> 8) != (int(zk) >> 8):
        raise SandboxError(f"--first-ip {first_ip}: ZooKeeper at {zk} and {n} nodes up to {last} "
                           "must fit in one 127.x.y.1-254 range")
    return str(zk), [str(first + i) for i in range(n)]


def timing(session_timeout_ms: int) -> dict[str, int]:
    """Heartbeat and health-check periods derived from the session timeout."""
    st = session_timeout_ms
    hb = max(200, min(1000, st // 8))
    return {
        "heartbeatInterval": hb,
        # not below 2 s: a new sync rebuilding its first copy sends no heartbeat (T = 1 s
        # replaced it twice before it had finished: docs/benchmarks.md, P1 at T = 1 s)
        "expirationTime": max(2000, st),
        "requestTimeout": max(200, min(2000, 2 * hb)),
        "healthChkInterval": max(200, min(1000, st // 8)),
        # not below 2 s: at 1 s a loaded async's status query (0.5 s limit) went unanswered
        # for 1 s and the sitter killed PostgreSQL as hung (bench/loaded_soak.py, T = 1 s)
        "healthChkTimeout": max(2000, min(5000, st // 2)),
    }


def sitter_config(st: SandboxState, node: NodeState, nodes_total: int) -> dict[str, Any]:
    t = timing(st.session_timeout_ms)
    auth: dict[str, Any] = {"method": st.auth_method, "user": REPLICATION_USER, "clientCidrs": []}
    admin: dict[str, Any] = {"user": "postgres", "method": st.auth_method, "cidrs": ["127.0.0.0/8"]}
    if st.auth_method in ("md5", "scram-sha-256"):
        auth["password"] = st.repl_password
        admin["password"] = st.admin_password
    return {
        "ip": node.ip,
        "zoneId": f"sandbox-{st.id}-{node.name}",
        "shardPath": st.shard_path,
        "postgresPort": node.pg_port,
        "backupPort": node.backup_port,
        "statusPort": node.status_port,
        "ttl": 60,
        "secretFile": st.secret_file,
        "zkCfg": {
            "connStr": st.zk_connect,
            "sessionTimeout": st.session_timeout_ms,
            "connectTimeout": 10000,
            **({"auth": {"credentialFile": st.zk_auth_file}} if st.zk_auth else {}),
        },
        **({"tls": node.tls_cfg(requireClientCert=True)} if node.cert_file else {}),
        "heartbeatCfg": {
            "heartbeatInterval": t["heartbeatInterval"],
            "expirationTime": t["expirationTime"],
            "requestTimeout": t["requestTimeout"],
        },
        "postgresMgrCfg": {
            "dataDir": node.data_dir,
            "dbUser": "postgres",
            "pgBinDir": PG_BIN,
            "socketDir": node.socket_dir,
            "healthChkInterval": t["healthChkInterval"],
            "healthChkTimeout": t["healthChkTimeout"],
            "opsTimeout": 60000,
            "replicationTimeout": 60000,
            "oneNodeWriteMode": nodes_total == 1,
            "synchronousCommit": "on",
            "replicationAuth": auth,
            "adminAuth": admin,
            "zfsClientCfg": {
                "dataset": node.dataset,
                "mountpoint": node.mountpoint,
                "zfsHost": node.ip,
                "zfsPort": node.zfs_port,
                "zfsPath": ZFS_BIN,
                "pollInterval": 500,
            },
        },
    }


def snapshotter_config(st: SandboxState, node: NodeState) -> dict[str, Any]:
    return {
        "dataset": node.dataset,
        "pollInterval": 60000,
        "snapshotNumber": 20,
        "zfsPath": ZFS_BIN,
        "healthUrl": f"{node.status_url}/ping",
        **({"tls": node.tls_cfg()} if node.cert_file else {}),
    }


def backupserver_config(st: SandboxState, node: NodeState) -> dict[str, Any]:
    return {
        "backupSenderCfg": {"dataset": node.dataset, "zfsPath": ZFS_BIN},
        "backupServerCfg": {
            "port": node.backup_port,
            "host": node.ip,
            "maxConcurrentSends": 2,
        },
        "secretFile": st.secret_file,
        "zkCfg": {"connStr": st.zk_connect, "sessionTimeout": st.session_timeout_ms},
        "shardPath": st.shard_path,
        **({"tls": node.tls_cfg(requireClientCert=True)} if node.cert_file else {}),
    }


def _models() -> dict[str, type]:
    from manatee.backupserver.config import BackupServerConfig
    from manatee.sitter.config import SitterConfig
    from manatee.snapshotter.config import SnapshotterConfig

    return {"sitter": SitterConfig, "snapshotter": SnapshotterConfig, "backupserver": BackupServerConfig}


def node_configs(st: SandboxState, node: NodeState) -> dict[str, dict[str, Any]]:
    """The three daemons' configs, each validated by the daemon's own model (a drift
    between the sandbox and a daemon is a SandboxError here, not a crash later)."""
    cfgs = {
        "sitter": sitter_config(st, node, len(st.nodes)),
        "snapshotter": snapshotter_config(st, node),
        "backupserver": backupserver_config(st, node),
    }
    models = _models()
    for daemon, cfg in cfgs.items():
        try:
            validate(cfg, models[daemon], str(node.config_path(daemon)))
        except ConfigError as e:
            raise SandboxError(f"generated config is rejected by {daemon}'s model: {e}") from None
    return cfgs


def write_security_files(st: SandboxState) -> None:
    """`up --tls`: the CA, a certificate per node and one for the tools (DIR/tls, 0700, keys
    0600); `up --zk-auth`: the ZooKeeper credential's file (0600). Before the configs: the
    daemons' models check that the files exist."""
    if st.zk_auth and not os.path.exists(st.zk_auth_file):
        fd = os.open(st.zk_auth_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(st.zk_auth + "\n")
    if not st.tls:
        return
    from manatee_testbed.certs import CertPair, make_ca, make_node_cert

    ca = CertPair(os.path.join(st.tls_dir, "ca.pem"), os.path.join(st.tls_dir, "ca.key"))
    if not os.path.exists(ca.key):
        ca = make_ca(st.tls_dir)
    for n in st.nodes:
        if not n.cert_file:
            pair = make_node_cert(st.tls_dir, ca, n.name, n.ip)
            n.cert_file, n.key_file, n.ca_file = pair.cert, pair.key, ca.cert
    if not os.path.exists(os.path.join(st.tls_dir, "tools.pem")):
        make_node_cert(st.tls_dir, ca, "tools", "127.0.0.1")


def write_node_configs(st: SandboxState, node: NodeState) -> None:
    Path(node.dir).mkdir(parents=True, exist_ok=True)
    if not os.path.exists(st.secret_file):  # the one shard secret every daemon reads
        from manatee.core.auth import write_secret_file

        write_secret_file(st.secret_file, st.secret)
    for daemon, cfg in node_configs(st, node).items():
        p = node.config_path(daemon)
        p.write_text(json.dumps(cfg, indent=2) + "\n")
        os.chmod(p, 0o600)  # holds the backup secret and replication password


# ------------------------------------------------------------------------------ helpers


def postgres_can_reach(path: Path) -> bool:
    """True if the `postgres` OS user can traverse every directory down to `path`."""
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        return True  # the sitter will say what is missing
    p = Path(path).resolve()
    for d in [*reversed(p.parents), p]:
        if not d.exists():
            break
        s = d.stat()
        if s.st_uid == pw.pw_uid:
            ok = s.st_mode & 0o100
        elif s.st_gid == pw.pw_gid:
            ok = s.st_mode & 0o010
        else:
            ok = s.st_mode & 0o001
        if not ok:
            return False
    return True


def port_free(ip: str, port: int) -> bool:
    import socket

    with socket.socket() as s:
        # as servers bind: a port held only by TIME_WAIT connections of an earlier run is free
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
        except OSError:
            return False
    return True


def pick_port(ip: str, preferred: int, taken: set[tuple[str, int]]) -> int:
    if (ip, preferred) not in taken and port_free(ip, preferred):
        port = preferred
    else:
        port = free_port(ip)
        while (ip, port) in taken:
            port = free_port(ip)
    taken.add((ip, port))
    return port


def tail(path: Path | str, lines: int = 15) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError:
        return "(no log yet)"
    return "\n".join(text.splitlines()[-lines:])


def daemon_command(daemon: str, config: Path) -> list[str]:
    """The venv's console script (next to this interpreter), else `python -m`."""
    script = Path(sys.executable).parent / f"manatee-{daemon}"
    base = [str(script)] if script.exists() else [sys.executable, "-m", MODULES[daemon]]
    return base + ["-f", str(config), "--log-format", "text"]


def daemon_available(daemon: str) -> bool:
    if (Path(sys.executable).parent / f"manatee-{daemon}").exists():
        return True
    import importlib.util

    try:
        return importlib.util.find_spec(MODULES[daemon]) is not None
    except ModuleNotFoundError:
        return False


def process_children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def descendants(pids: list[int]) -> list[int]:
    kids = process_children()
    out: list[int] = []
    todo = list(pids)
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            if c not in out:
                out.append(c)
                todo.append(c)
    return out


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def postgres_pids(data_dir: str) -> list[int]:
    """Live PostgreSQL processes (postmaster and backends) of `data_dir`, found by their
    working directory in /proc: nothing is read from the data directory itself, so a
    hung filesystem (a wedged zfs-fuse) cannot hang `status`, `kill` or `down`."""
    want = os.path.abspath(data_dir)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.path.basename(os.readlink(f"/proc/{entry}/exe")) != "postgres":
                continue
            if os.readlink(f"/proc/{entry}/cwd") != want:
                continue
        except OSError:
            continue
        if pid_alive(int(entry)):
            found.append(int(entry))
    return found


def postmaster_pid(data_dir: str) -> int | None:
    """The postmaster of `data_dir`: its postgres process whose parent is not one."""
    pids = postgres_pids(data_dir)
    for pid in pids:
        if _ppid(pid) not in pids:
            return pid
    return None


def read_text_timeout(path: Path | str, timeout: float = 2.0) -> str | None:
    """Read a small file, giving up after `timeout` (a hung FUSE mount blocks reads forever)."""
    result: list[str] = []

    def read() -> None:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            result.append(Path(path).read_text())

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(timeout)
    return result[0] if result else None


def postmaster_shm(data_dir: str) -> int | None:
    """The SysV shared memory id PostgreSQL recorded (line 7 of postmaster.pid)."""
    text = read_text_timeout(Path(data_dir) / "postmaster.pid")
    try:
        return int(text.splitlines()[6].split()[1]) if text else None
    except (IndexError, ValueError):
        return None


def mounts_under(path: Path | str) -> list[str]:
    """Mount points at or below `path` (from /proc/mounts; touches no mounted filesystem)."""
    base = os.path.abspath(path)
    out = []
    with open("/proc/mounts") as f:
        for line in f:
            cols = line.split()
            if len(cols) > 1:
                mnt = cols[1].replace("\\040", " ")
                if mnt == base or mnt.startswith(base + "/"):
                    out.append(mnt)
    return out


def http_json(url: str, timeout: float = 1.0, ctx: Any = None) -> tuple[int, Any]:
    """(status, parsed body or None); (0, error text) when nothing answers. `ctx`: the SSL
    context of an https:// URL (NodeState.client_ctx())."""
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=ctx) as r:
            body = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        body, status = e.read(), e.code
    except (OSError, ValueError) as e:
        return 0, str(e)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


# ------------------------------------------------------------------------------ sandbox


class Sandbox:
    """Operations on the sandbox in `dir`. `out` receives progress lines."""

    def __init__(self, dir: Path | str = ".sandbox", out: Callable[[str], None] = print):
        self.dir = Path(dir).resolve()
        self.out = out
        self._st: SandboxState | None = None

    # -- state --------------------------------------------------------------------------
    @property
    def st(self) -> SandboxState:
        if self._st is None:
            self._st = load_state(self.dir)
        return self._st

    def exists(self) -> bool:
        return state_path(self.dir).exists()

    def save(self) -> None:
        save_state(self.st)

    # -- up -----------------------------------------------------------------------------
    def up(
        self,
        nodes: int = 3,
        session_timeout_ms: int = DEFAULT_SESSION_TIMEOUT_MS,
        shard: str = "1",
        first_ip: str = DEFAULT_FIRST_IP,
        timeout: float = 240.0,
        auth_method: str = "scram-sha-256",
        zk_servers: int = 1,
        tls: bool = False,
        zk_auth: bool = False,
    ) -> dict[str, Any]:
        """create(), start every node, wait until healthy and writable; what `status` says.
        zk_servers=3: a ZooKeeper ensemble of three servers instead of one standalone.
        tls: HTTPS with client certificates everywhere; zk_auth: ZooKeeper digest auth + ACLs."""
        t0 = time.monotonic()
        self.create(nodes, session_timeout_ms, shard, first_ip, auth_method, zk_servers=zk_servers,
                    tls=tls, zk_auth=zk_auth)
        began = time.monotonic()
        with dir_lock(self.dir):
            # One at a time, each once the previous one has its place in the election: the
            # election order (a, b, c...) is then the chain (primary, sync, async...).
            for i, node in enumerate(self.st.nodes):
                self._start_node(node)
                self.save()
                if i < len(self.st.nodes) - 1:
                    self._wait_joined(node, 30.0)
        timeout = max(30.0, timeout - (time.monotonic() - began))
        self.out(f"started {len(self.st.nodes)} node(s); waiting for the shard to be healthy and writable "
                 f"(up to {timeout:.0f}s)")
        self.wait_healthy(timeout)
        info = self.describe()
        info["seconds"] = round(time.monotonic() - t0, 1)
        return info

    def create(
        self,
        nodes: int = 3,
        session_timeout_ms: int = DEFAULT_SESSION_TIMEOUT_MS,
        shard: str = "1",
        first_ip: str = DEFAULT_FIRST_IP,
        auth_method: str = "scram-sha-256",
        *,
        require_daemons: tuple[str, ...] = DAEMONS,
        zk_servers: int = 1,
        tls: bool = False,
        zk_auth: bool = False,
    ) -> SandboxState:
        """Everything but the daemons: ZooKeeper running (one standalone server, or with
        zk_servers=3 an ensemble on the same address), pool, datasets, configs, cgroups."""
        if zk_servers not in ZK_SERVER_COUNTS:
            raise SandboxError(f"--zk-servers {zk_servers}: must be one of {', '.join(map(str, ZK_SERVER_COUNTS))}")
        if session_timeout_ms < 1000:
            raise SandboxError(f"--session-timeout {session_timeout_ms} ms: must be at least 1000")
        if not shard.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise SandboxError(f"--shard {shard!r}: letters, digits, '.', '-' and '_' only")
        names = node_names(nodes)
        zk_ip, ips = node_addresses(first_ip, nodes)
        if os.geteuid() != 0:
            raise SandboxError("the sandbox needs root (ZFS, nftables, PostgreSQL as user postgres)")
        missing = [d for d in require_daemons if not daemon_available(d)]
        if missing:
            raise SandboxError(f"daemons not installed: {', '.join('manatee-' + d for d in missing)} "
                               "(run scripts/install-deps.sh)")
        if self.exists():
            raise SandboxError(f"a sandbox already exists in {self.dir} (`down` it first, or use --dir)")
        self.dir.mkdir(parents=True, exist_ok=True)
        with dir_lock(self.dir):
            sid = secrets.token_hex(4)
            data_root = None if postgres_can_reach(self.dir) else f"/var/tmp/manatee-sandbox-{sid}"
            st = SandboxState(
                id=sid, dir=str(self.dir), shard=shard, session_timeout_ms=session_timeout_ms,
                secret=secrets.token_urlsafe(32), repl_password=secrets.token_urlsafe(12),
                admin_password=secrets.token_urlsafe(12),
                auth_method=auth_method, data_root=data_root, tls=tls,
                zk_auth=f"manatee-{sid}:{secrets.token_urlsafe(18)}" if zk_auth else "",
                cgroup=f"{CGROUP_PREFIX}-{sid}" if cgroups.available() else None,
            )
            self._st = st
            self.save()
            if data_root:
                self.out(f"note: postgres cannot reach {self.dir}; data goes to {data_root}")
            if zk_servers == 1:
                self._start_zookeeper(zk_ip)
            else:
                self._start_zk_ensemble(zk_ip, zk_servers)
            self._create_pool()
            taken: set[tuple[str, int]] = set()
            for name, ip in zip(names, ips):
                st.nodes.append(self._new_node(name, ip, taken))
            write_security_files(st)
            for node in st.nodes:
                write_node_configs(st, node)
            self.save()
            from manatee_testbed.zfspool import ZfsPool

            pool = ZfsPool(Path(st.pool_file).parent, st.pool)
            for node in st.nodes:
                Path(node.mountpoint).parent.mkdir(parents=True, exist_ok=True)
                pool.create_dataset(f"{node.name}/pg", Path(node.mountpoint))
                if node.cgroup:
                    cgroups.create(node.cgroup)
                    self._source_nat(node)
            if not st.cgroup:
                self.out("note: no writable cgroup2 hierarchy: node traffic leaves from 127.0.0.1 "
                         "and partitions only cut sockets bound to a node's address")
        return st

    def _new_node(self, name: str, ip: str, taken: set[tuple[str, int]]) -> NodeState:
        """A node's ports (free on its address, not in `taken`), dataset, mountpoint, dirs."""
        st = self.st
        node_dir = self.dir / "nodes" / name
        base = Path(st.data_root) / name if st.data_root else node_dir
        return NodeState(
            name=name, ip=ip,
            pg_port=pick_port(ip, DEFAULT_PORTS["pg"], taken),
            status_port=pick_port(ip, DEFAULT_PORTS["status"], taken),
            backup_port=pick_port(ip, DEFAULT_PORTS["backup"], taken),
            zfs_port=pick_port(ip, DEFAULT_PORTS["zfs"], taken),
            dataset=f"{st.pool}/{name}/pg", mountpoint=str(base / "pg"), dir=str(node_dir),
            cgroup=f"{st.cgroup}/{name}" if st.cgroup else None,
        )

    def _source_nat(self, node: NodeState) -> None:
        try:
            network.source_nat(node.ip, node.cgroup)
        except network.NftError as e:
            raise SandboxError(f"node {node.name}: cannot give its processes the source address {node.ip}: {e}") from None

    def _wait_joined(self, node: NodeState, timeout: float) -> bool:
        """Until the node's sitter reports itself in the election (its /state lists it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _code, body = http_json(f"{node.status_url}/state", timeout=1.0, ctx=node.client_ctx())
            if isinstance(body, dict) and body.get("id") and body.get("id") in (body.get("election") or []):
                return True
            if not pid_alive(node.pids.get("sitter", 0) or 0):
                break
            time.sleep(0.2)
        self.out(f"node {node.name} has not joined the election yet; starting the next one anyway")
        return False

    def _start_zookeeper(self, zk_ip: str) -> None:
        from manatee_testbed import zookeeper as zkmod

        st = self.st
        port = 2181 if port_free(zk_ip, 2181) else None
        server = zkmod.ZooKeeperServer(
            self.dir / "zookeeper", host=zk_ip, port=port, tick_ms=st.zk_tick_ms,
            max_session_ms=max(60000, 2 * st.session_timeout_ms),
        )
        self.out(f"starting ZooKeeper on {server.connect_string}")
        server.start(timeout=60)
        # Outlive this command: the harness kills servers it started at interpreter exit.
        zkmod._LIVE.discard(server)
        st.zk_host, st.zk_port, st.zk_pid = zk_ip, server.port, server.pid
        self.save()

    def _start_zk_ensemble(self, zk_ip: str, size: int) -> None:
        """`size` servers on the ZooKeeper address (base dirs zookeeper/zk1..zkN), with the
        standalone's tick and max session; ports and pids are recorded as soon as they exist."""
        from manatee_testbed import zookeeper as zkmod

        st = self.st
        ens = zkmod.ZooKeeperEnsemble(
            self.dir / "zookeeper", size=size, tick_ms=st.zk_tick_ms, host=zk_ip,
            max_session_ms=max(60000, 2 * st.session_timeout_ms),
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
        from manatee_testbed import zookeeper as zkmod

        zkmod._LIVE.discard(server)
        if server._proc is not None:
            _CHILDREN.append(server._proc)

    def _create_pool(self) -> None:
        from manatee_testbed.zfspool import ZfsPool, ensure_zfs_fuse

        st = self.st
        handle = ensure_zfs_fuse(log_path=self.dir / "zfs-fuse.log")
        if handle.started:
            st.zfs_fuse_pid = handle.pid
        pool = ZfsPool(self.dir / "zpool", f"msandbox{st.id}", size="4G")
        st.pool, st.pool_file = pool.name, str(pool.file)
        self.save()
        self.out(f"creating ZFS pool {pool.name} on {pool.file}")
        pool.create()
        # The handle's shared lock would be dropped at exit anyway; the pool keeps any
        # other user of zfs-fuse from stopping the daemon while the sandbox lives.
        if handle._users_fd is not None:
            os.close(handle._users_fd)
            handle._users_fd = None

    def _start_node(self, node: NodeState, which: tuple[str, ...] = DAEMONS) -> list[str]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        started = []
        for daemon in which:
            pid = node.pids.get(daemon)
            if pid and pid_alive(pid):
                continue
            cmd = daemon_command(daemon, node.config_path(daemon))
            log = open(node.log_path(daemon), "ab")
            log.write(f"--- manatee-sandbox start {time.strftime('%F %T')}: {' '.join(cmd)}\n".encode())
            log.flush()
            grp = node.cgroup
            pre = (lambda: cgroups.join_self(grp)) if grp else None
            try:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        cwd=node.dir, env=env, start_new_session=True, preexec_fn=pre)
            finally:
                log.close()
            node.pids[daemon] = proc.pid
            _CHILDREN.append(proc)
            started.append(daemon)
        self.out(f"node {node.name} ({node.ip}): started {', '.join(started) or 'nothing (already running)'}")
        return started

    # -- observing ----------------------------------------------------------------------
    def node_pids(self, node: NodeState) -> list[int]:
        """Every live process of the node: its cgroup, its daemons and their descendants,
        and the postmaster of its data directory."""
        reap_children()
        pids: list[int] = []
        if node.cgroup:
            pids += cgroups.pids(node.cgroup)
        roots = [p for p in node.pids.values() if pid_alive(p)] + postgres_pids(node.data_dir)
        pids += roots + descendants(roots)
        seen: list[int] = []
        for p in pids:
            if p not in seen and pid_alive(p):
                seen.append(p)
        return seen

    def node_status(self, node: NodeState) -> dict[str, Any]:
        procs = {d: {"pid": p, "alive": pid_alive(p)} for d, p in node.pids.items()}
        pm = postmaster_pid(node.data_dir)
        procs["postgres"] = {"pid": pm, "alive": pm is not None}
        hung = any(v["alive"] and stopped(v["pid"]) for v in procs.values() if v["pid"])
        try:
            part = network.partitioned(node.ip, self.st.nft_prefix)
        except (network.NftError, OSError):
            part = None
        code, body = (0, None) if hung else http_json(f"{node.status_url}/state", timeout=1.0, ctx=node.client_ctx())
        if isinstance(body, dict):
            role = str(body.get("role") or "unknown")
        elif hung:
            role = "hung"
        elif not procs.get("sitter", {}).get("alive"):
            role = "down"
        else:
            role = "unreachable"
        return {
            "name": node.name,
            "address": node.ip,
            "role": role,
            "generation": body.get("generation") if isinstance(body, dict) else None,
            "pg": body.get("pg") if isinstance(body, dict) else None,
            "pgUrl": node.pg_url,
            "statusUrl": f"{node.status_url}/state",
            "socketDir": node.socket_dir,
            "logDir": node.dir,
            "dataset": node.dataset,
            "partitioned": part,
            "hung": hung,
            "processes": procs,
        }

    def zk_state(self, timeout: float = 3.0) -> Any:
        """/manatee/<shard>/state from ZooKeeper (None if absent or unreachable)."""
        from kazoo.client import KazooClient
        from kazoo.handlers.threading import KazooTimeoutError

        zk = KazooClient(hosts=self.st.zk_connect, timeout=timeout)
        try:
            zk.start(timeout=timeout)
        except KazooTimeoutError:
            return None
        try:
            data, _ = zk.get(f"{self.st.shard_path}/state")
            return json.loads(data) if data else None
        except Exception:  # noqa: BLE001 - absent node, bad JSON: "no state yet"
            return None
        finally:
            with contextlib.suppress(Exception):
                zk.stop()
                zk.close()

    def status(self) -> dict[str, Any]:
        st = self.st
        zk: dict[str, Any] = {"connect": st.zk_connect, "pid": st.zk_pid,
                              "alive": bool(st.zk_pid and pid_alive(st.zk_pid)),
                              "log": str(self.dir / "zookeeper" / "zookeeper.log")}
        if st.zk_servers:
            modes = self.zk_modes()
            zk["servers"] = [
                {"index": i, "myid": r.myid, "connect": f"{st.zk_host}:{r.client_port}",
                 "quorumPort": r.quorum_port, "electionPort": r.election_port, "pid": r.pid,
                 "alive": self._zk_rec_running(r), "mode": modes[i],
                 "log": str(self.dir / "zookeeper" / f"zk{r.myid}" / "zookeeper.log")}
                for i, r in enumerate(st.zk_servers)
            ]
            zk["alive"] = all(s["alive"] for s in zk["servers"])
            zk["log"] = str(self.dir / "zookeeper" / "zk*" / "zookeeper.log")
        return {
            "dir": st.dir,
            "shard": st.shard_path,
            "sessionTimeoutMs": st.session_timeout_ms,
            "zookeeper": zk,
            "pool": {"name": st.pool, "file": st.pool_file},
            "nodes": [self.node_status(n) for n in st.nodes],
        }

    def describe(self) -> dict[str, Any]:
        return self.status()

    def primary(self) -> NodeState | None:
        for n in self.st.nodes:
            code, body = http_json(f"{n.status_url}/state", timeout=1.0, ctx=n.client_ctx())
            if isinstance(body, dict) and body.get("role") == "primary":
                return n
        return None

    def write_probe(self, node: NodeState, timeout_s: int = 5) -> tuple[bool, str]:
        """Commit one row on `node` through its unix socket. A commit acknowledged only
        because the sync-replication wait was cancelled does not count."""
        import psycopg2

        try:
            conn = psycopg2.connect(host=node.socket_dir, port=node.pg_port, user="postgres",
                                    dbname="postgres", connect_timeout=3,
                                    options=f"-c statement_timeout={timeout_s * 1000}")
        except psycopg2.Error as e:
            return False, f"connect: {str(e).strip()}"
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("create table if not exists sandbox_probe "
                            "(id bigserial primary key, at timestamptz not null default now(), note text)")
                cur.execute("insert into sandbox_probe (note) values (%s)", (f"probe {time.time():.3f}",))
            warned = [n for n in conn.notices if "synchronous replication" in n]
            if warned:
                return False, "commit not confirmed by the sync: " + warned[-1].strip()
            return True, "ok"
        except psycopg2.Error as e:
            return False, str(e).strip().splitlines()[0]
        finally:
            conn.close()

    def health(self) -> tuple[bool, str, list[dict[str, Any]]]:
        """(healthy, why not, node statuses). Healthy: one primary, one sync, the rest
        async (by the sitters and by ZooKeeper's state), and a write commits."""
        nodes = [self.node_status(n) for n in self.st.nodes]
        roles = [n["role"] for n in nodes]
        want_async = max(0, len(nodes) - 2)
        if roles.count("primary") != 1:
            return False, f"{roles.count('primary')} primaries", nodes
        if len(nodes) >= 2 and roles.count("sync") != 1:
            return False, f"{roles.count('sync')} syncs", nodes
        if roles.count("async") != want_async:
            return False, f"{roles.count('async')} asyncs (want {want_async})", nodes
        for n in nodes:  # every PostgreSQL up, every standby streaming (restores done)
            pg = n.get("pg")
            if isinstance(pg, dict):
                if not pg.get("running"):
                    return False, f"PostgreSQL of {n['name']} not running yet", nodes
                if n["role"] in ("sync", "async") and pg.get("streaming") is False:
                    return False, f"{n['name']} not streaming yet", nodes
        zs = self.zk_state()
        if not isinstance(zs, dict) or not zs.get("primary"):
            return False, "no primary in ZooKeeper's state yet", nodes
        if len(nodes) >= 2 and not zs.get("sync"):
            return False, "no sync in ZooKeeper's state yet", nodes
        if want_async and len(zs.get("async") or []) < want_async:
            return False, "asyncs missing from ZooKeeper's state", nodes
        primary = self.st.node(nodes[roles.index("primary")]["name"])
        ok, why = self.write_probe(primary)
        return ok, ("" if ok else f"write on primary {primary.name}: {why}"), nodes

    def wait_healthy(self, timeout: float, dead_grace: float = 15.0) -> list[dict[str, Any]]:
        began = time.monotonic()
        deadline = began + timeout
        last = ""
        while True:
            ok, why, nodes = self.health()
            line = ", ".join(f"{n['name']}={n['role']}" for n in nodes)
            if ok:
                return nodes
            if line + why != last:
                self.out(f"  waiting: {line} ({why})")
                last = line + why
            dead = [f"{n['name']}:{d}" for n in nodes for d, p in n["processes"].items()
                    if d != "postgres" and not p["alive"]]
            if time.monotonic() > deadline or (dead and time.monotonic() - began > dead_grace):
                detail = []
                for n in nodes:
                    node = self.st.node(n["name"])
                    detail.append(f"--- node {n['name']} ({n['address']}): role {n['role']}; "
                                  f"last lines of {node.log_path('sitter')}:\n{tail(node.log_path('sitter'))}")
                reason = f"daemons exited: {', '.join(dead)}" if dead else f"not healthy after {timeout:.0f}s"
                raise SandboxError(f"shard not healthy: {reason} ({why}); roles: {line}\n" + "\n".join(detail)
                                   + f"\n(the sandbox is left as it is for inspection; `down --dir {self.dir}` removes it)")
            time.sleep(0.5)

    # -- faults -------------------------------------------------------------------------
    def kill(self, name: str) -> list[int]:
        """Host death: every process of the node frozen, then SIGKILLed (PostgreSQL too)."""
        node = self.st.node(name)
        with dir_lock(self.dir):
            return self._kill_node(node)

    def _kill_node(self, node: NodeState, timeout: float = 10.0) -> list[int]:
        try:
            return cgroups.power_cut(lambda: self.node_pids(node), f"node {node.name}", timeout)
        except TimeoutError as e:
            raise SandboxError(str(e)) from None

    def stop(self, name: str, timeout: float = 90.0) -> list[str]:
        """Graceful: SIGTERM the daemons (the sitter stops PostgreSQL and hands over), wait;
        whatever is left after `timeout` is killed."""
        node = self.st.node(name)
        with dir_lock(self.dir):
            return self._stop_node(node, timeout)

    def _stop_node(self, node: NodeState, timeout: float) -> list[str]:
        alive = {d: p for d, p in node.pids.items() if pid_alive(p)}
        _resume_pids(self.node_pids(node))  # a hung node cannot stop gracefully
        for p in alive.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(pid_alive(p) for p in alive.values()):
            time.sleep(0.1)
        forced = [d for d, p in alive.items() if pid_alive(p)]
        if self.node_pids(node):
            self._kill_node(node)
        if forced:
            self.out(f"node {node.name}: {', '.join(forced)} did not stop within {timeout:.0f}s; killed")
        return list(alive)

    def start(self, name: str) -> list[str]:
        node = self.st.node(name)
        with dir_lock(self.dir):
            if postmaster_pid(node.data_dir) and not pid_alive(node.pids.get("sitter", 0) or 0):
                raise SandboxError(f"node {name}: PostgreSQL (pid {postmaster_pid(node.data_dir)}) runs without "
                                   f"its sitter; `kill {name}` first")
            if node.cgroup:
                cgroups.create(node.cgroup)
                self._source_nat(node)
            started = self._start_node(node)
            self.save()
            return started

    def add_node(self, start: bool = True) -> NodeState:
        """A further node (next letter, next address) made the way `create` makes nodes —
        ports, empty dataset, configs, cgroup and source address — and, with start=True,
        its daemons started: its sitter joins the election and restores from its leader."""
        with dir_lock(self.dir):
            st = self.st
            if not st.nodes or not st.pool or not st.pool_file:
                raise SandboxError("add_node needs a created sandbox (run `up` first)")
            last = st.nodes[-1]
            if last.name >= "z":
                raise SandboxError(f"no node name left after {last.name!r}")
            name = chr(ord(last.name) + 1)
            ip = str(ipaddress.IPv4Address(last.ip) + 1)
            if int(ipaddress.IPv4Address(ip)) & 0xFF in (0, 255):
                raise SandboxError(f"no address left after {last.ip}")
            taken = {(n.ip, p) for n in st.nodes for p in (n.pg_port, n.status_port, n.backup_port, n.zfs_port)}
            node = self._new_node(name, ip, taken)
            st.nodes.append(node)
            write_security_files(st)
            write_node_configs(st, node)
            self.save()  # from here on `down` knows the node
            from manatee_testbed.zfspool import ZfsPool

            Path(node.mountpoint).parent.mkdir(parents=True, exist_ok=True)
            ZfsPool(Path(st.pool_file).parent, st.pool).create_dataset(f"{name}/pg", Path(node.mountpoint))
            if node.cgroup:
                cgroups.create(node.cgroup)
                self._source_nat(node)
            if start:
                self._start_node(node)
            self.save()
        return node

    def peers_of(self, node: NodeState) -> list[str]:
        return [self.st.zk_host] + [n.ip for n in self.st.nodes if n.name != node.name]

    def partition(self, name: str) -> str:
        node = self.st.node(name)
        others = [n.cgroup for n in self.st.nodes if n.name != name and n.cgroup]
        try:
            return network.partition(node.ip, self.peers_of(node), self.st.nft_prefix,
                                     cgroup=node.cgroup, peer_cgroups=others)
        except network.NftError as e:
            raise SandboxError(f"partition of node {name} failed: {e}") from None

    def heal(self, name: str) -> bool:
        node = self.st.node(name)
        try:
            return network.heal(node.ip, self.st.nft_prefix)
        except network.NftError as e:
            raise SandboxError(f"heal of node {name} failed: {e}") from None

    def hang(self, name: str) -> list[int]:
        """A hung host: every process of the node stopped (its daemons lead their own
        process groups; PostgreSQL and children are reached through the cgroup/tree)."""
        node = self.st.node(name)
        pids = self.node_pids(node)
        if not pids:
            raise SandboxError(f"node {name} has no running process to hang")
        _hang_pids(pids)
        return pids

    def resume(self, name: str) -> list[int]:
        node = self.st.node(name)
        pids = self.node_pids(node)
        _resume_pids(pids)
        return pids

    # -- ZooKeeper outages (F10, F11, the nemesis) ---------------------------------------
    def _zk_server(self):
        """A handle on the sandbox's ZooKeeper with the config `up` gave it (same address,
        port, tick and data dir), so a restart serves the same znodes and sessions."""
        from manatee_testbed import zookeeper as zkmod

        st = self.st
        return zkmod.ZooKeeperServer(
            self.dir / "zookeeper", host=st.zk_host, port=st.zk_port, tick_ms=st.zk_tick_ms,
            max_session_ms=max(60000, 2 * st.session_timeout_ms),
        )

    def _zk_member(self, i: int):
        """A handle on ensemble server `i` (0-based; base dir zookeeper/zk<myid>) with the
        config `up` gave it, so that it rejoins with the same ports, myid and data."""
        from manatee_testbed import zookeeper as zkmod

        st = self.st
        rec = self._zk_rec(i)
        peers = [(z.myid, st.zk_host, z.quorum_port, z.election_port) for z in st.zk_servers]
        return zkmod.ZooKeeperServer(
            self.dir / "zookeeper" / f"zk{rec.myid}", host=st.zk_host, port=rec.client_port,
            tick_ms=st.zk_tick_ms, max_session_ms=max(60000, 2 * st.session_timeout_ms),
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
        from manatee_testbed.zookeeper import four_letter_word

        st = self.st
        ports = [r.client_port for r in st.zk_servers] if st.zk_servers else [st.zk_port]
        modes: list[str | None] = []
        for port in ports:
            mode = None
            for line in four_letter_word(st.zk_host, port, "srvr").splitlines():
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
        from manatee.core.procs import kill_tree

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
        from manatee_testbed import zookeeper as zkmod

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
        from manatee_testbed import zookeeper as zkmod

        if self.st.zk_servers:
            return self._zk_start_ensemble(None, timeout)[0]
        with dir_lock(self.dir):
            st = self.st
            if st.zk_pid and pid_alive(st.zk_pid) and self._is_our_zk(st.zk_pid):
                return st.zk_pid
            if not st.zk_port:
                raise SandboxError("this sandbox has no ZooKeeper address recorded (was `up` interrupted?)")
            server = self._zk_server()
            try:
                server.start(timeout=timeout)
            except zkmod.ZooKeeperStartError as e:
                raise SandboxError(f"ZooKeeper {st.zk_connect} did not start again: {e}") from None
            zkmod._LIVE.discard(server)  # outlives this command, like the one `up` started
            if server._proc is not None:
                _CHILDREN.append(server._proc)  # reaped here while this process lives
            st.zk_pid = server.pid
            self.save()
        self.out(f"ZooKeeper {st.zk_connect} started again (pid {st.zk_pid})")
        return st.zk_pid

    def psql_argv(self, name: str | None, extra: list[str]) -> list[str]:
        node = self.st.node(name) if name else self.primary()
        if node is None:
            raise SandboxError("no node reports itself primary right now (see `status`); name a node: psql NODE")
        psql = shutil.which("psql") or f"{PG_BIN}/psql"
        return [psql, "-h", node.socket_dir, "-p", str(node.pg_port), "-U", "postgres", "-d", "postgres", *extra]

    # -- down ---------------------------------------------------------------------------
    def down(self, keep: bool = False) -> list[str]:
        """Stop and remove everything this sandbox made, from whatever state it is in.
        Returns problems that could not be fixed (empty when all is gone)."""
        problems: list[str] = []
        st = self.st
        from manatee_testbed import grayfaults  # its helpers and tables (it imports this module)

        with contextlib.suppress(Exception):
            grayfaults.undo_all(self, zk=False)
        with dir_lock(self.dir):
            for n in st.nodes:
                for prefix in (st.nft_prefix, network.SNAT_PREFIX):
                    try:
                        network.heal(n.ip, prefix)
                    except (network.NftError, OSError) as e:
                        problems.append(f"nftables table of node {n.name}: {e}")
            # graceful first (quick), then nothing may survive
            for n in st.nodes:
                for p in self.node_pids(n):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p, signal.SIGCONT)
                for p in n.pids.values():
                    if pid_alive(p):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(p, signal.SIGTERM)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and any(pid_alive(p) for n in st.nodes for p in n.pids.values()):
                time.sleep(0.1)
            for n in st.nodes:
                try:
                    self._kill_node(n)
                except SandboxError as e:
                    problems.append(str(e))
                shm = postmaster_shm(n.data_dir)
                if shm is not None:
                    subprocess.run(["ipcrm", "-m", str(shm)], capture_output=True)
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
            if st.pool:
                from manatee_testbed.zfspool import ZfsPool, pool_names

                try:
                    ZfsPool(Path(st.pool_file or self.dir / "zpool").parent, st.pool).destroy()
                except Exception as e:  # noqa: BLE001 - report and go on cleaning
                    problems.append(f"pool {st.pool}: {e}")
                if st.zfs_fuse_pid:
                    self._stop_zfs_fuse(st.zfs_fuse_pid, pool_names)
            if st.cgroup and not cgroups.remove(st.cgroup):
                problems.append(f"cgroup {st.cgroup} stays busy")
            for n in st.nodes:
                shutil.rmtree(n.socket_dir, ignore_errors=True)
            left = mounts_under(self.dir) + (mounts_under(st.data_root) if st.data_root else [])
            if left:  # never walk into a mounted (maybe hung) filesystem
                problems.append(f"still mounted: {', '.join(left)}")
            if problems:
                problems.append(f"{state_path(self.dir)} is kept: `down` again once the above is fixed")
                return problems
            if st.data_root:
                shutil.rmtree(st.data_root, ignore_errors=True)
            if keep:
                state_path(self.dir).rename(self.dir / "sandbox.json.down")
            else:
                for entry in self.dir.iterdir():
                    if entry.name == "lock":
                        continue
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
        if not keep:
            with contextlib.suppress(OSError):
                (self.dir / "lock").unlink()
                self.dir.rmdir()
        self._st = None
        return problems

    def _is_our_zk(self, pid: int, myid: int | None = None) -> bool:
        """`pid` runs this sandbox's ZooKeeper (its zoo.cfg on the command line); with
        `myid`, that ensemble server's (zookeeper/zk<myid>/zoo.cfg)."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return False
        if myid is not None:
            return str(self.dir / "zookeeper" / f"zk{myid}" / "zoo.cfg") in cmdline
        return str(self.dir / "zookeeper") in cmdline

    @staticmethod
    def _stop_zfs_fuse(pid: int, pool_names) -> None:
        """Stop the zfs-fuse daemon this sandbox started, unless anyone else uses it."""
        from manatee_testbed import zfspool

        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return
        if comm != "zfs-fuse" or not pid_alive(pid):
            return
        fd = os.open(zfspool.START_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if pool_names():
                return
            ufd = os.open(zfspool.USERS_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(ufd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            finally:
                os.close(ufd)
            terminate(pid, timeout=15, group=False)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
