"""The tools' one HTTP JSON call and its one failure contract (manatee/core/httpjson.py),
against a real HTTP server on 127.0.0.1."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from manatee.core.httpjson import http_json
from manatee.core.procs import free_port


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._send(*{"/json": (200, b'{"role": "primary"}'), "/text": (200, b"not json"),
                     "/empty": (200, b""), "/missing": (404, b'{"message": "no such thing"}')}[self.path])

    def do_POST(self) -> None:
        got = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self._send(200, json.dumps({"got": got, "sig": self.headers.get("X-Sig"),
                                    "type": self.headers.get("Content-Type")}).encode())


@pytest.fixture
def base():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_an_answer_is_its_status_and_body(base):
    assert http_json(f"{base}/json", timeout=2) == (200, {"role": "primary"})
    assert http_json(f"{base}/text", timeout=2) == (200, "not json")
    assert http_json(f"{base}/empty", timeout=2) == (200, None)
    assert http_json(f"{base}/missing", timeout=2) == (404, {"message": "no such thing"})


def test_a_post_sends_json_and_the_headers(base):
    code, body = http_json(f"{base}/rebuild", {"force": True}, timeout=2, headers={"X-Sig": "s"})
    assert code == 200 and body == {"got": {"force": True}, "sig": "s", "type": "application/json"}


def test_no_answer_is_status_0_and_the_reason_never_an_exception(monkeypatch):
    code, why = http_json(f"http://127.0.0.1:{free_port('127.0.0.1')}/state", timeout=2)
    assert code == 0 and "refused" in why.lower()
    assert http_json("not a url", timeout=1)[0] == 0
    monkeypatch.setenv("MANATEE_TLS_CA", "/nonexistent/ca.pem")
    code, why = http_json("https://127.0.0.1:1/state", timeout=1)
    assert code == 0 and "/nonexistent/ca.pem" in why
