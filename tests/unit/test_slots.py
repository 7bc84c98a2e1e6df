"""Replication slots per downstream (issue 11): naming, rendering, the reconcile plan and
its shell, and the slot gauges."""

from __future__ import annotations

import asyncio
import re

import pytest

from manatee.core.pgconfig import RoleConfig, render_manatee_conf
from manatee.core.slotname import MAX_SLOT_NAME, slot_name
from manatee.core.pgparams import parse_settings
from manatee.sitter import slots
from manatee.sitter.metrics import MetricsView, render_view
from manatee.sitter.slots import Slot, plan

P = "tcp://postgres@10.0.0.1:5432/postgres"
S = "tcp://postgres@10.0.0.2:5432/postgres"
A = "tcp://postgres@10.0.0.3:5432/postgres"


@pytest.mark.parametrize("app", [P, "tcp://Postgres@[fe80::1]:5432/postgres", "x" * 200,
                                 "tcp://ünïcode@127.0.0.1:1/p", "tcp://postgres@" + "a" * 80 + ":5432/postgres"])
def test_slot_name_is_a_valid_postgresql_slot_name(app):
    name = slot_name(app)
    assert re.fullmatch(r"manatee_[a-z0-9_]+", name), name
    assert len(name) <= MAX_SLOT_NAME
    assert slot_name(app) == name  # stable: the standby and its upstream compute the same


def test_slot_names_are_readable_and_distinct():
    assert slot_name(P) == "manatee_tcp_postgres_10_0_0_1_5432_postgres"
    assert len({slot_name(x) for x in (P, S, A)}) == 3
    long1, long2 = "tcp://postgres@" + "a" * 80 + ":5432/p", "tcp://postgres@" + "a" * 80 + ":5433/p"
    assert slot_name(long1) != slot_name(long2)  # cut names stay distinct (hash of the whole)


def rc(role: str, **kw) -> RoleConfig:
    base = dict(role=role, listen_address="10.0.0.2", port=5432, socket_dir="/run/m", application_name=S)
    base.update(kw)
    return RoleConfig(**base)


def test_standby_names_its_slot_and_a_primary_or_detached_standby_none():
    s = parse_settings(render_manatee_conf(rc("standby", upstream=("10.0.0.1", 5432))))
    assert s["primary_slot_name"] == f"'{slot_name(S)}'"
    assert s["max_slot_wal_keep_size"] == "'4GB'"
    assert parse_settings(render_manatee_conf(rc("primary")))["primary_slot_name"] == "''"
    assert parse_settings(render_manatee_conf(rc("standby")))["primary_slot_name"] == "''"


@pytest.mark.parametrize("size", ["4GB", "-1", "512MB", "1024", "10 GB"])
def test_max_slot_wal_keep_size_accepted(size):
    assert parse_settings(render_manatee_conf(rc("primary", max_slot_wal_keep_size=size)))[
        "max_slot_wal_keep_size"] == f"'{size}'"


@pytest.mark.parametrize("size", ["4 gigs", "", "-2", "1.5GB", "4GB'; fsync=off"])
def test_max_slot_wal_keep_size_refused(size):
    with pytest.raises(ValueError, match="max_slot_wal_keep_size"):
        rc("primary", max_slot_wal_keep_size=size)


def test_config_key_validated_and_owned():
    from manatee.core.pgparams import parameter_problem
    from manatee.sitter.config import PostgresMgrCfg

    assert "maxSlotWalKeepSize" in (parameter_problem("max_slot_wal_keep_size", "1GB") or "")
    assert "primary_slot_name" in (parameter_problem("primary_slot_name", "x") or "")
    with pytest.raises(ValueError, match="maxSlotWalKeepSize"):
        PostgresMgrCfg.model_validate({"maxSlotWalKeepSize": "lots", "replicationAuth": {}, "zfsClientCfg": {}})


# ------------------------------------------------------------------ plan


def test_plan_creates_my_downstreams_slot_once():
    assert plan((), S, P, (P, S)) == ((slot_name(S),), ())
    assert plan((Slot(slot_name(S), False),), S, P, (P, S)) == ((), ())


def test_plan_drops_inactive_slots_of_nodes_placed_behind_another_upstream():
    # I am the primary; the async (A) is behind the sync in the chain: its slot here goes
    have = (Slot(slot_name(S), True), Slot(slot_name(A), False))
    assert plan(have, S, P, (P, S, A)) == ((), (slot_name(A),))


def test_plan_keeps_the_slot_of_the_node_right_behind_me_while_it_is_down():
    """The async stopped: it is no longer my live downstream but still behind me in the chain."""
    assert plan((Slot(slot_name(A), False, "extended"),), None, S, (P, S, A)) == ((), ())
    # ...and the sync's slot on the primary when the sync is down and the async is my live downstream
    assert plan((Slot(slot_name(S), False),), A, P, (P, S, A)) == ((slot_name(A),), ())


def test_plan_never_drops_an_active_slot_nor_one_not_manatees():
    have = (Slot(slot_name(A), True), Slot("pgbackrest", False), Slot("manatee", False))
    assert plan(have, S, P, (P, S, A)) == ((slot_name(S),), ())


def test_plan_keeps_the_slot_of_a_node_that_left_the_shard_until_lost():
    """A stopped async leaves the election and the state: its slot keeps its WAL (capped)."""
    assert plan((Slot(slot_name(A), False, "extended"),), None, S, (P, S)) == ((), ())
    assert plan((Slot(slot_name(A), False, "lost"),), None, S, (P, S)) == ((), (slot_name(A),))


def test_plan_drops_my_own_slot_copied_in_by_a_rebuild_and_a_deposed_nodes():
    assert plan((Slot(slot_name(S), False),), A, S, (P, S, A)) == ((slot_name(A),), (slot_name(S),))
    # after a failover: S primary, A sync, P deposed; P's old slots went with it
    assert plan((Slot(slot_name(A), False), Slot(slot_name(P), False)), A, S, (S, A), (P,)) == (
        (), (slot_name(P),))


def test_plan_without_a_state_drops_only_mine_and_lost():
    have = (Slot(slot_name(A), False), Slot(slot_name(S), False), Slot(slot_name(P), False, "lost"))
    assert plan(have, None, S) == ((), tuple(sorted((slot_name(S), slot_name(P)))))


# ------------------------------------------------------------------ shell


class FakeClient:
    """Enough of pg.PgClient for reconcile: a table of slots."""

    def __init__(self, have, fail=None):
        self.have = {s.name: s for s in have}
        self.fail = fail
        self.calls = []

    async def query(self, sql, params=None, *, timeout=None):
        assert timeout is not None and timeout <= 5  # every call has a deadline
        self.calls.append(sql)
        if self.fail:
            raise self.fail
        if sql == slots.LIST_SQL:
            return [{"slot_name": s.name, "active": s.active, "wal_status": s.wal_status,
                     "retained_bytes": s.retained_bytes} for s in self.have.values()]
        if sql == slots.CREATE_SQL:
            self.have[params[0]] = Slot(params[0], False, "reserved", 0)
        elif sql == slots.DROP_SQL:
            self.have.pop(params[0])
        return [{}]


class Log:
    def __init__(self):
        self.events = []

    def info(self, ev, **kw):
        self.events.append(ev)

    warning = info


def test_reconcile_applies_the_plan_and_returns_what_it_sees():
    c, log = FakeClient([Slot(slot_name(A), False, "extended", 5)]), Log()
    got = asyncio.run(slots.reconcile(c, S, P, (P, S, A), (), log))
    assert [s.name for s in got] == [slot_name(S)]
    assert log.events == ["replication_slot_created", "replication_slot_dropped"]


def test_reconcile_failure_is_unknown_and_logged_not_raised():
    log = Log()
    assert asyncio.run(slots.reconcile(FakeClient([], fail=TimeoutError()), S, P, (P, S), (), log)) is None
    assert log.events == ["replication_slots_failed"]


def test_list_query_escapes_the_like_wildcard():
    c = FakeClient([])
    asyncio.run(slots.list_slots(c))
    assert c.calls == [slots.LIST_SQL]


# ------------------------------------------------------------------ metrics


def test_slot_gauges():
    parser = pytest.importorskip("prometheus_client.parser")
    v = MetricsView(peer_id="p", zone_id="z", shard="/manatee/1", role="sync", local_role="standby", pg_up=True,
                    slots=(Slot(slot_name(A), False, "extended", 3 << 24), Slot(slot_name(P), True, "", None)))
    fams = {f.name: f for f in parser.text_string_to_metric_families(render_view(v, 0))}
    retained = {s.labels["slot"]: s.value for s in fams["manatee_replication_slot_retained_bytes"].samples}
    assert retained == {slot_name(A): float(3 << 24)}
    active = {s.labels["slot"]: s.value for s in fams["manatee_replication_slot_active"].samples}
    assert active == {slot_name(A): 0.0, slot_name(P): 1.0}
    no = {f.name for f in parser.text_string_to_metric_families(render_view(
        MetricsView(peer_id="p", zone_id="z", shard="s", role="primary", local_role="primary"), 0))}
    assert "manatee_replication_slot_retained_bytes" not in no


# ------------------------------------------------------------------ reaped nodes (manatee-adm reap)


def test_names_address_tells_a_slot_by_the_address_in_its_pg_url():
    assert slots.names_address(slot_name("tcp://postgres@127.0.0.13:5432/postgres"), "127.0.0.13")
    assert not slots.names_address(slot_name("tcp://postgres@127.0.0.13:5432/postgres"), "127.0.0.1")
    assert not slots.names_address(slot_name("tcp://postgres@127.0.0.13:5432/postgres"), "27.0.0.13")
    assert not slots.names_address(slot_name("tcp://postgres@127.0.0.130:5432/postgres"), "127.0.0.13")
    assert slots.names_address(slot_name("tcp://postgres@[fd00::13]:5432/postgres"), "fd00::13")
    assert not slots.names_address(slot_name("tcp://postgres@127.0.0.13:5432/postgres"), "")


def test_plan_drops_the_slot_of_a_node_that_left_once_it_is_reaped():
    a_ip = "10.0.0.3"  # A's host (the module's pg_urls)
    assert a_ip in A
    left = (Slot(slot_name(A), False, "extended"),)
    assert plan(left, None, S, (P, S)) == ((), ())
    assert plan(left, None, S, (P, S), reaped_ips={a_ip}) == ((), (slot_name(A),))
    # never while it is active, my live downstream, or in the chain (reap refuses members anyway)
    assert plan((Slot(slot_name(A), True),), None, S, (P, S), reaped_ips={a_ip}) == ((), ())
    assert plan(left, A, S, (P, S, A), reaped_ips={a_ip}) == ((), ())
    assert plan(left, None, P, (P, S, A), reaped_ips={a_ip}) == ((), (slot_name(A),))  # (behind S: not mine)
    assert plan(left, None, S, (P, S, A), reaped_ips={a_ip}) == ((), ())


def test_strays_are_inactive_slots_outside_the_chain_that_the_plan_keeps():
    left = [Slot(slot_name(A), False, "extended")]
    assert slots.strays(left, None, (P, S), ())
    assert not slots.strays(left, None, (P, S), (slot_name(A),))  # dropped anyway
    assert not slots.strays(left, None, (P, S, A), ())
    assert not slots.strays([Slot(slot_name(A), True)], None, (P, S), ())
    assert not slots.strays([Slot("pgbackrest", False)], None, (P, S), ())


class Clock:
    def __init__(self):
        self.t = 100.0

    def monotonic(self):
        return self.t


def test_reaped_addresses_are_read_only_while_a_stray_slot_exists_and_at_most_every_10s():
    a_ip, reads, clock = "10.0.0.3", [], Clock()

    async def read():
        reads.append(clock.t)
        return frozenset({a_ip})

    reaped = slots.ReapedAddresses(read, clock)
    c, log = FakeClient([Slot(slot_name(S), True)]), Log()
    asyncio.run(slots.reconcile(c, S, P, (P, S), (), log, reaped))
    assert reads == []  # no stray slot: the history is not read
    c = FakeClient([Slot(slot_name(A), False, "extended")])
    got = asyncio.run(slots.reconcile(c, None, S, (P, S), (), log, reaped))
    assert got == () and reads == [100.0] and "replication_slot_dropped" in log.events
    c = FakeClient([Slot(slot_name(A), False, "extended")])
    clock.t += slots.REAPED_EVERY_S / 2
    asyncio.run(slots.reconcile(c, None, S, (P, S), (), log, reaped))
    assert reads == [100.0] and not c.have  # the cached answer
    clock.t += slots.REAPED_EVERY_S
    asyncio.run(slots.reconcile(FakeClient([Slot(slot_name(A), False)]), None, S, (P, S), (), log, reaped))
    assert reads == [100.0, 100.0 + 1.5 * slots.REAPED_EVERY_S]


def test_a_failed_read_of_the_reaped_addresses_drops_nothing_and_is_logged_once():
    clock, log = Clock(), Log()

    async def read():
        raise ConnectionError("zk down")

    reaped = slots.ReapedAddresses(read, clock)
    for _ in range(3):
        c = FakeClient([Slot(slot_name(A), False, "extended")])
        assert [s.name for s in asyncio.run(slots.reconcile(c, None, S, (P, S), (), log, reaped))] == [slot_name(A)]
        clock.t += slots.REAPED_EVERY_S
    assert log.events == ["reaped_addresses_unread"]
