"""The ZooKeeper section of every daemon's config (`zkCfg`: the sitter's, the backupserver's)
and the one parser of a ZooKeeper connection string (also the CLIs' -z/--zk).

Why the session timeout may be as low as 1,000 ms: kill -9 failover at T = 1 s measured
1.12 s median with no lost write, and 10 minutes of saturating load caused no spurious
failover (docs/benchmarks.md). ZooKeeper itself grants no session shorter than twice its
tickTime (its minSessionTimeout): below 2 s the servers' tickTime must be at most T/2, or the
server silently raises the session. The sitter's fencing is computed from the negotiated
timeout either way, and `/state` shows configured and negotiated side by side.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from manatee.core.config import ConfigModel, seconds
from manatee.core.zkauth import ZKAuth

__all__ = ["DEFAULT_PORT", "MIN_SESSION_TIMEOUT_MS", "parse_zk_hosts", "ZkAuthCfg", "ZkTlsCfg", "ZkCfg"]

DEFAULT_PORT = 2181
MIN_SESSION_TIMEOUT_MS = 1000

_HOST = re.compile(r"^[A-Za-z0-9_.-]+$")
_CHROOT = re.compile(r"^(/[A-Za-z0-9_.:-]+)+$")


def parse_zk_hosts(spec: str, default_port: int | None = DEFAULT_PORT) -> str:
    """'host', 'host:port', 'h1,h2:2182' or any of these plus '/chroot' → the kazoo
    connect string with every port explicit ('h1:2181,h2:2182/chroot'). With
    default_port=None (a daemon's config) every host must name its port.

    Raises ValueError naming the bad part."""
    spec = (spec or "").strip()
    if not spec:
        raise ValueError("ZooKeeper address is empty: expected host[:port][,host[:port]...]")
    hosts, slash, chroot = spec.partition("/")
    chroot = slash + chroot
    if chroot and chroot != "/" and not _CHROOT.match(chroot):
        raise ValueError(f"ZooKeeper address {spec!r}: bad chroot {chroot!r} (expected /name[/name...])")
    chroot = "" if chroot == "/" else chroot
    return ",".join(_host_port(spec, part.strip(), default_port) for part in hosts.split(",")) + chroot


def _host_port(spec: str, part: str, default_port: int | None) -> str:
    if part.startswith("["):  # [v6addr]:port
        addr, close, rest = part[1:].partition("]")
        if not close or not addr or (rest and not rest.startswith(":")):
            raise ValueError(f"ZooKeeper address {spec!r}: bad host {part!r}")
        host, port = f"[{addr}]", rest[1:] if rest else ""
    else:
        host, colon, port = part.partition(":")
        if colon and not port:
            raise ValueError(f"ZooKeeper address {spec!r}: missing port after {host!r}:")
        if not host or not _HOST.match(host):
            raise ValueError(f"ZooKeeper address {spec!r}: bad host {part!r} "
                             "(expected host[:port][,host[:port]...])")
    if port == "" and default_port is None:
        raise ValueError(f"ZooKeeper address {spec!r}: no port in {part!r}")
    if port == "":
        port = str(default_port)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"ZooKeeper address {spec!r}: bad port {port!r} in {part!r}")
    return f"{host}:{int(port)}"


class ZkAuthCfg(ConfigModel):
    """ZooKeeper digest auth; the shard's znodes then get ACLs (docs/security.md)."""

    scheme: Literal["digest"] = Field("digest", description="ZooKeeper auth scheme (only digest)")
    credential: str | None = Field(None, repr=False, description="'user:password' of the shard (never logged; prefer credentialFile)")
    credentialFile: str | None = Field(None, description="absolute path of a root-only file holding the shard's 'user:password'")

    @model_validator(mode="before")
    @classmethod
    def _one_credential(cls, data):
        # checked on the raw input so that no error message can echo the secret
        if not isinstance(data, dict):
            raise ValueError("must be an object {scheme, credential | credentialFile}")
        cred, path = data.get("credential"), data.get("credentialFile")
        if (cred is None) == (path is None):
            raise ValueError("needs exactly one of credential and credentialFile")
        if cred is not None:
            _zk_auth(cred, "credential")
        elif not isinstance(path, str) or not path.startswith("/"):
            raise ValueError("credentialFile must be an absolute path")
        return data

    @model_validator(mode="after")
    def _readable(self):
        self.zk_auth()  # a credentialFile that cannot be used is a config error at start
        return self

    def zk_auth(self):
        if self.credential is not None:
            return _zk_auth(self.credential, "credential")
        try:
            text = open(self.credentialFile, encoding="utf-8").read().strip()  # noqa: SIM115
        except OSError as e:
            raise ValueError(f"credentialFile {self.credentialFile}: cannot read it ({e.strerror})") from None
        return _zk_auth(text, f"credentialFile {self.credentialFile}")


def _zk_auth(cred, what: str) -> ZKAuth:
    if not isinstance(cred, str):
        raise ValueError(f"{what} must be a string 'user:password'")
    try:
        return ZKAuth(cred)
    except ValueError:
        raise ValueError(f"{what} must be 'user:password' with both parts non-empty") from None


class ZkTlsCfg(ConfigModel):
    """TLS to ZooKeeper (its secureClientPort), passed to kazoo."""

    ca: str | None = Field(None, description="CA certificate file (PEM) to verify ZooKeeper's certificate")
    certfile: str | None = Field(None, description="client certificate file (PEM), if ZooKeeper asks for one")
    keyfile: str | None = Field(None, description="client key file (PEM)")
    verifyCerts: bool = Field(True, description="verify ZooKeeper's certificate")
    checkHostname: bool = Field(False, description="also check that it names the host connected to")

    def kazoo_kwargs(self) -> dict:
        return {"use_ssl": True, "ca": self.ca, "certfile": self.certfile, "keyfile": self.keyfile,
                "verify_certs": self.verifyCerts, "check_hostname": self.checkHostname}


class ZkCfg(ConfigModel):
    connStr: str = Field(description="ZooKeeper servers, 'host:port[,host:port...][/chroot]'")
    sessionTimeout: int = Field(60000, ge=MIN_SESSION_TIMEOUT_MS, le=600000, description="ZooKeeper session timeout (ms): how long a dead node keeps its place")
    connectTimeout: int = Field(10000, ge=500, le=600000, description="how long to wait for ZooKeeper at start-up (ms)")
    session_timeout_s = seconds("sessionTimeout")
    connect_timeout_s = seconds("connectTimeout")
    auth: ZkAuthCfg | None = Field(None, description="digest auth and ACLs on the shard's znodes (readable by anyone, writable only with the credential); without it anyone who reaches ZooKeeper can change the shard")
    tls: ZkTlsCfg | None = Field(None, description="connect to ZooKeeper over TLS")

    def client_options(self) -> dict:
        """ZKClient's auth= and tls= for this config."""
        return {"auth": self.auth.zk_auth() if self.auth else None,
                "tls": self.tls.kazoo_kwargs() if self.tls else None}

    @field_validator("connStr")
    @classmethod
    def _conn(cls, v: str) -> str:
        try:
            return parse_zk_hosts(v, default_port=None)
        except ValueError as e:
            raise ValueError(f"must be host:port[,host:port...][/chroot]: {e}") from None
