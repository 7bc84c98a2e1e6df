"""Real shard (T = 4 s): a node tagged nofailover joins as an async and is never chosen as
sync or primary across a failover (F1: the primary's sitter and PostgreSQL killed) and the
loss of the next sync (F3), when it is the only standby left that the untagged code would
have named: the primary then waits (read-only) for an eligible node instead."""

from __future__ import annotations

import json
import threading
import time

import pytest

from tests.shard_fixture import NEEDS_SHARD, Shard, SharedShard, names, say

pytestmark = [*NEEDS_SHARD, pytest.mark.timeout(600)]


SHARD = SharedShard("tags", 4000, retire=True)  # a tagged fourth node, hooks in the configs


def test_nofailover_node_is_never_sync_or_primary_across_a_failover(shard: Shard):
    sh = shard
    p, s, a = names(sh.topology())
    d = sh.sb.add_node(start=False)
    cfg_path = d.config_path("sitter")
    cfg = json.loads(cfg_path.read_text())
    cfg["tags"] = {"nofailover": True}
    cfg_path.write_text(json.dumps(cfg, indent=2))
    sh.sb.start(d.name)
    sh.wait(lambda: d.name in sh.topology()["async"] and sh.streaming(d), 240, f"tagged {d.name} to stream as an async")
    say(f"tags: {d.name} (nofailover) streams as an async: {sh.topology()}")
    seen: list[dict] = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            seen.append(sh.topology())
            time.sleep(0.2)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        t0 = time.monotonic()
        sh.sb.kill(p)
        say(f"tags: killed primary {p}; sync {s}, async {a}, tagged async {d.name}")
        sh.wait(lambda: sh.topology()["primary"] == s and sh.topology()["sync"] is not None, 60,
                f"{s} to take over with a sync")
        top = sh.topology()
        say(f"tags: after {time.monotonic() - t0:.1f}s: {top}")
        assert top["sync"] == a, top
        # F3: the new sync dies too; the tagged node is the only live standby left
        t1 = time.monotonic()
        sh.sb.kill(a)
        say(f"tags: killed the new sync {a}; only {d.name} (nofailover) is left to be a sync")
        time.sleep(sh.session_s + 4)  # its session expires; the primary looks for a new sync
        top = sh.topology()
        say(f"tags: {time.monotonic() - t1:.1f}s after killing {a}: {top}")
        assert top["primary"] == s and top["sync"] != d.name, top
        sh.sb.start(p)  # an eligible node comes back: it becomes the sync
        sh.wait(lambda: sh.topology()["sync"] == p, 120, f"the restarted {p} to become the sync")
        say(f"tags: {p} back as the sync: {sh.topology()}")
    finally:
        stop.set()
        t.join(2)
        for n in (p, a):
            if not sh.sb.node_pids(sh.node(n)):
                sh.sb.start(n)
    for top in seen:
        assert d.name not in (top["primary"], top["sync"]), f"nofailover {d.name} got a role: {top}"
    st = sh.state_of(d)
    assert st and st["role"] == "async"
    say(f"tags: {len(seen)} topology samples, {d.name} never sync or primary")


def test_role_change_hook_runs_on_every_role_change_in_a_failover(shard: Shard):
    sh = shard
    logs = {}
    for n in sh.nodes:  # a hook per node (its own log), restarting each sitter to load it
        log = sh.dir / f"hook-{n.name}.log"
        hook = sh.dir / f"hook-{n.name}.sh"
        hook.write_text(f'#!/bin/sh\necho "$1 $2 $3" >> {log}\n')
        hook.chmod(0o755)
        logs[n.name] = log
        cfg_path = n.config_path("sitter")
        cfg = json.loads(cfg_path.read_text())
        cfg["hooks"] = {"onRoleChange": str(hook), "timeout": 5000}
        cfg_path.write_text(json.dumps(cfg, indent=2))
    top = sh.topology()
    for name in [*reversed(top["async"]), top["sync"], top["primary"]]:  # the primary last (a handover)
        sh.sb.stop(name)
        sh.sb.start(name)
        sh.wait_healthy()
    p, s, a = names(sh.topology())
    say(f"hooks loaded; topology {sh.topology()}")
    sh.wait(lambda: logs[s].exists() and logs[s].read_text().strip(), 10, f"{s}'s hook at its start")
    seen = {k: (v.read_text() if v.exists() else "") for k, v in logs.items()}
    t0 = time.monotonic()
    sh.sb.kill(p)
    sh.wait(lambda: sh.topology()["primary"] == s and sh.topology()["sync"] is not None, 60, f"{s} to take over")
    new_sync = sh.topology()["sync"]
    shard_path = sh.sb.st.shard_path
    sh.wait(lambda: f"on_role_change primary {shard_path}" in logs[s].read_text()[len(seen[s]):], 15,
            f"the hook of {s} to run as primary")
    sh.wait(lambda: f"on_role_change sync {shard_path}" in logs[new_sync].read_text()[len(seen[new_sync]):], 15,
            f"the hook of {new_sync} to run as sync")
    say(f"hooks: {s} primary and {new_sync} sync hooks ran within {time.monotonic() - t0:.1f}s of the kill")
    sh.sb.start(p)
    sh.wait(lambda: "on_role_change " in logs[p].read_text()[len(seen[p]):], 60, f"the hook of the restarted {p}")
    say(f"hooks: {p} rejoined: {logs[p].read_text()[len(seen[p]):].strip()}")
