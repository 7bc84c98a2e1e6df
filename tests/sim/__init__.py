"""In-memory fakes of the sitter's ports (manatee.sitter.ports) and a simulated shard that runs
the production sitter loop (manatee.sitter.loop.Sitter) on them. Pure: no I/O, no real time."""
