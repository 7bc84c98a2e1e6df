"""The shard secret and what proves knowledge of it: signed requests and stream headers.

One secret per shard, in a root-only file (`secretFile`) that the sitter and the
backupserver of every member read at start. It never travels: requests carry an
HMAC-SHA256 of the request, and a zfs stream starts with an HMAC of a one-time token.

Request proof (``Authorization`` header)::

    Manatee-HMAC-SHA256 ts=<unix seconds>, nonce=<32 hex>, sig=<64 hex>

    sig = HMAC-SHA256(secret, "MANATEE-HMAC-SHA256\\n" METHOD "\\n" PATH "\\n" ts "\\n" nonce "\\n"
                              hex(SHA-256(body)))

The receiver accepts a timestamp within `max_skew` seconds of its clock and each nonce
once (a bounded replay cache remembers nonces until their timestamp is out of the window;
when it is full, requests are refused rather than replays risked). Comparison is constant
time, against every secret of the file (the first line signs; later lines are previous
secrets still accepted, for rotation without downtime).

Stream header: the restoring node puts a fresh random `streamToken` in its (signed)
backup request; the sender writes ``MAGIC + HMAC-SHA256(secret, "manatee-zfs-stream\\0" +
token)`` (40 bytes) before the first byte of `zfs send`. The receiver checks it before
anything reaches `zfs recv`.

Insecure mode (`"insecure": true`, no secret) keeps the same wire protocol with an empty
key: requests are not checked and stream headers only prove knowledge of the token.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets as _secrets
import stat
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

SCHEME = "Manatee-HMAC-SHA256"
MIN_SECRET_LENGTH = 16
MAX_SECRET_FILE_BYTES = 64 * 1024
DEFAULT_MAX_SKEW = 60.0
DEFAULT_MAX_NONCES = 100_000

STREAM_MAGIC = b"MNTZFS01"
STREAM_HEADER_LEN = len(STREAM_MAGIC) + 32
STREAM_TOKEN_BYTES = 32
_STREAM_LABEL = b"manatee-zfs-stream\0"

_HEX = re.compile(r"^[0-9a-f]+$")


class SecretError(Exception):
    """The secret file cannot be used; the message says why (never what it holds)."""


class AuthError(Exception):
    """A request without valid proof (answer 401 with this message)."""


@dataclass(frozen=True)
class ShardSecret:
    """The accepted secrets; `keys[0]` signs. `repr` never shows them."""

    keys: tuple[bytes, ...]
    source: str = "<memory>"

    def __post_init__(self) -> None:
        if not self.keys:
            raise SecretError("no secret")

    @classmethod
    def of(cls, *values: str | bytes, source: str = "<memory>") -> "ShardSecret":
        return cls(tuple(v.encode() if isinstance(v, str) else bytes(v) for v in values), source)

    @property
    def signing_key(self) -> bytes:
        return self.keys[0]

    def __repr__(self) -> str:
        return f"ShardSecret(source={self.source!r}, keys={len(self.keys)})"

    __str__ = __repr__


def load_secret_file(path: str) -> ShardSecret:
    """Read a secret file: one secret per line (first = current, others = still accepted),
    blank lines and '#' comments ignored. Refused: a link, not a regular file, readable or
    writable by group/others, owned by anyone but root or us, a secret under 16 characters."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise SecretError(f"{path} does not exist") from None
    except OSError as e:
        if e.errno == 40:  # ELOOP: a symbolic link
            raise SecretError(f"{path} is a symbolic link (point secretFile at the file itself)") from None
        raise SecretError(f"{path} cannot be opened: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SecretError(f"{path} is not a regular file")
        if st.st_mode & 0o077:
            raise SecretError(f"{path} is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                              f"run: chmod 600 {path}")
        if st.st_uid not in (0, os.geteuid()):
            raise SecretError(f"{path} is owned by uid {st.st_uid}, not by root or this daemon's user")
        data = os.read(fd, MAX_SECRET_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise SecretError(f"{path} is larger than {MAX_SECRET_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretError(f"{path} is not UTF-8 text") from None
    keys = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if len(line) < MIN_SECRET_LENGTH:
            raise SecretError(f"{path} line {n}: the secret is shorter than {MIN_SECRET_LENGTH} characters")
        keys.append(line.encode())
    if not keys:
        raise SecretError(f"{path} holds no secret")
    return ShardSecret(tuple(keys), path)


def new_secret() -> str:
    """A fresh shard secret (43 URL-safe characters, 256 bits)."""
    return _secrets.token_urlsafe(32)


def write_secret_file(path: str, secret: str) -> None:
    """Create `path` 0600 with `secret` (refuses to follow or replace a link)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (secret + "\n").encode())
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- requests


def _string_to_sign(method: str, path: str, ts: str, nonce: str, body: bytes) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return "\n".join(("MANATEE-HMAC-SHA256", method.upper(), path, ts, nonce, digest)).encode()


def sign_request(secret: Optional[ShardSecret], method: str, path: str, body: bytes = b"",
                 now: Optional[float] = None, nonce: Optional[str] = None) -> dict[str, str]:
    """The headers proving `secret` for this request ({} without a secret: insecure mode)."""
    if secret is None:
        return {}
    ts = str(int(time.time() if now is None else now))
    nonce = nonce or _secrets.token_hex(16)
    sig = hmac.new(secret.signing_key, _string_to_sign(method, path, ts, nonce, body), hashlib.sha256).hexdigest()
    return {"Authorization": f"{SCHEME} ts={ts}, nonce={nonce}, sig={sig}"}


def _parse(header: str) -> tuple[str, str, str]:
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != SCHEME.lower():
        shown = "Bearer" if scheme.lower() == "bearer" else "another scheme"
        raise AuthError(f"Authorization uses {shown}; this server needs '{SCHEME}' (the shard secret's HMAC; "
                        "an older manatee client must be upgraded)")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        k, sep, v = part.strip().partition("=")
        if sep:
            fields[k.strip().lower()] = v.strip()
    ts, nonce, sig = fields.get("ts", ""), fields.get("nonce", ""), fields.get("sig", "")
    if not ts.isdigit() or len(ts) > 12:
        raise AuthError("Authorization has no valid ts=<unix seconds>")
    if not 16 <= len(nonce) <= 64 or not _HEX.match(nonce):
        raise AuthError("Authorization has no valid nonce=<16-64 hex digits>")
    if len(sig) != 64 or not _HEX.match(sig):
        raise AuthError("Authorization has no valid sig=<64 hex digits>")
    return ts, nonce, sig


class RequestVerifier:
    """Checks request proofs: signature (any accepted secret), clock skew, replay."""

    def __init__(self, secret: ShardSecret, *, max_skew: float = DEFAULT_MAX_SKEW,
                 max_nonces: int = DEFAULT_MAX_NONCES, clock: Callable[[], float] = time.time) -> None:
        self.secret = secret
        self.max_skew = max_skew
        self.max_nonces = max_nonces
        self.clock = clock
        self._seen: dict[str, float] = {}  # nonce -> when its timestamp leaves the window

    def verify(self, method: str, path: str, body: bytes, header: Optional[str]) -> None:
        """Return if the proof is good; raise AuthError saying what is wrong otherwise."""
        if not header:
            raise AuthError(f"missing Authorization header: requests must be signed with the shard secret "
                            f"('{SCHEME} ts=..., nonce=..., sig=...', see docs/security.md)")
        ts, nonce, sig = _parse(header)
        now = self.clock()
        if abs(now - int(ts)) > self.max_skew:
            raise AuthError(f"request timestamp is {int(ts) - now:+.0f}s off this server's clock "
                            f"(at most {self.max_skew:g}s allowed: check NTP)")
        msg = _string_to_sign(method, path, ts, nonce, body)
        given = bytes.fromhex(sig)
        ok = False
        for key in self.secret.keys:  # every key, no early exit: constant time in the match position
            ok |= hmac.compare_digest(hmac.new(key, msg, hashlib.sha256).digest(), given)
        if not ok:
            raise AuthError("bad signature: the request was not signed with this shard's secret")
        self._remember(nonce, int(ts) + self.max_skew, now)

    def _remember(self, nonce: str, until: float, now: float) -> None:
        if nonce in self._seen and self._seen[nonce] >= now:
            raise AuthError("replayed request: this nonce was already used")
        if len(self._seen) >= self.max_nonces:  # prune what left the window (rare: only when full)
            self._seen = {n: exp for n, exp in self._seen.items() if exp >= now}
            if len(self._seen) >= self.max_nonces:
                raise AuthError("too many signed requests in the replay window; retry shortly")
        self._seen[nonce] = until


def authorization_ok(verifier: Optional[RequestVerifier], method: str, path: str, body: bytes,
                     header: Optional[str]) -> Optional[str]:
    """None when the request may proceed (also: no verifier = insecure mode), else why not."""
    if verifier is None:
        return None
    try:
        verifier.verify(method, path, body, header)
    except AuthError as e:
        return str(e)
    return None


# ---------------------------------------------------------------------- streams


def new_stream_token() -> str:
    return _secrets.token_hex(STREAM_TOKEN_BYTES)


def _stream_mac(key: bytes, token: str) -> bytes:
    return hmac.new(key, _STREAM_LABEL + token.encode(), hashlib.sha256).digest()


def stream_header(secret: Optional[ShardSecret], token: str) -> bytes:
    """What the sender writes before the zfs stream."""
    return STREAM_MAGIC + _stream_mac(secret.signing_key if secret else b"", token)


def stream_header_ok(secret: Optional[ShardSecret], token: str, header: bytes) -> bool:
    """Constant-time check of a received header against every accepted secret."""
    keys: Iterable[bytes] = secret.keys if secret else (b"",)
    if len(header) != STREAM_HEADER_LEN:
        return False
    ok = hmac.compare_digest(header[: len(STREAM_MAGIC)], STREAM_MAGIC)
    match = False
    for key in keys:
        match |= hmac.compare_digest(header[len(STREAM_MAGIC):], _stream_mac(key, token))
    return ok and match


def valid_stream_token(token: object) -> bool:
    return isinstance(token, str) and len(token) == 2 * STREAM_TOKEN_BYTES and bool(_HEX.match(token))


def secret_from_config(secret_file: Optional[str], insecure: bool) -> Optional[ShardSecret]:
    """The daemon's secret (None in insecure mode); SecretError if it cannot be used."""
    if insecure:
        return None
    if not secret_file:
        raise SecretError("no shard secret: set secretFile (or insecure: true, not for production)")
    return load_secret_file(secret_file)


def daemon_secret(secret_file: Optional[str], insecure: bool, log, daemon: str) -> Optional[ShardSecret]:
    """At a daemon's start: the shard secret, or None with a warning in insecure mode.
    An unusable secret file is a ConfigError on key 'secretFile' (one line, exit status 2)."""
    from manatee.core.config import ConfigError

    try:
        secret = secret_from_config(secret_file, insecure)
    except SecretError as e:
        raise ConfigError("", "secretFile", str(e)) from None
    if secret is None:
        log.warning("insecure_mode", daemon=daemon,
                    detail="running WITHOUT the shard secret: anyone who can reach this node's ports can "
                           "ask for its data or change its state (docs/security.md)")
    else:
        log.info("shard_secret_loaded", file=secret.source, secrets=len(secret.keys))
    return secret
