"""bench/loaded_soak.py's counting: a soak that reports "0 spurious failovers" must be able to
see one (the state changes, the sessions that ended, and the near misses in the sitter logs)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
loaded_soak = pytest.importorskip("loaded_soak")


def watch_with(states, elections):
    w = object.__new__(loaded_soak.StateWatch)  # no ZooKeeper: feed what the watches saw
    import threading

    w._lock = threading.Lock()
    w.states, w.election = list(states), list(elections)
    return w


def test_a_generation_or_primary_change_after_the_start_counts_and_one_before_does_not():
    w = watch_with(
        [(1.0, 3, "10.0.0.1"), (5.0, 4, "10.0.0.2"), (20.0, 4, "10.0.0.2"), (30.0, 5, "10.0.0.3")],
        [(1.0, frozenset({"a-1", "b-2", "c-3"})), (25.0, frozenset({"b-2", "c-3"})),
         (26.0, frozenset({"b-2", "c-3", "a-4"}))])
    changed, left = w.changes_since(10.0)
    assert [(g, p) for _t, g, p in changed] == [(5, "10.0.0.3")]  # the same state again is no change
    assert left == ["a-1"]  # a session that ended; the node's return is not a loss
    assert w.changes_since(0.5)[0][0][1:] == (4, "10.0.0.2")


def test_no_change_is_zero():
    w = watch_with([(1.0, 3, "10.0.0.1"), (9.0, 3, "10.0.0.1")], [(1.0, frozenset({"a-1"}))])
    assert w.changes_since(2.0) == ([], [])


def test_sitter_log_near_misses_are_counted():
    lines = [
        "2026-12-03T16:03:01.346077Z [info     ] zk_session                     component=manatee-sitter state=suspended",
        "2026-12-03T16:03:01.446077Z [info     ] zk_session                     component=manatee-sitter state=connected",
        "2026-12-03T16:03:02.0Z [warning  ] Connection dropped: outstanding heartbeat ping not received component=kazoo.client",
        "2026-12-03T16:03:05.400477Z [info     ] state_written                  generation=2 primary=127.0.222.11 reason='x'",
        "2026-12-03T16:03:06.0Z [error    ] pg_hung                        seconds=1.2",
        "not a log line",
    ]
    ev = loaded_soak.sitter_events(lines)
    assert ev["zk_session"] == {"suspended": 1, "connected": 1}
    assert ev["events"]["kazoo_connection_dropped"] == 1
    assert ev["events"]["pg_hung"] == 1 and ev["events"]["state_written"] == 1
    assert len(ev["state_writes"]) == 1 and "generation=2" in ev["state_writes"][0]


def test_zookeeper_expiry_lines_are_recognised():
    line = "[SessionTracker] INFO org.apache.zookeeper.server.ZooKeeperServer - Expiring session 0x1000a, timeout of 1000ms exceeded"
    assert loaded_soak.ZK_EXPIRING.search(line).group(2) == "1000"
