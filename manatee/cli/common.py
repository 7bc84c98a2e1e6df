"""What the operator CLIs (manatee-stat, manatee-history, manatee-clear) share.

Why a module of its own: each tool is short-lived and must fail the same way. Whatever
goes wrong (ZooKeeper unreachable or hung, an unknown shard, bad arguments) the operator
gets exactly one line on stderr, `<tool>: <message>`, and an exit status (1: could not do
it, 2: usage), never a traceback and never an unbounded wait: every ZooKeeper read is
bounded by one overall deadline (`--timeout`), and a watchdog ends the process should a
library call ignore it.

ZooKeeper is read with a plain kazoo client. Reads of many znodes are issued together
(kazoo's *_async calls are pipelined on the one connection) and then collected, so the
time of a 100-shard `manatee-stat` is a few round trips, not hundreds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from manatee import __version__ as VERSION
from manatee.core import zkconfig
from manatee.shard.layout import ROOT, shard_name, shard_path
from manatee.shard.pgurl import PgUrl
from manatee.shard.syncstore import BadVersion, NodeExists, ShardStoreError

__all__ = [
    "DEFAULT_TIMEOUT", "EXIT_OK", "EXIT_FAIL", "EXIT_USAGE",
    "CliError", "UsageError", "ArgParser", "parse_zk_hosts", "check_shard_name",
    "ZkReader", "run_cli", "dump_json", "decode",
    "add_common_args", "check_timeout", "shard_zk_parser", "add_target_args", "resolve_target", "Target",
    "ENV_ZK", "ENV_SHARD", "ENV_CONFIG", "VERSION", "pg_failure", "pg_conn_params", "one_line_failures", "read_shard_target",
]

DEFAULT_TIMEOUT = 10.0
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

_SHARD = re.compile(r"^[A-Za-z0-9_.:-]+$")


class CliError(Exception):
    """The command could not be done; the message is the whole story (exit 1)."""

    exit_code = EXIT_FAIL


class UsageError(CliError):
    """Bad arguments (exit 2)."""

    exit_code = EXIT_USAGE


class ArgParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (`tool: message (see --help)`).

    Positional words left over after options (`show 1 -t 3 ZK`) join the `args` list of a
    parser that has one (see add_target_args) instead of being refused."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see --help)")

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        ns, rest = self.parse_known_args(args, namespace)
        if rest:
            if hasattr(ns, "args") and not any(r.startswith("-") and r != "-" for r in rest):
                ns.args = list(ns.args or []) + list(rest)
            else:
                self.error(f"unrecognized arguments: {' '.join(rest)}")
        return ns


def parse_zk_hosts(spec: str) -> str:
    """The ZooKeeper address (core/zkconfig.py's parser, the daemons' too); UsageError naming the bad part."""
    try:
        return zkconfig.parse_zk_hosts(spec)
    except ValueError as e:
        raise UsageError(str(e)) from None


def check_shard_name(name: str) -> str:
    """A shard is one znode under /manatee ('1', '1.moray.us-sw-1.joyent.com')."""
    if not name or not _SHARD.match(name) or name in (".", ".."):
        raise UsageError(f"bad shard name {name!r}: expected one name like '1' or "
                         "'1.moray.us-sw-1.joyent.com' (letters, digits, '.', '_', ':', '-')")
    return name


def dump_json(obj: Any, *, compact: bool = False) -> str:
    if compact:
        return json.dumps(obj, separators=(",", ":"))
    return json.dumps(obj, indent=4)


def _decode(raw: bytes | None) -> Any:
    """Znode data → JSON value; undecodable data comes back as a string (shown, not fatal)."""
    if raw is None or raw == b"":
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return raw.decode("utf-8", "replace")


def zk_reason(e: BaseException) -> str:
    """A ZooKeeper failure in words: kazoo's errors often carry no message (an exception is
    always truthy, so `e or name` printed nothing: sandbox walk-through 2026-12-06)."""
    if type(e).__name__ == "NoAuthError":
        return "NoAuthError: refused by the znode's ACL (does $MANATEE_ZK_AUTH_FILE name the shard's credential?)"
    return str(e) or type(e).__name__


class ZkReader:
    """A kazoo session for one CLI run; every call honours the run's deadline.

    Methods return None (not raise) for a missing znode; other failures raise CliError
    naming the path and the ZooKeeper address."""

    def __init__(self, hosts: str, deadline: float):
        self.hosts = hosts
        self.deadline = deadline
        self._kz = None
        self._acl = None  # the shard's ACL for what this run creates (None: no auth configured)

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def __enter__(self) -> "ZkReader":
        self.connect()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def connect(self) -> None:
        from kazoo.client import KazooClient
        from kazoo.retry import KazooRetry

        from manatee.core.zkauth import auth_from_env

        try:
            auth = auth_from_env()  # the shard's credential, for the CLIs that write (ACLs)
        except ValueError as e:
            raise CliError(str(e)) from None
        self._acl = auth.acl() if auth else None
        budget = self.remaining()
        kz = KazooClient(
            hosts=self.hosts,
            timeout=max(2.0, min(10.0, budget)),
            connection_retry=KazooRetry(max_tries=-1, delay=0.1, max_delay=1.0, deadline=budget),
            command_retry=None,
            read_only=False,
            auth_data=auth.auth_data() if auth else None,
            default_acl=auth.acl() if auth else None,
        )
        self._kz = kz
        try:
            ev = kz.start_async()
        except Exception as e:  # noqa: BLE001 - e.g. an unresolvable host name
            self.close()
            raise CliError(f"cannot connect to ZooKeeper at {self.hosts}: {e}") from None
        ev.wait(timeout=budget)
        if not kz.connected:
            self.close()
            raise CliError(f"cannot connect to ZooKeeper at {self.hosts} within {budget:.0f}s "
                           "(is it running and reachable?)")

    def close(self) -> None:
        kz, self._kz = self._kz, None
        if kz is not None:
            try:
                kz.stop()
                kz.close()
            except Exception:  # noqa: BLE001 - closing a dead session must not fail the run
                pass

    # -- the reads -----------------------------------------------------------------------

    def _wait(self, what: str, result: Any) -> Any:
        from kazoo.exceptions import NoNodeError

        try:
            return result.get(timeout=self.remaining())
        except NoNodeError:
            return None
        except Exception as e:  # noqa: BLE001 - every ZooKeeper failure becomes one line
            reason = zk_reason(e)
            if type(e).__name__ in ("KazooTimeoutError", "TimeoutError"):
                reason = "no answer before the deadline"
            raise CliError(f"ZooKeeper at {self.hosts}: {what}: {reason}") from None

    def get_many(self, paths: Iterable[str]) -> dict[str, tuple[bytes, Any] | None]:
        """path → (data, stat), or None where the znode does not exist. All at once."""
        pending = [(p, self._kz.get_async(p)) for p in paths]
        return {p: self._wait(f"reading {p}", r) for p, r in pending}

    def children_many(self, paths: Iterable[str]) -> dict[str, list[str] | None]:
        pending = [(p, self._kz.get_children_async(p)) for p in paths]
        return {p: self._wait(f"listing {p}", r) for p, r in pending}

    def acls_many(self, paths: Iterable[str]) -> dict[str, tuple[list, Any] | None]:
        pending = [(p, self._kz.get_acls_async(p)) for p in paths]
        return {p: self._wait(f"reading the ACL of {p}", r) for p, r in pending}

    def get(self, path: str) -> tuple[bytes, Any] | None:
        return self.get_many([path])[path]

    def get_json(self, path: str) -> Any:
        got = self.get(path)
        return None if got is None else _decode(got[0])

    def children(self, path: str) -> list[str] | None:
        return self.children_many([path])[path]

    def exists(self, path: str) -> bool:
        return self._wait(f"checking {path}", self._kz.exists_async(path)) is not None

    def set(self, path: str, data: bytes, version: int) -> None:
        """Write by compare-and-set on `version`; BadVersion when it changed meanwhile."""
        from kazoo.exceptions import BadVersionError

        try:
            self._kz.set_async(path, data, version=version).get(timeout=self.remaining())
        except BadVersionError:
            raise BadVersion(path) from None
        except Exception as e:  # noqa: BLE001
            raise CliError(f"ZooKeeper at {self.hosts}: writing {path}: {zk_reason(e)}") from None

    def create(self, path: str, data: bytes, *, sequence: bool = False, makepath: bool = False) -> str:
        """Create `path` (the shard's ACL when $MANATEE_ZK_AUTH_FILE gives a credential, else
        ZooKeeper's open default); NodeExists when it exists already. The path created."""
        from kazoo.exceptions import NodeExistsError

        try:
            return self._kz.create_async(path, data, acl=self._acl, sequence=sequence,
                                         makepath=makepath).get(timeout=self.remaining())
        except NodeExistsError:
            raise NodeExists(path) from None
        except Exception as e:  # noqa: BLE001
            raise CliError(f"ZooKeeper at {self.hosts}: creating {path}: {zk_reason(e)}") from None

    def delete(self, path: str, version: int = -1) -> None:
        from kazoo.exceptions import BadVersionError, NoNodeError

        try:
            self._kz.delete_async(path, version=version).get(timeout=self.remaining())
        except NoNodeError:
            raise CliError(f"{path} disappeared before it could be removed") from None
        except BadVersionError:
            raise CliError(f"{path} changed while being removed; look again and retry") from None
        except Exception as e:  # noqa: BLE001
            raise CliError(f"ZooKeeper at {self.hosts}: deleting {path}: {zk_reason(e)}") from None


#: how libpq words a refused login (password or pg_hba): "auth failed", not "down"
_AUTH_FAILED = ("password authentication failed", "no password supplied", "authentication failed",
                "no pg_hba.conf entry", "role \"", "peer authentication failed")


def pg_failure(e: BaseException) -> dict[str, Any]:
    """A failed PostgreSQL connect or query → {"error": first line[, "auth": "failed"]}."""
    msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
    out: dict[str, Any] = {"error": msg}
    if getattr(e, "pgcode", None) in ("28P01", "28000") or any(a in msg for a in _AUTH_FAILED):
        out["auth"] = "failed"
    return out


def pg_conn_params(url: PgUrl, application_name: str, connect_timeout: int, statement_ms: int) -> dict[str, Any]:
    """psycopg2.connect keywords for a tool's probe of `url`: bounded connect and statements,
    named after the tool; the password from the URL, else $PGPASSWORD (else libpq's PGPASSFILE)."""
    params = url.conn_params(connect_timeout=connect_timeout, application_name=application_name,
                             options=f"-c statement_timeout={statement_ms}")
    if "password" not in params and os.environ.get("PGPASSWORD"):
        params["password"] = os.environ["PGPASSWORD"]
    return params


def decode(raw: bytes | None) -> Any:
    return _decode(raw)


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", action="version", version=f"%(prog)s (manatee) {VERSION}")
    p.add_argument("-t", "--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help=f"give up after this long in all (default {DEFAULT_TIMEOUT:g})")
    p.add_argument("-v", "--verbose", action="store_true", help="log ZooKeeper client messages to stderr")


def check_timeout(t: float) -> float:
    if not t > 0 or t > 3600:
        raise UsageError(f"--timeout {t:g}: must be between 0 and 3600 seconds")
    return t


def _quiet_libraries(verbose: bool) -> None:
    """kazoo logs each failed connection attempt; without -v those lines would bury ours."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.CRITICAL + 1,
                        format="%(name)s: %(message)s", stream=sys.stderr)
    if not verbose:
        logging.getLogger("kazoo").setLevel(logging.CRITICAL + 1)
        import warnings

        warnings.simplefilter("ignore")


def _start_watchdog(tool: str, seconds: float) -> threading.Timer:
    """Last resort for a call that ignores our deadline: one line, exit 1, no hang."""

    def fire() -> None:
        try:
            sys.stderr.write(f"{tool}: gave up after {seconds:.0f}s (no answer; see --timeout)\n")
            sys.stderr.flush()
        finally:
            os._exit(EXIT_FAIL)

    t = threading.Timer(seconds, fire)
    t.daemon = True
    t.start()
    return t


def one_line_failures(tool: str, run: Callable[[], int]) -> int:
    """run(); every failure becomes one stderr line `<tool>: <message>` and an exit status
    (1: could not do it, 2: usage, 130: interrupted), never a traceback."""
    try:
        return run()
    except (CliError, ShardStoreError) as e:
        print(f"{tool}: {e}", file=sys.stderr)
        return getattr(e, "exit_code", EXIT_FAIL)
    except KeyboardInterrupt:
        print(f"{tool}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout closed early (| head): nothing more to say
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_OK
    except Exception as e:  # noqa: BLE001 - the promise is: never a traceback
        print(f"{tool}: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAIL


def run_cli(tool: str, parser: argparse.ArgumentParser, body: Callable[[argparse.Namespace, float], int],
            argv: Sequence[str] | None = None) -> int:
    """Parse, run body(args, deadline), and turn every failure into one stderr line + status."""
    watchdogs: list[threading.Timer] = []

    def run() -> int:
        args = parser.parse_args(argv)
        timeout = check_timeout(args.timeout)
        _quiet_libraries(getattr(args, "verbose", False))
        watchdogs.append(_start_watchdog(tool, timeout + 3.0))
        return body(args, time.monotonic() + timeout)

    try:
        return one_line_failures(tool, run)
    finally:
        for w in watchdogs:
            w.cancel()


def read_shard_target(args: argparse.Namespace, deadline: float, read: Callable[[ZkReader, str], Any]) -> Any:
    """read(zk, shard) on the shard and ZooKeeper the arguments name (resolve_target), with a
    ZooKeeper session bounded by `deadline` and closed afterwards."""
    t = resolve_target(args)
    with ZkReader(t.zk, deadline) as zk:
        return read(zk, t.shard)


def shard_zk_parser(prog: str, description: str) -> "ArgParser":
    """The parser of the tools that take a shard and ZooKeeper (manatee-history, manatee-clear):
    -z/-s/-c or the guide's `SHARD ZK`."""
    p = ArgParser(prog=prog, description=description)
    add_common_args(p)
    add_target_args(p, "SHARD ZK")
    return p


# --------------------------------------------------------------------------- shard and ZooKeeper

ENV_ZK, ENV_SHARD, ENV_CONFIG = "MANATEE_ZK", "MANATEE_SHARD", "MANATEE_CONFIG"


def add_target_args(p: argparse.ArgumentParser, legacy: str = "SHARD ZK", extra: str = "") -> None:
    """The one convention of every tool for naming the shard and ZooKeeper:

        -z/--zk ZK  -s/--shard SHARD  -c/--config sitter.json

    then the guide's positional forms (`SHARD ZK`, manatee-stat's `ZK`), then the config
    file, then $MANATEE_ZK / $MANATEE_SHARD ($MANATEE_CONFIG names a default config file).
    resolve_target() applies that order."""
    p.add_argument("-z", "--zk", metavar="ZK",
                   help=f"ZooKeeper: host[:port][,host[:port]...][/chroot] (default ${ENV_ZK})")
    p.add_argument("-s", "--shard", metavar="SHARD",
                   help=f"shard name under /manatee, e.g. 1 (default ${ENV_SHARD})")
    p.add_argument("-c", "--config", metavar="SITTER_CONFIG",
                   help=f"take ZooKeeper (zkCfg.connStr) and the shard (shardPath) from a sitter "
                        f"config file (default ${ENV_CONFIG})")
    p.add_argument("args", nargs="*", metavar=(legacy + (" " + extra if extra else "")).strip(),
                   help=f"the guide's positional form ({legacy}), still accepted"
                        + (f"; then {extra}" if extra else ""))


@dataclass
class Target:
    zk: str | None
    shard: str | None
    extra: list[str]


def _read_sitter_config(path: str) -> tuple[str | None, str | None]:
    """(zkCfg.connStr, the shard name from shardPath) of a sitter config file, unvalidated:
    the tools need two keys of it, not a config this host could run."""
    try:
        text = open(path, encoding="utf-8").read()
    except OSError as e:
        raise UsageError(f"--config {path}: {e.strerror or e}") from None
    try:
        doc = json.loads(text)
    except ValueError:
        try:
            import yaml

            doc = yaml.safe_load(text)
        except Exception as e:  # noqa: BLE001 - any parse error is the same one line
            raise UsageError(f"--config {path}: neither JSON nor YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"--config {path}: expected a sitter config object")
    zk_cfg = doc.get("zkCfg")
    conn = zk_cfg.get("connStr") if isinstance(zk_cfg, dict) else None
    if conn is not None and not isinstance(conn, str):
        raise UsageError(f"--config {path}: zkCfg.connStr must be a string")
    shard_path_ = doc.get("shardPath", shard_path("1"))
    if not isinstance(shard_path_, str) or not shard_path_.startswith(ROOT + "/"):
        raise UsageError(f"--config {path}: shardPath {shard_path_!r} is not under {ROOT}/")
    return conn, shard_name(shard_path_)


ENV_SANDBOX = "MANATEE_SANDBOX_DIR"
#: what a sandbox's manatee.env gives the tools besides the shard and ZooKeeper
SANDBOX_TOOL_VARS = ("PGPASSFILE", "MANATEE_ZK_AUTH_FILE", "MANATEE_SECRET_FILE",
                     "MANATEE_TLS_CA", "MANATEE_TLS_CERT", "MANATEE_TLS_KEY")


def _sandbox_env(box: str) -> dict[str, str]:
    """The exports of a sandbox's manatee.env (written by `manatee-sandbox up`); {} if none."""
    out: dict[str, str] = {}
    try:
        text = open(os.path.join(box, "manatee.env"), encoding="utf-8").read()
    except OSError:
        return out
    for line in text.splitlines():
        k, eq, v = line.removeprefix("export ").partition("=")
        if eq and not line.startswith("#"):
            out[k.strip()] = v.strip()
    return out


def resolve_target(args: argparse.Namespace, *, order: Sequence[str] = ("shard", "zk"),
                   extras: tuple[int, int] = (0, 0), need_shard: bool = True,
                   env: Mapping[str, str] | None = None) -> Target:
    """Where the shard and ZooKeeper come from, first that gives it: the -z/-s options, the
    positional words (in `order`, for what the options did not give), -c sitter.json,
    $MANATEE_CONFIG, $MANATEE_ZK/$MANATEE_SHARD, and last a sandbox's manatee.env in
    $MANATEE_SANDBOX_DIR (which also gives PGPASSFILE). The positional words are the legacy form
    when there are enough of them; otherwise they are the command's own (`extras`: how many
    it takes, min and max). The ZooKeeper address and shard name come back checked."""
    env = os.environ if env is None else env
    pos = list(getattr(args, "args", None) or [])
    got: dict[str, str | None] = {"zk": args.zk, "shard": getattr(args, "shard", None)}
    missing = [k for k in order if got[k] is None]
    lo, hi = extras
    if missing and lo <= len(pos) - len(missing) <= hi:
        for k, v in zip(missing, pos):
            got[k] = v
        pos = pos[len(missing):]
    elif len(pos) > hi + len(missing):
        raise UsageError(f"unrecognized arguments: {' '.join(pos[hi + len(missing):])}")
    elif hi == 0 and 0 < len(pos) < len(missing):
        # fewer words than the positional form: they fill it from the left, as argparse
        # would (`manatee-history 1` with $MANATEE_ZK set; else "required: ZK")
        for k, v in zip(missing, pos):
            got[k] = v
        pos = []
    cfg = args.config or env.get(ENV_CONFIG)
    if cfg and (got["zk"] is None or got["shard"] is None):
        c_zk, c_shard = _read_sitter_config(cfg)
        got["zk"] = got["zk"] if got["zk"] is not None else c_zk
        got["shard"] = got["shard"] if got["shard"] is not None else c_shard
    got["zk"] = got["zk"] if got["zk"] is not None else (env.get(ENV_ZK) or None)
    got["shard"] = got["shard"] if got["shard"] is not None else (env.get(ENV_SHARD) or None)
    box = env.get(ENV_SANDBOX)
    if box and (got["zk"] is None or got["shard"] is None or "PGPASSFILE" not in env):
        sb = _sandbox_env(box)
        got["zk"] = got["zk"] if got["zk"] is not None else sb.get(ENV_ZK)
        got["shard"] = got["shard"] if got["shard"] is not None else sb.get(ENV_SHARD)
        for var in SANDBOX_TOOL_VARS:  # libpq, the ZooKeeper credential, the HTTPS files
            if var not in os.environ and sb.get(var):
                os.environ[var] = sb[var]
    need = [name for key, name in (("shard", "SHARD"), ("zk", "ZK"))
            if got[key] is None and (key == "zk" or need_shard)]
    if need:
        raise UsageError(f"the following arguments are required: {', '.join(need)} (-z/--zk ZK, -s/--shard "
                         f"SHARD, the positional form, -c sitter.json, or ${ENV_ZK}/${ENV_SHARD})")
    if len(pos) > hi:
        raise UsageError(f"unrecognized arguments: {' '.join(pos[hi:])}")
    if len(pos) < lo:
        raise UsageError("too few arguments (see --help)")
    return Target(parse_zk_hosts(got["zk"]),
                  None if got["shard"] is None else check_shard_name(got["shard"]), pos)
