"""The backupserver's check for stale base marks (manatee.backupserver.basecheck) on fakes:
what one check does in which order, that every call has a deadline, that the write phase
holds the sender's mark lock, and that a failing check never stops the loop."""

from __future__ import annotations

import asyncio
import json

from manatee.backupserver.basecheck import BaseMarkCheck
from manatee.backupserver.membership import ShardMembership, backup_urls
from manatee.core.bases import BASES_PROP
from manatee.core.incremental import CommonSnapshot, SourceOffer
from manatee.core.zfs import Snapshot, ZfsError
from manatee.shard.state import Peer

DS = "zones/pg"
N1, N2, N3 = "1700000000001", "1700000000002", "1700000000003"
S1, S2, S3 = (f"{DS}@{n}" for n in (N1, N2, N3))
GUIDS = {S1: "111", S2: "222", S3: "333"}
B, C, GONE = "127.0.0.12", "127.0.0.13", "127.0.0.99"
URLS = {B: f"http://{B}:10002", C: f"http://{C}:10002"}


class Log:
    def __init__(self):
        self.events = []

    def __getattr__(self, level):
        return lambda event, **kw: self.events.append((level, event, kw))

    def named(self, event):
        return [kw for _lvl, e, kw in self.events if e == event]


class FakeZfs:
    def __init__(self, marks, calls, lock):
        self.marks, self.calls, self.lock = dict(marks), calls, lock
        self.hang: set[str] = set()

    async def _maybe_hang(self, what):
        if what in self.hang:
            await asyncio.sleep(3600)

    async def snapshot_bases(self, dataset):
        assert dataset == DS
        self.calls.append(("zfs get manatee:bases", self.lock.locked()))
        await self._maybe_hang("snapshot_bases")
        return dict(self.marks)

    async def list_snapshot_guids(self, dataset):
        self.calls.append(("zfs get guid", self.lock.locked()))
        await self._maybe_hang("list_snapshot_guids")
        return [(Snapshot(DS, s.partition("@")[2], i), GUIDS[s]) for i, s in enumerate(sorted(self.marks))]

    async def inherit(self, name, prop):
        assert prop == BASES_PROP
        self.calls.append((f"zfs inherit {name}", self.lock.locked()))
        self.marks[name] = "-"

    async def set(self, name, prop, value):
        assert prop == BASES_PROP
        self.calls.append((f"zfs set {name}={value}", self.lock.locked()))
        self.marks[name] = value


class World:
    """One dataset's marks, the peers' holdings ({peer: set of guids}) and everything called."""

    def __init__(self, marks, holds, *, members=None):
        self.calls: list[tuple[str, bool]] = []
        self.lock = asyncio.Lock()
        self.zfs = FakeZfs(marks, self.calls, self.lock)
        self.holds = holds
        self.members = dict(URLS if members is None else members)
        self.unknown: set[str] = set()  # peers whose answer is unknown (an error)
        self.hung: set[str] = set()  # peers that never answer
        self.log = Log()
        self.check = BaseMarkCheck(self.zfs, DS, peer_urls=self.peer_urls, ask=self.ask, lock=self.lock,
                                   log=self.log, zfs_timeout=0.2, ask_timeout=0.1, write_timeout=0.3)

    async def peer_urls(self):
        self.calls.append(("zk election", self.lock.locked()))
        return self.members

    async def ask(self, address, url, ref):
        self.calls.append((f"ask {address} {ref.name}:{ref.guid}", self.lock.locked()))
        assert url == self.members[address]
        if address in self.hung:
            await asyncio.sleep(3600)
        if address in self.unknown:
            return SourceOffer(address, known=False, why_unknown="HTTP 503")
        has = ref.guid in self.holds.get(address, set())
        return SourceOffer(address, CommonSnapshot(ref.name, ref.guid, 1) if has else None)


async def test_one_check_reads_asks_then_writes_under_the_lock():
    w = World({S1: B, S2: f"{B},{C}", S3: "-"}, {B: {"222"}, C: set()})
    await w.check.check()  # first check: C absent once, nothing written
    assert w.zfs.marks == {S1: B, S2: f"{B},{C}", S3: "-"}
    first = list(w.calls)
    assert first == [
        ("zfs get manatee:bases", False),
        ("zk election", False),
        ("zfs get guid", False),
        # each mark asked separately, offering exactly the marked snapshot; never under the lock
        (f"ask {B} {N1}:111", False), (f"ask {B} {N2}:222", False), (f"ask {C} {N2}:222", False),
        ("zfs get manatee:bases", True),  # read again under the lock before deciding
    ]
    w.calls.clear()
    result = await w.check.check()
    assert w.calls[-3:] == [("zfs get manatee:bases", True), (f"zfs inherit {S1}", True), (f"zfs set {S2}={B}", True)]
    assert w.zfs.marks == {S1: "-", S2: B, S3: "-"}  # B keeps S2, which it holds
    assert sorted((e["snapshot"], e["peer"]) for e in w.log.named("base_released")) == [(S1, B), (S2, C)]
    assert all("two consecutive checks" in e["why"] for e in w.log.named("base_released"))
    assert result.kept == {(S2, B): "holds"}
    summary = w.log.named("base_check")[-1]
    assert summary["released"] == 2 and summary["asked"] == 3 and summary["kept_holds"] == 1


async def test_a_dataset_without_marks_asks_nobody():
    w = World({S1: "-", S2: "-"}, {})
    assert await w.check.check() is None
    assert w.calls == [("zfs get manatee:bases", False)]


async def test_a_missing_dataset_has_no_marks_and_is_not_a_failure():
    w = World({S1: B}, {B: set()})
    await w.check.check()
    assert w.check.absent == {(S1, B)}

    async def missing(dataset):
        raise ZfsError(["zfs", "get"], 1, f"cannot open '{dataset}': dataset does not exist")

    w.zfs.snapshot_bases = missing
    assert await w.check.check_logged() is None
    assert not w.log.named("base_check_failed") and w.check.absent == frozenset()


async def test_non_members_and_unreadable_values_are_not_asked_and_stay():
    w = World({S1: GONE, S2: "junk"}, {})
    for _ in range(3):
        await w.check.check()
    assert w.zfs.marks == {S1: GONE, S2: "junk"}
    assert not [c for c, _ in w.calls if c.startswith(("ask", "zfs inherit", "zfs set"))]
    assert w.log.named("base_check")[-1] == {"dataset": DS, "asked": 0, "released": 0, "kept_not_member": 1,
                                             "kept_unreadable": 1}


async def test_a_url_whose_host_is_not_the_members_address_is_not_asked():
    w = World({S1: B}, {B: set()}, members={})
    await w.check.check()
    await w.check.check()
    assert w.zfs.marks == {S1: B}


async def test_an_unknown_answer_between_two_absent_answers_keeps_the_mark():
    w = World({S1: B}, {B: set()})
    await w.check.check()
    w.unknown.add(B)
    await w.check.check()
    w.unknown.clear()
    await w.check.check()
    assert w.zfs.marks == {S1: B}
    await w.check.check()
    assert w.zfs.marks == {S1: "-"}


async def test_a_peer_that_never_answers_is_unknown_after_its_deadline_and_the_others_go_on():
    w = World({S1: f"{B},{C}"}, {B: set(), C: set()})
    w.hung.add(B)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await w.check.check()
    await w.check.check()
    assert loop.time() - t0 < 2 * (0.1 + 1) + 0.5  # the shell's backstop: ask_timeout + 1 s per question
    assert w.zfs.marks == {S1: B}  # C released, B unknown


async def test_a_hung_zfs_call_fails_the_check_and_forgets_what_was_seen():
    w = World({S1: B}, {B: set()})
    await w.check.check()
    assert w.check.absent == {(S1, B)}
    w.zfs.hang.add("list_snapshot_guids")
    assert await w.check.check_logged() is None
    assert w.log.named("base_check_failed") and w.check.absent == frozenset()
    w.zfs.hang.clear()
    await w.check.check_logged()
    assert w.zfs.marks == {S1: B}  # the count started again
    await w.check.check_logged()
    assert w.zfs.marks == {S1: "-"}


async def test_the_write_phase_waits_for_a_mark_in_progress_and_is_bounded():
    w = World({S1: B}, {B: set()})
    await w.check.check()
    async with w.lock:  # the sender is marking (and hangs)
        assert await w.check.check_logged() is None
    assert w.zfs.marks == {S1: B}
    assert "TimeoutError" in w.log.named("base_check_failed")[-1]["error"]


async def test_a_mark_written_while_the_peers_are_asked_is_kept():
    """The sender marks S1 for C (a send completed) between the questions and the write:
    the decision reads the marks again under the lock, so C's new mark stays."""
    w = World({S1: B}, {B: set()})
    await w.check.check()
    real_ask = w.ask

    async def ask_then_mark(address, url, ref):
        answer = await real_ask(address, url, ref)
        w.zfs.marks[S1] = f"{B},{C}"
        return answer

    w.check.ask = ask_then_mark
    await w.check.check()
    assert w.zfs.marks == {S1: C}


async def test_the_loop_survives_failing_checks():
    w = World({S1: B}, {B: set()})
    calls = 0

    async def flaky():
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise RuntimeError("zookeeper said no")
        return w.members

    w.check.peer_urls = flaky
    task = asyncio.ensure_future(w.check.run(0.01))
    for _ in range(200):
        await asyncio.sleep(0.01)
        if w.zfs.marks[S1] == "-":
            break
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert w.zfs.marks[S1] == "-"
    assert len(w.log.named("base_check_failed")) == 2


# ------------------------------------------------------------------ where to ask

def _peer(ip, url, pid=None):
    return Peer(id=pid or f"{ip}:5432:10002:5433", zone_id="z", ip=ip, pg_url="tcp://x", backup_url=url)


def test_backup_urls_from_the_election_records():
    peers = [_peer(B, f"http://{B}:10002/"), _peer(C, "https://[::ffff:127.0.0.13]:10003"),
             _peer("127.0.0.14", "http://127.0.0.99:10002"),  # a URL naming another host: not asked
             _peer("127.0.0.15", "http://node-e:10002"),
             _peer("127.0.0.16", "http://127.0.0.16:1", "127.0.0.16:1:1:1"),
             _peer("127.0.0.16", "http://127.0.0.16:2", "127.0.0.16:2:2:2"),  # two URLs for one address
             _peer("127.0.0.17", "not a url")]
    assert backup_urls(peers) == {B: f"http://{B}:10002", C: "https://[::ffff:127.0.0.13]:10003"}


async def test_shard_membership_gives_the_members_backup_urls():
    def data(ip, url):
        return json.dumps({"ip": ip, "zoneId": "z", "pgUrl": "tcp://x", "backupUrl": url}).encode()

    nodes = {f"{B}:5432:10002:5433-0000000001": data(B, f"http://{B}:10002"),
             "127.0.0.50:1:2:3-0000000002": b'{"ip": "127.0.0.50"}'}  # malformed: not a member

    class FakeZk:
        async def get_children(self, path):
            return list(nodes)

        async def get(self, path):
            return nodes[path.rsplit("/", 1)[1]], None

    m = ShardMembership(FakeZk(), "/manatee/1")
    assert await m.backup_urls() == {B: f"http://{B}:10002"}
    assert await m.members() == {B}


async def test_no_election_node_means_nobody_to_ask():
    class NoNodeError(Exception):
        pass

    class FakeZk:
        async def get_children(self, path):
            raise NoNodeError(path)

    assert await ShardMembership(FakeZk(), "/manatee/1").backup_urls() == {}

