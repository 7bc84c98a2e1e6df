"""manatee: keeps a replicated PostgreSQL shard available and durable with no human in the loop."""

__version__ = "0.1.0"
