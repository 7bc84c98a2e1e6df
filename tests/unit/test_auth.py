"""manatee.core.auth: the secret file, request signatures (skew, replay, rotation), stream headers."""

from __future__ import annotations

import os

import pytest

from manatee.core.auth import (
    STREAM_HEADER_LEN,
    AuthError,
    RequestVerifier,
    SecretError,
    ShardSecret,
    load_secret_file,
    new_stream_token,
    secret_from_config,
    sign_request,
    stream_header,
    stream_header_ok,
    write_secret_file,
)

S = ShardSecret.of("0123456789abcdef-current")
OLD = ShardSecret.of("0123456789abcdef-previous")


def _write(path, text, mode=0o600):
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def test_secret_file_lines_and_comments(tmp_path):
    s = load_secret_file(_write(tmp_path / "s", "# shard 1\n\n  current-secret-0123456 \nprevious-secret-0123456\n"))
    assert s.keys == (b"current-secret-0123456", b"previous-secret-0123456")
    assert "current" not in repr(s) and "current" not in str(s)


@pytest.mark.parametrize("text, mode, words", [
    ("a-long-enough-secret-123\n", 0o644, ["group or others", "chmod 600"]),
    ("a-long-enough-secret-123\n", 0o640, ["group or others"]),
    ("short-one\n", 0o600, ["line 1", "shorter than 16"]),
    ("# only a comment\n", 0o600, ["no secret"]),
])
def test_secret_file_refused(tmp_path, text, mode, words):
    path = _write(tmp_path / "s", text, mode)
    with pytest.raises(SecretError) as e:
        load_secret_file(path)
    for w in words:
        assert w in str(e.value)
    assert "short-one" not in str(e.value)  # never echoed


def test_secret_file_link_and_missing_refused(tmp_path):
    target = _write(tmp_path / "real", "a-long-enough-secret-123\n")
    os.symlink(target, tmp_path / "link")
    with pytest.raises(SecretError, match="symbolic link"):
        load_secret_file(str(tmp_path / "link"))
    with pytest.raises(SecretError, match="does not exist"):
        load_secret_file(str(tmp_path / "nope"))
    with pytest.raises(SecretError, match="not a regular file"):
        os.chmod(tmp_path, 0o700)
        load_secret_file(str(tmp_path))


def test_write_secret_file_is_0600_and_loads(tmp_path):
    p = str(tmp_path / "s")
    write_secret_file(p, "a-long-enough-secret-123")
    assert os.stat(p).st_mode & 0o777 == 0o600
    assert load_secret_file(p).signing_key == b"a-long-enough-secret-123"


def test_secret_from_config():
    assert secret_from_config(None, insecure=True) is None
    with pytest.raises(SecretError, match="secretFile"):
        secret_from_config(None, insecure=False)


def _verify(v, headers, body=b'{"a":1}', method="POST", path="/heartbeat"):
    v.verify(method, path, body, headers.get("Authorization"))


def test_signed_request_verifies_once():
    v = RequestVerifier(S, clock=lambda: 1_000_000.0)
    h = sign_request(S, "POST", "/heartbeat", b'{"a":1}', now=1_000_000)
    _verify(v, h)
    with pytest.raises(AuthError, match="replayed"):
        _verify(v, h)


@pytest.mark.parametrize("change, words", [
    (dict(body=b'{"a":2}'), "bad signature"),
    (dict(path="/rebuild"), "bad signature"),
    (dict(method="PUT"), "bad signature"),
])
def test_anything_changed_breaks_the_signature(change, words):
    v = RequestVerifier(S, clock=lambda: 1_000_000.0)
    h = sign_request(S, "POST", "/heartbeat", b'{"a":1}', now=1_000_000)
    with pytest.raises(AuthError, match=words):
        _verify(v, h, **change)


def test_clock_skew_bounded():
    v = RequestVerifier(S, max_skew=60, clock=lambda: 1_000_000.0)
    _verify(v, sign_request(S, "POST", "/heartbeat", b'{"a":1}', now=1_000_000 - 59))
    _verify(v, sign_request(S, "POST", "/heartbeat", b'{"a":1}', now=1_000_000 + 59))
    for off in (-61, 61):
        with pytest.raises(AuthError, match="clock"):
            _verify(v, sign_request(S, "POST", "/heartbeat", b'{"a":1}', now=1_000_000 + off))


def test_rotation_accepts_previous_secret_and_unknown_is_refused():
    v = RequestVerifier(ShardSecret(S.keys + OLD.keys), clock=lambda: 1_000_000.0)
    _verify(v, sign_request(OLD, "POST", "/heartbeat", b'{"a":1}', now=1_000_000))
    _verify(v, sign_request(S, "POST", "/heartbeat", b'{"a":1}', now=1_000_000))
    with pytest.raises(AuthError, match="bad signature"):
        _verify(v, sign_request(ShardSecret.of("someone-elses-secret-xyz"), "POST", "/heartbeat", b'{"a":1}',
                                now=1_000_000))


def test_replay_cache_forgets_old_nonces_and_fails_closed_when_full():
    now = [1_000_000.0]
    v = RequestVerifier(S, max_skew=10, max_nonces=3, clock=lambda: now[0])
    for _ in range(3):
        _verify(v, sign_request(S, "POST", "/heartbeat", b'{"a":1}', now=now[0]))
    with pytest.raises(AuthError, match="too many"):
        _verify(v, sign_request(S, "POST", "/heartbeat", b'{"a":1}', now=now[0]))
    now[0] += 30  # the first three left the window
    _verify(v, sign_request(S, "POST", "/heartbeat", b'{"a":1}', now=now[0]))


@pytest.mark.parametrize("header, words", [
    (None, "missing Authorization"),
    ("Bearer 0123456789abcdef-current", "Bearer"),
    ("Manatee-HMAC-SHA256 ts=x, nonce=00112233445566778899, sig=" + "0" * 64, "ts"),
    ("Manatee-HMAC-SHA256 ts=1, nonce=xyz, sig=" + "0" * 64, "nonce"),
    ("Manatee-HMAC-SHA256 ts=1, nonce=00112233445566778899, sig=abc", "sig"),
])
def test_malformed_headers(header, words):
    with pytest.raises(AuthError, match=words):
        RequestVerifier(S).verify("POST", "/heartbeat", b"", header)


def test_insecure_mode_signs_nothing():
    assert sign_request(None, "POST", "/x", b"") == {}


def test_stream_header():
    token = new_stream_token()
    h = stream_header(S, token)
    assert len(h) == STREAM_HEADER_LEN
    assert stream_header_ok(S, token, h)
    assert stream_header_ok(ShardSecret(OLD.keys + S.keys), token, h)  # rotation
    assert not stream_header_ok(S, new_stream_token(), h)  # another restore's token
    assert not stream_header_ok(OLD, token, h)
    assert not stream_header_ok(S, token, h[:-1] + bytes([h[-1] ^ 1]))
    assert not stream_header_ok(S, token, b"\0" * STREAM_HEADER_LEN)
    assert not stream_header_ok(S, token, h[:-1])
    # insecure mode: the header still binds the stream to the request's token
    assert stream_header_ok(None, token, stream_header(None, token))
    assert not stream_header_ok(None, token, stream_header(S, token))
