"""Pure parts of manatee.core.zk: value encoding, transaction ops, kazoo hook points."""

from __future__ import annotations

import inspect

import pytest
from kazoo.protocol.connection import ConnectionHandler

from manatee.core.zk import ZKClient
from manatee.core.zkdata import Check, Create, Delete, SetData, as_op, decode_json, encode_json, encode_value


def test_encode_value_kinds():
    assert encode_value(b"\x00raw") == b"\x00raw"
    assert encode_value(bytearray(b"ba")) == b"ba"
    assert encode_value("héllo") == "héllo".encode()
    assert encode_value({"a": 1, "b": [True, None]}) == b'{"a":1,"b":[true,null]}'
    assert encode_value([1, "x"]) == b'[1,"x"]'
    assert encode_value(None) == b""
    with pytest.raises(TypeError, match="int"):
        encode_value(5)


def test_json_roundtrip_and_empty():
    obj = {"primary": {"id": "127.0.0.1:5432:12345"}, "sync": None, "async": [], "generation": 3}
    assert decode_json(encode_json(obj)) == obj
    assert decode_json(b"") is None
    assert decode_json(None) is None
    with pytest.raises(ValueError):
        decode_json(b"{nope")


def test_transaction_op_forms():
    assert as_op(("check", "/a", 3)) == Check("/a", 3)
    assert as_op(("create", "/b", b"v", True, True)) == Create("/b", b"v", True, True)
    assert as_op(("set", "/c", {"x": 1})) == SetData("/c", {"x": 1}, -1)
    assert as_op(("delete", "/d")) == Delete("/d", -1)
    op = Create("/e")
    assert as_op(op) is op
    with pytest.raises(TypeError, match="transaction op"):
        as_op(("bogus", "/x"))
    with pytest.raises(TypeError):
        as_op("check")


def test_kazoo_hook_points_exist():
    """ZKClient wraps these ConnectionHandler methods to learn the negotiated session
    timeout and the last time the server spoke; fail loudly if kazoo renames them."""
    assert list(inspect.signature(ConnectionHandler._invoke).parameters) == ["self", "timeout", "request", "xid"]
    assert list(inspect.signature(ConnectionHandler._read_socket).parameters) == ["self", "read_timeout"]
    c = ZKClient("127.0.0.1:1", session_timeout=3)
    assert c._kz._connection._invoke.__name__ == "_invoke"
    assert c._kz._connection._read_socket.__qualname__.startswith("hook_session_clock.")
    assert c.state == "LOST" and not c.connected and c.session_id is None
    assert c.op_timeout == 3.0


def test_session_timeout_must_be_positive():
    with pytest.raises(ValueError, match="session_timeout"):
        ZKClient("127.0.0.1:1", session_timeout=0)
