"""Which ACLs of the shard's znodes stop the sitters (manatee.cli.adm_acl), as a table."""

from __future__ import annotations

import pytest
from kazoo.security import make_acl, make_digest_acl

from manatee.cli.adm_acl import refusals
from manatee.cli.adm_view import assess
from manatee.core.zkauth import ZKAuth, shard_acl
from manatee.shard.layout import ShardLayout
from tests.observations import healthy

WANT = shard_acl(ZKAuth("manatee:pw"))
LAY = ShardLayout.of("1")
READ_ONLY = [make_acl("world", "anyone", read=True)]
OTHER = [make_acl("world", "anyone", read=True), make_digest_acl("someone", "else", all=True)]
CREATE_ONLY = [make_acl("world", "anyone", read=True), make_digest_acl("manatee", "pw", create=True)]


@pytest.mark.parametrize("node, acl, refused", [
    ("state", WANT, False),
    ("state", [make_acl("world", "anyone", all=True)], False),  # an open znode admits everyone
    ("state", [*WANT, make_digest_acl("monitor", "x", read=True)], False),  # an extra reader is harmless
    ("state", READ_ONLY, True),
    ("state", OTHER, True),  # another credential owns it
    ("state", CREATE_ONLY, True),  # the state needs write
    ("history", CREATE_ONLY, False),  # the history needs create only
    ("election", CREATE_ONLY, True),  # the election needs create and delete
    ("root", READ_ONLY, True),
])
def test_an_acl_that_no_longer_admits_what_the_sitters_need_is_named(node, acl, refused):
    path = getattr(LAY, node)
    got = refusals(LAY, {path: (acl, None)}, WANT)
    assert bool(got) is refused, got
    if refused:
        assert got[0].startswith(f"the ACL of {path} (") and "ZooKeeper super user" in got[0]
        assert ("state-restore" in got[0]) is (node == "state")


def test_a_missing_znode_is_no_acl_matter_and_the_line_is_critical():
    assert refusals(LAY, {LAY.state: None}, WANT) == []
    v = healthy()
    v.acl_problems = refusals(LAY, {LAY.state: (READ_ONLY, None)}, WANT)
    assert [s for s, m in assess(v) if m.startswith("the ACL of /manatee/1/state")] == ["critical"]


def test_a_zookeeper_failure_without_a_message_is_still_named():
    """Sandbox walk-through 2026-12-06: `manatee-adm switchover` under a state ACL changed by
    hand printed "writing /manatee/1/state: " and nothing else (kazoo's NoAuthError has no
    message, and an exception is always truthy, so `e or name` kept the empty text)."""
    from kazoo.exceptions import ConnectionLoss, NoAuthError

    from manatee.cli.common import zk_reason

    assert zk_reason(NoAuthError()).startswith("NoAuthError: refused by the znode's ACL")
    assert zk_reason(ConnectionLoss()) == "ConnectionLoss"
    assert zk_reason(ConnectionLoss("lost it")) == "lost it"
