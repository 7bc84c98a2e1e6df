"""When a session ZooKeeper will not resume is given up (manatee.core.zkresume): the pure rule.
The real case (a wiped ZooKeeper refusing the client's zxid) is in
tests/integration/test_zk.py::test_a_session_a_wiped_zookeeper_refuses_is_abandoned_for_a_new_one."""

from manatee.core.zkresume import GRACE, PROBE_AFTER, should_abandon, should_probe

T = 6.0


def test_no_probe_while_connected_or_briefly_disconnected():
    assert not should_probe(100.0, None, T)
    assert not should_probe(100.0, 100.0 - PROBE_AFTER * T + 0.1, T)
    assert should_probe(100.0, 100.0 - PROBE_AFTER * T, T)


def test_abandon_only_after_a_new_session_was_accepted_for_the_grace():
    since = 0.0
    now = PROBE_AFTER * T + 30
    assert not should_abandon(now, since, None, T)  # ZooKeeper down (F10): never
    assert not should_abandon(now, since, now - GRACE * T + 0.1, T)  # ours may still come back
    assert should_abandon(now, since, now - GRACE * T, T)
    assert not should_abandon(now, None, now - 10 * T, T)  # reconnected meanwhile
    assert not should_abandon(1.0, 0.0, 0.0, T)  # not disconnected long enough
