"""ZFS dataset names, checked the same way by every daemon's config and by the
backupserver's API: one rule, one message naming what is wrong."""

from __future__ import annotations

import re

# ZFS accepts alphanumerics, '_', '-', '.', ':' (and space, which we refuse: the name is
# logged and may end up on a command line). The pool name must start with a letter.
_ZFS_COMPONENT = re.compile(r"^[A-Za-z0-9_.:-]+$")
ZFS_MAX_NAME = 255


def dataset_problem(name: str) -> str | None:
    """None if `name` is a valid ZFS filesystem name (pool[/child...]), else what is wrong."""
    if not name:
        return "is empty"
    if len(name) > ZFS_MAX_NAME:
        return f"is longer than {ZFS_MAX_NAME} characters"
    if "@" in name or "#" in name:
        return "must name a filesystem, not a snapshot or bookmark ('@' and '#' are not allowed)"
    if name.startswith("/") or name.endswith("/"):
        return "must not start or end with '/'"
    parts = name.split("/")
    for part in parts:
        if not part:
            return "has an empty component ('//')"
        if part in (".", ".."):
            return f"has a {part!r} component"
        if not _ZFS_COMPONENT.match(part):
            return (
                f"component {part!r} has characters ZFS does not allow "
                "(allowed: letters, digits, '_', '-', '.', ':')"
            )
    if not parts[0][0].isalpha():
        return f"pool name {parts[0]!r} must start with a letter"
    return None


def check_dataset(name: str) -> str:
    """`name`, or ValueError saying what is wrong with it (for a config model's validator)."""
    problem = dataset_problem(name)
    if problem:
        raise ValueError(f"not a valid ZFS dataset name such as 'zones/manatee/pg': {problem}")
    return name
