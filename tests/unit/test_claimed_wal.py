"""The WAL position a standby's sitter claims (Observation.wal, heartbeats): only WAL seen
streamed from its configured upstream, and never WAL of its own from a time it ran as a
primary. The production Sitter with scripted PostgreSQL statuses (tests/sim)."""

from __future__ import annotations

from manatee.core.lsn import Lsn
from manatee.sitter.pgmanager import PgStatus, RoleSpec
from tests.observations import A, B, STATE
from tests.sim.standalone import ScriptedPg, run_now, standalone_sitter


def _standby(wal: int, *, streaming: bool) -> PgStatus:
    return PgStatus(True, True, True, Lsn(wal), streaming, False, None, 1, False,
                    (A.ip, 5432) if streaming else None)


def _primary(wal: int) -> PgStatus:
    return PgStatus(True, True, False, Lsn(wal), False, False, None, 2, False)


def _claims(statuses) -> list[int | None]:
    s = standalone_sitter(B, pg=ScriptedPg(statuses, spec=RoleSpec("standby", upstream=A)), state=STATE)
    s.steps.configured_upstream = A
    out = []
    for _ in statuses:
        o = run_now(s.observe())
        out.append(o.wal if o.in_recovery else None)
        assert s.claimed_wal == out[-1]
    return out


def test_a_restart_keeps_the_claim_on_wal_streamed_from_the_same_upstream():
    # streamed from A, then PostgreSQL restarted while A hangs: the WAL on disk still counts
    assert _claims([_standby(500, streaming=True), _standby(700, streaming=False)]) == [500, 700]


def test_nothing_is_claimed_before_streaming_from_the_upstream():
    assert _claims([_standby(500, streaming=False)]) == [None]


def test_wal_written_as_a_primary_is_not_claimed_when_standby_again():
    # streamed from A, then ran as a primary (its WAL its own, perhaps forked), then a standby
    # of A again: nothing counts until it is seen streaming from A again
    got = _claims([_standby(500, streaming=True), _primary(900), _standby(900, streaming=False),
                   _standby(950, streaming=True)])
    assert got == [500, None, None, 950]
