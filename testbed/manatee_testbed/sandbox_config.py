"""The sandbox's config writer: node names and addresses, each node's ports, and the three
daemons' config files (validated by each daemon's own model) plus the shard's secret, TLS
and ZooKeeper-credential files."""

from __future__ import annotations

import ipaddress
import json
import os
import pwd
from pathlib import Path
from typing import Any

from manatee.core.config import ConfigError, validate
from manatee.core.procs import free_port
from manatee_testbed.sandbox_state import NodeState, SandboxError, SandboxState

#: The role sandbox standbys replicate as (REPLICATION, not a superuser).
REPLICATION_USER = "replicator"
DEFAULT_PORTS = {"pg": 5432, "status": 5433, "zfs": 10001, "backup": 10002}
PG_BIN = "/usr/lib/postgresql/15/bin"
ZFS_BIN = "/usr/sbin/zfs"


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


def timing(session_timeout_ms: int, health_timeout_ms: int | None = None,
           expiration_ms: int | None = None) -> dict[str, int]:
    """Heartbeat and health-check periods derived from the session timeout (healthChkTimeout
    and expirationTime as given, if they are)."""
    st = session_timeout_ms
    hb = max(200, min(1000, st // 8))
    return {
        "heartbeatInterval": hb,
        # not below 2 s: a new sync rebuilding its first copy sends no heartbeat (T = 1 s
        # replaced it twice before it had finished: docs/benchmarks.md, P1 at T = 1 s)
        "expirationTime": expiration_ms or max(2000, st),
        "requestTimeout": max(200, min(2000, 2 * hb)),
        "healthChkInterval": max(200, min(1000, st // 8)),
        # not below 2 s: at 1 s a loaded async's status query (0.5 s limit) went unanswered
        # for 1 s and the sitter killed PostgreSQL as hung (bench/loaded_soak.py, T = 1 s)
        "healthChkTimeout": health_timeout_ms or max(2000, min(5000, st // 2)),
    }


def sitter_config(st: SandboxState, node: NodeState, nodes_total: int) -> dict[str, Any]:
    t = timing(st.session_timeout_ms, st.health_timeout_ms, st.expiration_ms)
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
