"""Stale base marks released on real ZFS (zfs-fuse), with real backupservers answering.

A streams its dataset to B and to C (the real manatee-backupserver daemons mark the
snapshot sent with each receiver's address). Then B is rebuilt in full from elsewhere:
its dataset is destroyed and recreated, with no snapshot in common with A. A's check asks
B's and C's backupservers (signed, from A's address, at the backupUrl their election nodes
publish) about each marked snapshot: B's mark goes at the second check that B says it does
not hold it, C's (C still holds it) and a non-member's stay.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

from manatee.backupserver.basecheck import BaseMarkCheck, http_asker
from manatee.backupserver.membership import ShardMembership
from manatee.core.bases import parse_bases
from manatee.core.procs import free_port
from tests.backup_env import Env, env  # noqa: F401 - env is a fixture
from tests.fixtures_pg import random_loopback_ip

NOT_A_MEMBER = "127.0.0.250"


class Log:
    def __init__(self):
        self.events = []

    def __getattr__(self, level):
        return lambda event, **kw: self.events.append((event, kw))

    def named(self, event):
        return [kw for e, kw in self.events if e == event]


async def _marks_by_peer(env: Env, ds: str) -> dict[str, str]:
    """Peer address -> the snapshot (full name) of `ds` marked for it."""
    out = {}
    for snap, value in (await env.zfs.snapshot_bases(ds)).items():
        for peer in parse_bases(value):
            out[peer] = snap
    return out


async def _a_streamed_to_b_and_c(env: Env, **a_sender_cfg):
    """A (1 MB) with a backupserver; B and C restored from it in full, each with a backupserver
    of its own; A's marks for B and C written. Returns the addresses, A's dataset and B's."""
    ip_a, ip_b, ip_c = (random_loopback_ip() for _ in range(3))
    ds_a, mnt_a = env.dataset("a")
    (mnt_a / "data.bin").write_bytes(os.urandom(1 << 20))
    _, url_a = await env.backupserver(ds_a, ip_a, backupSenderCfg={"dataset": ds_a, **a_sender_cfg},
                                      logLevel="debug")
    datasets = {}
    for name, ip in (("b", ip_b), ("c", ip_c)):
        ds, mnt = env.dataset(name)
        await env.backupserver(ds, ip)
        res = await env.restore(env.zfs, dataset=ds, mountpoint=mnt, backup_url=url_a, listen_host=ip,
                                listen_port=free_port(ip), owner=None, poll_interval=0.05, timeout=60)
        assert res.path == "full"
        datasets[name] = (ds, mnt)
    deadline = time.monotonic() + 20
    while set(await _marks_by_peer(env, ds_a)) != {ip_b, ip_c}:  # the sender marks in the background
        assert time.monotonic() < deadline, (await env.zfs.snapshot_bases(ds_a), env.server_log())
        await asyncio.sleep(0.1)
    return ip_a, ip_b, ip_c, ds_a, datasets["b"]


async def _rebuilt_from_elsewhere(env: Env, ds_b: str, mnt_b: Path) -> None:
    """B's old dataset (with the snapshot it shared with A) is gone; a new one of other data."""
    await env.zfs.destroy(ds_b, recursive=True)  # retries while zfs-fuse still says "busy"
    env.pool.create_dataset(ds_b.split("/", 1)[1], mnt_b)
    (mnt_b / "other").write_text("streamed from another node")
    await env.zfs.snapshot(ds_b, "1000000000000")


async def test_a_mark_is_released_after_two_checks_saying_the_peer_no_longer_holds_it(env):
    ip_a, ip_b, ip_c, ds_a, (ds_b, mnt_b) = await _a_streamed_to_b_and_c(env)
    own = (await env.zfs.snapshot(ds_a, "1700000000000")).full
    await env.zfs.set(own, "manatee:bases", NOT_A_MEMBER)  # e.g. a peer gone for good
    marks = await _marks_by_peer(env, ds_a)

    log = Log()
    check = BaseMarkCheck(env.zfs, ds_a, peer_urls=ShardMembership(env.zk, env.shard).backup_urls,
                          ask=http_asker(ip_a, env.secret), lock=asyncio.Lock(), log=log)
    before = await check.check()
    assert before.kept == {(marks[ip_b], ip_b): "holds", (marks[ip_c], ip_c): "holds",
                           (own, NOT_A_MEMBER): "not_member"}, (before, env.server_log())

    await _rebuilt_from_elsewhere(env, ds_b, mnt_b)
    first = await check.check()
    assert first.kept[(marks[ip_b], ip_b)] == "absent_once" and first.released == ()
    assert await _marks_by_peer(env, ds_a) == marks  # one answer is not enough

    second = await check.check()
    assert [(s, p) for s, p, _ in second.released] == [(marks[ip_b], ip_b)]
    assert await _marks_by_peer(env, ds_a) == {ip_c: marks[ip_c], NOT_A_MEMBER: own}
    assert await env.zfs.get(marks[ip_b], "manatee:bases") == "-"
    [released] = log.named("base_released")
    assert released["snapshot"] == marks[ip_b] and released["peer"] == ip_b

    # The freed snapshot is an ordinary one again; the others stay marked at later checks.
    await check.check()
    assert await _marks_by_peer(env, ds_a) == {ip_c: marks[ip_c], NOT_A_MEMBER: own}


async def test_the_backupserver_runs_the_check_every_base_check_interval(env):
    ip_a, ip_b, ip_c, ds_a, (ds_b, mnt_b) = await _a_streamed_to_b_and_c(env, baseCheckInterval=1000)
    marks = await _marks_by_peer(env, ds_a)
    await _rebuilt_from_elsewhere(env, ds_b, mnt_b)
    deadline = time.monotonic() + 30
    while ip_b in await _marks_by_peer(env, ds_a):
        assert time.monotonic() < deadline, env.server_log()
        await asyncio.sleep(0.2)
    assert await _marks_by_peer(env, ds_a) == {ip_c: marks[ip_c]}
    events = [json.loads(line) for log in env.base.glob("backupserver-*.log")
              for line in log.read_text().splitlines() if line.startswith("{")]
    released = [e for e in events if e.get("event") == "base_released"]
    assert [(e["snapshot"], e["peer"]) for e in released] == [(marks[ip_b], ip_b)], released
    # the check before the release saw B without the snapshot once (and released nothing then)
    checks = [e for e in events if e.get("event") == "base_check" and e.get("dataset") == ds_a]
    assert any(e.get("kept_absent_once") == 1 and e["released"] == 0 for e in checks), checks


async def test_a_reaped_non_members_mark_is_released_at_once_until_it_is_named_again(env):
    """`manatee-adm reap` records Reaped in the history; the check reads the history's names
    (ShardMembership.reaped) and releases that address's marks at once, while a member's mark
    stays. A node named by a newer record (it came back) keeps its marks."""
    ip_a, ip_b, ip_c, ds_a, _b = await _a_streamed_to_b_and_c(env)
    own = (await env.zfs.snapshot(ds_a, "1700000000000")).full
    other = (await env.zfs.snapshot(ds_a, "1700000000001")).full
    await env.zfs.set(own, "manatee:bases", NOT_A_MEMBER)
    await env.zfs.set(other, "manatee:bases", "127.0.0.251")
    marks = await _marks_by_peer(env, ds_a)
    history = f"{env.shard}/history"
    await env.zk.create(f"{history}/1000-{NOT_A_MEMBER}-Reaped-Standby-{ip_a}--", b"", sequence=True, makepath=True)
    await env.zk.create(f"{history}/1001-127.0.0.251-Reaped-Standby-{ip_a}--", b"", sequence=True)
    await env.zk.create(f"{history}/1002-127.0.0.251-NewLeader-Standby-{ip_a}--", b"", sequence=True)  # back
    members = ShardMembership(env.zk, env.shard)
    assert await members.reaped() == {NOT_A_MEMBER}

    log = Log()
    check = BaseMarkCheck(env.zfs, ds_a, peer_urls=members.backup_urls, reaped=members.reaped,
                          ask=http_asker(ip_a, env.secret), lock=asyncio.Lock(), log=log)
    result = await check.check()
    assert [(s, p) for s, p, _ in result.released] == [(own, NOT_A_MEMBER)], (result, env.server_log())
    assert await env.zfs.get(own, "manatee:bases") == "-"
    assert await _marks_by_peer(env, ds_a) == {ip_b: marks[ip_b], ip_c: marks[ip_c], "127.0.0.251": other}
    [released] = log.named("base_released")
    assert released["peer"] == NOT_A_MEMBER and "reaped" in released["why"]
