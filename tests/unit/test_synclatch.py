"""The primary's memory of its sync (manatee.sitter.synclatch): the caught-up latch that the
read-only rule needs, and the "it holds initWal" fact that the step-down needs, which must
survive the primary's own PostgreSQL being stopped (2026-12-05 sandbox trial: it did not, and
the primary stopped PostgreSQL to step down, then found no sync to step down to, and started
it again, eight times in five seconds)."""

from dataclasses import replace

from manatee.core.lsn import Lsn
from manatee.shard.state import ClusterState
from tests.observations import A, B, C
from tests.sim.standalone import RUNNING_PRIMARY
from manatee.sitter.synclatch import SyncLatch
from tests.pgmanager_fakes import RecordingLog

ST = ClusterState(generation=3, primary=A, sync=B, async_=(C,), init_wal=0x8000)
CONNECTED_BEHIND = replace(RUNNING_PRIMARY, sync_flush=Lsn(0x7000))
CONNECTED_CAUGHT_UP = replace(RUNNING_PRIMARY, sync_flush=Lsn(0x9000))
DISCONNECTED = replace(RUNNING_PRIMARY, sync_flush=None)
STOPPED = replace(RUNNING_PRIMARY, running=False, healthy=False, in_recovery=None, wal=None)
UNANSWERED = replace(RUNNING_PRIMARY, healthy=False, in_recovery=None, wal=None)


def test_the_sync_holds_init_wal_once_caught_up_and_keeps_it_while_my_postgres_is_stopped():
    latch, log = SyncLatch(), RecordingLog()
    assert latch.observe(CONNECTED_BEHIND, ST, True, log) == (False, False)
    assert latch.observe(CONNECTED_CAUGHT_UP, ST, True, log) == (True, True)
    assert latch.observe(UNANSWERED, ST, True, log) == (True, True)  # unknown: as it was
    assert latch.observe(STOPPED, ST, True, log) == (False, True)  # not caught up now, but it holds initWal
    assert latch.observe(DISCONNECTED, ST, True, log) == (False, True)  # the read-only latch clears, not the other
    assert latch.observe(CONNECTED_BEHIND, ST, True, log) == (False, True)


def test_a_new_generation_or_sync_or_role_starts_afresh():
    latch, log = SyncLatch(), RecordingLog()
    assert latch.observe(CONNECTED_CAUGHT_UP, ST, True, log) == (True, True)
    assert latch.observe(STOPPED, ST.evolve(generation=4), True, log) == (False, False)
    assert latch.observe(STOPPED, ST.evolve(sync=C, async_=(B,)), True, log) == (False, False)
    assert latch.observe(STOPPED, ST, False, log) == (False, False)  # not the primary: no verdict
    assert latch.observe(STOPPED, ST.evolve(sync=None, async_=()), True, log) == (False, False)
    assert latch.observe(STOPPED, ST, True, log) == (False, True)  # the same assignment again
