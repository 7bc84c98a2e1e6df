"""Whether the shard's znodes still let its sitters write: `manatee-adm show`/`verify`.

The sitters give the shard's znodes an ACL that anyone may read and only the shard's
credential may change (manatee.core.zkauth.shard_acl), and set it again at their start
where they can. An ACL changed by hand that no longer admits the credential is a time bomb
that nothing else shows: sandbox trial 2026-12-06, `/manatee/1/state` set to
world:anyone:r, then the primary killed — the sync could not write the state, so nobody
took over, and while the primary lived `verify` said "ok". Checked only when the CLI holds
the credential ($MANATEE_ZK_AUTH_FILE): without it, what the sitters use is not known.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from kazoo.security import Id, Permissions

from manatee.shard.layout import ShardLayout

#: what the sitters must be able to do on each of the shard's znodes (kazoo permission bits)
NEEDED = {"root": Permissions.CREATE | Permissions.DELETE, "state": Permissions.WRITE,
          "election": Permissions.CREATE | Permissions.DELETE, "history": Permissions.CREATE}
_WHAT = {"root": "the error node and the state cannot be created there",
         "state": "no failover, switchover or membership change can be written",
         "election": "no sitter can join the election (a restarted node stays out)",
         "history": "no transition can be recorded"}


def admits(acl: Iterable[Any], who: Iterable[Any], perms: int) -> bool:
    """Whether `acl` grants `perms` to one of the ids in `who` (the credential's digest id,
    or world:anyone)."""
    ids = {(i.scheme, i.id) for i in who}
    return any((a.id.scheme, a.id.id) in ids and a.perms & perms == perms for a in acl)


def refusals(layout: ShardLayout, have: Mapping[str, Any], want: list) -> list[str]:
    """One line per znode whose ACL no longer lets the shard's credential do what the sitters
    need (have: path → (acls, stat) or None for a missing znode, which is not an ACL matter)."""
    who = [a.id for a in want if a.id.scheme == "digest"] + [Id("world", "anyone")]  # an open znode admits too
    out = []
    for key, perms in NEEDED.items():
        path = getattr(layout, key)
        got = have.get(path)
        if not got:
            continue
        acl = got[0]
        if not admits(acl, who, perms):
            shown = ", ".join(f"{a.id.scheme}:{a.id.id}:{_perm_letters(a.perms)}" for a in acl) or "empty"
            fix = ("; or, with the shard's credential, delete it: the primary's sitter writes it again with "
                   "the sitters' ACL (else run 'manatee-adm state-restore')" if key == "state" else "")
            out.append(f"the ACL of {path} ({shown}) no longer lets the shard's credential "
                       f"{_perm_words(perms)}: {_WHAT[key]}. Set the sitters' ACL back (world:anyone:r and "
                       f"the credential's digest with all rights) as a ZooKeeper super user{fix}")
    return out


def acl_problems(zk, shard: str) -> list[str]:
    """refusals() for a live run of the CLI; [] when it holds no credential."""
    want = getattr(zk, "_acl", None)
    if not want:
        return []
    lay = ShardLayout.of(shard)
    return refusals(lay, zk.acls_many([getattr(lay, k) for k in NEEDED]), want)


def _perm_letters(p: int) -> str:
    return "".join(c for c, bit in zip("rwcda", (Permissions.READ, Permissions.WRITE, Permissions.CREATE,
                                                 Permissions.DELETE, Permissions.ADMIN)) if p & bit)


def _perm_words(p: int) -> str:
    return " and ".join(w for w, bit in (("write", Permissions.WRITE), ("create children", Permissions.CREATE),
                                         ("delete children", Permissions.DELETE)) if p & bit)
