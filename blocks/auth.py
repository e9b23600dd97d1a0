"""Tenant resolution shared by the HTTP and gRPC APIs.

The tenant comes from `X-Scope-OrgID` (HTTP header, or the `x-scope-orgid` gRPC metadata key;
`thanos-tenant` is accepted too), else the configured default. When bearer tokens are
configured every request needs `Authorization: Bearer <token>`; the token's tenant is the only
one it can read (asking for another is refused, never silently served).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from blocks.errors import Forbidden, InvalidInputError, Unauthenticated  # noqa: F401 (re-exported)
from blocks.layout import validate_tenant




@dataclass(frozen=True)
class TenantAuth:
    """Default tenant and the optional token -> tenant map."""

    default_tenant: str = "default"
    tokens: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_file(cls, default_tenant: str, path: Path | None) -> "TenantAuth":
        """Tokens from a JSON object {"<token>": "<tenant>", ...}."""
        validate_tenant(default_tenant)
        if path is None:
            return cls(default_tenant)
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise InvalidInputError(f"auth tokens file {path}: {e}") from None
        if not isinstance(doc, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in doc.items()):
            raise InvalidInputError(f"auth tokens file {path}: want an object of token -> tenant")
        for tenant in doc.values():
            validate_tenant(tenant)
        return cls(default_tenant, dict(doc))

    def resolve(self, tenant_header: str | None, authorization: str | None) -> str:
        """The tenant a request may read."""
        asked = tenant_header if tenant_header else None
        if asked is not None:  # the exact header value: " t2" is not t2 (a proxy may allow-list exact values)
            validate_tenant(asked)
        if self.tokens:
            if not authorization or not authorization.startswith("Bearer "):
                raise Unauthenticated("missing bearer token")
            owner = self.tokens.get(authorization[len("Bearer "):].strip())
            if owner is None:
                raise Unauthenticated("unknown bearer token")
            if asked is not None and asked != owner:
                raise Forbidden(f"token may not read tenant {asked!r}")
            return owner
        return asked or self.default_tenant

    def visible_tenants(self, all_tenants: list[str], resolved: str) -> list[str]:
        """Tenants a caller may pick in the UI: with tokens only its own, else every tenant."""
        if self.tokens:
            return [resolved]
        return sorted(set(all_tenants) | {resolved})
