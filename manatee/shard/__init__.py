"""The shard's domain: its persisted state and history, the pure decision core (decide,
transitions, latches) and the one store that reads and writes the shard's ZooKeeper records.

Daemons (sitter, backupserver), the operator CLIs, ``manatee.client`` and the test bed all
import the shard from here; nothing in this package imports a daemon.
"""
