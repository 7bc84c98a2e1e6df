"""A peer's PostgreSQL address, as the shard records it: ``tcp://user@host:port/dbname``.

The original Manatee publishes each peer's ``pgUrl`` in its election node and the state,
and uses the same string as the standby's ``application_name`` (so the primary's
``synchronous_standby_names`` and ``pg_stat_replication`` name peers by it). ``PgUrl`` parses
and renders it once; every consumer (sitter, CLIs, ``manatee.client``, the test bed) uses it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

SCHEMES = ("tcp", "postgres", "postgresql")


@dataclass(frozen=True)
class PgUrl:
    host: str
    port: int = 5432
    user: str = "postgres"
    dbname: str = "postgres"
    password: str | None = None
    scheme: str = "tcp"

    @classmethod
    def parse(cls, text: str) -> PgUrl:
        """'tcp://postgres@127.0.0.1:5432/postgres' → PgUrl. ValueError names what is wrong."""
        if not isinstance(text, str) or "://" not in text:
            raise ValueError(f"pgUrl {text!r}: not a URL like 'tcp://postgres@127.0.0.1:5432/postgres'")
        u = urlsplit(text)
        if u.scheme not in SCHEMES:
            raise ValueError(f"pgUrl {text!r}: scheme {u.scheme!r} is not one of {', '.join(SCHEMES)}")
        if not u.hostname:
            raise ValueError(f"pgUrl {text!r} has no host")
        try:
            port = u.port or 5432
        except ValueError:
            raise ValueError(f"pgUrl {text!r}: bad port") from None
        return cls(host=u.hostname, port=port, user=unquote(u.username or "postgres"),
                   dbname=unquote(u.path.lstrip("/")) or "postgres",
                   password=unquote(u.password) if u.password else None, scheme=u.scheme)

    @classmethod
    def for_node(cls, ip: str, port: int, user: str) -> PgUrl:
        return cls(host=ip, port=port, user=user)

    def _netloc(self, with_password: bool) -> str:
        cred = quote(self.user, safe="")
        if with_password and self.password:
            cred += ":" + quote(self.password, safe="")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{cred}@{host}:{self.port}"

    def __str__(self) -> str:
        """The recorded form (never with a password): 'tcp://postgres@127.0.0.1:5432/postgres'."""
        return f"{self.scheme}://{self._netloc(False)}/{quote(self.dbname, safe='')}"

    @property
    def application_name(self) -> str:
        """The name this peer streams under (the original's convention: the pgUrl itself)."""
        return str(self)

    def libpq(self) -> str:
        """A URL libpq and psycopg2 accept ('postgresql://...'), with the password if any."""
        return f"postgresql://{self._netloc(True)}/{quote(self.dbname, safe='')}"

    def conn_params(self, **extra: Any) -> dict[str, Any]:
        """psycopg2.connect keyword arguments; `extra` adds or overrides (connect_timeout, ...)."""
        params: dict[str, Any] = {"host": self.host, "port": self.port, "user": self.user, "dbname": self.dbname}
        if self.password:
            params["password"] = self.password
        params.update(extra)
        return params
