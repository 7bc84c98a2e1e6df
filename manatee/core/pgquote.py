"""PostgreSQL's text syntaxes, quoted here and nowhere else: postgresql.conf literals,
libpq key=value connection strings, identifiers, and the CREATE ROLE statement (with a
SCRAM verifier, never the password itself)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from collections.abc import Iterable


def conf_quote(value: str) -> str:
    """A postgresql.conf string literal: single quotes, '' and \\\\ escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def conninfo_quote(value: str) -> str:
    """A libpq key=value value: bare if safe, else '...' with \\' and \\\\ escaped."""
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def ident_quote(name: str) -> str:
    """A double-quoted identifier for synchronous_standby_names (names hold ':' '/' '@')."""
    return '"' + name.replace('"', '""') + '"'


def render_conninfo(params: Iterable[tuple[str, str | int | None]]) -> str:
    return " ".join(f"{k}={conninfo_quote(str(v))}" for k, v in params if v is not None)


def scram_verifier(password: str, *, salt: bytes | None = None, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802/7677), so
    that ``CREATE ROLE ... PASSWORD`` never carries the password itself (it would show in
    the server log of a failed statement). ASCII passwords only (no SASLprep here)."""
    if not password.isascii():
        raise ValueError("scram_verifier: non-ASCII passwords need SASLprep; use an ASCII password")
    salt = os.urandom(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def create_role_sql(name: str, password: str | None, *, replication: bool = False, superuser: bool = False) -> str:
    """One CREATE ROLE statement (no parameters: names and the verifier are quoted here)."""
    check_role("role name", name)
    attrs = ["LOGIN", "SUPERUSER" if superuser else "NOSUPERUSER", "REPLICATION" if replication else "NOREPLICATION",
             "NOCREATEDB", "NOCREATEROLE", "NOINHERIT"]
    pw = f" PASSWORD '{scram_verifier(password)}'" if password else ""
    return f"CREATE ROLE {ident_quote(name)} {' '.join(attrs)}{pw}"


_ROLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def check_role(what: str, name: str) -> None:
    if not _ROLE.match(name) or name.lower() in ("all", "public", "replication", "samerole", "samegroup"):
        raise ValueError(f"RoleConfig: {what} {name!r}: letters, digits and '_' (not a pg_hba keyword), "
                         "at most 63 characters")
