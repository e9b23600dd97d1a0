"""Pure key-layout functions: tenant and block id in, object key out (DESIGN §2)."""

from __future__ import annotations

import re

from blocks.errors import InvalidInputError
from blocks.ulid import is_ulid

RESERVED_PREFIX = "_strata/"
META_FILE = "meta.json"
SERIES_FILE = "series.parquet"
SAMPLES_FILE = "samples.parquet"
DELETION_MARK_FILE = "deletion-mark.json"
NO_COMPACT_MARK_FILE = "no-compact-mark.json"
MARK_FILES = (DELETION_MARK_FILE, NO_COMPACT_MARK_FILE)

_TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def validate_tenant(tenant: str) -> str:
    """Return `tenant` if it is a valid tenant name, else raise InvalidInputError."""
    if not isinstance(tenant, str) or not _TENANT_RE.match(tenant):
        raise InvalidInputError(
            f"invalid tenant {tenant!r}: must match [A-Za-z0-9][A-Za-z0-9_.-]{{0,127}}"
        )
    return tenant


def validate_block_id(block_id: str) -> str:
    """Return `block_id` if it is a canonical ULID, else raise InvalidInputError."""
    if not is_ulid(block_id):
        raise InvalidInputError(f"invalid block id {block_id!r}: not a ULID")
    return block_id


def tenant_prefix(tenant: str) -> str:
    """Prefix under which all of a tenant's blocks live."""
    return f"{validate_tenant(tenant)}/"


def block_prefix(tenant: str, block_id: str) -> str:
    """Prefix (directory) of one block."""
    return f"{validate_tenant(tenant)}/{validate_block_id(block_id)}/"


def block_file_key(tenant: str, block_id: str, name: str) -> str:
    """Key of one file inside a block directory."""
    if "/" in name or not name:
        raise InvalidInputError(f"invalid block file name {name!r}")
    return block_prefix(tenant, block_id) + name


def meta_key(tenant: str, block_id: str) -> str:
    """Key of a block's meta.json (its commit point)."""
    return block_file_key(tenant, block_id, META_FILE)


def tenant_index_key(tenant: str) -> str:
    """Key of the per-tenant block index written by the compactor."""
    return f"{RESERVED_PREFIX}index/{validate_tenant(tenant)}.json"

