"""What goes into a znode and into a ZooKeeper transaction: value encoding (bytes, text,
JSON) and the transaction operations ZKClient.transaction() takes. Pure: no I/O."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Union

__all__ = ["Value", "encode_json", "decode_json", "encode_value", "Check", "Create", "SetData", "Delete",
           "TxOp", "as_op"]

Value = Union[bytes, str, dict, list, None]


def encode_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def decode_json(data: bytes | None) -> Any:
    """JSON from znode bytes; None for an empty node. Raises ValueError on garbage."""
    if not data:
        return None
    return json.loads(data.decode("utf-8"))


def encode_value(value: Value) -> bytes:
    """bytes as is, str as UTF-8, dict/list as JSON, None as empty."""
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (dict, list)):
        return encode_json(value)
    raise TypeError(f"znode value must be bytes, str, dict or list, not {type(value).__name__}")


@dataclass(frozen=True)
class Check:
    path: str
    version: int


@dataclass(frozen=True)
class Create:
    path: str
    value: Value = b""
    ephemeral: bool = False
    sequence: bool = False


@dataclass(frozen=True)
class SetData:
    path: str
    value: Value
    version: int = -1


@dataclass(frozen=True)
class Delete:
    path: str
    version: int = -1


TxOp = Union[Check, Create, SetData, Delete, tuple]

_TUPLE_OPS = {"check": Check, "create": Create, "set": SetData, "delete": Delete}


def as_op(op: TxOp) -> Check | Create | SetData | Delete:
    if isinstance(op, (Check, Create, SetData, Delete)):
        return op
    if isinstance(op, tuple) and op and op[0] in _TUPLE_OPS:
        return _TUPLE_OPS[op[0]](*op[1:])
    raise TypeError(
        f"transaction op {op!r}: expected Check/Create/SetData/Delete or a tuple "
        "('check', path, version) | ('create', path, value[, ephemeral[, sequence]]) | "
        "('set', path, value[, version]) | ('delete', path[, version])"
    )
