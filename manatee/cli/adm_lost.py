"""What the sitters remember of a shard whose state znode is gone (pure, like adm_view).

A sitter's GET /state says `remembers`: null (it knows of no generation: a brand-new node)
or {"generation": G, "primary": "<peer id>"}, the newest generation its data is known to
belong to; its election node says `remembers: G | null`. A sitter that does not answer, or
an older one that does not say, is unknown: never counted as remembering nothing.
`show`/`verify` report a lost state from this; `manatee-adm state-restore` (adm_staterestore.py)
refuses on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from manatee.shard.layout import ShardLayout

CRITICAL = "critical"

__all__ = ["Memory", "memory_of", "election_memory", "peer_ip", "lost_state_problem", "lost_notes"]


@dataclass(frozen=True)
class Memory:
    """What one sitter remembers: `generation` None = nothing; `known` False = cannot tell (why)."""

    generation: int | None = None
    primary: str | None = None  # the remembered primary's peer id
    known: bool = True
    why: str = ""


def _generation(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 1 else None


def memory_of(sitter: Any) -> Memory:
    """A sitter's /state body (None: it did not answer) → what it remembers."""
    if not isinstance(sitter, Mapping):
        return Memory(known=False, why="its sitter does not answer")
    if "remembers" not in sitter:
        return Memory(known=False, why="its sitter does not say what it remembers (an older version?)")
    rem = sitter["remembers"]
    if rem is None:
        return Memory()
    gen = _generation(rem.get("generation")) if isinstance(rem, Mapping) else None
    if gen is None:
        return Memory(known=False, why=f"its sitter's `remembers` cannot be read: {rem!r}")
    prim = rem.get("primary")
    return Memory(gen, prim if isinstance(prim, str) and prim else None)


def election_memory(data: Any) -> int | None:
    """The generation an election node's data says its sitter remembers (None: none, or not said)."""
    return _generation(data.get("remembers")) if isinstance(data, Mapping) else None


def peer_ip(peer_id: str | None) -> str:
    """'127.0.0.13:5432:10002:5433' → '127.0.0.13' (an IPv6 address keeps its colons)."""
    if not peer_id:
        return "?"
    parts = peer_id.rsplit(":", 3)
    return parts[0] if len(parts) == 4 else peer_id


def _memories(nodes: Sequence[Any]) -> list[tuple[str, Memory]]:
    return [(str(n.ip), memory_of(n.sitter)) for n in nodes]


def lost_state_problem(shard: str, nodes: Sequence[Any]) -> tuple[str, str] | None:
    """The critical problem of a shard with no state znode while live sitters remember one; None
    when no sitter says it remembers a generation (a new shard, not declared yet). `nodes` are
    adm_view.NodeViews (`ip`, `sitter`: the /state body or None)."""
    mems = _memories(nodes)
    known = [(ip, m) for ip, m in mems if m.known and m.generation is not None]
    if not known:
        return None
    gen = max(m.generation or 0 for _ip, m in known)
    prims = sorted({peer_ip(m.primary) for _ip, m in known if m.generation == gen})
    upto = "" if all(m.generation == gen for _ip, m in known) else "up to "
    msg = (f"the shard state znode {ShardLayout.of(shard).state} is missing: no failover can happen and no "
           f"new member can join. The sitters remember {upto}generation {gen} (primary {', '.join(prims)}): "
           f"restore it with 'manatee-adm state-restore'")
    unknown = [ip for ip, m in mems if not m.known]
    if unknown:
        msg += f" (unknown what {', '.join(unknown)} remember{'s' if len(unknown) == 1 else ''})"
    return CRITICAL, msg


def lost_notes(nodes: Sequence[Any]) -> list[str]:
    """show's lines under "nodes:" while the state znode is missing and some sitter remembers it."""
    mems = _memories(nodes)
    if not any(m.known and m.generation is not None for _ip, m in mems):
        return []
    out = []
    for ip, m in mems:
        if not m.known:
            out.append(f"  {ip}: what it remembers is unknown: {m.why}")
        elif m.generation is None:
            out.append(f"  {ip}: remembers no shard state")
        else:
            out.append(f"  {ip}: remembers generation {m.generation} (primary {peer_ip(m.primary)})")
    return out
