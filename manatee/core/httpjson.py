"""One blocking HTTP JSON call for the operator tools and the test bed (a sitter's /state,
/primary, /replica, a signed POST /rebuild ...), with one failure contract:

    (status, body)      the server answered: body is its JSON, the text when it is not JSON,
                        None when it is empty; an HTTP error status is an answer too
    (0, reason)         nothing answered (refused, timed out, TLS refused, bad URL): `reason`
                        is the error's text

It never raises for a failed call. An https:// URL without an explicit `ctx` uses the
client TLS files of $MANATEE_TLS_* (core/tls.py); an unusable file is (0, its error).
"""
from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from manatee.core.tls import client_context_from_env

__all__ = ["http_json"]


def http_json(url: str, body: Any = None, *, timeout: float, headers: Mapping[str, str] | None = None,
              ctx: ssl.SSLContext | None = None) -> tuple[int, Any]:
    """GET `url` (POST `body` as JSON when given); see the module doc for what comes back."""
    data = None if body is None else json.dumps(body).encode()
    try:
        req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                     headers={**({"Content-Type": "application/json"} if data else {}),
                                              **(headers or {})})
    except ValueError as e:  # not a URL
        return 0, str(e)
    if ctx is None and url.startswith("https:"):
        try:
            ctx = client_context_from_env()
        except ValueError as e:  # an unusable $MANATEE_TLS_* file: named, not a traceback
            return 0, str(e)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    except (OSError, ValueError) as e:
        return 0, str(getattr(e, "reason", e))
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode("utf-8", "replace")
