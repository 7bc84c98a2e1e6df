"""The sandbox's state file: DIR/sandbox.json, the source of truth for every command, and
the lock that serialises the commands that change it.

Everything the sandbox starts is recorded here as soon as it exists, so a later, separate
invocation (`status`, `kill b`, `down`) finds the shard, and `down` can clean up after a
half-finished `up`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from manatee.shard.layout import ShardLayout
from manatee.shard.pgurl import PgUrl
from manatee_testbed.sockdirs import default_socket_dir
from manatee_testbed.zfspool import flock

STATE_FILE = "sandbox.json"
STATE_VERSION = 1
NFT_PREFIX = "manatee_part"


class SandboxError(Exception):
    """Something the operator must act on; the message is one clear line."""


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
        return default_socket_dir(self.ip, self.pg_port)

    @property
    def pg_url(self) -> str:
        return str(PgUrl.for_node(self.ip, self.pg_port, "postgres"))

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
    #: `up --health-timeout`: healthChkTimeout in ms (None: derived from the session timeout)
    health_timeout_ms: int | None = None
    #: `up --expiration`: heartbeatCfg.expirationTime in ms (None: derived from the session timeout)
    expiration_ms: int | None = None
    created: float = field(default_factory=time.time)
    version: int = STATE_VERSION

    @property
    def secret_file(self) -> str:
        """The shard secret's file (0600), read by every node's sitter and backupserver."""
        return os.path.join(os.path.abspath(self.dir), "shard.secret")

    @property
    def layout(self) -> ShardLayout:
        return ShardLayout.of(self.shard)

    @property
    def shard_path(self) -> str:
        return self.layout.root

    @property
    def zk_max_session_ms(self) -> int:
        """The servers' maxSessionTimeout: room for the sitters' session timeout."""
        return max(60000, 2 * self.session_timeout_ms)

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
    with flock(Path(dir) / "lock", mode=0o644):
        yield


class SandboxBase:
    """The sandbox in `dir` and its state (loaded on first use); `out` receives progress
    lines. The base of `Sandbox` and of each part it is made of."""

    def __init__(self, dir: Path | str = ".sandbox", out: Callable[[str], None] = print):
        self.dir = Path(dir).resolve()
        self.out = out
        self._st: SandboxState | None = None

    @property
    def st(self) -> SandboxState:
        if self._st is None:
            self._st = load_state(self.dir)
        return self._st

    def exists(self) -> bool:
        return state_path(self.dir).exists()

    def save(self) -> None:
        save_state(self.st)
