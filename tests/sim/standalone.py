"""One production Sitter built through its constructor with fakes, for tests of the shell's
pieces (observe, the promotion guard, operator requests) without a whole simulated shard."""

from __future__ import annotations

from manatee.core.lsn import Lsn
from manatee.shard.state import ClusterState, Peer
from manatee.sitter.loop import Sitter
from manatee.sitter.pgmanager import PgStatus
from tests.sim.clock import FakeClock, SimLog
from tests.sim.pg import FakeClient
from tests.sim.shard import sitter_config
from tests.sim.zk import FakeSession, FakeStore, SimZK

RUNNING_PRIMARY = PgStatus(True, True, False, Lsn(0x9000), False, False, None, 1, False)


class ScriptedPg:
    """The Postgres port answering status queries from a script (a list, or a function of the
    sync's application name), recording every other call."""

    config_error = None
    parameters_gen = 0
    raised_to_primary: dict = {}  # (never raised here)
    parameters_dirty = False

    def __init__(self, statuses=(RUNNING_PRIMARY,), *, spec=None, running=True, health_timeout=2.0,
                 ops_timeout=60.0):
        self.statuses = statuses if callable(statuses) else iter(statuses)
        self.spec, self._running = spec, running
        self.health_timeout, self.ops_timeout = health_timeout, ops_timeout
        self.status_timeout = max(0.5, min(health_timeout / 2, 2.0))
        self.members: tuple[str, ...] = ()
        self.client = FakeClient()
        self.calls: list[tuple] = []

    @property
    def running(self) -> bool:
        return self._running

    def has_data(self) -> bool:
        return True

    async def check_data(self, timeout: float) -> bool:
        return True

    def has_standby_signal(self) -> bool:
        return False

    def set_parameters(self, parameters) -> bool:
        return False

    async def status(self, sync_app_name=None) -> PgStatus:
        return self.statuses(sync_app_name) if callable(self.statuses) else next(self.statuses)

    async def configure(self, spec, members):
        self.calls.append(("configure", spec))
        self.spec = spec

    async def apply_pending(self):
        self.calls.append(("apply_pending",))
        return "reloaded"

    async def promote(self):
        self.calls.append(("promote",))

    async def initdb(self):
        self.calls.append(("initdb",))

    async def start(self, ready_timeout=None):
        self.calls.append(("start",))
        self._running = True

    async def stop(self, mode="fast"):
        self.calls.append((f"stop:{mode}",))
        self._running = False

    async def kill(self):
        self.calls.append(("kill",))
        self._running = False


class NoDataset:
    """A dataset that is never restored in these tests."""

    async def ensure(self):
        pass

    async def check_upstream(self, upstream):
        raise AssertionError("no restore expected")

    async def rewind(self, upstream, cause, progress, ahead=()):
        raise AssertionError("no restore expected")

    async def restore(self, upstream, progress, also=()):
        raise AssertionError("no restore expected")

    async def read_memory(self, timeout):
        return None  # no dataset: no data of any shard

    async def write_memory(self, value, timeout):
        pass


def standalone_sitter(me: Peer, *, pg=None, state: ClusterState | None = None, election: tuple[Peer, ...] = (),
                      clock: FakeClock | None = None, **cfg) -> Sitter:
    """A Sitter for `me`, connected to a simulated ZooKeeper holding `state` and `election`."""
    clock = clock or FakeClock(100.0)
    zk = SimZK(session_timeout=cfg.get("session_timeout", 6))
    session = FakeSession(zk, lambda: zk.up)
    records: list = []
    log = SimLog(clock, me.ip, records)
    s = Sitter(sitter_config(me, False, **cfg), log, store=FakeStore(zk, session, log), session=session,
               pg=pg or ScriptedPg(), dataset=NoDataset(), clock=clock)
    s.records = records  # what it logged: (time, who, level, event, fields)
    s.view.listen()
    s.view.watch()
    session.poll(clock.now)
    if state is not None:
        zk.set_raw(state.dumps())
    for p in election:
        zk.join(session.sid, p)
    run_now(s.view.refresh())  # a complete read in the current session: a fresh view
    s.wake.clear()
    return s


def run_now(coro):
    """Run a coroutine that never waits (the fakes answer at once), inside or outside a loop."""
    try:
        coro.send(None)
    except StopIteration as e:
        return e.value
    coro.close()
    raise AssertionError("the coroutine waited for something")
