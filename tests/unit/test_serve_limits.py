"""The rate-limit settings become the buckets `saga serve` gives every tenant."""

from __future__ import annotations

from saga_orchestrator.console.serve import request_limits
from saga_orchestrator.security.limits import Limit
from saga_orchestrator.settings import load_settings


def test_the_settings_shape_each_bucket() -> None:
    limits = request_limits(
        load_settings(rate_limit_requests=40, rate_limit_starts=10, rate_limit_principal_requests=5)
    )
    assert limits.requests == Limit(rate=40, burst=80)
    assert limits.starts == Limit(rate=10, burst=20)
    assert limits.principal == Limit(rate=5, burst=10)


def test_without_a_per_caller_limit_a_caller_may_use_all_of_its_tenants() -> None:
    assert request_limits(load_settings()).principal is None
