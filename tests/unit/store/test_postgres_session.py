"""Which tenants a transaction names in its ``BEGIN`` and which it passes as a parameter."""

from __future__ import annotations

import pytest

from saga_orchestrator.store.postgres_session import tenant_scope


def test_plain_tenants_ride_in_the_begin_sorted_quoted_and_once_each() -> None:
    scope = tenant_scope(["beta", "acme.eu-1", "beta", "NULL"])
    assert scope.parameter is None
    assert scope.tenants == ["NULL", "acme.eu-1", "beta"]
    assert scope.begin == (
        """BEGIN; SELECT set_config('saga.tenants', '{"NULL","acme.eu-1","beta"}', true)"""
    )


def test_no_tenant_names_an_empty_set() -> None:
    assert tenant_scope([]).begin.endswith("'{}', true)")


@pytest.mark.parametrize(
    "odd", ["o'brien", 'a"b', "a,b", "{a}", "a\\b", "a b", "a\nb", "é", "", "a;COMMIT"]
)
def test_any_id_outside_the_plain_alphabet_goes_as_a_parameter(odd: str) -> None:
    scope = tenant_scope(["plain", odd])
    assert scope.begin == "BEGIN"
    assert scope.parameter == scope.tenants == sorted({"plain", odd})
