"""Which member a rebuilding node streams from: the pure rule (manatee.core.incremental.
choose_source), the backupserver's `POST /snapshots/common` and the requester's questions
(manatee.core.restore.source) over a real in-process HTTP server, and the members the
sitter offers as alternatives (the production loop on a simulated shard)."""

from __future__ import annotations

import json

import pytest

from manatee.backupserver.membership import StaticMembership
from manatee.core import incremental as inc
from manatee.core.incremental import CommonSnapshot, SourceOffer
from manatee.core.restore import source
from manatee.core.zfs import Snapshot, ZfsError
from tests.backupserver_fakes import SECRET, FakeSender, api_client
from manatee.core.auth import sign_request
from tests.sim.shard import SESSION_TIMEOUT, new_shard

UP, PRIMARY = "10.0.0.2", "10.0.0.1"


def _c(name: str, creation: int) -> CommonSnapshot:
    return CommonSnapshot(name, str(creation), creation)


# ------------------------------------------------------------------ the rule

def test_the_upstream_is_preferred_when_it_shares_a_snapshot():
    ch = inc.choose_source(SourceOffer(UP, _c("100", 100)), [SourceOffer(PRIMARY, _c("200", 200))])
    assert (ch.name, ch.expects_incremental) == (UP, True)
    assert ch.reason == f"the upstream {UP} shares snapshot 100"


def test_a_member_ahead_sends_the_increment_when_the_upstream_shares_none():
    others = [SourceOffer("10.0.0.5", _c("150", 150)), SourceOffer(PRIMARY, _c("200", 200)),
              SourceOffer("10.0.0.6", known=False, why_unknown="timeout")]
    ch = inc.choose_source(SourceOffer(UP), others)
    assert (ch.name, ch.expects_incremental) == (PRIMARY, True)  # the newest common snapshot
    assert ch.reason == f"from {PRIMARY} at 200: the upstream {UP} shares no snapshot"
    # a tie goes to the nearest (the first given)
    tie = [SourceOffer("10.0.0.5", _c("200", 200)), SourceOffer(PRIMARY, _c("200", 200))]
    assert inc.choose_source(SourceOffer(UP), tie).name == "10.0.0.5"


def test_an_unknown_upstream_is_still_asked_never_passed_over():
    ch = inc.choose_source(SourceOffer(UP, known=False, why_unknown="HTTP 503"),
                           [SourceOffer(PRIMARY, _c("200", 200))])
    assert (ch.name, ch.expects_incremental) == (UP, False)
    assert "could not ask the upstream" in ch.reason and "HTTP 503" in ch.reason


def test_an_upstream_that_does_not_answer_at_all_is_passed_over_for_one_that_does():
    """Sandbox trial 2026-12-05: the sync's backupserver hung (SIGSTOP) and the async's
    rebuild asked it again every ~20 s for minutes. No answer at all is not an old
    backupserver: a member ahead that answers sends instead."""
    silent = SourceOffer(UP, known=False, why_unknown="TimeoutError: ", silent=True)
    ch = inc.choose_source(silent, [SourceOffer(PRIMARY, _c("200", 200))])
    assert (ch.name, ch.expects_incremental) == (PRIMARY, True)
    assert ch.reason == f"from {PRIMARY} at 200: the upstream {UP} does not answer (TimeoutError: )"
    ch = inc.choose_source(silent, [SourceOffer("10.0.0.6", known=False, silent=True), SourceOffer(PRIMARY)])
    assert (ch.name, ch.expects_incremental) == (PRIMARY, False)
    assert ch.reason.startswith(f"a full stream from {PRIMARY}: the upstream {UP} does not answer")
    # nobody else answers either: the upstream is asked for the stream, as before
    ch = inc.choose_source(silent, [SourceOffer(PRIMARY, known=False, silent=True)])
    assert ch.name == UP and "could not ask the upstream" in ch.reason
    assert inc.choose_source(silent, []).name == UP


def test_nobody_sharing_means_a_full_stream_from_the_upstream():
    ch = inc.choose_source(SourceOffer(UP), [SourceOffer(PRIMARY), SourceOffer("10.0.0.6", known=False)])
    assert (ch.name, ch.expects_incremental) == (UP, False)
    assert ch.reason.startswith("no member shares a snapshot with this node (not known for 10.0.0.6)")
    assert inc.choose_source(SourceOffer(UP), []).name == UP


@pytest.mark.parametrize("doc, key", [
    ([], "common must be an object"), ({"guid": "1", "creation": 1}, "common.name"),
    ({"name": "a", "guid": "x1", "creation": 1}, "common.guid"),
    ({"name": "a", "guid": "1", "creation": True}, "common.creation"),
])
def test_a_malformed_answer_is_an_error_naming_the_key(doc, key):
    with pytest.raises(ValueError, match=key):
        inc.common_from_json(doc)


def test_answer_round_trip():
    doc = inc.common_to_json((Snapshot("p/a", "170", 170), "42"))
    assert inc.common_from_json(json.loads(json.dumps(doc))) == CommonSnapshot("170", "42", 170)
    assert inc.common_to_json(None) is None and inc.common_from_json(None) is None


# ------------------------------------------------------------------ the backupserver's answer

OFFER = {"snapshots": [{"name": "300", "guid": "33"}, {"name": "100", "guid": "11"}]}


class Holdings:
    """What the sender's dataset holds (the real ZfsSender.common_with's logic: newest_common)."""

    def __init__(self, snaps, fail: bool = False):
        self.snaps, self.fail, self.asked = snaps, fail, []

    async def __call__(self, offered):
        self.asked.append(offered)
        if self.fail:
            raise ZfsError(["zfs", "list"], 1, "pool is suspended")
        return inc.common_to_json(inc.newest_common(self.snaps, offered))


async def _post(client, body, secret=SECRET):
    data = json.dumps(body).encode()
    h = {"Content-Type": "application/json", **sign_request(secret, "POST", "/snapshots/common", data)}
    return await client.post("/snapshots/common", data=data, headers=h)


@pytest.fixture
async def server():
    holdings = Holdings([(Snapshot("p/a", "100", 100), "11"), (Snapshot("p/a", "200", 200), "22")])
    client, queue = await api_client(FakeSender(), common=holdings)
    yield client, holdings
    await queue.close()
    await client.close()


async def test_common_answers_the_newest_shared_snapshot_and_starts_no_send(server):
    client, holdings = server
    r = await _post(client, OFFER)
    assert r.status == 200, await r.text()
    assert await r.json() == {"common": {"name": "100", "guid": "11", "creation": 100}}
    r = await _post(client, {"snapshots": [{"name": "9", "guid": "99"}]})
    assert await r.json() == {"common": None}
    assert (await (await client.get("/ping")).json())["running"] == 0


async def test_common_demands_the_secret_membership_and_a_valid_body(server):
    client, holdings = server
    from manatee.core.auth import ShardSecret
    assert (await _post(client, OFFER, secret=ShardSecret.of("another-secret-0123456789"))).status == 401
    r = await _post(client, {"snapshots": OFFER["snapshots"], "host": "x"})
    assert r.status == 400 and "unknown field(s) host" in (await r.json())["message"]
    r = await _post(client, {"snapshots": [{"name": "a", "guid": "-1"}]})
    assert r.status == 400 and "snapshots[0].guid" in (await r.json())["message"]
    assert not holdings.asked


@pytest.mark.parametrize("kw, status, says", [
    ({"common": Holdings([]), "membership": StaticMembership({"127.0.0.9"})}, 403, "not a member"),
    ({"common": Holdings([], fail=True)}, 503, "pool is suspended"),  # a failed listing is not "none"
])
async def test_common_refuses_a_non_member_and_says_when_it_cannot_list(kw, status, says):
    client, queue = await api_client(FakeSender(), **kw)
    try:
        r = await _post(client, OFFER)
        assert r.status == status and says in (await r.json())["message"]
    finally:
        await queue.close()
        await client.close()


# ------------------------------------------------------------------ the requester's questions

class OurZfs:
    """This node's snapshots (what source.choose offers)."""

    def __init__(self, snaps):
        self.snaps = snaps

    async def exists(self, dataset):
        return True

    async def list_snapshot_guids(self, dataset):
        return self.snaps


OURS = OurZfs([(Snapshot("p/b", "100", 100), "11"), (Snapshot("p/b", "50", 50), "5")])


async def _servers(*holdings):
    """One in-process backupserver per entry (None: an old one, without the question)."""
    out = []
    for h in holdings:
        client, queue = await api_client(FakeSender(), **({"common": h} if h is not None else {}))
        out.append((client, queue, source.Candidate(f"n{len(out)}", str(client.make_url("")).rstrip("/"))))
    return out


async def _close(servers):
    for client, queue, _ in servers:
        await queue.close()
        await client.close()


async def test_the_primary_is_chosen_when_the_upstream_shares_nothing():
    servers = await _servers(Holdings([]), Holdings([(Snapshot("p/a", "100", 100), "11")]))
    try:
        (_, _, up), (_, _, prim) = servers
        ch = await source.choose(OURS, "p/b", up, [prim], secret=SECRET, listen_host="127.0.0.1")
        assert ch.source == prim
        assert ch.reason == "from n1 at 100: the upstream n0 shares no snapshot"
    finally:
        await _close(servers)


async def test_the_upstream_that_shares_is_chosen_without_asking_the_others():
    other = Holdings([])
    servers = await _servers(Holdings([(Snapshot("p/a", "50", 50), "5")]), other)
    try:
        (_, _, up), (_, _, prim) = servers
        ch = await source.choose(OURS, "p/b", up, [prim], secret=SECRET, listen_host="127.0.0.1")
        assert ch == source.Chosen(up) and not other.asked
    finally:
        await _close(servers)


async def test_an_old_upstream_backupserver_is_unknown_and_still_asked_for_the_stream():
    servers = await _servers(None, Holdings([(Snapshot("p/a", "100", 100), "11")]))
    try:
        (_, _, up), (_, _, prim) = servers
        ch = await source.choose(OURS, "p/b", up, [prim], secret=SECRET, listen_host="127.0.0.1")
        assert ch.source == up and "does not answer the question" in ch.reason
    finally:
        await _close(servers)


async def test_an_unreachable_member_is_unknown():
    servers = await _servers(Holdings([]))
    try:
        (_, _, up), = servers
        gone = source.Candidate("n9", "http://127.0.0.1:9")  # nothing listens on port 9
        ch = await source.choose(OURS, "p/b", up, [gone], secret=SECRET, listen_host="127.0.0.1")
        assert ch.source == up and ch.reason.startswith("no member shares a snapshot with this node (not known for n9)")
    finally:
        await _close(servers)


async def test_an_upstream_that_does_not_answer_is_passed_over_for_the_member_ahead():
    servers = await _servers(Holdings([(Snapshot("p/a", "100", 100), "11")]))
    try:
        (_, _, prim), = servers
        gone = source.Candidate("n9", "http://127.0.0.1:9")  # the upstream's backupserver is down
        ch = await source.choose(OURS, "p/b", gone, [prim], secret=SECRET, listen_host="127.0.0.1")
        assert ch.source == prim and ch.reason.startswith("from n0 at 100: the upstream n9 does not answer")
    finally:
        await _close(servers)


async def test_no_alternative_asks_nobody():
    up = source.Candidate("u", "http://127.0.0.1:9")
    assert await source.choose(OURS, "p/b", up, [], secret=SECRET, listen_host="127.0.0.1") == source.Chosen(up)


async def test_with_nothing_to_offer_only_a_silent_upstream_is_passed_over():
    """A new node (no snapshot of its own) asks its upstream only whether it answers: it
    streams from it when it does (the restore says why the stream is full), and from the
    member ahead when it does not (its backupserver hung) and that one answers."""
    servers = await _servers(Holdings([]), Holdings([]))
    try:
        (_, _, up), (_, _, prim) = servers
        assert await source.choose(OurZfs([]), "p/b", up, [prim], secret=SECRET,
                                   listen_host="127.0.0.1") == source.Chosen(up)
        gone = source.Candidate("n9", "http://127.0.0.1:9")
        ch = await source.choose(OurZfs([]), "p/b", gone, [prim], secret=SECRET, listen_host="127.0.0.1")
        assert ch.source == prim and ch.reason.startswith("a full stream from n1: the upstream n9 does not answer")
        ch = await source.choose(OurZfs([]), "p/b", gone, [gone], secret=SECRET, listen_host="127.0.0.1")
        assert ch.source == gone and "could not ask the upstream n9" in ch.reason
    finally:
        await _close(servers)


# ------------------------------------------------------------------ the sitter's alternatives

def test_a_rebuilt_old_primary_is_offered_the_primary_ahead_of_its_upstream():
    sh = new_shard()
    p, s, a = sh.nodes
    sh.partition(s, zk=False, peers=True)  # the sync stops receiving: the primary's commits hang
    sh.tick()
    assert p.pending
    sh.heal(s)
    sh.kill(p)
    sh.run(SESSION_TIMEOUT + 6)
    sh.start(p)
    sh.settle()
    st = sh.zk.state()
    assert st.primary.id == s.id and st.async_[-1].id == p.id
    assert p.restore_sources == (a.id, (s.id,)), sh.describe()
