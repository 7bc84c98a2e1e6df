"""The sandbox's ZooKeeper outage controls on a real ZooKeeper, without the sitter:
`zk_stop` takes the whole ZooKeeper away keeping its data, `zk_start` brings it back on
the same address with the same znodes, and a client's session lives through the outage
(ZooKeeper restores sessions from its data dir) — what F10/F11 and the nemesis rely on.
The CLI's `zk-stop`/`zk-start` drive the same calls.

With `zk_servers=3` the sandbox runs a three-server ensemble on ZooKeeper's address: the
same calls act on every server, and `zk_stop_server`/`zk_start_server` take one away (e.g.
the leader, `zk_leader()`), which a quorum survives."""

from __future__ import annotations

import json
import os
import random
import shutil
import time

import pytest

from manatee_testbed.cli.sandbox import main as sandbox_main
from manatee.core.procs import pid_alive
from manatee.core.zksession import resuming_kazoo
from manatee_testbed.sandbox import Sandbox
from manatee_testbed.sandbox_state import SandboxError, load_state
from manatee_testbed.zookeeper import ZK_SERVER_SH, four_letter_word

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nft") is None or not ZK_SERVER_SH.exists(),
    reason="needs root, nftables and ZooKeeper",
)


def test_zk_stop_start_keeps_data_and_sessions(zfs_fuse, tmp_path, capsys):
    from kazoo.protocol.states import KazooState

    sb = Sandbox(tmp_path / "sb", out=lambda _l: None)
    first_ip = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}.11"
    st = sb.create(nodes=1, session_timeout_ms=4000, first_ip=first_ip, require_daemons=())
    zk = None
    try:
        assert sb.zk_running()
        pid0 = st.zk_pid
        # The client the daemons use: kazoo's defaults (reconnect backoff growing to a minute,
        # a whole session timeout waiting for a connect reply) can come back after the
        # restored session's fresh timeout, and ZooKeeper rightly expires it.
        zk = resuming_kazoo(st.zk_connect, 4.0)
        zk.start(timeout=15)
        states: list[str] = []
        zk.add_listener(lambda s: states.append(s))
        zk.create("/zkfault/eph", b"mine", ephemeral=True, makepath=True)
        zk.create("/zkfault/persistent", b"kept", makepath=True)
        session = zk.client_id[0]

        assert sb.zk_stop() is True
        assert not sb.zk_running() and sb.st.zk_pid is None
        assert four_letter_word(st.zk_host, st.zk_port, "ruok") == ""
        assert sb.zk_stop() is False  # idempotent: nothing to stop
        assert sb.status()["zookeeper"]["alive"] is False
        deadline = time.monotonic() + 10
        while KazooState.SUSPENDED not in states and time.monotonic() < deadline:
            time.sleep(0.05)
        assert KazooState.SUSPENDED in states, f"client did not notice the outage: {states}"
        time.sleep(6.0)  # longer than the session timeout: ZooKeeper is down, nothing expires

        t0 = time.monotonic()
        pid1 = sb.zk_start(timeout=60)
        took = time.monotonic() - t0
        assert sb.zk_running() and pid1 != pid0
        assert four_letter_word(st.zk_host, st.zk_port, "ruok") == "imok"
        assert sb.zk_start() == pid1  # already running: the same server
        # the same session reconnects: its ephemeral node is still there
        deadline = time.monotonic() + 20
        while zk.state != KazooState.CONNECTED and time.monotonic() < deadline:
            time.sleep(0.05)
        assert zk.state == KazooState.CONNECTED, f"client did not reconnect: {states}"
        assert KazooState.LOST not in states, f"the session expired across the outage: {states}"
        assert zk.client_id[0] == session
        assert zk.get("/zkfault/persistent")[0] == b"kept"
        assert zk.get("/zkfault/eph")[0] == b"mine"
        assert zk.get("/zkfault/eph")[1].ephemeralOwner == session
        print(f"zk_start served again in {took:.1f}s")

        # the CLI drives the same calls
        assert sandbox_main(["--dir", str(sb.dir), "zk-stop"]) == 0
        assert "stopped (data kept)" in capsys.readouterr().out
        assert not Sandbox(sb.dir).zk_running()
        assert sandbox_main(["zk-stop", "--dir", str(sb.dir)]) == 0
        assert "was not running" in capsys.readouterr().out
        assert sandbox_main(["--dir", str(sb.dir), "zk-start", "--timeout", "60"]) == 0
        assert "serving" in capsys.readouterr().out
        sb._st = None  # re-read the state the CLI wrote
        assert sb.zk_running()
        assert four_letter_word(st.zk_host, st.zk_port, "ruok") == "imok"
    finally:
        problems = _close_and_down(sb, zk)
    assert not problems, problems
    assert not (tmp_path / "sb").exists()


def test_zk_start_without_sandbox_is_a_clear_error(tmp_path):
    with pytest.raises(SandboxError, match="no sandbox"):
        Sandbox(tmp_path / "none").zk_start()


def _close_and_down(sb: Sandbox, zk) -> list[str]:
    """End the test's ZooKeeper client, then take the whole sandbox down (what it left)."""
    if zk is not None:
        zk.stop()
        zk.close()
    sb._st = None  # re-read the state the CLI may have written
    return sb.down()


def _wait(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(0.05)


def _say(capsys, msg: str) -> None:
    """A measured figure, shown with -s although the test captures the CLI's output."""
    with capsys.disabled():
        print(msg, flush=True)


def _our_jvms(zk_dir) -> list[int]:
    """Live processes whose command line names this sandbox's ZooKeeper directory."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = open(f"/proc/{entry}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(zk_dir) in cmd and pid_alive(int(entry)):
                found.append(int(entry))
    return found


def test_zk_ensemble_outage_and_leader_loss_keep_the_session(zfs_fuse, tmp_path, capsys):
    from kazoo.protocol.states import KazooState

    sb = Sandbox(tmp_path / "sb", out=lambda _l: None)
    zk_dir = sb.dir / "zookeeper"
    first_ip = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}.11"
    t0 = time.monotonic()
    st = sb.create(nodes=1, session_timeout_ms=4000, first_ip=first_ip, require_daemons=(), zk_servers=3)
    _say(capsys, f"ensemble of 3 up in {time.monotonic() - t0:.1f}s")
    zk = None
    seen_pids: set[int] = set()
    try:
        # -- three servers, one quorum, recorded in the state and in the daemons' configs
        assert [r.myid for r in st.zk_servers] == [1, 2, 3] and st.zk_pid is None
        assert sb.zk_running()
        pids = sb.zk_pids()
        seen_pids |= set(pids)
        assert len(set(pids)) == 3 and all(p and pid_alive(p) for p in pids), pids
        assert all(sb._is_our_zk(p, i + 1) and not sb._is_our_zk(p, (i + 1) % 3 + 1) for i, p in enumerate(pids))
        assert sorted(sb.zk_modes()) == ["follower", "follower", "leader"], sb.zk_modes()
        hosts = [f"{st.zk_host}:{r.client_port}" for r in st.zk_servers]
        assert st.zk_connect == ",".join(hosts) and st.zk_host == first_ip.rsplit(".", 1)[0] + ".10"
        assert load_state(sb.dir).zk_servers == st.zk_servers
        sitter_cfg = json.loads(st.node("a").config_path("sitter").read_text())
        assert sitter_cfg["zkCfg"]["connStr"] == st.zk_connect
        zs = sb.status()["zookeeper"]
        assert zs["alive"] and [s["pid"] for s in zs["servers"]] == pids
        assert sorted(s["mode"] for s in zs["servers"]) == ["follower", "follower", "leader"]

        # Reconnect attempts at most T/3 apart, as the sitter's client does (kazoo's default
        # backoff grows to minutes: after an outage it could come back after the session's
        # fresh timeout, and ZooKeeper rightly expires it).
        zk = resuming_kazoo(st.zk_connect, 4.0)
        zk.start(timeout=15)
        states: list[str] = []
        stamps: list[tuple[float, str]] = []

        def listen(s) -> None:
            states.append(s)
            stamps.append((time.monotonic(), s))

        zk.add_listener(listen)
        zk.create("/zkens/eph", b"mine", ephemeral=True, makepath=True)
        zk.create("/zkens/persistent", b"kept", makepath=True)
        session = zk.client_id[0]

        # -- all three down for longer than the session timeout, then back
        assert sb.zk_stop() is True
        assert not sb.zk_running() and sb.zk_pids() == [None, None, None]
        assert all(r.pid is None for r in load_state(sb.dir).zk_servers)
        assert all(four_letter_word(st.zk_host, r.client_port, "ruok") == "" for r in st.zk_servers)
        assert not _our_jvms(zk_dir)
        assert sb.zk_stop() is False
        assert sb.status()["zookeeper"]["alive"] is False
        _wait(lambda: KazooState.SUSPENDED in states, 10, f"the client to notice the outage: {states}")
        time.sleep(6.0)  # longer than the session timeout: nothing expires while all are down
        t1 = time.monotonic()
        sb.zk_start(timeout=60)
        took = time.monotonic() - t1
        assert sb.zk_running() and sb.zk_leader() is not None
        new_pids = sb.zk_pids()
        seen_pids |= set(new_pids)
        assert not set(new_pids) & set(pids), (pids, new_pids)
        t_served = time.monotonic()
        assert sb.zk_start() == new_pids[0]  # already running: nothing started
        _wait(lambda: zk.state == KazooState.CONNECTED, 20, f"the client to reconnect: {states}")
        assert KazooState.LOST not in states, \
            f"the session expired across the outage: {[(round(t - t_served, 2), s) for t, s in stamps]} " \
            "(seconds after the ensemble served again)"
        assert zk.client_id[0] == session
        assert zk.get("/zkens/eph")[1].ephemeralOwner == session
        assert zk.get("/zkens/persistent")[0] == b"kept"
        _say(capsys, f"ensemble zk_start: all three serving again in {took:.1f}s")

        # -- the leader alone down: the other two elect a leader and keep serving
        lead = sb.zk_leader()
        assert lead is not None
        t2 = time.monotonic()
        assert sb.zk_stop_server(lead) is True
        assert not sb.zk_running()
        left = sb.zk_pids()
        assert left[lead] is None and all(p and pid_alive(p) for i, p in enumerate(left) if i != lead), left

        def other_leader() -> str | None:
            i = sb.zk_leader()
            return None if i is None or i == lead else str(i)

        new_lead = int(_wait(other_leader, 30, "a new leader among the other two"))
        zk.retry(zk.set, "/zkens/persistent", b"written without the old leader")
        served = time.monotonic() - t2
        assert zk.get("/zkens/persistent")[0] == b"written without the old leader"
        assert zk.client_id[0] == session and KazooState.LOST not in states
        assert zk.get("/zkens/eph")[1].ephemeralOwner == session
        _say(capsys, f"leader {lead} stopped: server {new_lead} leads; a write committed {served:.1f}s later")
        assert sb.zk_stop_server(lead) is False
        assert sb.zk_start_server(lead, timeout=60) == sb.zk_pids()[lead]
        seen_pids |= set(sb.zk_pids())
        assert sb.zk_running()
        _wait(lambda: sb.zk_modes()[lead] == "follower", 20, f"server {lead} to rejoin as a follower")

        # -- a follower crashed (SIGKILL) and started again
        fol = next(i for i in range(3) if i != sb.zk_leader())
        assert sb.zk_stop_server(fol, kill=True) is True
        # the client may have been connected to that follower: its read fails with
        # ConnectionLoss and succeeds once the client has moved to another server
        assert zk.retry(zk.get, "/zkens/persistent")[0] == b"written without the old leader"
        assert zk.client_id[0] == session and KazooState.LOST not in states
        sb.zk_start_server(fol)
        seen_pids |= set(sb.zk_pids())
        assert sb.zk_running()

        # -- the CLI: status lists the servers; zk-stop/zk-start act on all of them
        capsys.readouterr()
        assert sandbox_main(["--dir", str(sb.dir), "status"]) == 0
        out = capsys.readouterr().out
        for r in st.zk_servers:
            assert f"ZooKeeper server {r.myid} {st.zk_host}:{r.client_port}" in out, out
        assert sandbox_main(["--dir", str(sb.dir), "zk-stop"]) == 0
        assert "stopped (data kept)" in capsys.readouterr().out
        assert not Sandbox(sb.dir).zk_running() and not _our_jvms(zk_dir)
        assert sandbox_main(["--dir", str(sb.dir), "zk-start", "--timeout", "60"]) == 0
        assert "serving" in capsys.readouterr().out
        sb._st = None  # re-read the state the CLI wrote
        assert sb.zk_running()
        seen_pids |= set(sb.zk_pids())
        _wait(lambda: zk.state == KazooState.CONNECTED, 20, "the client to reconnect after the CLI restart")
        assert zk.get("/zkens/eph")[1].ephemeralOwner == session
    finally:
        problems = _close_and_down(sb, zk)
    assert not problems, problems
    assert not (tmp_path / "sb").exists()
    assert not [p for p in seen_pids if p and pid_alive(p)], "a ZooKeeper server survived down"
    assert not _our_jvms(zk_dir), "a ZooKeeper JVM of the sandbox survived down"


def test_zk_ensemble_down_stops_every_server_of_a_half_made_sandbox(zfs_fuse, tmp_path):
    """`down` from whatever state: one server already stopped, one hung (SIGSTOP)."""
    import signal

    sb = Sandbox(tmp_path / "sb", out=lambda _l: None)
    first_ip = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}.11"
    st = sb.create(nodes=1, session_timeout_ms=4000, first_ip=first_ip, require_daemons=(), zk_servers=3)
    pids = sb.zk_pids()
    try:
        sb.zk_stop_server(0)
        os.kill(pids[1], signal.SIGSTOP)
        assert sb.zk_pids() == [None, pids[1], pids[2]]
    finally:
        problems = Sandbox(sb.dir, out=lambda _l: None).down()
    assert not problems, problems
    assert not [p for p in pids if pid_alive(p)], "a ZooKeeper server survived down"
    assert not _our_jvms(sb.dir / "zookeeper")
    assert len(st.zk_servers) == 3
