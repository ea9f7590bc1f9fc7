"""The metrics a tenant sees: its own samples of the per-tenant collectors, the node-wide
collectors whole, and nothing that was not classified as either."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from saga_orchestrator.api.metrics import ApiMetrics, TenantView
from saga_orchestrator.core.status import InstanceStatus
from saga_orchestrator.engine.relay import RelayCounters
from saga_orchestrator.transports.breaker import BreakerSnapshot, BreakerState


def snapshot(tenant: str, service: str) -> BreakerSnapshot:
    return BreakerSnapshot(
        tenant_id=tenant,
        service=service,
        state=BreakerState.CLOSED,
        failure_rate=0.0,
        calls=0,
        retry_after=0.0,
    )


def two_tenants() -> ApiMetrics:
    metrics = ApiMetrics()
    metrics.watch_breakers(lambda: [snapshot("a", "a-shop"), snapshot("b", "b-bank")])
    metrics.saga_started("a", "a-order")
    metrics.saga_started("b", "b-payout")
    metrics.saga_finished("a", "a-order", InstanceStatus.COMPLETED)
    metrics.saga_finished("b", "b-payout", InstanceStatus.COMPENSATED)
    metrics.observe("GET", "/metrics", 200, 0.001)
    return metrics


def test_a_tenant_sees_its_samples_and_the_node_wide_series() -> None:
    text = two_tenants().render_tenant("a").decode()
    assert 'saga_instances_started_total{saga_name="a-order",tenant="a"} 1.0' in text
    assert (
        'saga_instances_finished_total{saga_name="a-order",status="completed",tenant="a"} 1.0'
        in text
    )
    assert 'saga_participant_circuit_state{service="a-shop",state="closed",tenant="a"}' in text
    assert 'saga_http_requests_total{method="GET",route="/metrics",status="200"} 1.0' in text
    for other in ('tenant="b"', "b-payout", "b-bank"):
        assert other not in text


def test_every_series_is_rendered_for_the_platform() -> None:
    text = two_tenants().render_all().decode()
    for name in ("a-order", "b-payout", "a-shop", "b-bank", 'route="/metrics"'):
        assert name in text


def test_a_tenant_without_data_still_sees_each_family() -> None:
    text = two_tenants().render_tenant("c").decode()
    assert "# TYPE saga_instances_started_total counter" in text
    assert "# TYPE saga_participant_failure_rate gauge" in text
    assert 'tenant="' not in text


class Families(Collector):
    def __init__(self, *families: Metric) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def test_what_is_not_known_to_be_a_tenants_is_left_out() -> None:
    """Fail closed: a per-tenant sample without a tenant label, or a collector registered as
    neither node-wide nor per tenant, is in no tenant's view (it may name anyone's data)."""
    unlabelled = CounterMetricFamily("leaky", "No tenant label.", labels=["saga_name"])
    unlabelled.add_metric(["b-payout"], 1)
    labelled = GaugeMetricFamily("own", "Labelled.", labels=["tenant", "saga_name"])
    labelled.add_metric(["a", "a-order"], 1)
    labelled.add_metric(["b", "b-payout"], 1)
    view = TenantView([], [Families(unlabelled, labelled)], "a")
    samples = [(family.name, s.labels) for family in view.collect() for s in family.samples]
    assert samples == [("own", {"tenant": "a", "saga_name": "a-order"})]

    metrics = two_tenants()
    metrics.registry.register(Families(unlabelled))  # bypasses the classification
    assert b"b-payout" in metrics.render_all()
    assert b"leaky" not in metrics.render_tenant("a")


def test_the_relays_totals_are_node_wide() -> None:
    metrics = two_tenants()
    metrics.watch_relay(lambda: RelayCounters(published=7, unconfirmed=1, unreadable=2))
    text = metrics.render_tenant("a").decode()
    assert "saga_outbox_published_total 7.0" in text
    assert "saga_outbox_unconfirmed_total 1.0" in text
    assert "saga_outbox_unreadable_total 2.0" in text
    assert "saga_outbox_relay_failures_total 0.0" in text
