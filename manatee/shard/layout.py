"""Where a shard lives in ZooKeeper: the one place that spells its znode paths.

    /manatee/<shard>                 the shard's root (``ShardLayout.root``)
        /election/<id>-<seq10>       ephemeral sequential: one per live sitter (the election)
        /state                       the persisted cluster state (JSON, written by CAS)
        /error                       the safe-mode marker (its presence freezes the shard)
        /history/<entry>             persistent sequential: every transition's record
    /<reversed shard name>/pg        the original's registrar ("binder") record

Every tool (sitter, CLIs, ``manatee.client``, the backupserver's membership check, the test
bed) derives its paths from a ``ShardLayout``; nothing else writes ``f"{base}/state"``.
"""
from __future__ import annotations

from dataclasses import dataclass

ROOT = "/manatee"


def registrar_path(shard: str) -> str:
    """The original's binder path for a shard name (shardPath without '/manatee/'):
    '1.moray.us-sw-1.joyent.com' → '/com/joyent/us-sw-1/moray/1/pg'; '1' → '/1/pg'."""
    return "/" + "/".join(reversed(shard.split("."))) + "/pg"


def shard_path(shard: str) -> str:
    """'1.moray.example.com' → '/manatee/1.moray.example.com'; a path ('/x/y') is kept."""
    if not shard:
        raise ValueError("shard name must not be empty")
    return shard.rstrip("/") if shard.startswith("/") else f"{ROOT}/{shard}"


def shard_name(path: str) -> str:
    """'/manatee/1' → '1' (the name every CLI takes); another path is kept whole."""
    return path[len(ROOT) + 1:] if path.startswith(ROOT + "/") else path


@dataclass(frozen=True)
class ShardLayout:
    """The znode paths of one shard. Build it from a name ('1') or a path ('/manatee/1')."""
    root: str

    @classmethod
    def of(cls, shard: str) -> ShardLayout:
        return cls(shard_path(shard))

    @property
    def name(self) -> str:
        return shard_name(self.root)

    @property
    def state(self) -> str:
        return f"{self.root}/state"

    @property
    def error(self) -> str:
        return f"{self.root}/error"

    @property
    def election(self) -> str:
        return f"{self.root}/election"

    @property
    def history(self) -> str:
        return f"{self.root}/history"

    def election_node(self, child: str) -> str:
        return f"{self.election}/{child}"

    def history_node(self, child: str) -> str:
        return f"{self.history}/{child}"

    @property
    def registrar(self) -> str:
        """The binder record: the shard's last path component reversed ('/manatee/1.a.b' → '/b/a/1/pg')."""
        return registrar_path(self.root.strip("/").split("/", 1)[-1])
