"""Contract: the instance listing, its filters and its keyset pagination."""

from __future__ import annotations

import base64

import pytest

from saga_orchestrator.errors import InvalidInput
from saga_orchestrator.store import InstanceFilter, InstanceStatus, Store

from .support import OTHER_TENANT, TENANT, append, at, create, event, update

STATUSES = [InstanceStatus.RUNNING, InstanceStatus.COMPLETED, InstanceStatus.FAILED]


async def seed(store: Store) -> list[str]:
    """23 instances of TENANT (some share a created_at), returned in listing order."""
    requests = []
    for n in range(23):
        created_at = at(n // 3)  # three instances per second: ties broken by instance id
        state = update(status=STATUSES[n % 3], updated_at=at(100 + n))
        version = "1.0.0" if n % 2 else "2.0.0"
        requests.append(
            create(f"i-{n:02d}", created_at=created_at, state=state, definition=("order", version))
        )
    requests.append(create("foreign", tenant=OTHER_TENANT, created_at=at(3)))
    requests.append(create("payment", created_at=at(50), definition=("payment", "1.0.0")))
    await store.append(requests)
    ordered = sorted(
        ((r.create.created_at, r.instance_id) for r in requests[:-2] if r.create), reverse=True
    )
    return ["payment", *(iid for _, iid in ordered)]


async def collect(store: Store, filters: InstanceFilter, limit: int) -> tuple[list[str], list[int]]:
    ids: list[str] = []
    sizes: list[int] = []
    cursor = None
    while True:
        page = await store.list_instances(TENANT, filters, limit=limit, cursor=cursor)
        ids.extend(item.instance_id for item in page.items)
        sizes.append(len(page.items))
        if page.next_cursor is None:
            return ids, sizes
        cursor = page.next_cursor


async def test_pages_cover_everything_once_in_order(store: Store) -> None:
    expected = await seed(store)
    assert expected[:4] == ["payment", "i-22", "i-21", "i-20"]
    ids, sizes = await collect(store, InstanceFilter(), limit=5)
    assert ids == expected
    assert sizes == [5, 5, 5, 5, 4]
    whole = await store.list_instances(TENANT, InstanceFilter(), limit=500)
    assert [item.instance_id for item in whole.items] == expected
    assert whole.next_cursor is None


async def test_pagination_is_stable_while_instances_arrive(store: Store) -> None:
    expected = await seed(store)
    first = await store.list_instances(TENANT, InstanceFilter(), limit=10)
    # Instances sorting before the cursor are not seen; one sorting after it is, in place.
    await store.append(
        [
            create("zz-new", created_at=at(99)),
            create("i-99", created_at=at(7)),
            create("i-03x", created_at=at(1)),
        ]
    )
    rest, _ = await collect_from(store, first.next_cursor)
    seen = [item.instance_id for item in first.items] + rest
    position = expected.index("i-03")
    assert seen == [*expected[:position], "i-03x", *expected[position:]]


async def collect_from(store: Store, cursor: str | None) -> tuple[list[str], int]:
    ids: list[str] = []
    pages = 0
    while cursor is not None:
        page = await store.list_instances(TENANT, InstanceFilter(), limit=7, cursor=cursor)
        ids.extend(item.instance_id for item in page.items)
        cursor = page.next_cursor
        pages += 1
    return ids, pages


async def test_filters(store: Store) -> None:
    expected = await seed(store)
    order = {iid: n for n, iid in enumerate(expected)}

    async def listed(filters: InstanceFilter) -> list[str]:
        ids, _ = await collect(store, filters, limit=4)
        assert ids == sorted(ids, key=order.__getitem__)
        return ids

    failed = await listed(InstanceFilter(status=InstanceStatus.FAILED))
    assert set(failed) == {f"i-{n:02d}" for n in range(23) if n % 3 == 2}
    assert await listed(InstanceFilter(definition_name="payment")) == ["payment"]
    v1 = await listed(InstanceFilter(definition_name="order", definition_version="1.0.0"))
    assert set(v1) == {f"i-{n:02d}" for n in range(23) if n % 2}
    # Time windows are half-open: [after, before).
    window = await listed(InstanceFilter(created_after=at(2), created_before=at(4)))
    assert window == ["i-11", "i-10", "i-09", "i-08", "i-07", "i-06"]
    updated = await listed(InstanceFilter(updated_after=at(120), updated_before=at(122)))
    assert updated == ["i-21", "i-20"]
    combined = InstanceFilter(
        status=InstanceStatus.RUNNING, definition_version="2.0.0", created_before=at(5)
    )
    assert await listed(combined) == ["i-12", "i-06", "i-00"]


async def test_invalid_cursor_and_limit(store: Store) -> None:
    await seed(store)
    garbage = [
        "not a cursor!",
        base64.urlsafe_b64encode(b"not json").decode(),
        base64.urlsafe_b64encode(b'{"c": "x", "i": 1}').decode(),
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
    ]
    for cursor in garbage:
        with pytest.raises(InvalidInput, match="cursor"):
            await store.list_instances(TENANT, InstanceFilter(), cursor=cursor)
    for limit in (0, -1, 501):
        with pytest.raises(InvalidInput, match="limit"):
            await store.list_instances(TENANT, InstanceFilter(), limit=limit)
    page = await store.list_instances(TENANT, InstanceFilter(), limit=1)
    assert len(page.items) == 1
    assert page.next_cursor is not None


async def test_listing_reflects_appends(store: Store) -> None:
    await store.append([create("a")])
    done = update(status=InstanceStatus.COMPLETED, updated_at=at(9))
    await store.append([append("a", 1, [event(1)], state=done)])
    page = await store.list_instances(TENANT, InstanceFilter(status=InstanceStatus.COMPLETED))
    assert [(i.instance_id, i.last_seq, i.updated_at) for i in page.items] == [("a", 2, at(9))]
    running = await store.list_instances(TENANT, InstanceFilter(status=InstanceStatus.RUNNING))
    assert running.items == ()
