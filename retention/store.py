"""Loading and compare-and-swap saving of the policy object in the bucket."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from blocks.errors import ObjectNotFound, PreconditionFailed, RetryableError
from blocks.objstore import ObjectStore
from retention.policy import HISTORY_PREFIX, POLICY_KEY, Policy, Salvaged, salvage_policy


class PolicyConflict(RetryableError):
    """Someone else saved the policy between our read and our write."""


def load_policy(store: ObjectStore) -> tuple[Policy, str | None]:
    """(policy, etag); an empty policy (everything kept forever) and None when there is none."""
    try:
        etag = store.stat(POLICY_KEY).etag
        data = store.get(POLICY_KEY)
    except ObjectNotFound:
        return Policy(), None
    # The etag is read first: if the object changes in between, the CAS below fails, never a lost edit.
    return Policy.from_json(data), etag


def load_policy_salvaged(store: ObjectStore) -> Salvaged:
    """The stored policy for the nightly job: bad entries hold what they name (see `salvage_policy`)."""
    try:
        data = store.get(POLICY_KEY)
    except ObjectNotFound:
        return Salvaged(Policy())
    return salvage_policy(data)


def save_policy(store: ObjectStore, policy: Policy, etag: str | None, *, expected_generation: int) -> Policy:
    """Write `policy` as generation expected+1 iff the stored object is still `etag`."""
    new = replace(policy, generation=expected_generation + 1)
    body = new.to_json()
    try:
        if etag is None:
            store.put_if_absent(POLICY_KEY, body)
        else:
            store.put(POLICY_KEY, body, if_match=etag)
    except PreconditionFailed:
        # A PUT whose answer was lost is retried and then loses its own CAS: if the stored object
        # is byte-for-byte ours (same content, same generation), our write landed.
        try:
            stored = store.get(POLICY_KEY)
        except ObjectNotFound:
            stored = None
        if stored != body:
            now_gen = salvage_policy(stored).policy.generation if stored is not None else 0
            raise PolicyConflict(
                f"retention policy changed concurrently (you edited generation {expected_generation}, "
                f"the bucket now has generation {now_gen}); nothing was saved: re-run the command") from None
    store.put(f"{HISTORY_PREFIX}{new.generation:08d}.json", body)  # audit trail; the policy object is the truth
    return new


def edit_policy(store: ObjectStore, change: Callable[[Policy], Policy], *, expect_generation: int | None = None,
                dry_run: bool = False) -> tuple[Policy, Policy]:
    """Load, apply `change`, save with CAS -> (old, new). Validation errors leave the bucket as it was."""
    old, etag = load_policy(store)
    if expect_generation is not None and expect_generation != old.generation:
        raise PolicyConflict(f"retention policy is at generation {old.generation}, not {expect_generation}; "
                             "nothing was saved: review `strata retention show` and re-run")
    new = change(old)
    Policy.from_dict(new.to_dict())  # validate the whole document before it is written
    if dry_run:
        return old, replace(new, generation=old.generation + 1)
    return old, save_policy(store, new, etag, expected_generation=old.generation)
