"""Prometheus metrics of one app, in a registry of its own (never the process-wide default, so
two apps in one process, as in tests, do not share counters).

Each collector is registered as node-wide (no tenant's data: HTTP requests by route template,
the rate limiter's and the outbox relay's counters) or per tenant (every sample labelled
``tenant``: saga counts, circuit breakers). :meth:`ApiMetrics.render` gives every series to
the platform's scraper and, for one tenant, the node-wide series and that tenant's samples
only: a tenant admin must not learn another tenant's saga names or participant services
(semantics: a caller sees only its own tenant's data). A collector registered as neither, or a
per-tenant sample without a ``tenant`` label, is left out of a tenant's view: a new metric is
hidden until classified, never leaked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Final, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from saga_orchestrator.core.status import InstanceStatus
from saga_orchestrator.engine.relay import RelayCounters
from saga_orchestrator.security.limits import RateLimiter
from saga_orchestrator.transports.breaker import BreakerSnapshot, BreakerState

METRICS_MEDIA_TYPE: Final = CONTENT_TYPE_LATEST
UNMATCHED_ROUTE: Final = "<unmatched>"
"""The route label of requests that matched no route (keeps the label set bounded)."""
TENANT_LABEL: Final = "tenant"
"""The label naming the tenant whose data a sample is: what a tenant's view filters on."""

_DURATION_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_C = TypeVar("_C", bound=Collector)


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._node_wide: list[Collector] = []
        self._per_tenant: list[Collector] = []
        self.requests = self._node(
            Counter(
                "saga_http_requests",
                "HTTP requests answered, by route template, method and status.",
                ["method", "route", "status"],
                registry=None,
            )
        )
        self.duration = self._node(
            Histogram(
                "saga_http_request_duration_seconds",
                "Time from receiving a request to the end of its response.",
                ["method", "route"],
                buckets=_DURATION_BUCKETS,
                registry=None,
            )
        )
        self.started = self._tenants(
            Counter(
                "saga_instances_started",
                "Instances created through the API (idempotent repeats not counted).",
                [TENANT_LABEL, "saga_name"],
                registry=None,
            )
        )
        self.finished = self._tenants(
            Counter(
                "saga_instances_finished",
                "Instances started or resumed through the API that settled, by status "
                "(terminal, or failed: parked for an operator).",
                [TENANT_LABEL, "saga_name", "status"],
                registry=None,
            )
        )
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def _node(self, collector: _C) -> _C:
        """Register a collector whose series hold no tenant's data (every caller sees them)."""
        self.registry.register(collector)
        self._node_wide.append(collector)
        return collector

    def _tenants(self, collector: _C) -> _C:
        """Register a collector whose every sample carries a ``tenant`` label."""
        self.registry.register(collector)
        self._per_tenant.append(collector)
        return collector

    def watch_breakers(self, snapshots: Callable[[], Sequence[BreakerSnapshot]]) -> None:
        self._tenants(BreakerCollector(snapshots))

    def watch_limiter(self, limiter: RateLimiter) -> None:
        self._node(LimiterCollector(limiter))

    def watch_relay(self, counters: Callable[[], RelayCounters]) -> None:
        self._node(RelayCollector(counters))

    def saga_started(self, tenant_id: str, saga_name: str) -> None:
        self.started.labels(tenant=tenant_id, saga_name=saga_name).inc()

    def saga_finished(self, tenant_id: str, saga_name: str, status: InstanceStatus) -> None:
        self.finished.labels(tenant=tenant_id, saga_name=saga_name, status=status.value).inc()

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            # Resolving labels costs a lock and a tuple per call: each request's children are
            # found once (routes, methods and statuses are bounded sets).
            children = (
                self.requests.labels(method=method, route=route, status=str(status)),
                self.duration.labels(method=method, route=route),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def render_all(self) -> bytes:
        """Every series: for the platform's scraper, or an app without authentication."""
        return generate_latest(self.registry)

    def render_tenant(self, tenant_id: str) -> bytes:
        """What an admin of ``tenant_id`` may see (see the module's docstring)."""
        return generate_latest(TenantView(self._node_wide, self._per_tenant, tenant_id))


class TenantView(Collector):
    """One tenant's view of the registry's collectors: the node-wide ones whole, and of the
    per-tenant ones only the samples labelled with this tenant. Each family is still listed
    (its HELP and TYPE), with no samples when the tenant has none: the exposition's shape
    does not depend on the caller."""

    def __init__(
        self, node_wide: Sequence[Collector], per_tenant: Sequence[Collector], tenant_id: str
    ) -> None:
        self._node_wide = node_wide
        self._per_tenant = per_tenant
        self._tenant_id = tenant_id

    def collect(self) -> Iterator[Metric]:
        for collector in self._node_wide:
            yield from collector.collect()
        for collector in self._per_tenant:
            for family in collector.collect():
                yield self._own(family)

    def _own(self, family: Metric) -> Metric:
        kept = Metric(family.name, family.documentation, family.type, family.unit)
        kept.samples = [s for s in family.samples if s.labels.get(TENANT_LABEL) == self._tenant_id]
        return kept


class BreakerCollector(Collector):
    """Each participant service's circuit breaker on this node, read at scrape time."""

    def __init__(self, snapshots: Callable[[], Sequence[BreakerSnapshot]]) -> None:
        self._snapshots = snapshots

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "saga_participant_circuit_state",
            "1 for the state each participant service's circuit breaker is in.",
            labels=[TENANT_LABEL, "service", "state"],
        )
        rate = GaugeMetricFamily(
            "saga_participant_failure_rate",
            "Failed calls / calls over the breaker's window.",
            labels=[TENANT_LABEL, "service"],
        )
        for snap in self._snapshots():
            for each in BreakerState:
                state.add_metric(
                    [snap.tenant_id, snap.service, each.value], float(snap.state is each)
                )
            rate.add_metric([snap.tenant_id, snap.service], snap.failure_rate)
        yield state
        yield rate


class RelayCollector(Collector):
    """The outbox relay's totals on this node, read at scrape time. ``unreadable`` above 0
    means sealed messages whose key is no longer configured wait in the outbox: put the key
    back before they are lost to the retention."""

    def __init__(self, counters: Callable[[], RelayCounters]) -> None:
        self._counters = counters

    def collect(self) -> Iterator[Metric]:
        counts = self._counters()
        for name, value, meaning in (
            ("published", counts.published, "Messages the broker confirmed, marked published."),
            ("unconfirmed", counts.unconfirmed, "Messages the broker did not confirm (unroutable, "
             "refused, connection lost): left in the outbox for another round."),
            ("unreadable", counts.unreadable, "Claims of sealed messages that did not open (key "
             "not configured, or the row altered): not published."),
            ("expired", counts.expired, "Step commands dropped unsent: their attempt's "
             "deadline had passed."),
            ("relay_failures", counts.failures, "Relay rounds that failed as a whole (broker "
             "unreachable, store error)."),
        ):  # fmt: skip
            yield CounterMetricFamily(f"saga_outbox_{name}", meaning, value=value)


class LimiterCollector(Collector):
    """The rate limiter's counters on this node, read at scrape time: who decides (Redis, or
    the node itself, and why), what it refused, and whether the fallback is deciding."""

    def __init__(self, limiter: RateLimiter) -> None:
        self._limiter = limiter

    def collect(self) -> Iterator[Metric]:
        counts = self._limiter.counters
        decided = CounterMetricFamily(
            "saga_rate_limit_bucket_decisions",
            "Token-bucket decisions, by who made them: redis; estimate (this node's estimate "
            "of a Redis bucket, paid to Redis later); known_refusal (a refusal Redis made "
            "lately, repeated without a round trip); fallback (Redis absent or down).",
            labels=["decided_by"],
        )
        decided.add_metric(["redis"], counts.redis_checks)
        decided.add_metric(["estimate"], counts.estimated_spends)
        decided.add_metric(["known_refusal"], counts.cached_refusals)
        decided.add_metric(["fallback"], counts.fallback_checks)
        yield decided
        yield CounterMetricFamily(
            "saga_rate_limit_refused",
            "Requests refused by a rate limit (answered 429), whoever decided.",
            value=counts.refused,
        )
        yield CounterMetricFamily(
            "saga_rate_limit_estimated_admissions",
            "Requests admitted from this node's estimates, without a round trip to Redis.",
            value=counts.estimated_admissions,
        )
        yield CounterMetricFamily(
            "saga_rate_limit_redis_errors",
            "Redis errors and timeouts, each of which sent decisions to the fallback.",
            value=counts.redis_errors,
        )
        yield CounterMetricFamily(
            "saga_rate_limit_redis_skipped",
            "Checks sent to the fallback because no Redis connection came free in time.",
            value=counts.redis_skipped,
        )
        yield GaugeMetricFamily(
            "saga_rate_limit_fallback_active",
            "1 while the fallback decides (Redis absent, down or cooling down), else 0.",
            value=float(self._limiter.mode == "memory"),
        )
