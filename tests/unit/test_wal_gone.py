"""A standby whose upstream removed the WAL it needs next (no slot held it, or the slot passed
max_slot_wal_keep_size): its walreceiver is refused every second forever. The sitter reads it
in PostgreSQL's log, only as its own walreceiver's words, only about the upstream it follows
now, and the core rebuilds the node from that upstream (an increment when they share a
snapshot); it is no divergence, so a sync in that state may still take over."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from manatee.shard import rebuildpath as rp
from manatee.shard.decide import decide
from manatee.shard.state import PRIMARY, REBUILD, STANDBY
from manatee.sitter.pglog import WAL_GONE_MIN_LINES, LogFacts, wal_gone_in
from manatee.sitter.pgmanager import PgManager, RoleSpec
from tests.observations import A, B, C, D, obs
from tests.pgmanager_fakes import bare_pg_manager

SEG = "000000010000000000000008"


def _mine(seg: str = SEG, pid: int = 3653) -> str:
    """What PostgreSQL 15's walreceiver logs (seen in a sandbox trial, 2026-12-05)."""
    return (f"2026-12-05 03:18:23.275 UTC [{pid}] LOG:  started streaming WAL from primary at 0/800000 on timeline 1\n"
            f"2026-12-05 03:18:23.275 UTC [{pid}] FATAL:  could not receive data from WAL stream: ERROR:  "
            f"requested WAL segment {seg} has already been removed\n"
            "2026-12-05 03:18:23.275 UTC [3257] LOG:  waiting for WAL to become available at 0/802000\n")


def _my_walsender(seg: str = SEG) -> str:
    """The same refusal from my own walsender, to one of MY standbys: not about my WAL."""
    return (f"2026-12-05 03:18:24.001 UTC [4001] ERROR:  requested WAL segment {seg} has already been removed\n"
            "2026-12-05 03:18:24.001 UTC [4001] STATEMENT:  START_REPLICATION SLOT \"s\" 0/800000 TIMELINE 1\n")


# ---------------------------------------------------------------- the log
def test_repeated_refusals_of_my_walreceiver_name_the_segment():
    assert wal_gone_in(_mine() * WAL_GONE_MIN_LINES) == SEG
    assert wal_gone_in(_mine("00000001000000000000000A") * WAL_GONE_MIN_LINES + _mine()) == SEG  # the newest
    assert wal_gone_in(_mine() * (WAL_GONE_MIN_LINES - 1)) is None  # one more line of an old upstream is not enough


def test_my_walsender_refusing_my_standby_is_not_my_loss():
    assert wal_gone_in(_my_walsender() * 10) is None
    assert wal_gone_in(_my_walsender() * 10 + _mine() * (WAL_GONE_MIN_LINES - 1)) is None


def test_ordinary_lines_are_not():
    assert wal_gone_in("LOG:  started streaming WAL from primary at 0/3000000 on timeline 2\n" * 5) is None
    assert wal_gone_in("FATAL:  could not connect to the primary server: connection refused\n" * 5) is None


def _manager(monkeypatch, log_file) -> PgManager:
    m = bare_pg_manager(monkeypatch, lambda *_a, **_k: SimpleNamespace(
        restart_needed=False, reload_needed=True, changed=["primary_conninfo"]))
    m.log_file, m.status_timeout = log_file, 2.0
    m._log_offset, m._upstream_log_from, m._started_at = 0, 0, 1.0
    return m


def test_only_lines_since_my_upstream_changed_count(monkeypatch, tmp_path):
    log = tmp_path / "postgresql.log"
    log.write_text("")
    m = _manager(monkeypatch, log)

    def configure(upstream):
        asyncio.run(m.configure(RoleSpec("standby", upstream=upstream), ()))

    def gone():
        return asyncio.run(m._log_facts()).wal_gone

    configure(("127.0.0.12", 5432))
    assert gone() is None
    with log.open("a") as f:
        f.write(_mine() * WAL_GONE_MIN_LINES)
    assert gone() == SEG  # the upstream I follow refused me, again and again
    configure(("127.0.0.12", 5432))  # the same upstream written again: nothing forgotten
    assert gone() == SEG
    configure(("127.0.0.11", 5432))  # a new upstream: what the old one said is not about it
    assert gone() is None
    with log.open("a") as f:
        f.write(_mine())  # the old walreceiver's last word, after the change
    assert gone() is None
    with log.open("a") as f:
        f.write(_mine("00000002000000000000000C") * (WAL_GONE_MIN_LINES - 1))
    assert gone() == "00000002000000000000000C"


def test_a_log_that_cannot_be_read_says_nothing(monkeypatch, tmp_path):
    m = _manager(monkeypatch, tmp_path / "missing.log")
    assert asyncio.run(m._log_facts()) == LogFacts()


# ---------------------------------------------------------------- the decision
def test_sync_refused_by_its_live_primary_rebuilds_from_it():
    d = decide(obs(B, streaming=False, wal=None, wal_gone=SEG))
    assert d.target.role == REBUILD and d.target.upstream == A and d.rule == "sync.rebuild"
    assert SEG in d.reason and "no longer kept on the primary 10.0.0.1" in d.reason


def test_async_refused_by_its_upstream_rebuilds_from_it():
    d = decide(obs(C, streaming=False, wal=None, upstream_id=B.id, wal_gone=SEG))
    assert d.target.role == REBUILD and d.target.upstream == B and d.rule == "async.rebuild"
    assert SEG in d.reason


def test_a_refusal_from_another_upstream_than_mine_now_is_no_reason():
    # the state moved me behind B; my conninfo still names A until this cycle reconfigures it
    d = decide(obs(C, streaming=False, wal=None, upstream_id=A.id, wal_gone=SEG))
    assert d.target.role == STANDBY and d.target.upstream == B
    d = decide(obs(B, streaming=False, wal=None, upstream_id=None, wal_gone=SEG))
    assert d.target.role == STANDBY and d.target.upstream == A


def test_it_is_no_divergence_a_sync_still_takes_over():
    base = dict(election=(B, C, D), streaming=False, upstream_id=None, wal=0x6000)
    d = decide(obs(B, **base, wal_gone=SEG))
    assert d.target.role == PRIMARY and d.write_state is not None and d.write_state.primary == B
    assert d.write_state == decide(obs(B, **base)).write_state


# ---------------------------------------------------------------- the rebuild's path
@pytest.mark.parametrize("cause, diverged, wal_gone, streaming, then", [
    (None, False, False, True, None),
    (None, False, True, False, rp.CAUSE_WAL_GONE),
    (None, True, True, False, rp.CAUSE_DIVERGED),
    (rp.CAUSE_WAL_GONE, True, False, False, rp.CAUSE_DIVERGED),  # a rewind may fix a divergence
    (rp.CAUSE_WAL_GONE, False, True, False, rp.CAUSE_WAL_GONE),
    (rp.CAUSE_WAL_GONE, False, False, False, rp.CAUSE_WAL_GONE),
    (rp.CAUSE_WAL_GONE, False, False, True, None),  # streaming again: no rebuild came of it
    (rp.CAUSE_DIVERGED, False, True, True, rp.CAUSE_DIVERGED),  # latched until a restore
    (rp.CAUSE_REQUESTED, True, True, False, rp.CAUSE_REQUESTED),  # the operator's stands
])
def test_next_cause(cause, diverged, wal_gone, streaming, then):
    assert rp.next_cause(cause, diverged=diverged, wal_gone=wal_gone, streaming=streaming) == then


def test_no_rewind_for_a_removed_segment_and_it_says_why():
    why = rp.why_not_rewind(rp.RewindFacts(True, rp.CAUSE_WAL_GONE, True, "shut down", True, True))
    assert why is not None and "no longer keeps the WAL I need" in why
