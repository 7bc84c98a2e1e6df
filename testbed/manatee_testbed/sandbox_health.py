"""What the sandbox is doing: each node's role, processes and partition; the shard's
health (one primary, one sync, the rest async, by the sitters and by ZooKeeper, and a write
that commits); `up` waits on it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from manatee.core.httpjson import http_json
from manatee.core.procs import pid_alive
from manatee_testbed import network
from manatee_testbed.hang import stopped
from manatee_testbed.proctable import postmaster_pid
from manatee_testbed.sandbox_state import NodeState, SandboxError
from manatee_testbed.sandbox_zk import ZooKeeperOps


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


class HealthOps(ZooKeeperOps):
    """Status and health (a part of `Sandbox`)."""

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
