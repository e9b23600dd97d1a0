"""Writing and acting on marker files: deletion (two-phase) and no-compact."""

from __future__ import annotations

from blocks.layout import DELETION_MARK_FILE, NO_COMPACT_MARK_FILE, block_file_key, meta_key
from blocks.meta import BlockMeta, DeletionMark, NoCompactMark
from blocks.objstore import ObjectStore

# How long a block marked for deletion stays before the compactor removes it. Readers (the
# gateway, `strata sql`) stop reading a marked block after half of it. One definition: the
# compactor, retention, the gateway and the CLI defaults all use it.
DELETION_DELAY_MS = 48 * 3_600_000
DELETION_DELAY = "48h"


def mark_for_deletion(store: ObjectStore, tenant: str, block_id: str, reason: str, now_ms: int) -> None:
    """Write deletion-mark.json; the block is removed by a later pass after the delay."""
    store.put(block_file_key(tenant, block_id, DELETION_MARK_FILE),
              DeletionMark(block_id, now_ms, reason).to_json())


def mark_no_compact(store: ObjectStore, tenant: str, block_id: str, reason: str, now_ms: int) -> None:
    """Write no-compact-mark.json so the compactor leaves the block alone."""
    store.put(block_file_key(tenant, block_id, NO_COMPACT_MARK_FILE),
              NoCompactMark(block_id, now_ms, reason).to_json())


def delete_block(store: ObjectStore, tenant: str, block_id: str, names: list[str]) -> None:
    """Remove a block: meta.json first (it stops existing at once), then files, marks last."""
    store.delete(meta_key(tenant, block_id))
    marks = (DELETION_MARK_FILE, NO_COMPACT_MARK_FILE)
    for name in names:
        if name not in marks and name != "meta.json":
            store.delete(block_file_key(tenant, block_id, name))
    for name in marks:
        store.delete(block_file_key(tenant, block_id, name))


def block_file_names(meta: BlockMeta) -> list[str]:
    """Every file a committed block owns."""
    return [f.name for f in meta.files]
