"""TLS for manatee's HTTP surfaces: the `tls` config section and the SSL contexts built from it.

One section serves both sides of a daemon: the sitter's status server and the backupserver
listen with `certFile`/`keyFile` (and, with `requireClientCert`, accept only clients whose
certificate `caFile` signed); the sitter's clients (heartbeat, restore, the upstream `/state`
check) verify the server against `caFile` and present the same certificate as their client
certificate. The CLIs take the same three files from $MANATEE_TLS_CA / $MANATEE_TLS_CERT /
$MANATEE_TLS_KEY (see `client_context_from_env`).

Everything is checked at start (`TlsCfg` validation): each file exists and is readable, the
key is not readable by other users, the certificate and key match, and the CA parses. An
unusable file is a config error naming the key, never a crash loop.
"""

from __future__ import annotations

import os
import ssl
import stat
from typing import Mapping, Optional

from pydantic import Field, model_validator

from manatee.core.config import ConfigModel

ENV_CA, ENV_CERT, ENV_KEY = "MANATEE_TLS_CA", "MANATEE_TLS_CERT", "MANATEE_TLS_KEY"


def check_file(path: str, key: str, *, private: bool = False) -> None:
    """ValueError naming `key` unless `path` is an absolute, readable regular file
    (and, for a private key, not readable by other users)."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"{key} must be an absolute path")
    try:
        st = os.stat(path)
    except OSError as e:
        raise ValueError(f"{key} {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{key} {path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{key} {path}: not readable")
    if private and st.st_mode & stat.S_IROTH:
        raise ValueError(f"{key} {path}: readable by every user (mode {stat.S_IMODE(st.st_mode):04o}); "
                         "chmod 0600 it")


class TlsCfg(ConfigModel):
    """TLS of a daemon's HTTP server and of the sitter's HTTP clients (docs/security.md)."""

    certFile: str = Field(description="this node's certificate (PEM; with any intermediates); also its client certificate")
    keyFile: str = Field(description="its private key (PEM; not readable by other users)")
    caFile: Optional[str] = Field(None, description="CA certificate(s) (PEM) peers are verified against (default: the system's)")
    requireClientCert: bool = Field(False, description="accept only clients presenting a certificate signed by caFile")
    checkHostname: bool = Field(True, description="clients check that the server's certificate names the address connected to (an IP SAN)")

    @model_validator(mode="after")
    def _usable(self) -> "TlsCfg":
        check_file(self.certFile, "certFile")
        check_file(self.keyFile, "keyFile", private=True)
        if self.caFile is not None:
            check_file(self.caFile, "caFile")
        elif self.requireClientCert:
            raise ValueError("requireClientCert needs caFile (the CA that signs the clients' certificates)")
        self.server_context()  # cert/key mismatch or garbage: an error now, not at the first request
        self.client_context()
        return self

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        _load(ctx, self.certFile, self.keyFile, self.caFile)
        if self.requireClientCert:
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def client_context(self) -> ssl.SSLContext:
        return client_context(self.caFile, self.certFile, self.keyFile, check_hostname=self.checkHostname)


def _load(ctx: ssl.SSLContext, cert: Optional[str], key: Optional[str], ca: Optional[str]) -> None:
    try:
        if cert:
            ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as e:
        raise ValueError(f"certFile {cert} / keyFile {key}: cannot be loaded together ({_why(e)})") from None
    try:
        if ca:
            ctx.load_verify_locations(cafile=ca)
    except (ssl.SSLError, OSError) as e:
        raise ValueError(f"caFile {ca}: not a PEM certificate ({_why(e)})") from None


def _why(e: BaseException) -> str:
    return getattr(e, "reason", None) or getattr(e, "strerror", None) or type(e).__name__


def client_context(ca: Optional[str], cert: Optional[str] = None, key: Optional[str] = None, *,
                   check_hostname: bool = True) -> ssl.SSLContext:
    """Verifies the server against `ca` (the system's CAs when None); presents `cert` if given."""
    ctx = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = check_hostname
    _load(ctx, cert, key or None, None)
    return ctx


def client_context_from_env(env: Optional[Mapping[str, str]] = None) -> Optional[ssl.SSLContext]:
    """The CLIs' context from $MANATEE_TLS_CA/_CERT/_KEY (None when none is set: the
    system's CAs apply to an https:// URL). ValueError naming the variable if unusable."""
    env = os.environ if env is None else env
    ca, cert, key = env.get(ENV_CA) or None, env.get(ENV_CERT) or None, env.get(ENV_KEY) or None
    if not (ca or cert or key):
        return None
    if bool(cert) != bool(key):
        raise ValueError(f"${ENV_CERT} and ${ENV_KEY} go together")
    for var, path, private in ((ENV_CA, ca, False), (ENV_CERT, cert, False), (ENV_KEY, key, True)):
        if path:
            check_file(path, f"${var}", private=private)
    return client_context(ca, cert, key)


def scheme(tls: Optional[TlsCfg]) -> str:
    """The URL scheme a server with this config is reached by."""
    return "https" if tls is not None else "http"
