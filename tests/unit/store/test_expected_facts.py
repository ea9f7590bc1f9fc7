"""The facts a batch's requests expect, from which PostgreSQL plans before it locks anything."""

from __future__ import annotations

from dataclasses import replace

from saga_orchestrator.store import AppendStatus, Lease
from saga_orchestrator.store.batch import expected_facts, plan_batch
from tests.integration.store.support import OTHER_TENANT, TENANT, append, create, event

LEASE = Lease(owner="n1", epoch=3, ttl=30)


def test_each_instance_is_expected_where_its_first_request_says() -> None:
    requests = [
        append("a", 4, [event(1)]),
        replace(append("b", 7, [event(1)], tenant=OTHER_TENANT), lease=LEASE),
        append("a", 5, [event(2)]),
    ]
    facts = expected_facts(requests, {})
    assert facts.instances == {"a": (TENANT, 4), "b": (OTHER_TENANT, 7)}
    assert facts.leases == {"b": ("n1", 3)}


def test_an_instance_created_before_anything_appends_to_it_is_expected_absent() -> None:
    facts = expected_facts([create("new"), append("new", 1, [event(1)])], {})
    assert facts.instances == {}
    plan = plan_batch([create("new"), append("new", 1, [event(1)])], facts)
    assert [r.status for r in plan.results] == [AppendStatus.APPENDED] * 2


def test_a_plan_from_the_expected_facts_appends_every_first_request() -> None:
    """So every expected instance is written, and the write confirms the whole plan; a later
    request that expects a stale sequence still conflicts, as it would with the real rows."""
    requests = [
        replace(append("a", 4, [event(1)]), lease=LEASE),
        append("b", 1, [event(1), event(2)]),
        append("b", 2, [event(3)]),
    ]
    facts = expected_facts(requests, {})
    plan = plan_batch(requests, facts)
    assert [r.status for r in plan.results] == [
        AppendStatus.APPENDED,
        AppendStatus.APPENDED,
        AppendStatus.CONFLICT,
    ]
    assert plan.updated.keys() == facts.instances.keys()
