"""manatee-adm reload: every sitter of the shard re-reads its config file (as SIGHUP does) and
applies its postgresMgrCfg.parameters with pg_reload_conf(); then each node's settings that
only a PostgreSQL restart applies (pg_settings.pending_restart) are listed.

The request is POST /reload on each sitter's status server, signed with the shard secret
(docs/security.md) as POST /rebuild is.
"""

from __future__ import annotations

import json
import os
import time

from manatee.cli.common import CliError
from manatee.core.httpjson import http_json
from manatee.shard.rebuildpath import RESTORE_FINISHED
from manatee.shard.state import ClusterState
from manatee.shard.syncstore import SyncShardStore

POLL_S = 0.2


def _secret(args):
    from manatee.core.auth import SecretError, load_secret_file

    path = args.secret_file or os.environ.get("MANATEE_SECRET_FILE")
    try:
        return load_secret_file(path) if path else None
    except SecretError as e:
        raise CliError(f"--secret-file: {e}") from None


def signed_post(secret, url_base: str, path: str, body: dict, timeout: float):
    """(status, JSON) of a POST signed with the shard secret (unsigned without one)."""
    from manatee.core.auth import sign_request

    headers = sign_request(secret, "POST", path, json.dumps(body).encode())
    return http_json(f"{url_base}{path}", body, timeout=timeout, headers=headers)


def shard_state(zk, shard: str, doing: str) -> ClusterState:
    """The shard's persisted state; ShardStoreError naming the shard when it is unknown or has none."""
    return SyncShardStore(zk, shard).state(doing)[0]


def cmd_reload(args, zk) -> int:
    from manatee.cli.adm import _say

    st = shard_state(zk, args.shard, "reload")
    secret = _secret(args)
    failed = []
    nodes = [p for p in st.chain() if p.status_url]
    for p in nodes:
        code, body = signed_post(secret, p.status_url, "/reload", {}, args.timeout)
        if code == 200:
            needs = body.get("needsRestart") or []
            _say(f"{p.ip} ({st.place_of(p.id)}): config re-read"
                 + (f"; only a sitter restart applies: {', '.join(needs)}" if needs else ""))
            continue
        msg = body.get("message") or body.get("error") if isinstance(body, dict) else body
        hint = " (pass --secret-file, or set MANATEE_SECRET_FILE, to the shard secret)" \
            if code == 401 and secret is None else ""
        failed.append(p.ip)
        print(f"{p.ip} ({st.place_of(p.id)}): reload failed: {code or 'no answer'} {msg}{hint}")
    # the sitters write and reload PostgreSQL's settings in their next cycle: wait for that
    deadline = time.monotonic() + args.wait
    pending: dict[str, object] = {}
    for p in nodes:
        if p.ip in failed:
            continue
        while True:
            code, s = http_json(f"{p.status_url}/state", timeout=args.timeout)
            pg = s.get("pg") if code == 200 and isinstance(s, dict) else None
            if pg is not None and not pg.get("parametersPending"):
                pending[p.ip] = pg.get("pendingRestart") or []
                break
            if time.monotonic() > deadline:
                pending[p.ip] = unconfirmed_why(code, s)
                break
            time.sleep(POLL_S)
    for ip, names in pending.items():
        if isinstance(names, str):
            print(f"{ip}: PostgreSQL's settings not confirmed applied within {args.wait:g}s: {names}")
            failed.append(ip)
        elif names:
            print(f"{ip}: pending restart: {', '.join(names)} (applies at its next PostgreSQL restart)")
        else:
            _say(f"{ip}: PostgreSQL settings applied")
    return 1 if failed else 0


def unconfirmed_why(code: int, state) -> str:
    """Why a node's /state (HTTP `code`, body `state`) does not yet confirm the new settings."""
    if code != 200 or not isinstance(state, dict):
        return f"its sitter's /state did not answer ({code or 'no answer'})"
    pg = state.get("pg")
    restore = state.get("restore") or {}
    cycles = state.get("cycles") or {}
    if restore.get("phase") not in (None, *RESTORE_FINISHED):
        return f"it is being rebuilt ({restore.get('phase')})"
    if pg is None:
        return "its sitter has not looked at PostgreSQL yet"
    if pg.get("configError"):
        return f"its sitter cannot write PostgreSQL's config: {pg['configError']}"
    if pg.get("known") is False:
        return f"its PostgreSQL's status is unknown: {pg.get('error') or 'no answer'}"
    if cycles.get("failedInARow"):
        return f"its sitter's last {cycles['failedInARow']} cycles failed: {cycles.get('lastError')}"
    return (f"its sitter has not reloaded PostgreSQL with them yet (PostgreSQL last looked at "
            f"{state.get('pgObservedAgo')}s ago); run reload again, or see its /state and log")


def add_parsers(add, positive) -> None:
    """The sub-commands of this module, on manatee-adm's parser (`add` is its helper)."""
    sp = add("reload", "every sitter re-reads its config and applies postgresMgrCfg.parameters "
                       "(pg_reload_conf); lists the settings only a restart applies")
    sp.add_argument("--wait", type=positive("--wait"), default=15.0, metavar="SECONDS",
                    help="how long to wait for every node to apply them (default 15)")
    sp.add_argument("--secret-file", metavar="FILE", default=None,
                    help="the shard secret's file, to sign the requests (default: $MANATEE_SECRET_FILE)")


COMMANDS = {"reload": cmd_reload}
