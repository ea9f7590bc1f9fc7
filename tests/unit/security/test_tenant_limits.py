"""A tenant's overrides of the node's limits: what a document may say, and what applies."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from saga_orchestrator.security.limits import Limit, RequestLimits
from saga_orchestrator.security.tenant_limits import BucketLimit, TenantLimits

DEFAULTS = RequestLimits(requests=Limit(rate=100.0, burst=200), starts=Limit(rate=50.0, burst=100))


def test_no_overrides_keep_every_default() -> None:
    assert TenantLimits().request_limits(DEFAULTS) is DEFAULTS
    assert TenantLimits().running_cap(7) == 7
    assert TenantLimits().running_cap(None) is None


def test_each_override_replaces_only_its_own_default() -> None:
    limits = TenantLimits.model_validate({"starts": {"per_second": 0.5, "burst": 3}})
    assert limits.request_limits(DEFAULTS) == RequestLimits(
        requests=DEFAULTS.requests, starts=Limit(rate=0.5, burst=3)
    )
    assert limits.running_cap(7) == 7
    capped = TenantLimits(max_running_sagas=2)
    assert capped.request_limits(DEFAULTS) is DEFAULTS
    assert (capped.running_cap(7), capped.running_cap(None)) == (2, 2)


@pytest.mark.parametrize(("per_second", "burst"), [(10.0, 20), (0.25, 1), (1.5, 3)])
def test_a_burst_left_out_is_twice_the_rate_as_for_the_settings(
    per_second: float, burst: int
) -> None:
    assert BucketLimit(per_second=per_second).to_limit() == Limit(rate=per_second, burst=burst)


def test_a_document_round_trips_without_its_empty_fields() -> None:
    limits = TenantLimits(requests=BucketLimit(per_second=5, burst=10), max_running_sagas=3)
    document = limits.model_dump(mode="json", exclude_none=True)
    assert document == {"requests": {"per_second": 5.0, "burst": 10}, "max_running_sagas": 3}
    assert TenantLimits.model_validate(document) == limits


@pytest.mark.parametrize(
    ("document", "location"),
    [
        ({"requests": {"per_second": 0}}, ("requests", "per_second")),
        ({"requests": {"per_second": -1, "burst": 1}}, ("requests", "per_second")),
        ({"requests": {"per_second": "nan"}}, ("requests", "per_second")),
        ({"requests": {"per_second": "inf"}}, ("requests", "per_second")),
        ({"requests": {"per_second": 0.0001}}, ("requests", "per_second")),
        ({"starts": {"per_second": 2_000_000}}, ("starts", "per_second")),
        ({"starts": {"per_second": 1, "burst": 0}}, ("starts", "burst")),
        ({"starts": {"per_second": 1, "burst": 10_000_000}}, ("starts", "burst")),
        ({"starts": {"burst": 3}}, ("starts", "per_second")),
        ({"starts": {"per_second": 1, "window": 3}}, ("starts", "window")),
        ({"max_running_sagas": 0}, ("max_running_sagas",)),
        ({"max_running_sagas": 1.5}, ("max_running_sagas",)),
        ({"max_running_sagas": 2_000_000}, ("max_running_sagas",)),
        ({"tenant_id": "someone-else"}, ("tenant_id",)),
    ],
)
def test_an_invalid_document_is_refused_naming_the_field(
    document: dict[str, object], location: tuple[str, ...]
) -> None:
    with pytest.raises(ValidationError) as refused:
        TenantLimits.model_validate(document)
    assert [tuple(error["loc"]) for error in refused.value.errors()] == [location]


def test_overrides_are_frozen_values() -> None:
    limits = TenantLimits(max_running_sagas=2)
    with pytest.raises(ValidationError):
        limits.max_running_sagas = 3  # type: ignore[misc]
    assert limits == TenantLimits.model_validate({"max_running_sagas": 2})
