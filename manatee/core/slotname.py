"""The name of the physical replication slot a standby streams through (its upstream creates
it; the sitter's `manatee.sitter.slots` keeps them)."""

from __future__ import annotations

import hashlib
import re

#: Every replication slot manatee creates is named with this prefix; others are never touched.
SLOT_PREFIX = "manatee_"
#: NAMEDATALEN - 1: PostgreSQL's longest slot name.
MAX_SLOT_NAME = 63


def mangled(text: str) -> str:
    """`text` as slot names carry it: lowercase, each run of other characters than [a-z0-9] one '_'."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def slot_name(app_name: str) -> str:
    """The physical replication slot a node streams through, named from its application_name
    (its pg_url): lowercase [a-z0-9_] only, at most 63 characters, the same on the standby
    (primary_slot_name) and on its upstream (which creates it). A name too long is cut and
    made unique again with a hash of the whole."""
    name = SLOT_PREFIX + mangled(app_name)
    if len(name) <= MAX_SLOT_NAME:
        return name
    digest = hashlib.sha256(app_name.encode()).hexdigest()[:12]
    return name[:MAX_SLOT_NAME - len(digest) - 1] + "_" + digest
