"""A tenant's overrides of the node's limits: what a document may say, what applies, and the
operator's ceilings over both."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from saga_orchestrator.errors import InvalidInput
from saga_orchestrator.security.limits import Limit, RequestLimits
from saga_orchestrator.security.tenant_limits import (
    NO_CEILINGS,
    BucketLimit,
    LimitCeilings,
    TenantLimits,
    bucket_ceiling,
)

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


# The operator's ceilings

CEILINGS = LimitCeilings(
    requests=Limit(rate=100.0, burst=200), starts=Limit(rate=10.0, burst=15), max_running_sagas=20
)


def test_limits_within_their_ceilings_are_unchanged_and_pass() -> None:
    within = TenantLimits.model_validate(
        {"requests": {"per_second": 100}, "starts": {"per_second": 1}, "max_running_sagas": 20}
    )
    assert CEILINGS.clamp(within) is within
    assert CEILINGS.violations(within) == []
    CEILINGS.check(within)
    assert CEILINGS.clamp(TenantLimits()) == TenantLimits()


def test_each_value_above_its_ceiling_is_clamped_to_it() -> None:
    above = TenantLimits.model_validate(
        {
            "requests": {"per_second": 5000, "burst": 50},
            "starts": {"per_second": 9},  # a burst of 18 from twice the rate: over 15
            "max_running_sagas": 999,
        }
    )
    clamped = CEILINGS.clamp(above)
    assert clamped == TenantLimits(
        requests=BucketLimit(per_second=100.0, burst=50),
        starts=BucketLimit(per_second=9.0, burst=15),
        max_running_sagas=20,
    )
    assert clamped.request_limits(DEFAULTS) == RequestLimits(
        requests=Limit(rate=100.0, burst=50), starts=Limit(rate=9.0, burst=15)
    )
    assert clamped.running_cap(None) == 20


def test_a_value_above_its_ceiling_is_named_with_both_numbers() -> None:
    above = TenantLimits.model_validate(
        {"requests": {"per_second": 100.5, "burst": 201}, "starts": {"per_second": 8}}
    )
    assert [(v.location, v.rule, v.message) for v in CEILINGS.violations(above, "body.")] == [
        (
            "body.requests.per_second",
            "ceiling",
            "100.5 is above the ceiling of 100 set by the node's operator",
        ),
        (
            "body.requests.burst",
            "ceiling",
            "201 is above the ceiling of 200 set by the node's operator",
        ),
        (
            "body.starts.burst",
            "ceiling",
            "16 (twice per_second, as no burst was given) is above the ceiling of 15; "
            "give a burst of at most 15",
        ),
    ]
    with pytest.raises(InvalidInput) as refused:
        CEILINGS.check(TenantLimits(max_running_sagas=21))
    assert str(refused.value) == (
        "max_running_sagas: 21 is above the ceiling of 20 set by the node's operator"
    )
    assert [v.location for v in refused.value.violations] == ["max_running_sagas"]


def test_no_ceilings_bind_nothing_but_the_documents_own_bounds() -> None:
    most = TenantLimits.model_validate(
        {
            "requests": {"per_second": 1_000_000, "burst": 1_000_000},
            "max_running_sagas": 1_000_000,
        }
    )
    assert NO_CEILINGS.clamp(most) is most
    assert NO_CEILINGS.violations(most) == []


@pytest.mark.parametrize(
    ("per_second", "burst", "ceiling"),
    [
        (100.0, None, Limit(rate=100.0, burst=200)),  # the rule of the defaults
        (0.25, None, Limit(rate=0.25, burst=1)),
        (100.0, 150, Limit(rate=100.0, burst=150)),
        (0.0001, None, Limit(rate=0.001, burst=1)),  # no override can go lower anyway
    ],
)
def test_a_bucket_ceiling_bursts_like_the_defaults_unless_given(
    per_second: float, burst: int | None, ceiling: Limit
) -> None:
    assert bucket_ceiling(per_second, burst) == ceiling


def test_a_ceiling_no_override_could_meet_is_refused() -> None:
    with pytest.raises(InvalidInput, match="requests ceiling"):
        LimitCeilings(requests=Limit(rate=0.0001, burst=1))
    with pytest.raises(InvalidInput, match="max_running_sagas ceiling"):
        LimitCeilings(max_running_sagas=0)
