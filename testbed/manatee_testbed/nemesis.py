"""The fault soak ("nemesis"): R rounds of randomly chosen faults against a sandbox shard
under continuous writes, then the data checks of ACCEPTANCE S1–S4/S7 over the whole run.

Why a soak: each fault test (tests/integration/test_sitter_faults.py) starts from a
healthy shard and breaks it once. Production shards see faults one after another, on
whatever node happens to hold a role, with the shard still recovering from the last one.
The soak repeats that with a seeded RNG, so a failing sequence can be replayed.

Each round: pick a fault (kill, graceful stop, hang past the session timeout, partition,
ZooKeeper restart, back-to-back failover, and the gray failures of
testbed/manatee_testbed/grayfaults.py: PostgreSQL alone hung, disk full, connection storm,
malformed znode, flaky network) and, where it has one, a role (primary, sync, async);
apply it; wait until the shard reacts (the node leaves the topology) or a bound
passes; undo it (start, resume, heal, restart ZooKeeper); wait, with a bound, for a
healthy shard (primary + sync + async, every standby streaming, a write commits). A round
that does not heal within the bound is an "operator round": its reason (and whether the
shard is in safe mode) is recorded, and the runner recovers it the way an operator would
(undo everything, start what is down, then restart the nodes).

At the end the writer stops and the data is checked: every acknowledged id on the final
primary (S2), every other node's rows a subset of the primary's with identical payloads
(S4, no fork), one writer at a time (S1), and the history's AssumeLeader records name one
primary per generation (S7).

The plan and the report (what to break, what a round measured, the summary) are pure code
in nemesis_plan.py. The shard is seen as a client sees it through testbed/manatee_testbed/shardview.py (ShardView),
which tests/shard_fixture.py's Shard extends.
"""

from __future__ import annotations

import contextlib
import random
import tempfile
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

from manatee.core.procs import pid_alive
from manatee_testbed import grayfaults, nemesis_adm, network
from manatee_testbed.grayfaults.diskfull import FaultNotApplied
from manatee_testbed.grayfaults import replayhold
from manatee_testbed.checks import (
    check_data,
    fetch_rows,
    history_one_primary_per_generation,
    not_a_prefix,
    promoted_from,
    summarise,
)
from manatee_testbed.nemesis_plan import (
    FAULT_KINDS,
    TARGETED,
    Planned,
    RoundResult,
    Summary,
    gray_reaction,
    longest_gap,
    schedule,
    topo_line,
)
from manatee_testbed.sandbox import Sandbox
from manatee_testbed.sandbox_state import SandboxError
from manatee_testbed.shardview import ShardView
from manatee_testbed.writer import RecordingWriter

# ------------------------------------------------------------------ the runner


def inflict(what: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """Put a fault in place: `fn(*args, **kw)`. If that fails the fault is not in place, and
    the round is no round of its kind: FaultNotApplied, naming what could not be done."""
    try:
        return fn(*args, **kw)
    except FaultNotApplied:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to break the node means it was not broken
        raise FaultNotApplied(f"could not {what}: {type(e).__name__}: {e}") from e


class SoakAborted(Exception):
    """The shard could not be brought back even by the operator's steps."""


class Nemesis:
    """One soak. `out` receives the per-round lines and progress."""

    def __init__(
        self,
        rounds: int = 5,
        seed: int | None = None,
        session_timeout_ms: int = 5000,
        faults: Sequence[str] = FAULT_KINDS,
        dir: Path | str | None = None,
        keep: bool = False,
        heal_timeout: float = 180.0,
        write_interval: float = 0.02,
        out: Callable[[str], None] = print,
        verbose: bool = False,
    ):
        self.rounds = rounds
        self.seed = seed if seed is not None else random.SystemRandom().randrange(1, 2**31)
        self.session_timeout_ms = session_timeout_ms
        self.kinds = tuple(faults)
        self.keep = keep
        self.heal_timeout = heal_timeout
        self.write_interval = write_interval
        self._print = out
        self.verbose = verbose
        self._tmp: str | None = None
        if dir is None:
            self._tmp = tempfile.mkdtemp(prefix="manatee-nemesis-")
            dir = Path(self._tmp) / "sandbox"
        self.dir = Path(dir).resolve()
        self.rng = random.Random(self.seed)
        self.plan = schedule(rounds, self.kinds, self.rng)
        self.sb = Sandbox(self.dir, out=self._sandbox_out)
        self.view = ShardView(self.sb)
        self.writer: RecordingWriter | None = None
        self.t_start = time.monotonic()

    # output --------------------------------------------------------------------------------
    def say(self, line: str) -> None:
        self._print(f"[{time.strftime('%T')} +{time.monotonic() - self.t_start:6.1f}s] {line}")

    def _sandbox_out(self, line: str) -> None:
        if self.verbose:
            self.say(f"  sandbox: {line}")

    @property
    def session_s(self) -> float:
        return self.session_timeout_ms / 1000

    # waits ---------------------------------------------------------------------------------
    def _wait(self, pred: Callable[[], Any], timeout: float, interval: float = 0.25) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            v = pred()
            if v or time.monotonic() > deadline:
                return v
            time.sleep(interval)

    def wait_healthy(self, timeout: float) -> tuple[bool, str]:
        deadline = time.monotonic() + timeout
        while True:
            ok, why = self.view.healthy()
            if ok or time.monotonic() > deadline:
                return ok, why
            time.sleep(0.5)

    def _left_topology(self, name: str) -> bool:
        """True once ZooKeeper's state no longer names `name` as primary, sync or async."""
        t = self.view.topology()
        if t.get("generation") is None:
            return False
        return name not in [t["primary"], t["sync"], *t["async"]]

    def _await(self, pred: Callable[[], Any], at_least: float) -> tuple[Any, float, float]:
        """`pred()` until it holds, bounded by 3 × T + 30 s, then at least `at_least` seconds
        from the start: (its last value, the seconds it took, the bound)."""
        t0 = time.monotonic()
        bound = 3 * self.session_s + 30
        got = self._wait(pred, bound, interval=0.1)
        took = time.monotonic() - t0
        if at_least > took:
            time.sleep(at_least - took)
        return got, took, bound

    def _await_reaction(self, name: str, at_least: float = 0.0) -> str | None:
        """After a fault on `name`: until the shard drops it from the topology (bounded),
        and at least `at_least` seconds. A note if it never did."""
        reacted, _, bound = self._await(lambda: self._left_topology(name), at_least)
        return None if reacted else f"{name} still in the topology {bound:.0f}s after the fault"

    def _await_gray_reaction(self, name: str, hold: float, hung: Sequence[int] = ()) -> str:
        """After a gray failure of the primary `name`: until another node takes over or its
        sitter kills the hung postmaster (`hung[0]`), bounded; then at least `hold` seconds
        from the fault. A note either way: how the shard answered, and when."""
        how, took, bound = self._await(
            lambda: gray_reaction(self.view.topology(), name, bool(hung) and not pid_alive(hung[0])), hold)
        if not how:
            return f"{name} still the primary, its PostgreSQL not killed, {bound:.0f}s after the fault"
        return f"after {took:.1f}s: {how}"

    # faults --------------------------------------------------------------------------------
    def _node_for(self, role: str, t: dict[str, Any]) -> str:
        if role == "async":
            return t["async"][-1]
        return t[role]

    def apply(self, p: Planned, r: RoundResult, t: dict[str, Any]) -> None:
        """Apply the fault and undo it (start, resume, heal, restart ZooKeeper)."""
        if p.kind in TARGETED:
            name = self._node_for(p.role or "primary", t)
            r.target = f"{name}({p.role})"
            if p.kind == "kill":
                inflict(f"kill {name}", self.sb.kill, name)
                note = self._await_reaction(name)
                self.sb.start(name)
            elif p.kind == "stop":
                inflict(f"stop {name}", self.sb.stop, name)
                note = self._await_reaction(name)
                self.sb.start(name)
            elif p.kind == "hang":
                try:
                    inflict(f"hang {name}", self.sb.hang, name)
                    note = self._await_reaction(name, at_least=self.session_s + 1)
                finally:
                    self.sb.resume(name)
            elif p.kind == "partition":
                try:
                    inflict(f"partition {name}", self.sb.partition, name)
                    note = self._await_reaction(name, at_least=self.session_s + 1)
                finally:
                    self.sb.heal(name)
            else:
                note = self._apply_gray(p.kind, name, p.role or "primary")
            if note:
                r.notes.append(note)
        elif p.kind == "zk_restart":
            down_s = round(self.rng.uniform(0.5, 2.0) * self.session_s, 1)
            r.target = f"zookeeper({down_s}s)"
            try:
                inflict("stop ZooKeeper", self.sb.zk_stop)
                time.sleep(down_s)
            finally:
                self.sb.zk_start()
        elif p.kind == "bad_znode":
            hold = 2 * self.session_s
            if self.rng.random() < 0.5:
                r.target = f"rogue-election-node({hold:.0f}s)"
                try:
                    inflict("create a rogue election node", grayfaults.rogue_election_node, self.sb)
                    time.sleep(hold)
                finally:
                    grayfaults.remove_rogue_election_node(self.sb)
            else:
                r.target = f"unparsable-state({hold:.0f}s)"
                try:
                    inflict("corrupt the state znode", grayfaults.corrupt_state, self.sb)
                    time.sleep(hold)
                finally:
                    r.notes.append(f"state znode: {grayfaults.restore_state(self.sb)}")
        elif p.kind == "report_sync_loss":  # a report holds the async's replay, then the sync dies
            node = self.sb.st.node
            rep, victim = t["async"][0], t["sync"]
            r.target = f"{rep}(async, report)->{victim}(sync)"
            report = inflict(f"hold {rep}'s replay with a report", replayhold.hold_replay,
                             self.view.dsn(node(rep)), self.view.dsn(node(t["primary"])))
            try:
                inflict(f"kill {victim}", self.sb.kill, victim)
                note = self._await_reaction(victim)
                if note:
                    r.notes.append(note)
                self.sb.start(victim)
            finally:
                r.notes.append("the report " + ("outlived the fault" if replayhold.release_replay(report)
                                                else "was ended"))
        elif p.kind in nemesis_adm.ADM_KINDS:  # an operator's manatee-adm under load (nemesis_adm.py)
            r.notes.append(getattr(nemesis_adm, p.kind)(self, r, t))
        elif p.kind == "double_failover":
            first, second = t["primary"], t["sync"]
            r.target = f"{first}(primary)->{second}(sync)"
            inflict(f"kill {first}", self.sb.kill, first)
            bound = 3 * self.session_s + 60
            promoted = self._wait(lambda: self.view.writable(self.sb.st.node(second)), bound, interval=0.1)
            if not promoted:
                r.notes.append(f"{second} not writable {bound:.0f}s after {first} was killed; killed it anyway")
            self.sb.kill(second)
            time.sleep(self.session_s + 2)  # the third node's turn: promoted, but without a sync
            r.notes.append(f"with {first} and {second} down: {topo_line(self.view.topology())} "
                           f"roles {self.view.roles()}")
            order = [first, second]
            self.rng.shuffle(order)
            for n in order:
                self.sb.start(n)
        else:
            raise ValueError(f"unknown fault {p.kind!r}")

    def _apply_gray(self, kind: str, name: str, role: str) -> str | None:
        """A gray failure on `name`, held for a while, then undone. A primary that cannot
        serve (PostgreSQL hung, disk full) is held until the shard answers (another node takes
        over, or its sitter kills the hung PostgreSQL; bounded) and at least a few session
        timeouts; a sick standby, a storm or a flaky network for a few session timeouts."""
        hold = 2 * self.session_s + 1
        note = None
        if kind == "pg_hang":
            try:
                hung = inflict(f"hang {name}'s PostgreSQL", grayfaults.pg_hang, self.sb, name)
                note = self._await_gray_reaction(name, hold, hung) if role == "primary" else time.sleep(hold)
            finally:
                grayfaults.pg_resume(self.sb, name)
        elif kind == "disk_full":  # quota, then a burst fills it (grayfaults/diskfull.py)
            try:
                inflict(f"fill {name}'s disk", grayfaults.disk_full, self.sb, name)
                note = self._await_gray_reaction(name, hold) if role == "primary" else time.sleep(hold)
            finally:
                grayfaults.disk_lift(self.sb, name)
        elif kind == "storm":
            try:
                inflict(f"storm {name}'s PostgreSQL", grayfaults.storm, self.sb, name, hold_s=hold + 60)
                time.sleep(hold)
            finally:
                grayfaults.storm_release(self.sb, name)
        elif kind == "flaky_net":
            try:
                inflict(f"make {name}'s network flaky", grayfaults.flaky, self.sb, name, loss_pct=30, delay_ms=200,
                        for_s=2 * hold + 60)
                time.sleep(2 * hold)
            finally:
                grayfaults.unflaky(self.sb, name)
        else:
            raise ValueError(f"unknown gray fault {kind!r}")
        return note

    # operator ------------------------------------------------------------------------------
    def undo_everything(self) -> list[str]:
        """What an operator does first: ZooKeeper up, partitions healed, hung nodes resumed,
        nodes whose daemons died started. Returns what was done."""
        done = []
        if not self.sb.zk_running():
            self.sb.zk_start()
            done.append("started ZooKeeper")
        with contextlib.suppress(Exception):
            done += grayfaults.undo_all(self.sb)
        for n in self.sb.st.nodes:
            with contextlib.suppress(network.NftError, OSError, SandboxError):
                if self.sb.heal(n.name):
                    done.append(f"healed {n.name}")
            with contextlib.suppress(SandboxError):
                self.sb.resume(n.name)
            if not n.pids or not all(pid_alive(p) for p in n.pids.values()):
                with contextlib.suppress(SandboxError):
                    self.sb.kill(n.name)  # a postgres left without its sitter
                self.sb.start(n.name)
                done.append(f"started {n.name}")
        return done

    def operator_recover(self, r: RoundResult, why: str) -> None:
        r.operator = why
        r.safe_mode = self.view.safe_mode()
        roles = self.view.roles()
        if any(v == "safe_mode" for v in roles.values()) and not r.safe_mode:
            r.safe_mode = {"reason": f"sitters report safe_mode: {roles}"}
        self.say(f"round {r.index}: not healthy within {self.heal_timeout:.0f}s: {why}")
        self.say(f"round {r.index}: {self.view.describe()}")
        if r.safe_mode:
            raise SoakAborted(f"safe mode ({r.safe_mode}): needs the runbook and manatee-clear")
        done = self.undo_everything()
        r.notes.append(f"operator: {', '.join(done) or 'nothing to undo'}")
        ok, why2 = self.wait_healthy(self.heal_timeout)
        if ok:
            return
        # restart every node, one at a time (the guide's "restart the sitters")
        for n in self.sb.st.nodes:
            self.sb.stop(n.name, timeout=60)
        for n in self.sb.st.nodes:
            self.sb.start(n.name)
        r.notes.append("operator: restarted every node")
        ok, why3 = self.wait_healthy(self.heal_timeout)
        if not ok:
            raise SoakAborted(f"still not healthy after the operator's steps: {why3}")

    # a round -------------------------------------------------------------------------------
    def run_round(self, r: RoundResult, p: Planned) -> None:
        """Fault, undo, heal (or operator), then what the round shows. Raises SoakAborted
        when not even the operator's steps bring the shard back (r says why)."""
        prev_state = self.view.zk_state()
        t = self.view.topology()
        r.before = topo_line(t)
        t0 = time.monotonic()
        try:
            self.apply(p, r, t)
        except FaultNotApplied as e:  # the node was never sick: no round of this fault (Summary.count)
            r.not_applied = str(e)
            self.say(f"round {r.index}: the {p.kind} fault could not be applied, so this round does not count "
                     f"as one: {e}")
        except Exception as e:  # noqa: BLE001 - whatever broke, heal and go on
            r.notes.append(f"applying the fault failed: {type(e).__name__}: {e}")
        ok, why = self.wait_healthy(self.heal_timeout)
        r.heal_s = time.monotonic() - t0
        if not ok:
            self.operator_recover(r, why)
        t1 = time.monotonic()
        if self.writer is not None:
            r.outage_s = longest_gap(self._success_times(), t0, t1)
        after = self.view.topology()
        r.after = topo_line(after)
        new_state = self.view.zk_state() or {}
        if p.kind == "zk_restart" and prev_state and new_state.get("generation") != prev_state.get("generation"):
            r.notes.append(f"topology changed across the ZooKeeper restart "
                           f"(generation {prev_state.get('generation')} -> {new_state.get('generation')})")
        if p.kind != "double_failover" and prev_state and new_state.get("primary") and r.operator is None:
            r.problems += promoted_from(prev_state, new_state["primary"])

    def _success_times(self) -> list[float]:
        assert self.writer is not None
        return sorted(a.finished for a in self.writer.attempts() if a.outcome != "failed")

    # the soak ------------------------------------------------------------------------------
    def run(self) -> Summary:
        s = Summary(rounds=self.rounds, seed=self.seed, session_timeout_ms=self.session_timeout_ms,
                    dir=str(self.dir))
        self.say(f"nemesis: seed={self.seed} rounds={self.rounds} faults={','.join(self.kinds)} "
                 f"session_timeout_ms={self.session_timeout_ms} dir={self.dir}")
        self.say("plan: " + " ".join(f"{k + 1}:{p.kind}{'/' + p.role if p.role else ''}"
                                     for k, p in enumerate(self.plan)))
        results: list[RoundResult] = []
        failed = True
        try:
            try:
                self._up()
                self.writer = RecordingWriter(self.view.find_primary, name="nemesis",
                                              table=f"nemesis_{uuid.uuid4().hex[:8]}",
                                              interval=self.write_interval, commit_timeout=8.0,
                                              connect_timeout=2.0).start()
                self.writer.wait_for_acks(20, 60)
                for i, p in enumerate(self.plan, 1):
                    r = RoundResult(index=i, kind=p.kind)
                    results.append(r)
                    try:
                        self.run_round(r, p)
                    except SoakAborted:
                        r.operator = r.operator or "not recovered"
                        raise
                    except Exception as e:  # noqa: BLE001
                        r.operator = r.operator or f"the round raised {type(e).__name__}: {e}"
                        raise
                    finally:
                        s.count(r)
                        self.say(r.line(self.rounds))
                    s.rounds_run = i
                self.writer.wait_for_acks(20, 60)
            except SoakAborted as e:
                s.error = f"aborted: {e}"
            except Exception as e:  # noqa: BLE001 - the summary must still be printed
                s.error = f"{type(e).__name__}: {e}"
                self.say(f"error: {s.error}")
            finally:
                if self.writer is not None:
                    self.writer.stop()
            for r in results:
                s.problems += [f"round {r.index}: {x}" for x in r.problems]
            s.operator_rounds = sum(1 for r in results if r.operator)
            s.safe_mode_rounds = sum(1 for r in results if r.safe_mode)
            if self.writer is not None:
                self.final_checks(s)
            s.round_results = [asdict(r) for r in results]
            failed = not s.passed
        finally:
            s.duration_s = round(time.monotonic() - self.t_start, 1)
            self._down(failed)
        return s

    def _up(self) -> None:
        shard = f"n{uuid.uuid4().hex[:8]}"
        ipr = random.Random()  # addresses: not from the seed (parallel soaks with one seed)
        first_ip = f"127.{ipr.randint(100, 250)}.{ipr.randint(1, 250)}.11"
        self.say(f"bringing up a 3-node shard /manatee/{shard} on {first_ip}.. in {self.dir}")
        info = self.sb.up(nodes=3, session_timeout_ms=self.session_timeout_ms, shard=shard,
                          first_ip=first_ip, timeout=300)
        ok, why = self.wait_healthy(120)
        if not ok:
            raise SoakAborted(f"the new shard is not healthy: {why}")
        self.say(f"shard up in {info.get('seconds')}s: {topo_line(self.view.topology())}")

    def final_checks(self, s: Summary) -> None:
        w = self.writer
        assert w is not None
        s.acked = len(w.acked)
        s.warned = len(w.warned)
        s.longest_outage_s = round(max(w.longest_outage(), w.longest_ack_gap()), 2)
        try:
            state = self.view.zk_state()
            if not state or not state.get("primary"):
                raise SoakAborted("no primary in ZooKeeper's state at the end")
            primary = self.view.by_ip(state["primary"]["ip"])
            others = {n.name: self.view.dsn(n) for n in self.view.nodes
                      if n.name != primary.name and self.view.state_of(n)}
            time.sleep(1.0)  # let the standbys replay the last commits
            p_dsn = self.view.dsn(primary)
            hist = self.view.history()
            leaders = [r["ip"] for r in hist if r["action"] == "AssumeLeader"]
            s.problems += check_data(w.acked, (primary.name, p_dsn), others, table=w.table,
                                     warned=w.warned, primaries=leaders)
            p_rows = fetch_rows(p_dsn, w.table)
            s.lost = len(w.acked - {r.id for r in p_rows})
            s.forks = sum(1 for name, dsn in others.items() if not_a_prefix(p_rows, fetch_rows(dsn, w.table), name))
            hp = history_one_primary_per_generation(hist)
            s.history_ok = not hp
            s.problems += [x for x in hp if x not in s.problems]
            self.say(f"checks on the final primary {primary.name} and {', '.join(others) or 'no other node'}: "
                     + summarise(s.problems))
        except Exception as e:  # noqa: BLE001
            msg = f"final checks failed: {type(e).__name__}: {e}"
            s.error = s.error or msg
            s.problems.append(msg)
            self.say(msg)

    def _down(self, failed: bool) -> None:
        if not self.sb.exists():
            return
        if failed and self.keep:
            self.say(f"sandbox kept for inspection: {self.dir} "
                     f"(remove it with `manatee-sandbox down --dir {self.dir}`)")
            return
        problems = self.sb.down()
        if problems:
            self.say(f"down left: {problems}")
        elif self._tmp:
            with contextlib.suppress(OSError):
                Path(self._tmp).rmdir()


__all__ = ["Nemesis", "SoakAborted"]
