"""The per-tenant block index (DESIGN §2): one object listing committed blocks and marks.

Written by the compactor at the end of each pass so readers (the store-gateway) need one GET
instead of a LIST plus a GET per block. It is a cache: readers that find it missing or stale
can always fall back to `load_listing`.
"""

from __future__ import annotations

import json
from dataclasses import asdict

from blocks.errors import BlockCorruptError, ObjectNotFound
from blocks.layout import tenant_index_key
from blocks.meta import BlockMeta, DeletionMark, NoCompactMark
from blocks.objstore import ObjectStore
from blocks.reader import BlockListing, load_listing

INDEX_VERSION = 1


def index_bytes(listing: BlockListing, now_ms: int) -> bytes:
    """Serialized index of a listing."""
    return json.dumps({
        "version": INDEX_VERSION, "updated_ms": now_ms,
        "blocks": [json.loads(m.to_json()) for m in listing.metas],
        "deletion_marks": {k: asdict(v) for k, v in listing.deletion_marks.items()},
        "no_compact_marks": {k: asdict(v) for k, v in listing.no_compact_marks.items()},
    }, sort_keys=True).encode()


def write_index(store: ObjectStore, tenant: str, now_ms: int) -> BlockListing:
    """List the tenant and publish its index; returns the listing written."""
    listing = load_listing(store, tenant)
    store.put(tenant_index_key(tenant), index_bytes(listing, now_ms))
    return listing


def load_index(store: ObjectStore, tenant: str) -> tuple[BlockListing, int]:
    """(listing, updated_ms) from the index object; ObjectNotFound if there is none."""
    data = store.get(tenant_index_key(tenant))
    try:
        doc = json.loads(data)
        if doc.get("version") != INDEX_VERSION:
            raise ValueError(f"unsupported index version {doc.get('version')!r}")
        metas = [BlockMeta.from_json(json.dumps(b).encode(), block_id=b["ulid"]) for b in doc["blocks"]]
        listing = BlockListing(
            metas=metas,
            deletion_marks={k: DeletionMark(**v) for k, v in doc["deletion_marks"].items()},
            no_compact_marks={k: NoCompactMark(**v) for k, v in doc["no_compact_marks"].items()},
            unfinished=[], corrupt={})
        return listing, int(doc["updated_ms"])
    except (ValueError, KeyError, TypeError) as e:
        raise BlockCorruptError(f"invalid index of tenant {tenant}: {e}") from None


__all__ = ["write_index", "load_index", "ObjectNotFound"]
