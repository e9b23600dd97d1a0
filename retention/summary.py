"""What the bucket UI shows about retention: the policy in force for a tenant and the plan now."""

from __future__ import annotations

import time

from blocks.objstore import ObjectStore
from retention.apply import plan_retention
from retention.store import load_policy


def retention_summary(store: ObjectStore, tenant: str, *, delay_ms: int, now_ms: int | None = None) -> dict:
    """{"policy": the stored policy document, "plan": `retention plan` for this tenant now}."""
    policy, _ = load_policy(store)
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    plan = plan_retention(store, policy, now, tenants=[tenant], delay_ms=delay_ms)
    return {"policy": policy.to_dict(), "generation": policy.generation, "plan": plan.as_dict()}
