"""A sandbox shard seen as a client sees it: the sitters' status endpoints (/state,
/primary, /replica) and the shard's znodes. Nothing here changes the shard.

Why a module of its own: the fault soak (nemesis.py), the fault tests (tests/shard_fixture.py
extends ShardView) and anything else that drives a sandbox shard need the same view — the
DSN a client uses, which node is the writable primary, the topology by node name, the
history — and it must be the same code, so that they all judge the shard the same way.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable

from manatee_testbed.sandbox import Sandbox
from manatee_testbed.sandbox_health import tail
from manatee_testbed.sandbox_state import NodeState
from manatee.core.httpjson import http_json
from manatee.shard.history import parse_record, sort_records
from manatee.shard.layout import ShardLayout
from manatee.shard.state import parse_error_node

__all__ = ["client_dsn", "read_history", "ShardView"]


def client_dsn(sb: Sandbox, node: NodeState, passfile: Path | str) -> str:
    """A client's TCP DSN for `node`, as the superuser with the admin password (adminAuth;
    the replication password opens no database session). Over TCP the writer's `node`
    column names the node that executed each insert (S1 needs that); the password sits
    in `passfile` (created on first use) so that it never appears in logged DSNs."""
    st = sb.st
    pw = ""
    if st.auth_method != "trust":
        pf = Path(passfile)
        if not pf.exists():
            pf.touch(mode=0o600)
            pf.write_text(f"*:*:*:postgres:{st.admin_password}\n")
        pw = f" passfile={pf}"
    return f"host={node.ip} port={node.pg_port} user=postgres dbname=postgres{pw} connect_timeout=3"


def _zk_read(connect: str, fn: Callable[[Any], Any], timeout: float = 5.0) -> Any:
    """Run fn(client) on a short-lived ZooKeeper client (one per read: a soak restarts
    ZooKeeper, and a long-lived client would only add its own reconnects to the picture)."""
    from kazoo.client import KazooClient

    zk = KazooClient(hosts=connect, timeout=timeout)
    try:
        zk.start(timeout=timeout)
        return fn(zk)
    finally:
        with contextlib.suppress(Exception):
            zk.stop()
            zk.close()


def read_history(connect: str, shard_path: str) -> list[dict]:
    """<shard_path>/history as the guide's records, in zkSeq order."""
    def get(zk: Any) -> list[dict]:
        lay = ShardLayout(shard_path)
        out = []
        for c in zk.get_children(lay.history):
            data, _ = zk.get(lay.history_node(c))
            out.append(parse_record(c, data))
        return sort_records(out)

    return _zk_read(connect, get)


class ShardView:
    """A sandbox shard seen as a client sees it: the sitters' status endpoints and the
    shard's znodes. Nothing here changes the shard."""

    def __init__(self, sb: Sandbox, passfile: Path | str | None = None):
        self.sb = sb
        self.passfile = Path(passfile) if passfile else sb.dir / "client.pgpass"

    @property
    def nodes(self) -> list[NodeState]:
        return list(self.sb.st.nodes)

    def by_ip(self, ip: str) -> NodeState:
        for n in self.nodes:
            if n.ip == ip:
                return n
        raise KeyError(f"no node with address {ip}")

    def dsn(self, node: NodeState) -> str:
        return client_dsn(self.sb, node, self.passfile)

    def state_of(self, node: NodeState, timeout: float = 1.0) -> dict | None:
        _code, body = http_json(f"{node.status_url}/state", timeout=timeout, ctx=node.client_ctx())
        return body if isinstance(body, dict) else None

    def roles(self) -> dict[str, str]:
        """name → role as each sitter reports it ('down' when nothing answers)."""
        out = {}
        for n in self.nodes:
            s = self.state_of(n)
            out[n.name] = str(s.get("role")) if s else "down"
        return out

    def writable(self, node: NodeState) -> bool:
        return http_json(f"{node.status_url}/primary", timeout=0.7, ctx=node.client_ctx())[0] == 200

    def streaming(self, node: NodeState) -> bool:
        return http_json(f"{node.status_url}/replica", timeout=0.7, ctx=node.client_ctx())[0] == 200

    def find_primary(self) -> str | None:
        """For a writer: the DSN of the one node whose sitter says it is the writable
        primary (None if none or — which S1 forbids — several)."""
        ok = [n for n in self.nodes if self.writable(n)]
        return self.dsn(ok[0]) if len(ok) == 1 else None

    # ZooKeeper ---------------------------------------------------------------------------
    def zk_state(self) -> dict | None:
        """The shard's state as JSON (None when absent, unreadable or ZooKeeper does not answer)."""
        return self.sb.zk_state(timeout=3.0)

    def safe_mode(self) -> dict | None:
        """The shard's error (safe-mode) node, or None (also when ZooKeeper is down)."""
        st = self.sb.st

        def get(zk: Any) -> dict | None:
            path = ShardLayout(st.shard_path).error
            if not zk.exists(path):
                return None
            data, _ = zk.get(path)
            return parse_error_node(data)[0]

        try:
            return _zk_read(st.zk_connect, get, timeout=3.0)
        except Exception:  # noqa: BLE001
            return None

    def history(self) -> list[dict]:
        return read_history(self.sb.st.zk_connect, self.sb.st.shard_path)

    def topology(self) -> dict[str, Any]:
        """The ZK state as node names: {generation, primary, sync, async: [...], deposed: [...]}."""
        s = self.zk_state() or {}

        def name(p: dict | None) -> str | None:
            if not p:
                return None
            try:
                return self.by_ip(p["ip"]).name
            except KeyError:
                return p.get("ip")

        return {"generation": s.get("generation"), "primary": name(s.get("primary")),
                "sync": name(s.get("sync")), "async": [name(a) for a in s.get("async") or []],
                "deposed": [name(a) for a in s.get("deposed") or []]}

    def healthy(self) -> tuple[bool, str]:
        """(healthy, why not): the Sandbox's health (one primary, one sync, the rest async,
        by the sitters and ZooKeeper; every PostgreSQL up; a write commits) and every
        standby's /replica answering 200."""
        try:
            ok, why, nodes = self.sb.health()
        except Exception as e:  # noqa: BLE001 - a half-broken shard must not stop the soak
            return False, f"health check failed: {type(e).__name__}: {e}"
        roles = ", ".join(f"{n['name']}={n['role']}" for n in nodes)
        if not ok:
            return False, f"{why} ({roles})"
        for n in nodes:
            if n["role"] in ("sync", "async") and not self.streaming(self.sb.st.node(n["name"])):
                return False, f"{n['name']} ({n['role']}) not streaming: /replica not 200 ({roles})"
        return True, roles

    def describe(self) -> str:
        lines = [f"roles: {self.roles()}", f"zk state: {self.topology()}"]
        for n in self.nodes:
            lines.append(f"--- {n.name} ({n.ip}) sitter log tail:\n{tail(n.log_path('sitter'), 12)}")
        return "\n".join(lines)
