"""The gray-failure harness's pure parts: the nftables scripts it loads, the proxy's route
spec, and the manatee-sandbox sub-commands' parsing (no shard: those are in
tests/integration/test_gray_faults.py)."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import time

import pytest

from manatee_testbed.cli.sandbox import build_parser
from manatee_testbed.grayfaults import flakynet as gf


def test_flaky_rules_drop_a_random_share_both_ways_and_by_cgroup():
    script = gf.flaky_rules("127.0.0.12", ["127.0.0.10", "127.0.0.11", "127.0.0.12"], 30,
                            cgroup="manatee-sandbox-x/b", peer_cgroups=["manatee-sandbox-x/a"])
    assert "ip saddr 127.0.0.12 ip daddr { 127.0.0.10, 127.0.0.11 } numgen random mod 100 < 30 drop" in script
    assert "ip saddr { 127.0.0.10, 127.0.0.11 } ip daddr 127.0.0.12 numgen random mod 100 < 30 drop" in script
    assert 'socket cgroupv2 level 2 "manatee-sandbox-x/b" ip daddr { 127.0.0.10, 127.0.0.11 } numgen' in script
    assert 'socket cgroupv2 level 2 "manatee-sandbox-x/a" ip daddr 127.0.0.12 numgen' in script
    # atomic replacement of an older table of the node
    assert script.startswith("add table inet manatee_flaky_127_0_0_12\ndelete table inet manatee_flaky_127_0_0_12\n")


@pytest.mark.parametrize("pct", [0, 100, -5])
def test_flaky_rules_reject_a_loss_that_is_no_loss_or_a_partition(pct):
    with pytest.raises(ValueError, match="loss_pct"):
        gf.flaky_rules("127.0.0.12", ["127.0.0.10"], pct, cgroup=None, peer_cgroups=[])


def test_delay_rules_dnat_new_connections_to_the_proxy_in_the_output_hook():
    script = gf.delay_rules("manatee_delay_x", [('socket cgroupv2 level 1 "g"', "127.0.0.10", 2181, "127.0.0.1", 4000)])
    assert "type nat hook output priority -100" in script
    assert 'socket cgroupv2 level 1 "g" ip daddr 127.0.0.10 tcp dport 2181 dnat ip to 127.0.0.1:4000' in script


def test_route_spec_round_trip():
    assert gf.parse_routes("4000=127.0.0.10:2181@127.0.0.12,4001=127.0.0.12:5432@127.0.0.11") == [
        (4000, "127.0.0.10", 2181, "127.0.0.12"), (4001, "127.0.0.12", 5432, "127.0.0.11")]


def test_delay_proxy_delays_each_chunk_and_keeps_order():
    """A real echo server behind the proxy on loopback: the round trip takes two delays."""

    async def run() -> tuple[bytes, float]:
        async def echo(r, w):
            while data := await r.read(100):
                w.write(data)
                await w.drain()
            w.close()

        srv = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            lp = s.getsockname()[1]
        proxy = gf.DelayProxy([(lp, "127.0.0.1", port, "127.0.0.1")], 0.1)
        task = asyncio.ensure_future(proxy.serve(5, None))
        await asyncio.sleep(0.1)
        r, w = await asyncio.open_connection("127.0.0.1", lp)
        t0 = time.monotonic()
        w.write(b"one")
        w.write(b"two")
        await w.drain()
        got = b""
        while len(got) < 6:
            got += await r.read(100)
        took = time.monotonic() - t0
        w.close()
        task.cancel()
        srv.close()
        return got, took

    got, took = asyncio.run(run())
    assert got == b"onetwo"
    assert 0.2 <= took < 1.5


def test_delay_proxy_whose_time_is_up_removes_its_redirects_before_it_stops_listening():
    """`flaky --for S`: when the time is up the proxy's `expire` (the nft redirects removed) runs
    while it still listens; redirects left to a closed port cut the node off from ZooKeeper
    instead of making it flaky (a sandbox trial: the session expired and the shard failed over)."""

    async def run() -> list[bool]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            lp = s.getsockname()[1]
        listening: list[bool] = []

        def expire() -> None:
            with socket.socket() as c:
                listening.append(c.connect_ex(("127.0.0.1", lp)) == 0)
        await gf.DelayProxy([(lp, "127.0.0.1", 9, "127.0.0.1")], 0.01).serve(0.05, None, expire)
        with socket.socket() as c:
            listening.append(c.connect_ex(("127.0.0.1", lp)) == 0)
        return listening

    assert asyncio.run(run()) == [True, False]


@pytest.mark.parametrize("argv,cmd", [
    (["pg-hang", "a"], "pg-hang"), (["pg-resume", "a"], "pg-resume"), (["disk-full", "b"], "disk-full"),
    (["disk-lift", "b"], "disk-lift"), (["storm", "c", "--for", "30"], "storm"), (["storm-release", "c"], "storm-release"),
    (["crash-loop", "a", "--for", "10", "--every", "0.5"], "crash-loop"), (["crash-stop", "a"], "crash-stop"),
    (["rogue-election"], "rogue-election"), (["rogue-remove"], "rogue-remove"), (["bad-state"], "bad-state"),
    (["bad-state-undo"], "bad-state-undo"), (["flaky", "a", "--loss", "20", "--delay-ms", "100"], "flaky"),
    (["steady", "a"], "steady"), (["faults"], "faults"),
])
def test_sandbox_cli_parses_every_gray_fault_command(argv, cmd):
    args = build_parser().parse_args(argv)
    assert args.cmd == cmd


def test_sandbox_cli_gray_fault_defaults():
    a = build_parser().parse_args(["flaky", "a"])
    assert (a.loss, a.delay_ms, a.for_s) == (30, 200, 300.0)
    a = build_parser().parse_args(["crash-loop", "a"])
    assert (a.for_s, a.every, a.signal) == (60.0, 1.0, "KILL")
    assert build_parser().parse_args(["crash-loop", "a", "--signal", "STOP"]).signal == "STOP"
    assert build_parser().parse_args(["disk-full", "a"]).fill_mb == 12
    assert build_parser().parse_args(["disk-full", "a", "--fill-mb", "0"]).fill_mb == 0


@pytest.mark.parametrize("extra,safe", [([], False), (["-o", "default_permissions,max_write=4096"], True)])
def test_disk_full_refuses_a_zfs_fuse_started_without_one_page_writes(monkeypatch, extra, safe):
    """`full_dataset_unsafe` reads the daemon's command line: without max_write=4096 a write
    into a full dataset can abort zfs-fuse (grayfaults/diskfull.py), and it says which pid."""
    import subprocess
    import sys

    from manatee_testbed import zfspool

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", *extra])
    try:
        deadline = time.monotonic() + 10
        while b"time.sleep" not in open(f"/proc/{proc.pid}/cmdline", "rb").read():  # until it has exec'd
            assert time.monotonic() < deadline
            time.sleep(0.01)
        monkeypatch.setattr(zfspool, "zfs_fuse_pids", lambda: [proc.pid])
        why = zfspool.full_dataset_unsafe()
        assert (why is None) == safe, why
        if not safe:
            assert f"pid {proc.pid}" in why and "max_write=4096" in why
    finally:
        proc.kill()
        proc.wait()


class _Zfs:
    """`zfs` as set_quota_above_use sees it: `used` grows by `grow` per read, and a quota is
    refused while it is less than used + `in_flight` (what ZFS counts that `zfs get` does not)."""

    def __init__(self, used: int, grow: int, in_flight: int):
        self.used, self.grow, self.in_flight = used, grow, in_flight
        self.sets: list[int] = []

    def read(self, node) -> int:
        self.used += self.grow
        return self.used

    def zfs(self, *args: str) -> str:
        from manatee_testbed.sandbox_state import SandboxError

        quota = int(args[1].split("=", 1)[1])
        self.sets.append(quota)
        if quota < self.used + self.in_flight:
            raise SandboxError("cannot set property: size is less than current used or reserved space")
        return ""


@pytest.mark.parametrize("in_flight, tries_needed", [(0, 1), (6 << 20, 2), (30 << 20, 4)])
def test_disk_full_quota_retries_with_a_fresh_used_and_a_wider_margin(monkeypatch, in_flight, tries_needed):
    from types import SimpleNamespace

    from manatee_testbed.grayfaults import diskfull

    z = _Zfs(used=100 << 20, grow=1 << 20, in_flight=in_flight)
    monkeypatch.setattr(diskfull, "dataset_used", z.read)
    monkeypatch.setattr(diskfull, "_zfs", z.zfs)
    quota, margin = diskfull.set_quota_above_use(SimpleNamespace(name="c", dataset="p/c"), 4 << 20, pause_s=0)
    assert len(z.sets) == tries_needed
    assert margin == (4 << 20) * 2 ** (tries_needed - 1)
    assert quota == z.used + margin, "relative to the read right before the successful try"


def test_disk_full_that_cannot_set_its_quota_says_so_as_a_fault_not_applied(monkeypatch):
    from types import SimpleNamespace

    from manatee_testbed.grayfaults import diskfull

    z = _Zfs(used=100 << 20, grow=0, in_flight=1 << 40)
    monkeypatch.setattr(diskfull, "dataset_used", z.read)
    monkeypatch.setattr(diskfull, "_zfs", z.zfs)
    with pytest.raises(diskfull.FaultNotApplied, match=r"disk_full on c: no quota could be set in 5 tries.*"
                                                       r"size is less than current used"):
        diskfull.set_quota_above_use(SimpleNamespace(name="c", dataset="p/c"), 4 << 20, pause_s=0)
    assert len(z.sets) == 5


class _Quota:
    """os.pwrite into a dataset that takes `room` more bytes (refusing the rest with EDQUOT),
    recording every write's offset and size; `free(n)` gives back n bytes."""

    def __init__(self, room: int):
        self.room = room
        self.writes: list[tuple[int, int]] = []
        self.real = os.pwrite

    def pwrite(self, fd: int, data: bytes, off: int) -> int:
        self.writes.append((off, len(data)))
        if len(data) > self.room:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        self.room -= len(data)
        return self.real(fd, data, off)


def test_a_standby_disk_is_filled_one_aligned_page_at_a_time_up_to_the_quota(monkeypatch, tmp_path):
    """Every write lies in one page at a page-aligned offset (so in one ZFS record: zfs-fuse
    never sees a request it can only half-write), and the fill stops at the first refusal."""
    from manatee_testbed.grayfaults import diskfull

    q = _Quota(room=10 * diskfull.PAGE + 100)
    monkeypatch.setattr(diskfull.os, "pwrite", q.pwrite)
    path = tmp_path / diskfull.FILLER_NAME
    path.write_bytes(b"x" * 1000)  # a filler left short of a page: the next page starts aligned
    said = diskfull.fill_pages(str(path))
    assert said == "40 kB written, 1 page(s) refused"
    assert all(off % diskfull.PAGE == 0 and n == diskfull.PAGE for off, n in q.writes)
    assert [off for off, _ in q.writes] == [i * diskfull.PAGE for i in range(11)]
    assert path.stat().st_size == 10 * diskfull.PAGE


def test_the_keeper_takes_back_freed_space_and_ends_when_stopped_or_its_file_is_gone(monkeypatch, tmp_path):
    import threading

    from manatee_testbed.grayfaults import diskfull

    q = _Quota(room=2 * diskfull.PAGE)
    monkeypatch.setattr(diskfull.os, "pwrite", q.pwrite)
    monkeypatch.setattr(diskfull, "KEEP_PAUSE_S", 0.001)
    path = tmp_path / diskfull.FILLER_NAME
    stop = threading.Event()
    out: list[str] = []
    t = threading.Thread(target=lambda: out.append(diskfull.fill_pages(str(path), stop=stop, hold_s=30)))
    t.start()
    deadline = time.monotonic() + 10
    while (path.stat().st_size if path.exists() else 0) < 2 * diskfull.PAGE:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    q.room += 3 * diskfull.PAGE  # ZFS frees some space: the keeper takes it
    while path.stat().st_size < 5 * diskfull.PAGE:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    stop.set()
    t.join(10)
    assert out and out[0].startswith("20 kB written") and not t.is_alive()
    # a keeper that may not create its file ends as soon as the file is gone (lifted, rebuilt)
    path.unlink()
    said = diskfull.fill_pages(str(path), create=False, hold_s=30)
    assert "the filler went" in said and not path.exists()


def test_delay_proxy_upstream_socket_carries_the_clients_connect_bound():
    """The proxy completes the client's handshake itself; its upstream socket carries the bound a
    walreceiver's primary_conninfo sets (tcp_user_timeout), and leaves from the route's source."""
    from manatee.core.pgconfig import WALRECEIVER_TCP_USER_TIMEOUT_MS
    from manatee_testbed.grayfaults import flakynet

    async def run() -> tuple[int, str]:
        srv = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        _r, w = await flakynet._connect_bounded("127.0.0.1", port, "127.0.0.1")
        sock = w.get_extra_info("socket")
        got = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT), sock.getsockname()[0]
        w.close()
        srv.close()
        return got

    assert asyncio.run(run()) == (WALRECEIVER_TCP_USER_TIMEOUT_MS, "127.0.0.1")
