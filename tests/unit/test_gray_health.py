"""The shell's side of issue 8's three gray-failure rules (manatee.sitter.health.PgHealth):
what it feeds the pure latches, with a fake clock and a scripted PostgreSQL."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from manatee.core.lsn import Lsn
from manatee.core.pg import PgError
from manatee.sitter.health import WRITE_PROBE_SQL, PgHealth
from tests.sim.clock import FakeClock, SimLog
from tests.sim.standalone import RUNNING_PRIMARY, ScriptedPg

KEY = (3, "sync")
BEHIND = replace(RUNNING_PRIMARY, sync_flush=Lsn(0x8000))  # my WAL 0/9000


class ProbeClient:
    def __init__(self, fail: bool = False):
        self.fail, self.calls = fail, []

    async def query(self, sql, _params=None, timeout=None):
        self.calls.append((sql, timeout))
        if self.fail:
            raise PgError("could not write to file \"pg_wal/xlogtemp\": No space left on device")
        return [{"sc": "local", "lsn": "0/9100"}]


def _health(pg=None, **kw):
    clock, records = FakeClock(), []
    pg = pg or ScriptedPg(health_timeout=2.0)
    h = PgHealth(pg, SimLog(clock, "10.0.0.1", records), clock, primary_start_timeout_s=8.0, interval_s=1.0,
                 hb_expiration_s=4.0, **kw)
    return h, clock, records, pg


def test_sync_stall_needs_the_bound_and_a_failed_flush_read_is_unknown():
    h, clock, _, _ = _health()
    assert h.sync_stall_bound == 8.0
    for t in range(0, 8):
        clock.now = float(t)
        assert h.sync_stalled(BEHIND, KEY, i_am_primary=True) is None
    clock.now = 8.0
    assert h.sync_stalled(BEHIND, KEY, i_am_primary=True) == 8.0
    # the sync's flush position could not be read: unknown, the clock starts over
    clock.now = 9.0
    assert h.sync_stalled(replace(BEHIND, sync_flush=None, sync_flush_failed=True), KEY, i_am_primary=True) is None
    clock.now = 10.0
    assert h.sync_stalled(BEHIND, KEY, i_am_primary=True) is None
    # not the primary: nothing is measured
    assert h.sync_stalled(BEHIND, KEY, i_am_primary=False) is None and h.stall is None


def test_write_probe_runs_on_a_read_write_primary_only_and_two_failures_make_it_sick():
    pg = ScriptedPg(health_timeout=2.0)
    pg.client = ProbeClient(fail=True)
    h, clock, records, _ = _health(pg)
    rw = replace(RUNNING_PRIMARY, read_only=False)
    asyncio.run(h.probe_writes(replace(rw, read_only=True), as_primary=True))
    asyncio.run(h.probe_writes(rw, as_primary=False))
    assert pg.client.calls == []  # read-only, or not serving as the primary: not probed
    asyncio.run(h.probe_writes(rw, as_primary=True))
    assert pg.client.calls == [(WRITE_PROBE_SQL, pg.status_timeout)] and h.probe_failures == 1
    asyncio.run(h.probe_writes(rw, as_primary=True))
    assert h.probe_failures == 1  # at most once per healthChkInterval
    clock.now = 1.0
    asyncio.run(h.probe_writes(rw, as_primary=True))
    assert h.probe_failures == 2
    h.track(rw, as_primary=True, role="primary", target=None)
    assert h.sick_since == 1.0 and "cannot commit" in h.sick_why and "No space left" in h.sick_why
    clock.now = 9.5
    asyncio.run(h.probe_writes(rw, as_primary=True))
    h.track(rw, as_primary=True, role="primary", target=None)
    assert h.cannot_serve is not None and "cannot commit" in h.cannot_serve
    pg.client.fail = False
    clock.now = 11.0
    asyncio.run(h.probe_writes(rw, as_primary=True))
    assert h.probe_failures == 0 and any(r[3] == "pg_write_probe_ok_again" for r in records)


def test_a_probe_refused_by_a_connection_storm_is_no_evidence():
    pg = ScriptedPg(health_timeout=2.0)
    pg.client = ProbeClient()
    h, clock, _, _ = _health(pg)
    rw = replace(RUNNING_PRIMARY, read_only=False)

    async def crowded(sql, _params=None, timeout=None):
        raise PgError("FATAL:  sorry, too many clients already")
    pg.client.query = crowded
    for t in range(4):
        clock.now = float(t)
        asyncio.run(h.probe_writes(rw, as_primary=True))
    assert h.probe_failures == 0


WRAPAROUND = ('query on 127.0.0.1 failed: select ...: ERROR:  database is not accepting commands to avoid '
              'wraparound data loss in database "template1"\nHINT:  Stop the postmaster and vacuum that database')


def test_a_primary_refusing_new_xids_for_wraparound_is_not_sick_and_the_episode_is_timed():
    """Every standby has the same transaction IDs: a failover would move the refusal, so the
    probe's wraparound error is no evidence against this node (no step-down), but it is kept."""
    pg = ScriptedPg(health_timeout=2.0)
    pg.client = ProbeClient()
    h, clock, records, _ = _health(pg)
    rw = replace(RUNNING_PRIMARY, read_only=False)
    pgcode = ["54000"]

    async def refused(sql, _params=None, timeout=None):
        raise PgError(WRAPAROUND, pgcode=pgcode[0])
    pg.client.query = refused
    for t in range(20):  # far past primaryStartTimeout (8 s)
        clock.now = float(t)
        asyncio.run(h.probe_writes(rw, as_primary=True))
        h.track(rw, as_primary=True, role="primary", target=None)
    assert h.probe_failures == 0 and h.sick_since is None and h.cannot_serve is None
    assert h.wraparound_since == 0.0 and "wraparound data loss" in h.wraparound_error
    # PostgreSQL's words, which name the database, not the probe's SQL first (the trial's line cut them off)
    assert h.wraparound_error.startswith('ERROR:  database is not accepting commands to avoid wraparound data '
                                         'loss in database "template1"')
    assert [r[3] for r in records].count("pg_xid_wraparound_refusal") == 1  # once per episode
    # the same words with another SQLSTATE are an ordinary failed probe
    h2, clock2, _, _ = _health(pg)
    pgcode[0] = "XX000"
    for t in range(2):
        clock2.now = float(t)
        asyncio.run(h2.probe_writes(rw, as_primary=True))
    assert h2.probe_failures == 2 and h2.wraparound_since is None
    # a commit ends the episode; the error is kept for /state
    pg.client = ProbeClient()
    clock.now = 30.0
    asyncio.run(h.probe_writes(rw, as_primary=True))
    assert h.wraparound_since is None and h.wraparound_error is not None
    assert any(r[3] == "pg_xid_wraparound_refusal_over" for r in records)
    # so does no longer being the primary
    pg.client.query = refused
    pgcode[0] = "54000"
    clock.now = 40.0
    asyncio.run(h.probe_writes(rw, as_primary=True))
    assert h.wraparound_since == 40.0
    asyncio.run(h.probe_writes(rw, as_primary=False))
    assert h.wraparound_since is None


def test_failed_starts_back_off_and_a_start_that_answers_ends_it():
    h, clock, records, _ = _health()
    down = replace(RUNNING_PRIMARY, running=False, healthy=False, in_recovery=None, wal=None)
    for i in range(3):
        h.start_attempted()
        clock.now = float(i)
        h.start_result(down, killed=False)
    assert h.starts.failures == 3 and h.start_held() is not None and "3 times in a row" in h.start_held()
    clock.now = 2.0 + 2.0  # healthChkTimeout after the third failure
    assert h.start_held() is None
    h.start_attempted()
    h.start_result(RUNNING_PRIMARY, killed=False)
    assert h.starts.failures == 0 and [r[3] for r in records].count("pg_start_failed") == 3
    assert any(r[3] == "pg_start_ok_again" for r in records)


PANIC = ('2026-12-03 22:07:58.684 UTC [11211] PANIC:  could not write to log file 000000010000000000000009 '
         'at offset 917504, length 131072: Disk quota exceeded')


def test_a_crash_on_a_read_only_disk_makes_the_primary_give_way_at_once():
    """Sandbox trial 2026-12-06: the primary's dataset set readonly=on. PostgreSQL PANICked at
    each restart; the primary gave way only after primaryStartTimeout (12.5 s). A restart cures
    a read-only disk no more than a full one."""
    h, clock, records, _ = _health()
    rw = replace(RUNNING_PRIMARY, read_only=False)
    h.track(rw, as_primary=True, role="primary", target=None)
    clock.now = 3.0
    ro = ('2026-12-06 01:56:01.231 UTC [6801] PANIC:  could not create file "pg_logical/replorigin_checkpoint.tmp": '
          'Read-only file system')
    h.track(replace(rw, disk_full=ro), as_primary=True, role="primary", target=None)
    assert h.cannot_serve is not None and "disk is read-only" in h.cannot_serve, h.cannot_serve
    crash = [r for r in records if r[3] == "pg_disk_full_crash"]
    assert len(crash) == 1 and "read-only, so I give way" in str(crash[0]), crash


def test_a_disk_full_crash_makes_the_primary_give_way_at_once_and_only_once():
    """F19: PostgreSQL PANICked for lack of space and the postmaster restarted it; it answers
    again, yet the primary gives way now (it will crash at its next WAL segment)."""
    h, clock, records, _ = _health()
    rw = replace(RUNNING_PRIMARY, read_only=False)
    h.track(rw, as_primary=True, role="primary", target=None)
    assert h.cannot_serve is None
    clock.now = 3.0
    h.track(replace(rw, disk_full=PANIC), as_primary=True, role="primary", target=None)
    assert h.cannot_serve is not None and "disk is full" in h.cannot_serve and "Disk quota exceeded" in h.cannot_serve
    assert [r[3] for r in records].count("pg_disk_full_crash") == 1
    clock.now = 10.9  # the same line again, within primaryStartTimeout (8 s) of the first sight
    h.track(replace(rw, disk_full=PANIC), as_primary=True, role="primary", target=None)
    assert h.cannot_serve is not None and [r[3] for r in records].count("pg_disk_full_crash") == 1
    clock.now = 11.0  # the window has passed and the line is not new: serving again is allowed
    h.track(replace(rw, disk_full=PANIC), as_primary=True, role="primary", target=None)
    assert h.cannot_serve is None
    clock.now = 12.0  # a new crash (a new line) opens a new window
    h.track(replace(rw, disk_full=PANIC.replace("22:07:58.684", "22:08:09.001")), as_primary=True,
            role="primary", target=None)
    assert h.cannot_serve is not None


def test_a_disk_full_crash_on_a_standby_is_logged_but_never_cannot_serve():
    h, clock, records, _ = _health()
    standby = replace(RUNNING_PRIMARY, in_recovery=True, disk_full=PANIC)
    h.track(standby, as_primary=False, role="standby", target=None)
    assert h.cannot_serve is None and "pg_disk_full_crash" in [r[3] for r in records]


class SpaceDataset:
    def __init__(self, free=None, fail=False):
        self.free, self.fail, self.calls = free, fail, 0

    async def available(self, timeout):
        self.calls += 1
        if self.fail:
            raise RuntimeError("zfs get timed out")
        return self.free


def test_a_failing_primary_on_a_full_dataset_gives_way_and_a_failed_check_is_no_evidence():
    h, clock, records, _ = _health()
    rw = replace(RUNNING_PRIMARY, read_only=False)
    down = replace(rw, running=False, healthy=False)
    full = SpaceDataset(free=1 << 20)
    asyncio.run(h.check_space(full, rw, as_primary=True))
    h.track(rw, as_primary=True, role="primary", target=None)
    assert full.calls == 1 and h.free == 1 << 20  # watched (the space probe needs it), but healthy: no verdict
    assert h.cannot_serve is None and "pg_disk_full" not in [r[3] for r in records]
    h.space_at = None  # as if that check were long ago
    asyncio.run(h.check_space(full, rw, as_primary=False))
    h.track(rw, as_primary=False, role="standby", target=None)
    assert full.calls == 2 and h.free == 1 << 20  # a standby's room is watched too (its heartbeats say it)
    assert h.cannot_serve is None and "pg_disk_full" not in [r[3] for r in records]  # but it serves: no verdict
    broken = SpaceDataset(fail=True)
    h.space_at = None
    asyncio.run(h.check_space(broken, down, as_primary=True))
    h.track(down, as_primary=True, role="primary", target=None)
    assert broken.calls == 1 and h.cannot_serve is None  # unknown room: not full
    clock.now = 1.0
    roomy = SpaceDataset(free=1 << 30)
    asyncio.run(h.check_space(roomy, down, as_primary=True))
    h.track(down, as_primary=True, role="primary", target=None)
    assert h.cannot_serve is None  # a crash with room to spare waits for primaryStartTimeout as before
    clock.now = 2.0
    asyncio.run(h.check_space(full, down, as_primary=True))
    asyncio.run(h.check_space(full, down, as_primary=True))
    assert full.calls == 3  # at most once per healthChkInterval
    h.track(rw, as_primary=True, role="primary", target=None)  # restarted and answering again
    assert h.cannot_serve is not None and "disk is full" in h.cannot_serve and "1048576 bytes free" in h.cannot_serve
    assert "pg_disk_full" in [r[3] for r in records]


def test_a_primary_whose_disk_has_room_again_no_longer_gives_way_for_it():
    """The full disk is remembered for primaryStartTimeout (a restart that frees a little
    makes PostgreSQL look healthy until its next WAL segment). Once ZFS says the dataset has
    latches.SPACE_PROBE_BELOW or more free (the operator freed space), that memory ends: a
    primary that serves again keeps its role instead of stepping down anyway."""
    h, clock, records, _ = _health()
    rw = replace(RUNNING_PRIMARY, read_only=False)
    down = replace(rw, running=False, healthy=False)
    asyncio.run(h.check_space(SpaceDataset(free=1 << 20), down, as_primary=True))
    h.track(down, as_primary=True, role="primary", target=None)
    assert h.cannot_serve is not None and "disk is full" in h.cannot_serve
    clock.now = 0.5
    h.space_at = None  # each check is due
    asyncio.run(h.check_space(SpaceDataset(free=None), rw, as_primary=True))  # ZFS does not say: no evidence
    h.track(rw, as_primary=True, role="primary", target=None)
    assert h.cannot_serve is not None
    clock.now = 1.5
    h.space_at = None  # each check is due
    asyncio.run(h.check_space(SpaceDataset(free=32 << 20), rw, as_primary=True))  # a little room: still low
    h.track(rw, as_primary=True, role="primary", target=None)
    assert h.cannot_serve is not None
    clock.now = 2.5
    h.space_at = None  # each check is due
    asyncio.run(h.check_space(SpaceDataset(free=1 << 30), rw, as_primary=True))
    h.track(rw, as_primary=True, role="primary", target=None)
    assert h.cannot_serve is None and h.disk_full_at is None and h.free == 1 << 30
    assert [r[3] for r in records].count("pg_disk_room_again") == 1


def test_a_nearly_full_primary_proves_its_dataset_takes_new_blocks_and_a_refusal_makes_it_give_way():
    """The WAL probe commits into WAL segments that exist already; below
    latches.SPACE_PROBE_BELOW free the probe also spills a sort to a temporary file, which a
    dataset at its quota refuses: a failed probe, then the full-disk check gives way at once."""
    from manatee.shard import latches
    from manatee.sitter.health import SPACE_PROBE_SQL

    class SpillRefused(ProbeClient):
        async def query(self, sql, _params=None, timeout=None):
            self.calls.append((sql, timeout))
            if sql == SPACE_PROBE_SQL:
                raise PgError('could not write to file "base/pgsql_tmp/pgsql_tmp77.0": Disk quota exceeded')
            return [{}]

    pg = ScriptedPg(health_timeout=2.0)
    pg.client = SpillRefused()
    h, clock, records, _ = _health(pg)
    rw = replace(RUNNING_PRIMARY, read_only=False)
    roomy, full = SpaceDataset(free=1 << 30), SpaceDataset(free=1 << 20)
    asyncio.run(h.check_space(roomy, rw, as_primary=True))
    asyncio.run(h.probe_writes(rw, as_primary=True))
    assert [c[0] for c in pg.client.calls] == [WRITE_PROBE_SQL] and h.probe_failures == 0  # room: no spill
    clock.now = latches.SPACE_WATCH_S - 0.5
    asyncio.run(h.check_space(full, rw, as_primary=True))
    assert full.calls == 0  # healthy with room: read every SPACE_WATCH_S only
    clock.now = latches.SPACE_WATCH_S
    asyncio.run(h.check_space(full, rw, as_primary=True))
    assert full.calls == 1 and h.free == 1 << 20
    h.track(rw, as_primary=True, role="primary", target=None)
    assert h.cannot_serve is None  # nearly full but serving: no verdict on room alone
    clock.now += 1.0
    asyncio.run(h.probe_writes(rw, as_primary=True))
    assert pg.client.calls[-1][0] == SPACE_PROBE_SQL and h.probe_failures == 1
    clock.now += 1.0
    asyncio.run(h.check_space(full, rw, as_primary=True))
    h.track(rw, as_primary=True, role="primary", target=None)
    assert h.cannot_serve is not None and "disk is full" in h.cannot_serve


def test_a_standby_on_a_full_dataset_gives_way_at_once_and_tells_its_upstream_why():
    """F19 on the sync, as the sandbox showed it: its disk fills, its PostgreSQL dies and cannot
    start; the primary's commits wait on it. With ZFS saying the dataset is full, it stops
    heartbeating at once (not after healthChkTimeout) and its last heartbeat says why; with
    room to spare the same failure waits for healthChkTimeout as before."""
    from manatee.shard.state import STANDBY, Target
    from manatee.sitter.heartbeat import HeartbeatSender
    from tests.observations import A

    def sender():
        s = HeartbeatSender(me_id="me", pg_url="u", interval_s=1.0, timeout_s=1.0, status=dict, log=None)
        s.upstream_url = "http://127.0.0.11:5433"
        return s

    down = replace(RUNNING_PRIMARY, running=False, healthy=False, in_recovery=None, wal=None)
    serving = replace(RUNNING_PRIMARY, in_recovery=True, streaming=True)
    tgt = Target(STANDBY, upstream=A)
    h, clock, records, _ = _health()
    full, hb = SpaceDataset(free=1 << 20), sender()
    asyncio.run(h.check_space(full, serving, as_primary=False))
    assert full.calls == 1 and h.free == 1 << 20  # a standby that serves: its room is read (for its heartbeats)
    assert "pg_disk_full" not in [r[3] for r in records]  # but no verdict while it serves
    h.space_at = None  # as if that check were long ago
    asyncio.run(h.check_space(full, down, as_primary=False))
    assert full.calls == 2 and "pg_disk_full" in [r[3] for r in records]
    h.track(down, as_primary=False, role=STANDBY, target=tgt, sender=hb)
    assert h.hb_withheld and hb.upstream_url is None and h.cannot_serve is None
    url, why = hb.take_leaving()
    assert url == "http://127.0.0.11:5433"
    assert why == "my PostgreSQL cannot serve: its disk is full: 1048576 bytes free on its dataset while it fails"
    assert "not running" in h.sick_why and "disk is full" in h.sick_why  # /state and the log say both
    # cured (the quota lifted, PostgreSQL streams again): heartbeats resume, the full disk is forgotten
    clock.now = 1.0
    h.track(serving, as_primary=False, role=STANDBY, target=tgt, sender=hb)
    assert not h.hb_withheld and h.disk_full_at is None
    # with room to spare: no verdict before healthChkTimeout (2 s)
    h, clock, _, _ = _health()
    roomy, hb = SpaceDataset(free=1 << 30), sender()
    asyncio.run(h.check_space(roomy, down, as_primary=False))
    h.track(down, as_primary=False, role=STANDBY, target=tgt, sender=hb)
    assert not h.hb_withheld and hb.take_leaving() is None
    clock.now = 2.5
    h.track(down, as_primary=False, role=STANDBY, target=tgt, sender=hb)
    assert h.hb_withheld and "not running" in hb.take_leaving()[1]
    # unknown room (zfs failed) is not full: no verdict either
    h, clock, _, _ = _health()
    broken, hb = SpaceDataset(fail=True), sender()
    asyncio.run(h.check_space(broken, down, as_primary=False))
    h.track(down, as_primary=False, role=STANDBY, target=tgt, sender=hb)
    assert not h.hb_withheld and h.free is None


def test_a_standby_whose_walreceiver_cannot_write_gives_way_when_its_dataset_is_full():
    """CI, 2026-12-05 (F19-sync): the sync's disk filled and its PostgreSQL did not crash: it
    ran on, not streaming (its walreceiver failing to write), so the space was never read as a
    failure's and the primary waited for the heartbeat expiry. A standby that has an upstream
    and does not stream reads its room every interval: a full dataset is a fact, it gives way
    at once and says why. Without an upstream (nothing to stream from) there is no verdict."""
    from manatee.shard.state import STANDBY, Target
    from manatee.sitter.heartbeat import HeartbeatSender
    from tests.observations import A

    idle = replace(RUNNING_PRIMARY, in_recovery=True, streaming=False)
    tgt = Target(STANDBY, upstream=A)
    for expected in (False, True):  # a target with an upstream, or none
        h, clock, records, _ = _health()
        hb = HeartbeatSender(me_id="me", pg_url="u", interval_s=1.0, timeout_s=1.0, status=dict, log=None)
        hb.upstream_url = "http://127.0.0.11:5433"
        full = SpaceDataset(free=1 << 20)
        asyncio.run(h.check_space(full, idle, as_primary=False, target=tgt if expected else Target(STANDBY)))
        h.track(idle, as_primary=False, role=STANDBY, target=tgt, sender=hb)
        if not expected:
            assert "pg_disk_full" not in [r[3] for r in records] and not h.hb_withheld
            continue
        assert "pg_disk_full" in [r[3] for r in records]
        assert h.hb_withheld and hb.upstream_url is None
        url, why = hb.take_leaving()
        assert why == "my PostgreSQL cannot serve: its disk is full: 1048576 bytes free on its dataset while it fails"
        clock.now = 0.5
        asyncio.run(h.check_space(full, idle, as_primary=False, target=tgt))
        assert full.calls == 1  # at most once per healthChkInterval
        clock.now = 1.0
        asyncio.run(h.check_space(full, idle, as_primary=False, target=tgt))
        assert full.calls == 2


def test_a_standby_whose_walreceiver_cannot_write_on_a_read_only_disk_gives_way_at_once():
    """Sandbox trial 2026-12-06: the sync's dataset made read-only. Its walreceiver exited FATAL
    each second (it could not create its WAL file), PostgreSQL never crashed and ZFS said there
    was room, so its sitter heartbeated on and the primary waited 12 s for its flush. Its log
    now says it cannot write its WAL: a fact, so it gives way at once, and says why, once."""
    from manatee.shard.state import STANDBY, Target
    from manatee.sitter.heartbeat import HeartbeatSender
    from tests.observations import A

    line = ('2026-12-06 02:00:50.033 UTC [12533] FATAL:  could not create file "pg_wal/xlogtemp.12533": '
            'Read-only file system')
    idle = replace(RUNNING_PRIMARY, in_recovery=True, streaming=False, disk_full=line)
    h, clock, records, _ = _health()
    hb = HeartbeatSender(me_id="me", pg_url="u", interval_s=1.0, timeout_s=1.0, status=dict, log=None)
    hb.upstream_url = "http://127.0.0.11:5433"
    h.track(idle, as_primary=False, role=STANDBY, target=Target(STANDBY, upstream=A), sender=hb)
    assert h.hb_withheld and hb.upstream_url is None and h.cannot_serve is None
    why = hb.take_leaving()[1]
    assert "cannot write its WAL because its disk is read-only" in why, why
    clock.now = 1.0  # the walreceiver fails again a second later: a new line, not a new episode
    h.track(replace(idle, disk_full=line.replace("12533", "12540")), as_primary=False, role=STANDBY,
            target=Target(STANDBY, upstream=A), sender=hb)
    assert h.hb_withheld and [r[3] for r in records].count("pg_disk_full_crash") == 1


def test_a_config_write_that_fails_reads_the_room_every_interval():
    """A config write refused (EDQUOT) is a failure: the room is read at once, and a full
    dataset is named as the reason, not only the refused write."""
    from manatee.shard.state import STANDBY, Target
    from manatee.sitter.heartbeat import HeartbeatSender
    from tests.observations import A

    serving = replace(RUNNING_PRIMARY, in_recovery=True, streaming=True)
    h, clock, records, pg = _health()
    pg.config_error = "[Errno 122] Disk quota exceeded: '.manatee.conf.tmp'"
    hb = HeartbeatSender(me_id="me", pg_url="u", interval_s=1.0, timeout_s=1.0, status=dict, log=None)
    hb.upstream_url = "http://127.0.0.11:5433"
    asyncio.run(h.check_space(SpaceDataset(free=0), serving, as_primary=False))
    h.track(serving, as_primary=False, role=STANDBY, target=Target(STANDBY, upstream=A), sender=hb)
    assert h.hb_withheld and "its disk is full: 0 bytes free" in hb.take_leaving()[1]
    assert "cannot write its config" in h.sick_why and "disk is full" in h.sick_why


def test_a_standby_that_only_stops_streaming_keeps_heartbeating():
    """"It does not stream" may be its upstream's fault: a hung primary must still find its
    sync heartbeating to step down to. CI, 2026-12-05 (F18-primary-sticky): the sync's
    sickness clock had started with a blip before the primary hung; it fell silent after
    primaryStartTimeout, before the primary could step down, and writes never resumed."""
    from manatee.shard.state import STANDBY, Target
    from manatee.sitter.heartbeat import HeartbeatSender
    from tests.observations import A

    idle = replace(RUNNING_PRIMARY, in_recovery=True, streaming=False)
    h, clock, _, _ = _health()
    hb = HeartbeatSender(me_id="me", pg_url="u", interval_s=1.0, timeout_s=1.0, status=dict, log=None)
    hb.upstream_url = "http://127.0.0.11:5433"
    for t in (0.0, 3.0, 8.5, 30.0):
        clock.now = t
        h.track(idle, as_primary=False, role=STANDBY, target=Target(STANDBY, upstream=A), sender=hb)
    assert not h.hb_withheld and hb.upstream_url == "http://127.0.0.11:5433" and hb.take_leaving() is None


def test_a_standby_in_a_crash_loop_stays_silent_between_its_crashes():
    """Sandbox, 2026-12-05 (`crash-loop b`, killed every second): the standby stopped and
    resumed its heartbeats with every crash, and its upstream logged a "gave way" each time.
    Once it withholds in a crash loop, its moments of health between crashes keep it silent;
    it heartbeats again once stably healthy, or (bounded, S9) once no fault of its own has
    been seen for primaryStartTimeout although it does not stream."""
    from manatee.shard.state import STANDBY, Target
    from manatee.sitter.heartbeat import HeartbeatSender
    from tests.observations import A

    down = replace(RUNNING_PRIMARY, running=False, healthy=False, in_recovery=None, wal=None)
    up = replace(RUNNING_PRIMARY, in_recovery=True, streaming=True)
    idle = replace(RUNNING_PRIMARY, in_recovery=True, streaming=False)
    tgt = Target(STANDBY, upstream=A)
    h, clock, records, _ = _health()  # primaryStartTimeout 8 s, healthChkTimeout 2 s, stable 4 s
    hb = HeartbeatSender(me_id="me", pg_url="u", interval_s=1.0, timeout_s=1.0, status=dict, log=None)
    hb.upstream_url = "http://127.0.0.11:5433"

    def at(t, pgs):
        clock.now = t
        h.track(pgs, as_primary=False, role=STANDBY, target=tgt, sender=hb)
        return h.hb_withheld

    seen = [at(t / 2, down if t % 2 == 0 else up) for t in range(0, 40)]  # 20 s: down, up, down, ...
    # sick for healthChkTimeout (the fault came back after a moment of health: a loop): silent,
    # and it stays silent through the loop's moments of health
    assert seen[:5] == [False, False, False, False, True] and all(seen[4:]), seen
    logged = [r[3] for r in records]
    assert logged.count("heartbeats_withheld") == 1 and "heartbeats_resumed" not in logged
    assert "not running" in hb.take_leaving()[1] and hb.take_leaving() is None  # one last word, not twenty
    # the loop ends and it streams: heartbeats resume once it is stably healthy (4 s)
    assert at(20.0, up) and at(23.0, up)
    assert not at(24.0, up)
    assert [r for r in records if r[3] == "heartbeats_resumed"][0][4]["why"] == "my PostgreSQL serves again"
    # the loop ends, but it does not stream (its upstream hung): the hold is bounded by
    # primaryStartTimeout since its last own fault, then it heartbeats again (S9)
    h, clock, records, _ = _health()
    seen = [at(t / 2, down if t % 2 == 0 else up) for t in range(0, 40)]
    assert seen[-1] is True
    assert at(20.0, idle) and at(26.5, idle)  # its last crash at 19.0 s
    assert not at(27.0, idle)  # (the loop points its sender again in this cycle)
    assert [r for r in records if r[3] == "heartbeats_resumed"][0][4]["why"] == "it does not stream from 10.0.0.1"


def test_a_standby_that_did_not_stream_counts_a_hard_fault_from_its_first_sight():
    """Sandbox trial 2026-12-06: the sync died, so the async (to be the next sync) did not stream
    for 7 s; then one status query timed out while it caught up, and it withheld its heartbeats
    at once, as though hung for 7 s: the primary lost its one healthy sync candidate. The hard
    fault counts from its first sight; a hang that lasts healthChkTimeout (2 s) still withholds."""
    from manatee.shard.state import STANDBY, Target
    from manatee.sitter.heartbeat import HeartbeatSender
    from tests.observations import A

    idle = replace(RUNNING_PRIMARY, in_recovery=True, streaming=False)
    slow = replace(RUNNING_PRIMARY, healthy=False, in_recovery=None, wal=None, error="timed out after 1.5s",
                   timed_out=True)
    h, clock, records, _ = _health()
    hb = HeartbeatSender(me_id="me", pg_url="u", interval_s=1.0, timeout_s=1.0, status=dict, log=None)
    hb.upstream_url = "http://127.0.0.11:5433"

    def at(t, pgs):
        clock.now = t
        h.track(pgs, as_primary=False, role=STANDBY, target=Target(STANDBY, upstream=A), sender=hb)
        return h.hb_withheld

    # 9 s without streaming (its upstream's fault), longer than primaryStartTimeout (8 s) too
    assert [at(float(t), idle) for t in range(10)] == [False] * 10
    assert not at(10.0, slow) and not at(11.0, slow)               # a hang of 1 s: not yet
    assert at(12.0, slow)                                          # healthChkTimeout of it
    assert "did not answer its status query" in hb.take_leaving()[1]


def test_a_sync_that_takes_over_starts_a_new_sickness_clock():
    """CI, 2026-12-05 (test_rewind_shard, a loaded machine): the sync did not stream from the
    primary that had just died (a sickness, as a standby) and took over; 5 s later two write
    probes timed out and it stepped down at once ("not healthy for 10.4s"): the clock it kept
    as a standby counted towards primaryStartTimeout. A new role starts a new clock."""
    from manatee.shard.state import STANDBY, Target
    from tests.observations import A

    pg = ScriptedPg(health_timeout=2.0)
    pg.client = ProbeClient(fail=True)
    h, clock, _, _ = _health(pg)
    idle = replace(RUNNING_PRIMARY, in_recovery=True, streaming=False)
    rw = replace(RUNNING_PRIMARY, read_only=False)
    for t in (0.0, 1.5, 3.0):  # the sync: its primary is gone, it does not stream
        clock.now = t
        h.track(idle, as_primary=False, role=STANDBY, target=Target(STANDBY, upstream=A))
    assert h.sick_since == 0.0
    clock.now = 3.5  # it took over: a read-write primary, healthy
    h.track(rw, as_primary=True, role="primary", target=None)
    assert h.sick_since is None and h.cannot_serve is None
    for t in (4.0, 5.0):  # two write probes time out on a loaded machine
        clock.now = t
        asyncio.run(h.probe_writes(rw, as_primary=True))
        h.track(rw, as_primary=True, role="primary", target=None)
    assert h.probe_failures == 2 and h.sick_since == 5.0
    clock.now = 9.0
    h.track(rw, as_primary=True, role="primary", target=None)
    assert h.cannot_serve is None  # 4 s of its own sickness, not 9 s carried over
    clock.now = 13.5
    h.track(rw, as_primary=True, role="primary", target=None)
    assert h.cannot_serve is not None and "cannot commit" in h.cannot_serve  # its own bound still holds


def test_a_standby_says_it_is_sick_from_a_hard_fault_until_it_is_stably_healthy():
    """What its heartbeats say (PgHealth.unwell): a hard fault (here: hung, its status query
    timed out) from when it is seen until the standby has been healthy for the stable time;
    "does not stream" alone is not said (the upstream sees that itself)."""
    from manatee.shard.state import STANDBY, Target
    from tests.observations import A

    tgt = Target(STANDBY, upstream=A)
    serving = replace(RUNNING_PRIMARY, in_recovery=True, streaming=True)
    hung = replace(serving, healthy=False, error="query timed out after 1.5s")
    idle = replace(serving, streaming=False)
    h, clock, _, _ = _health()
    h.track(idle, as_primary=False, role=STANDBY, target=tgt)
    assert h.sick_since is not None and h.unwell is None  # not streaming: not said
    clock.now = 1.0
    h.track(hung, as_primary=False, role=STANDBY, target=tgt)
    assert h.unwell and "did not answer its status query" in h.unwell
    clock.now = 2.0
    h.track(serving, as_primary=False, role=STANDBY, target=tgt)
    assert h.unwell is not None  # healthy once is not stably healthy
    clock.now = 7.0  # stable for max(primaryStartTimeout / 2, 2 intervals) = 4 s
    h.track(serving, as_primary=False, role=STANDBY, target=tgt)
    assert h.sick_since is None and h.unwell is None
