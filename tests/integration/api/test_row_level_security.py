"""Every route keeps tenants apart on PostgreSQL even with the store's tenant filters removed.

The sweep of ``test_access`` (another tenant's ids on every instance, definition and
participant route; lists and starts under another tenant) runs against a store whose queries
lost their tenant predicates (:mod:`tests.support.tenant_filters`), so what answers 404 or an
empty list there is row-level security. The store-level suite
(``tests/integration/store/test_row_level_security.py``) shows, with a control that leaks, that
the rewrite really removes every filter.
"""

from __future__ import annotations

import httpx
import pytest

from saga_orchestrator.store.postgres import PostgresStore
from tests.integration.api.test_access import client, secured
from tests.integration.api.test_access import test_tenants_do_not_see_each_other as sweep
from tests.support.tenant_filters import without_tenant_filters

pytestmark = pytest.mark.postgres
__all__ = ["client", "secured", "without_tenant_filters"]  # fixtures, used by name:
# the app of test_access, with JWT authentication, so each token names its tenant


@pytest.fixture
def store_url(pg_url: str) -> str:
    """PostgreSQL only: SQLite has no roles (its one process filters by tenant itself)."""
    return pg_url


async def test_routes_keep_tenants_apart_by_row_level_security_alone(
    without_tenant_filters: list[str], client: httpx.AsyncClient
) -> None:
    await sweep(client)
    assert any("IS NOT NULL" in query for query in without_tenant_filters)


@pytest.fixture
def without_roles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sessions as the login itself. Set before the node opens: it opens its pools as it
    starts (to check their logins), and a pool keeps the role it was opened with."""
    monkeypatch.setattr(PostgresStore, "app_role", None)
    monkeypatch.setattr(PostgresStore, "cluster_role", None)


@pytest.mark.usefixtures("without_roles")  # before ``client``: usefixtures come first
async def test_the_same_sweep_leaks_without_row_level_security(
    without_tenant_filters: list[str], client: httpx.AsyncClient
) -> None:
    """The control: sessions as the login itself (a superuser, which row-level security does
    not bind) and no tenant filters: the sweep must find another tenant's rows, so the test
    above passes because of the database's wall and not because its probes miss the store."""
    with pytest.raises(AssertionError, match=r"', 20[04], "):  # a 2xx where 404 was due
        await sweep(client)
