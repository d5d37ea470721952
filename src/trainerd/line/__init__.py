"""The model line: versions, the current pointer, locks, rollback, snapshots, retention,
export, replay. Torch-free: the daemon, the CLI and the web read and change the line with
it; trainerd.worker writes weights into it (line.commit) and never the other way round.

- A version is models/vNNNN/ with a manifest (sizes + sha256, written last). An adapter
  version loads on its `base`: the configured base_model, or a full version made by a
  consolidation (then that version must outlive the adapter). (line.versions)
- `current` is a symlink swapped atomically (line.refs.set_current); rollback is nothing
  more than that swap, to a version whose manifest verifies. Nothing is deleted.
  (line.rollback)
- Snapshots are verified copies in snapshots/YYYY-MM-DD/ that record what they need.
  (line.snapshots)
- Retention (gc) never deletes current, its parent chain back to the last full version,
  the newest version number, or a version a kept snapshot or kept adapter loads on.
  (line.retention)
Changes to models/ (publish, rollback, snapshot, gc, consolidation) hold run/models.lock
(line.lock), so they never interleave.

The modules import each other explicitly (`from trainerd.line.versions import ...`); this
file re-exports nothing, so importing one module never drags in the rest.
"""
