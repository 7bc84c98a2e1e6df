"""Starts real ZooKeeper, zfs-fuse pools and PostgreSQL instances for tests and manatee-sandbox.

Everything started here is torn down by PID, also when a test fails.
"""
