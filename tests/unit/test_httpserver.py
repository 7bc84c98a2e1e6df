"""ConnectionPool: the cap evicts the oldest idle connection, never one with a request in
progress; idle connections time out."""

from __future__ import annotations

from manatee.core.httpserver import ConnectionPool


class Conn:
    def __init__(self, busy=False, last_rx=0.0):
        self.busy, self.last_rx, self.closed, self.busy_since = busy, last_rx, False, None

    def close(self):
        self.closed = True


def test_cap_evicts_oldest_idle_not_busy():
    pool = ConnectionPool(max_connections=3, idle_timeout=10)
    busy, idle1, idle2 = Conn(busy=True), Conn(), Conn()
    for c in (busy, idle1, idle2):
        pool.add(c)
    new = Conn()
    pool.add(new)
    assert idle1.closed and not busy.closed and not idle2.closed and not new.closed
    assert list(pool.conns) == [busy, idle2, new] and pool.evicted == 1


def test_cap_refuses_new_when_all_busy():
    pool = ConnectionPool(max_connections=2, idle_timeout=10)
    a, b, c = Conn(busy=True), Conn(busy=True), Conn()
    for x in (a, b, c):
        pool.add(x)
    assert c.closed and not a.closed and not b.closed and pool.refused == 1 and c not in pool.conns


def test_sweep_closes_idle_only():
    pool = ConnectionPool(max_connections=10, idle_timeout=5)
    old_idle, old_busy, fresh = Conn(last_rx=0), Conn(busy=True, last_rx=0), Conn(last_rx=8)
    for x in (old_idle, old_busy, fresh):
        pool.add(x)
    assert pool.sweep(now=10) == 1
    assert old_idle.closed and not old_busy.closed and not fresh.closed


def test_sweep_bounds_a_request_in_progress():
    pool = ConnectionPool(max_connections=10, idle_timeout=5, request_timeout=60)
    slow = Conn(busy=True, last_rx=0)
    pool.add(slow)
    for now in (1, 30, 60):  # first seen busy at 1
        pool.sweep(now=now)
        assert not slow.closed
    slow.last_rx = 61  # still trickling bytes: does not matter
    pool.sweep(now=62)
    assert slow.closed
