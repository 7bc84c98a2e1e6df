"""Gray faults in ZooKeeper's data: a malformed election node (a persistent sequential node
whose data lacks every key but `ip`), and the shard's `state` znode overwritten with bytes
that are not JSON (the good state saved, put back only if the znode still holds the garbage)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from manatee_testbed.grayfaults.record import load, update
from manatee.shard.layout import ShardLayout
from manatee_testbed.sandbox import Sandbox
from manatee_testbed.sandbox_state import SandboxError

ROGUE_IP = "127.0.0.99"
BAD_STATE = b"{not json: a malformed state written by manatee-sandbox bad-state"


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
    update(sb, "rogue", [*rec, path])
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
    update(sb, "rogue", None)
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
    update(sb, "bad_state", rec)
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
    update(sb, "bad_state", None)
    return done

