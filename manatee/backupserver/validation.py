"""Validation of `POST /backup` and `POST /snapshots/common` bodies.

Every rejection says exactly which field is wrong and why, so an operator (or a
sitter's log) can act on it without reading this code.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Callable

from manatee.core.auth import valid_stream_token
from manatee.core.incremental import GUID_MAX, GUID_RE, MAX_ACCEPTED, SnapshotRef
from manatee.core.zfs import SNAPSHOT_NAME_RE
from manatee.core.zfsname import ZFS_MAX_NAME, dataset_problem

REQUIRED_FIELDS = ("host", "port", "dataset", "streamToken")
OPTIONAL_FIELDS = ("snapshots",)  # the requester's snapshots: ask for an incremental stream

_HOST_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


class ValidationError(Exception):
    """A 400 with a machine code and a human message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class BackupRequest:
    host: str
    port: int
    dataset: str
    stream_token: str = ""
    snapshots: tuple[SnapshotRef, ...] = ()


def is_ip_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False


def hostname_problem(host: str) -> str | None:
    """None if `host` is an IP address or an RFC 1123 hostname, else what is wrong."""
    if is_ip_address(host):
        return None
    if len(host) > 253:
        return "is longer than 253 characters"
    name = host[:-1] if host.endswith(".") else host
    if not name:
        return "is empty"
    for label in name.split("."):
        if not _HOST_LABEL.match(label):
            return (
                f"is neither an IP address nor a valid hostname (bad label {label!r}: "
                "labels are 1-63 letters, digits or '-', not starting or ending with '-')"
            )
    return None


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _typed(body: dict[str, Any], key: str, kind: type, what: str) -> Any:
    """body[key] if it is a `kind` (a boolean is no integer), else the error naming the key."""
    value = body[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValidationError("InvalidArgument", f"{key} must be {what}, got {_type_name(value)}")
    return value


def _named(body: dict[str, Any], key: str, problem_of: Callable[[str], str | None]) -> str:
    """body[key] if it is a string `problem_of` finds nothing wrong with, else the error."""
    name = _typed(body, key, str, "a string")
    problem = problem_of(name)
    if problem:
        raise ValidationError("InvalidArgument", f"{key} {name[:100]!r} {problem}")
    return name


def validate_backup_request(body: Any) -> BackupRequest:
    """Check a decoded JSON body; raise ValidationError naming the first problem."""
    if not isinstance(body, dict):
        raise ValidationError(
            "InvalidBody", f"request body must be a JSON object, got {_type_name(body)}"
        )
    unknown = sorted(k for k in body if k not in REQUIRED_FIELDS + OPTIONAL_FIELDS)
    if unknown:
        raise ValidationError(
            "UnknownParameter",
            f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(REQUIRED_FIELDS + OPTIONAL_FIELDS)}",
        )
    missing = [k for k in REQUIRED_FIELDS if k not in body]
    if missing:
        raise ValidationError(
            "MissingParameter", f"missing required field(s): {', '.join(missing)}"
        )

    host = _named(body, "host", hostname_problem)
    port = _typed(body, "port", int, "an integer")
    if not 1 <= port <= 65535:
        raise ValidationError("InvalidArgument", f"port must be in 1-65535, got {port}")
    dataset = _named(body, "dataset", dataset_problem)

    token = body["streamToken"]
    if not valid_stream_token(token):
        raise ValidationError(
            "InvalidArgument",
            "streamToken must be 64 lowercase hex digits (the one-time token the stream header proves)",
        )

    snapshots = validate_snapshots(body["snapshots"]) if "snapshots" in body else ()
    return BackupRequest(host=host, port=port, dataset=dataset, stream_token=token, snapshots=snapshots)


def validate_common_request(body: Any) -> tuple[SnapshotRef, ...]:
    """A `POST /snapshots/common` body: {"snapshots": [...]} (the same field as a backup request's)."""
    if not isinstance(body, dict):
        raise ValidationError("InvalidBody", f"request body must be a JSON object, got {_type_name(body)}")
    unknown = sorted(k for k in body if k != "snapshots")
    if unknown:
        raise ValidationError("UnknownParameter", f"unknown field(s) {', '.join(unknown)}; allowed: snapshots")
    if "snapshots" not in body:
        raise ValidationError("MissingParameter", "missing required field(s): snapshots")
    return validate_snapshots(body["snapshots"])


def validate_snapshots(value: Any) -> tuple[SnapshotRef, ...]:
    """The optional `snapshots` field: [{"name": "<snapshot name>", "guid": "<decimal u64>"}, ...]."""
    if not isinstance(value, list):
        raise ValidationError("InvalidArgument", f"snapshots must be an array, got {_type_name(value)}")
    if len(value) > MAX_ACCEPTED:
        raise ValidationError(
            "InvalidArgument", f"snapshots has {len(value)} entries; at most {MAX_ACCEPTED} are accepted"
        )
    refs = []
    for i, item in enumerate(value):
        where = f"snapshots[{i}]"
        if not isinstance(item, dict):
            raise ValidationError("InvalidArgument", f"{where} must be an object, got {_type_name(item)}")
        extra = sorted(k for k in item if k not in ("name", "guid"))
        if extra:
            raise ValidationError(
                "UnknownParameter", f"{where} has unknown field(s) {', '.join(extra)}; allowed: name, guid"
            )
        name, guid = item.get("name"), item.get("guid")
        if not isinstance(name, str) or not SNAPSHOT_NAME_RE.fullmatch(name) or len(name) > ZFS_MAX_NAME:
            raise ValidationError(
                "InvalidArgument",
                f"{where}.name must be a snapshot name (letters, digits, '_', '.', ':', '-'; without "
                f"the dataset), got {str(name)[:100]!r}",
            )
        if not isinstance(guid, str) or not GUID_RE.fullmatch(guid) or int(guid) > GUID_MAX:
            raise ValidationError(
                "InvalidArgument",
                f"{where}.guid must be a decimal string of an unsigned 64-bit integer, got {str(guid)[:40]!r}",
            )
        refs.append(SnapshotRef(name, guid))
    return tuple(refs)
