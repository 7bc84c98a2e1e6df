"""manatee-adm state-restore: re-create a shard's lost state znode, or replace an unreadable one,
from what its live sitters remember.

When `<shardPath>/state` is gone (deleted, or ZooKeeper reinstalled empty) while sitters run,
the sitters that remember the shard hold: the primary keeps serving, nobody fails over or
joins, and (unless the primary re-creates the znode itself) an operator restores it with this.
The same holds while the znode cannot be parsed (garbage written by hand or by a broken
client): the sitters keep the last state they read and hold until the znode is fixed.

Every live sitter (the election) is asked for its GET /state: `state` (the last state it
read, the remembered one while the znode is lost) and `remembers` (the newest generation its
data belongs to). The candidate is the state of the highest generation shown. Refused when
that might not be the shard's newest state: no sitter shows a state; two differ at that
generation; a sitter does not answer, or its answer cannot be read (unless
--ignore-unreachable: unknown is not a fact, it may remember a newer generation); a sitter
remembers a newer generation than any shown (no override). A missing znode is then
*created* (never overwritten: if it appeared meanwhile, nothing is written); an unreadable one
is replaced by compare-and-set on the version read (if anyone wrote it meanwhile, nothing is
written); a readable one is never touched. Either way with the JSON the sitters reported, and
a StateRestored history record is added (best effort).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field

from manatee.cli import adm_view as V
from manatee.cli.adm_lost import Memory, election_memory, memory_of
from manatee.cli.adm_ops import _who
from manatee.cli.adm_probe import _parallel
from manatee.cli.common import CliError, ZkReader
from manatee.core.httpjson import http_json
from manatee.shard.history import state_restored_event
from manatee.shard.state import (
    ClusterState, Peer, StateError, decode_node, parse_election_name, parse_election_nodes, parse_state,
)
from manatee.shard.syncstore import BadVersion, NodeExists, SyncShardStore

#: how long each sitter's GET /state may take (they are asked in parallel)
STATUS_TIMEOUT_S = 2.0

__all__ = ["Answer", "read_election", "parse_answer", "choose", "cmd_state_restore", "add_parsers", "COMMANDS"]


@dataclass
class Answer:
    """One live sitter's answer. `why` set: what it knows is unknown (no answer, unreadable)."""

    who: str  # its ip (or the election node's name when that node cannot be read)
    peer: Peer | None = None
    election_gen: int | None = None  # the generation its election node says it remembers
    state: ClusterState | None = None
    memory: Memory = field(default_factory=Memory)
    why: str | None = None

    @property
    def remembers(self) -> int | None:
        gens = [g for g in (self.memory.generation, self.election_gen) if g is not None]
        return max(gens) if gens else None


def _by_seq(name: str) -> tuple[int, str]:
    try:
        return parse_election_name(name)[1], name
    except StateError:
        return -1, name


def read_election(zk: ZkReader, store: SyncShardStore) -> list[Answer]:
    """The live sitters, in join order, each with the generation its election node says it
    remembers; an election node that cannot be read is an unknown sitter, by its name."""
    lay = store.layout
    names = zk.children(lay.election) or []
    got = zk.get_many(lay.election_node(n) for n in names)
    raws = {n: g[0] for n in names if (g := got.get(lay.election_node(n))) is not None}
    peers, bad = parse_election_nodes(raws)
    gens: dict[str, int | None] = {}
    for name in sorted(raws, key=_by_seq):  # the latest node of a peer wins, as in the election
        try:
            gens[parse_election_name(name)[0]] = election_memory(decode_node(raws[name], name))
        except StateError:
            continue
    out = [Answer(p.ip, p, gens.get(p.id)) for p in peers]
    return out + [Answer(name, why=f"its election node cannot be read ({why})") for name, why in bad]


def parse_answer(a: Answer, got: object) -> Answer:
    """Fill `a` from its sitter's GET /state result: (status, body), or None / {"error"} when
    the request did not finish."""
    if not isinstance(got, tuple):
        a.why = f"no answer ({(got or {}).get('error') if isinstance(got, dict) else 'not in time'})"
        return a
    code, body = got
    if code != 200 or not isinstance(body, dict):
        a.why = f"no answer ({body})" if code == 0 else f"its /state answered {code}"
        return a
    a.memory = memory_of(body)
    if not a.memory.known:
        a.why = a.memory.why
        return a
    raw = body.get("state")
    if raw is not None and not isinstance(raw, dict):
        a.why = f"its state is not a JSON object: {raw!r}"
        return a
    try:
        a.state = None if raw is None else ClusterState.from_json(raw)
    except (ValueError, TypeError, KeyError, AttributeError) as e:  # StateError is a ValueError
        a.why = f"its state cannot be parsed: {e}"
    return a


def ask(answers: list[Answer], timeout: float) -> list[Answer]:
    """Every sitter's GET /state, in parallel, each bounded by STATUS_TIMEOUT_S (and `timeout`)."""
    t = min(timeout, STATUS_TIMEOUT_S)
    jobs = {str(i): (lambda u=a.peer.status_url: http_json(f"{u}/state", timeout=t))
            for i, a in enumerate(answers) if a.peer is not None and a.peer.status_url}
    res = _parallel(jobs, time.monotonic() + t + 0.5)
    for i, a in enumerate(answers):
        if a.why is None and a.peer is not None and not a.peer.status_url:
            a.why = "no statusUrl in its election node: its sitter cannot be asked"
        elif a.why is None:
            parse_answer(a, res.get(str(i)))
    return answers


def _names(answers: list[Answer]) -> str:
    return ", ".join(a.who for a in answers)


def choose(answers: list[Answer], ignore_unreachable: bool = False) -> tuple[ClusterState, list[Answer]]:
    """(the state to restore, the sitters that show exactly it); CliError when it might not be
    the shard's newest state (see the module doc)."""
    stated = [a for a in answers if a.why is None and a.state is not None]
    if not stated:
        rem = [f"{a.who} generation {a.remembers}" for a in answers if a.remembers is not None]
        raise CliError("no live sitter shows a state: nothing to restore from"
                       + (f" (they remember {', '.join(rem)}, but not the whole state; see the operators' guide, "
                          f"'The shard state znode is missing')" if rem else ""))
    gen = max(a.state.generation for a in stated)
    newer = [a for a in answers if (a.remembers or 0) > gen]
    if newer:
        raise CliError(f"{_names(newer)} remember{'s' if len(newer) == 1 else ''} generation "
                       f"{max(a.remembers or 0 for a in newer)}, newer than any state a sitter shows ({gen}): restoring "
                       f"generation {gen} could lose that generation's writes. Restart nothing; ask the operator of "
                       f"{_names(newer)} and read its sitter's log")
    top = [a for a in stated if a.state.generation == gen]
    shown = {json.dumps(a.state.to_json(), sort_keys=True) for a in top}
    cand = top[0].state
    other = [a for a in answers if a.memory.generation == gen and a.memory.primary not in (None, cand.primary.id)]
    if len(shown) > 1 or other:
        raise CliError(f"the sitters disagree about generation {gen}: {_names(top + other)} do not show the same "
                       f"state (compare their /state): nothing restored")
    unknown = [a for a in answers if a.why is not None]
    if unknown and not ignore_unreachable:
        raise CliError(f"cannot tell what {_names(unknown)} remember{'s' if len(unknown) == 1 else ''} "
                       f"({'; '.join(f'{a.who}: {a.why}' for a in unknown)}): it may be a newer generation. Make "
                       f"{'it' if len(unknown) == 1 else 'them'} answer, or pass --ignore-unreachable if gone for good")
    return cand, top


def _sitters_table(answers: list[Answer]) -> str:
    rows = [[a.who, a.state.generation if a.state else None, a.remembers,
             f"unknown: {a.why}" if a.why else "ok"] for a in answers]
    return V.render_table(["SITTER", "STATE", "REMEMBERS", "ANSWER"], rows)


def describe(st: ClusterState, vouchers: list[Answer], live: set[str]) -> list[str]:
    """The candidate as printed: its places, who vouches for it, and members not in the election."""
    out = [f"the state to restore: generation {st.generation}",
           f"  primary  {st.primary.ip} ({st.primary.id})",
           f"  sync     {st.sync.ip if st.sync else '-'}",
           f"  async    {', '.join(p.ip for p in st.async_) or '-'}",
           f"  deposed  {', '.join(p.ip for p in st.deposed) or '-'}"]
    if st.freeze is not None:
        out.append(f"  frozen   {st.freeze.reason}")
    out.append(f"shown by: {_names(vouchers)}")
    out += [f"warning: the {st.place_of(p.id)} {p.ip} is not in the election (its sitter is down or cut off)"
            for p in st.members() if p.id not in live]
    return out


def _confirm(args, path: str, gen: int, verb: str) -> None:
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise CliError("nothing written: stdin is not a terminal; pass --yes to write it (or --dry-run to only look)")
    try:
        reply = input(f"{verb} {path} with generation {gen}? [y/N] ")
    except EOFError:
        reply = ""
    if reply.strip().lower() not in ("y", "yes"):
        raise CliError("nothing written (not confirmed)")


def _record(store: SyncShardStore, st: ClusterState, vouchers: list[Answer], replaced: bool) -> None:
    """The StateRestored history record; a failure is a warning (the state is what matters)."""
    detail = (f"by {_who()} (manatee-adm state-restore{', replacing an unreadable state' if replaced else ''}), "
              f"as shown by {_names(vouchers)}")
    try:
        store.add_history(state_restored_event(st.primary, st.sync, st.generation, detail, int(time.time() * 1000)))
    except Exception as e:  # noqa: BLE001 - best effort
        print(f"warning: the history record could not be written: {e}", file=sys.stderr)


def _unreadable_version(zk: ZkReader, path: str) -> tuple[int | None, str]:
    """(None, "... is missing") for a missing state znode, (its version, why) for an unreadable
    one; CliError for a readable one, which this command never touches."""
    got = zk.get(path)
    if got is None:
        return None, f"{path} is missing"
    try:
        gen = parse_state(got[0]).generation
    except StateError as e:
        return got[1].version, f"{path} cannot be read ({e})"
    raise CliError(f"the shard has a state (generation {gen}); state-restore only re-creates a missing state "
                   f"or replaces an unreadable one")


def cmd_state_restore(args, zk: ZkReader) -> int:
    from manatee.cli.adm import _say

    store = SyncShardStore(zk, args.shard)
    path = store.layout.state
    version, what = _unreadable_version(zk, path)
    answers = read_election(zk, store)
    if not answers:
        raise CliError(f"{what} and no sitter is in the election: nobody remembers the shard")
    ask(answers, args.timeout)
    _say(f"{what}; the live sitters say:\n{_sitters_table(answers)}\n")
    cand, vouchers = choose(answers, args.ignore_unreachable)
    _say("\n".join(describe(cand, vouchers, {a.peer.id for a in answers if a.peer is not None})))
    if args.dry_run:
        _say("dry run: nothing written")
        return 0
    _confirm(args, path, cand.generation, "create" if version is None else "replace the unreadable")
    zk.deadline = max(zk.deadline, time.monotonic() + args.timeout)
    try:
        if version is None:
            store.create_state(cand)
        else:
            store.replace_state(cand, version)
    except NodeExists:
        raise CliError(f"{path} was created meanwhile (by a sitter or another operator): nothing written; "
                       f"see `manatee-adm show`") from None
    except BadVersion:
        raise CliError(f"{path} was written meanwhile (by a sitter or another operator): nothing written; "
                       f"see `manatee-adm show`") from None
    _record(store, cand, vouchers, replaced=version is not None)
    _say(f"wrote {path}: generation {cand.generation}, primary {cand.primary.ip}, sync "
         f"{cand.sync.ip if cand.sync else '-'}; the sitters read it within 5 s (see `manatee-adm show`)")
    return 0


def add_parsers(add, positive) -> None:
    """The sub-command of this module, on manatee-adm's parser (`add` is its helper)."""
    sp = add("state-restore", "re-create a missing shard state znode, or replace an unreadable one, from what "
                              "the live sitters remember (refuses when that might not be the newest state)")
    sp.add_argument("--yes", action="store_true", help="write without asking (required when stdin is not a terminal)")
    sp.add_argument("--dry-run", action="store_true", help="show what would be written; write nothing")
    sp.add_argument("--ignore-unreachable", action="store_true",
                    help="restore although some live sitter does not answer (it may remember a newer generation)")


COMMANDS = {"state-restore": cmd_state_restore}
