"""The shard's value types: the znode layout, PgUrl, roles and places."""
import pytest

from manatee.shard.layout import ShardLayout, registrar_path, shard_name, shard_path
from manatee.shard.pgurl import PgUrl
from manatee.shard.state import PRIMARY, Place, Role


def test_layout_spells_every_path_from_a_name_or_a_path():
    a, b = ShardLayout.of("1.moray.us-sw-1.joyent.com"), ShardLayout.of("/manatee/1.moray.us-sw-1.joyent.com")
    assert a == b and a.name == "1.moray.us-sw-1.joyent.com"
    assert (a.state, a.error, a.election, a.history) == tuple(
        f"/manatee/1.moray.us-sw-1.joyent.com/{k}" for k in ("state", "error", "election", "history"))
    assert a.election_node("x-0000000001").endswith("/election/x-0000000001")
    assert a.history_node("h").endswith("/history/h")
    assert a.registrar == "/com/joyent/us-sw-1/moray/1/pg" == registrar_path(a.name)
    assert ShardLayout.of("/custom/7/").root == "/custom/7" and ShardLayout.of("/custom/7").registrar == "/7/pg"
    assert shard_name("/manatee/1") == "1" and shard_name("/x/y") == "/x/y" and shard_path("1") == "/manatee/1"
    with pytest.raises(ValueError):
        shard_path("")


def test_pgurl_round_trips_and_renders_each_form():
    text = "tcp://postgres@127.0.0.1:5432/postgres"
    u = PgUrl.parse(text)
    assert (u.host, u.port, u.user, u.dbname, u.password) == ("127.0.0.1", 5432, "postgres", "postgres", None)
    assert str(u) == text == u.application_name == str(PgUrl.for_node("127.0.0.1", 5432, "postgres"))
    assert u.libpq() == "postgresql://postgres@127.0.0.1:5432/postgres"
    assert u.conn_params(connect_timeout=2) == {"host": "127.0.0.1", "port": 5432, "user": "postgres",
                                                "dbname": "postgres", "connect_timeout": 2}
    s = PgUrl.parse("postgresql://app:p%40ss@127.0.0.2:6432/db")
    assert s.password == "p@ss" and "p%40ss" in s.libpq() and "p%40ss" not in str(s)
    assert s.conn_params()["password"] == "p@ss"


@pytest.mark.parametrize("bad", ["", "127.0.0.1:5432", "http://127.0.0.1/x", "tcp:///postgres",
                                 "tcp://postgres@127.0.0.1:99999/postgres"])
def test_pgurl_refuses_what_is_not_a_pgurl(bad):
    with pytest.raises(ValueError, match="pgUrl"):
        PgUrl.parse(bad)


def test_roles_and_places_are_their_strings():
    assert PRIMARY is Role.PRIMARY and Role.PRIMARY == "primary" and f"{Role.SAFE_MODE}" == "safe_mode"
    assert Place.SYNC == "sync" and {Place.ASYNC: 1}["async"] == 1
