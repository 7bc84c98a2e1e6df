"""Rebuild this node's dataset from a peer's backupserver (zfs send → TCP → zfs recv).

The restore is all-or-nothing. The existing
dataset is not destroyed up front (the original did, and a failed rebuild left the node
with nothing): it is unmounted and renamed aside to `<dataset>-restore-<epoch ms>` with mountpoint=none, and only
destroyed once the new copy is received, mounted and owned by the database user.
On any failure or cancellation the half-received dataset is destroyed, `zfs recv`
is killed, the listener is closed, and the old dataset is renamed back with its
mountpoint/canmount restored and mounted again, so afterwards exactly the old
dataset is in place. The sitter calls this; its status server shows the progress.
The sitter asks for `drop_old=False`: the old copy is then marked `manatee:replaced` and
destroyed while PostgreSQL starts on the new one (`after_restore`, which first marks the
received snapshot as the base shared with the sender: manatee.core.bases); a sitter that
died before that destroy ended finishes it at its next start (`sweep_replaced`).

Incremental: the request offers our snapshots (name + guid); if the sender shares
one it sends only the blocks written since (`zfs send -i`). The stream's own header
says which kind arrived. For an increment, `dataset` is a clone of the set-aside
copy's base snapshot, promoted, into which the increment is received; the old data
stays whole in the aside copy until the end, as for a full stream
(manatee.core.incremental; docs/design.md "Incremental rebuilds").

    result = await restore(zfs, dataset="zones/pg", mountpoint=Path("/var/manatee"),
                           backup_url="http://10.0.0.1:10002", listen_host="10.0.0.2",
                           listen_port=10001, logger=log)

The package by concern: ``driver`` (the steps in order, and the rollback), ``job`` (the
backupserver's REST side: the signed request, polling the job), ``receive`` (the listener
and the stream's header), ``swap`` (the zfs steps that set the old dataset aside, put it
back or drop it, and mount the new one), ``outcome`` (progress, result, error), ``source``
(which member to stream from: the upstream, or one ahead of it that shares a snapshot when
the upstream shares none). Callers import from here.
"""

from manatee.core.restore.driver import after_restore, restore
from manatee.core.restore.outcome import RestoreError, RestoreProgress, RestoreResult
from manatee.core.restore.swap import drop_replaced, old_copies, sweep_replaced

__all__ = ["RestoreError", "RestoreProgress", "RestoreResult", "after_restore", "drop_replaced", "old_copies",
           "restore", "sweep_replaced"]
