"""Where a shard lives in ZooKeeper: one place for the paths every tool derives."""

ROOT = "/manatee"


def registrar_path(shard: str) -> str:
    """The original's binder path for a shard name (shardPath without '/manatee/'):
    '1.moray.us-sw-1.joyent.com' → '/com/joyent/us-sw-1/moray/1/pg'; '1' → '/1/pg'."""
    return "/" + "/".join(reversed(shard.split("."))) + "/pg"
