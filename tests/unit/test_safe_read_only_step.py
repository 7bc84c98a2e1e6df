"""The safe-mode step (manatee.sitter.steps SAFE_READ_ONLY): what runs out of recovery is made
read-only with a sync that never connects; a standby's configuration is never touched (a
primary's would remove its standby.signal and fork it at its next start); with its status
unknown, its files (standby.signal) say what it runs as."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from manatee.shard import transitions as T
from manatee.shard.state import SAFE_MODE, Target
from manatee.sitter.steps import NO_SYNC_PLACEHOLDER, StepRunner
from tests.factories import peer

ME = peer("127.0.0.12")


class Log:
    def __getattr__(self, level):
        return lambda event, **kw: None


class Pg:
    def __init__(self, running: bool, in_recovery: bool | None, signal: bool = False):
        self.running = running
        self.in_recovery = in_recovery
        self.signal = signal
        self.events: list[tuple] = []

    def has_data(self) -> bool:
        return True

    def has_standby_signal(self) -> bool:
        return self.signal

    async def status(self, sync_app=None):
        known = self.in_recovery is not None
        return SimpleNamespace(known=known, in_recovery=self.in_recovery, error=None if known else "timed out")

    async def configure(self, spec, members):
        self.events.append(("configure", spec))

    async def apply_pending(self):
        self.events.append(("reload",))
        return "reloaded"

    async def kill(self):  # PgManager.kill: with no child of its own, every process of the data directory
        self.events.append(("kill",))


def _step(pg: Pg, onwm: bool = False) -> None:
    r = StepRunner(me=ME, pg=pg, store=None, dataset=None, log=Log(), clock=None,
                   one_node_write_mode=onwm, ttl=30, on_restored=lambda: None)
    asyncio.run(r.step(T.SAFE_READ_ONLY, Target(SAFE_MODE), ()))


def test_a_postgres_out_of_recovery_is_made_read_only_with_a_sync_that_never_connects():
    pg = Pg(True, False)  # the primary, or a standby that forked
    _step(pg)
    (kind, spec), reload = pg.events
    assert kind == "configure" and reload == ("reload",)
    assert spec.role == "primary" and spec.read_only is True and spec.sync_app_name == NO_SYNC_PLACEHOLDER


def test_a_standby_in_recovery_keeps_its_configuration():
    pg = Pg(True, True)
    _step(pg)
    assert pg.events == []


def test_a_stopped_standby_is_untouched_and_a_stopped_primarys_files_say_read_only():
    """Stopped as the sitter sees it (not its child): whatever of the data directory still runs
    is killed first (an orphan its predecessor left, whose kill failed, may run read-write:
    the random simulation, seed 608855); the files are then left or made read-only."""
    pg = Pg(False, None, signal=True)
    _step(pg)
    assert pg.events == [("kill",)]
    pg = Pg(False, None)  # should anyone start it by hand, it takes no writes
    _step(pg)
    kill, (kind, spec) = pg.events
    assert kill == ("kill",) and kind == "configure" and spec.role == "primary" and spec.read_only is True


def test_an_unknown_status_goes_by_the_files_a_crowded_primary_is_still_made_read_only():
    pg = Pg(True, None, signal=True)  # started as a standby: nothing to do
    _step(pg)
    assert pg.events == []
    pg = Pg(True, None)  # no standby.signal: it runs as a primary (all its connection slots taken, say)
    _step(pg)
    (kind, spec), reload = pg.events
    assert kind == "configure" and spec.read_only is True and reload == ("reload",)
