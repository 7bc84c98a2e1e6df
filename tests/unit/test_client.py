"""manatee.client's pure parts: URLs and the state node's data."""

from __future__ import annotations

import json

import pytest

from manatee.client import Topology, libpq_url, parse_topology, shard_path
from tests.factories import peer_record as peer


def test_libpq_url_turns_a_sitter_pgurl_into_one_psycopg2_accepts():
    assert libpq_url("tcp://postgres@10.0.0.1:5432/postgres") == "postgresql://postgres@10.0.0.1:5432/postgres"
    assert libpq_url("postgresql://u@h:1/d") == "postgresql://u@h:1/d"
    with pytest.raises(ValueError, match="not a URL"):
        libpq_url("10.0.0.1:5432")


def test_shard_path():
    assert shard_path("1.moray.example.com") == "/manatee/1.moray.example.com"
    assert shard_path("/custom/shard/") == "/custom/shard"
    with pytest.raises(ValueError):
        shard_path("")


def test_parse_topology_reads_the_sitters_state():
    raw = json.dumps({"generation": 3, "primary": peer("10.0.0.1"), "sync": peer("10.0.0.2"),
                      "async": [peer("10.0.0.3")], "deposed": [], "initWal": "0/0"}).encode()
    assert parse_topology(raw) == Topology(3, "tcp://postgres@10.0.0.1:5432/postgres",
                                           "tcp://postgres@10.0.0.2:5432/postgres",
                                           ("tcp://postgres@10.0.0.3:5432/postgres",))
    one = parse_topology(json.dumps({"generation": 1, "primary": peer("10.0.0.1"), "sync": None}).encode())
    assert one.sync is None and one.asyncs == ()
    assert parse_topology(None) is None and parse_topology(b"") is None


@pytest.mark.parametrize("raw,msg", [
    (b"{not json", "not JSON"),
    (b"[]", "JSON object"),
    (json.dumps({"primary": peer("10.0.0.1")}).encode(), "state.generation"),
    (json.dumps({"generation": 1, "primary": {"ip": "x"}}).encode(), "state.primary"),
    (json.dumps({"generation": 1, "primary": peer("a"), "async": [{}]}).encode(), r"state.async\[0\]"),
])
def test_parse_topology_names_what_is_wrong(raw, msg):
    with pytest.raises(ValueError, match=msg):
        parse_topology(raw)
