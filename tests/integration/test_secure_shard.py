"""A sandbox shard brought up with TLS and ZooKeeper auth switched on (`manatee-sandbox up
--tls --zk-auth`): every status server and backupserver speaks HTTPS and demands a client
certificate, the shard's znodes have ACLs. It passes F1 (the body of the F1 test of
test_sitter_faults, run on this shard) and a switchover by manatee-adm; verify sees no
insecure sitter, and a client without the CA or the credential gets nothing."""

from __future__ import annotations

import ssl
import time
import urllib.request

import pytest

from tests.shard_fixture import NEEDS_SHARD, Shard, healthy, names, say, shared_shard
from tests.shard_ops import adm, f1_primary_host_death

pytestmark = [*NEEDS_SHARD, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def secure_shared(zfs_fuse, tmp_path_factory):
    yield from shared_shard(tmp_path_factory, "secure", 5000, secure=True)


@pytest.fixture
def secure(secure_shared: Shard) -> Shard:
    return healthy(secure_shared)


def test_the_secure_shard_serves_https_only_to_its_own_clients(secure: Shard):
    sh = secure
    n = sh.nodes[0]
    assert n.status_url.startswith("https://")
    peers = [p for p in [(sh.zk_state() or {}).get("primary")] if p]
    assert peers and peers[0]["statusUrl"].startswith("https://") and peers[0]["backupUrl"].startswith("https://")
    # the standbys were restored from the primary's backupserver over HTTPS (client certificate,
    # upstream /state check, POST /backup, job polling)
    logs = [sh.sitter_log(x) for x in sh.nodes]
    assert any("restore_starting" in t and "source=https://" in t and "restore_done" in t for t in logs)
    # no client certificate: the handshake is refused
    ctx = ssl.create_default_context(cafile=n.ca_file)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{n.status_url}/ping", timeout=3, context=ctx)
    # a stranger's ZooKeeper client cannot change the shard's znodes
    from kazoo.exceptions import NoAuthError

    with pytest.raises(NoAuthError):
        sh.zk.set(f"{sh.sb.st.shard_path}/state", b"{}")
    r = adm(sh, "verify")
    assert r.returncode == 0 and "insecure" not in r.stdout and "without ZooKeeper auth" not in r.stdout, r.stdout
    r = adm(sh, "show")
    assert r.returncode == 0 and "(insecure)" not in r.stdout
    assert all(row.split()[4] != "-" for row in r.stdout.splitlines()  # each sitter's /state fetched over HTTPS
               if row.split()[:1] and row.split()[0] in ("primary", "sync", "async")), r.stdout


def test_f1_on_a_secure_shard(secure: Shard):
    f1_primary_host_death(secure)


def test_switchover_on_a_secure_shard(secure: Shard):
    sh = secure
    prev = sh.zk_state()
    p, s, _a = names(sh.topology())
    w = sh.writer("sw").start()
    try:
        w.wait_for_acks(20, 60)
        t0 = time.monotonic()
        r = adm(sh, "switchover", "--to", sh.node(s).ip, "--wait", "30")
        assert r.returncode == 0 and "switchover done" in r.stdout, r.stdout + r.stderr
        say(f"secure switchover {p} -> {s}: CLI {r.secs:.2f}s")
        assert sh.topology()["primary"] == s
        sh.wait(lambda: p in sh.topology()["async"] + [sh.topology()["sync"]] and sh.streaming(sh.node(p)),
                150, f"the old primary {p} to stream as a standby")
        w.wait_for_acks(20, 60)
        say(f"secure switchover: old primary streams again {time.monotonic() - t0:.1f}s after the request")
    finally:
        w.stop()
    sh.assert_checks(w, prev, expect_leader=s, since_gen=prev["generation"])
