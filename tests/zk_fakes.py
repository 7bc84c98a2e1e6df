"""A ZooKeeper for the operator tools' unit tests: the blocking client's calls (manatee.cli.common.ZkReader,
manatee.shard.syncstore.SyncZk) over a dict. No I/O."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Callable

from manatee.shard.syncstore import BadVersion, NodeExists


class DictZk:
    """The blocking client's calls over a dict {path: (data, version)}; `races` makes the
    next n writes lose their compare-and-set (a sitter writing in between); `before_create`
    runs before each create (e.g. another writer creating the same znode first)."""

    hosts = "127.0.0.1:2181"

    def __init__(self, nodes: dict[str, bytes], races: int = 0):
        self.nodes = {p: (d, 0) for p, d in nodes.items()}
        self.races = races
        self.seq = 0
        self.deadline = 0.0
        self.before_create: Callable[[str], None] | None = None

    def _got(self, p):
        return (self.nodes[p][0], SimpleNamespace(version=self.nodes[p][1])) if p in self.nodes else None

    def get_many(self, paths):
        return {p: self._got(p) for p in paths}

    def get(self, p):
        return self._got(p)

    def children(self, path):
        if path not in self.nodes:
            return None
        return [p[len(path) + 1:] for p in self.nodes if p.startswith(path + "/") and "/" not in p[len(path) + 1:]]

    def exists(self, p):
        return p in self.nodes

    def set(self, p, data, version):
        if self.races:
            self.races -= 1
            self.nodes[p] = (self.nodes[p][0], self.nodes[p][1] + 1)
            raise BadVersion(p)
        assert self.nodes[p][1] == version
        self.nodes[p] = (data, version + 1)

    def create(self, p, data, *, sequence=False, makepath=False):
        if self.before_create is not None:
            self.before_create(p)
        if sequence:
            p, self.seq = f"{p}{self.seq:010d}", self.seq + 1
        parent = p.rsplit("/", 1)[0]
        if parent not in self.nodes:
            assert makepath, f"no parent {parent}"
            self.nodes[parent] = (b"", 0)
        if p in self.nodes:
            raise NodeExists(p)
        self.nodes[p] = (data, 0)
        return p

    def delete(self, p, version=-1):
        assert version in (-1, self.nodes[p][1])
        del self.nodes[p]
