"""ZooKeeper digest auth and the shard's ACLs: who may change a shard's znodes
(docs/security.md). The daemons take the credential from their config (core/zkconfig.py),
the CLIs from $MANATEE_ZK_AUTH_FILE (`auth_from_env`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from kazoo.security import ACL, OPEN_ACL_UNSAFE, make_acl, make_digest_acl

__all__ = ["ZKAuth", "shard_acl", "same_acl", "auth_from_env", "AUTH_FILE_ENV", "OPEN_ACL_UNSAFE"]


@dataclass(frozen=True)
class ZKAuth:
    """Digest auth for a shard: `credential` is "user:password". Its repr hides the password."""

    credential: str = field(repr=False)
    scheme: str = "digest"

    def __post_init__(self) -> None:
        if self.scheme != "digest":
            raise ValueError(f"ZooKeeper auth scheme must be 'digest', not {self.scheme!r}")
        user, sep, pw = self.credential.partition(":")
        if not sep or not user or not pw:
            raise ValueError("ZooKeeper credential must be 'user:password' (both non-empty)")

    @property
    def user(self) -> str:
        return self.credential.partition(":")[0]

    def auth_data(self) -> list[tuple[str, str]]:
        return [(self.scheme, self.credential)]

    def acl(self) -> list[ACL]:
        return shard_acl(self)


def shard_acl(auth: ZKAuth) -> list[ACL]:
    """The shard's znodes: readable by anyone (tools, manatee-stat, clients), created,
    changed, deleted and re-ACLed only by the holder of the shard's credential."""
    user, _, pw = auth.credential.partition(":")
    return [make_acl("world", "anyone", read=True), make_digest_acl(user, pw, all=True)]


def same_acl(a: Iterable[ACL], b: Iterable[ACL]) -> bool:
    key = lambda acl: (acl.perms, acl.id.scheme, acl.id.id)  # noqa: E731
    return sorted(map(key, a)) == sorted(map(key, b))


AUTH_FILE_ENV = "MANATEE_ZK_AUTH_FILE"


def auth_from_env() -> ZKAuth | None:
    """The CLIs' credential: $MANATEE_ZK_AUTH_FILE names a file holding "user:password"
    (None when unset). ValueError (naming the file, never its content) if it is unusable."""
    import os

    path = os.environ.get(AUTH_FILE_ENV)
    if not path:
        return None
    try:
        text = open(path, encoding="utf-8").read().strip()
    except OSError as e:
        raise ValueError(f"{AUTH_FILE_ENV}={path}: cannot read it: {e.strerror}") from None
    try:
        return ZKAuth(text)
    except ValueError as e:
        raise ValueError(f"{AUTH_FILE_ENV}={path}: {e}") from None
