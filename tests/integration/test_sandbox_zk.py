"""The sandbox's ZooKeeper outage controls on a real ZooKeeper, without the sitter:
`zk_stop` takes the whole ZooKeeper away keeping its data, `zk_start` brings it back on
the same address with the same znodes, and a client's session lives through the outage
(ZooKeeper restores sessions from its data dir) — what F10/F11 and the nemesis rely on.
The CLI's `zk-stop`/`zk-start` drive the same calls."""

from __future__ import annotations

import os
import random
import shutil
import time

import pytest

from manatee.cli.sandbox import main as sandbox_main
from manatee.harness.sandbox import Sandbox, SandboxError
from manatee.harness.zookeeper import ZK_SERVER_SH, four_letter_word

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nft") is None or not ZK_SERVER_SH.exists(),
    reason="needs root, nftables and ZooKeeper",
)


def test_zk_stop_start_keeps_data_and_sessions(zfs_fuse, tmp_path, capsys):
    from kazoo.client import KazooClient
    from kazoo.protocol.states import KazooState

    sb = Sandbox(tmp_path / "sb", out=lambda _l: None)
    first_ip = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}.11"
    st = sb.create(nodes=1, session_timeout_ms=4000, first_ip=first_ip, require_daemons=())
    zk = None
    try:
        assert sb.zk_running()
        pid0 = st.zk_pid
        zk = KazooClient(hosts=st.zk_connect, timeout=4.0)
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
        if zk is not None:
            zk.stop()
            zk.close()
        sb._st = None
        problems = sb.down()
    assert not problems, problems
    assert not (tmp_path / "sb").exists()


def test_zk_start_without_sandbox_is_a_clear_error(tmp_path):
    with pytest.raises(SandboxError, match="no sandbox"):
        Sandbox(tmp_path / "none").zk_start()
