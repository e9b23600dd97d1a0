"""Import manifests: which blocks an import plans, so a partial upload is recognised as its own.

`strata import` writes `_strata/imports/<tenant>/<import id>.json` before its first upload
(state `in-progress`, the planned block id per range) and marks it `complete` after its last.
A block directory without meta.json that an unfinished import planned is that import's
in-flight or abandoned upload — not corruption; rerunning the same import finishes it.
"""

from __future__ import annotations

import json

from blocks.errors import ObjectNotFound
from blocks.layout import RESERVED_PREFIX, validate_tenant
from blocks.objstore import ObjectStore

IMPORTS_PREFIX = RESERVED_PREFIX + "imports/"


def manifest_key(tenant: str, import_id: str) -> str:
    """Key of one import's manifest."""
    return f"{IMPORTS_PREFIX}{validate_tenant(tenant)}/{import_id}.json"


def list_import_manifests(store: ObjectStore, tenant: str) -> list[dict]:
    """Every readable import manifest of a tenant (in progress and complete)."""
    out = []
    for key in store.list(f"{IMPORTS_PREFIX}{validate_tenant(tenant)}/"):
        try:
            doc = json.loads(store.get(key))
        except (ObjectNotFound, ValueError):
            continue
        if isinstance(doc, dict):
            out.append(doc)
    return out


def unfinished_import_blocks(store: ObjectStore, tenant: str) -> dict[str, dict]:
    """Block id -> manifest, for imports that have not completed."""
    return {u: m for m in list_import_manifests(store, tenant) if m.get("state") != "complete"
            for u in (m.get("blocks") or {}).values()}
