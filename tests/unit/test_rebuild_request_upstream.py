"""POST /rebuild sent without manatee-adm (which asks first, manatee.cli.adm.upstream_cannot_serve)
is refused by the sitter itself while its upstream cannot serve: the request would only hold a
sound node out of service, and the sync, the one node that can take over when its primary's data
is gone, from taking over. Not knowing refuses only the sync."""

from __future__ import annotations

import pytest

from manatee.shard.state import STANDBY, Target
from manatee.sitter.dataset import UpstreamNotReady, UpstreamUnknown
from manatee.sitter.snapshot import SitterSnapshot
from tests.observations import A, B, C, STATE
from tests.status_fakes import S, FakeSitter, _post, served


class Dataset:
    def __init__(self, error: Exception | None):
        self.error, self.asked = error, []

    async def check_upstream(self, upstream):
        self.asked.append(upstream.id)
        if self.error is not None:
            raise self.error


CANNOT = UpstreamNotReady(f"upstream {A.id}: it has no running, healthy PostgreSQL (its sitter says: no data)")
UNKNOWN = UpstreamUnknown("cannot ask http://10.0.0.1:5433/state whether it can be restored from: timeout")


@pytest.fixture
async def server():
    sitter = FakeSitter(secret=S)
    async with served(sitter):
        yield sitter


def _as(sitter, me, upstream, error, **kw):
    sitter.snapshot = SitterSnapshot(me=me, election=sitter.election, state=STATE,
                                     target=Target(STANDBY, upstream=upstream), **kw)
    sitter.dataset = Dataset(error)
    return sitter.dataset


@pytest.mark.parametrize("me,upstream,error,refused", [
    (B, A, None, False),       # the sync, its primary serves
    (B, A, CANNOT, True),      # the sync, its primary has no data: it must stay able to take over
    (B, A, UNKNOWN, True),     # the sync, its primary's sitter does not answer: not known, not asked
    (C, B, None, False),       # the async, its sync serves
    (C, B, CANNOT, True),      # the async, its sync cannot serve: the request would only wait
    (C, B, UNKNOWN, False),    # the async, its sync's sitter silent: it may be replaced meanwhile
])
async def test_a_rebuild_is_asked_only_of_a_node_whose_upstream_can_serve(server, me, upstream, error, refused):
    ds = _as(server, me, upstream, error)
    code, body = await _post(server, "/rebuild", {"force": me is B})
    assert ds.asked == [upstream.id]
    if refused:
        assert code == 409 and body["code"] == "UpstreamCannotServe" and server.rebuilds == []
        assert "Nothing requested" in body["message"]
        assert ("the one node that can take over" in body["message"]) is (me is B)
        if error is CANNOT:
            assert body["message"].startswith(f"this node would restore from upstream {A.id}: it has no running")
    else:
        assert code == 200 and server.rebuilds == [me is B]


async def test_a_node_without_an_upstream_or_already_restoring_is_left_to_its_sitter(server):
    server.snapshot = SitterSnapshot(me=C, election=server.election, state=STATE, target=None)
    server.dataset = Dataset(CANNOT)
    assert (await _post(server, "/rebuild", {}))[0] == 200  # deposed, or the primary: request_rebuild answers
    ds = _as(server, C, B, CANNOT, restore_progress={"phase": "receiving", "completed": 1, "size": 9})
    assert (await _post(server, "/rebuild", {}))[0] == 200  # running already: request_rebuild says so
    assert ds.asked == [] and server.rebuilds == [False, False]
