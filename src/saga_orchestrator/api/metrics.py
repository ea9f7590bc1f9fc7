"""Prometheus metrics of one app, in a registry of its own (never the process-wide default, so
two apps in one process, as in tests, do not share counters)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from saga_orchestrator.core.status import InstanceStatus
from saga_orchestrator.security.limits import RateLimiter
from saga_orchestrator.transports.breaker import BreakerSnapshot, BreakerState

METRICS_MEDIA_TYPE: Final = CONTENT_TYPE_LATEST
UNMATCHED_ROUTE: Final = "<unmatched>"
"""The route label of requests that matched no route (keeps the label set bounded)."""

_DURATION_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "saga_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "saga_http_request_duration_seconds",
            "Time from receiving a request to the end of its response.",
            ["method", "route"],
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.started = Counter(
            "saga_instances_started",
            "Instances created through the API (idempotent repeats not counted).",
            ["saga_name"],
            registry=self.registry,
        )
        self.finished = Counter(
            "saga_instances_finished",
            "Instances started or resumed through the API that settled, by status "
            "(terminal, or failed: parked for an operator).",
            ["saga_name", "status"],
            registry=self.registry,
        )
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def watch_breakers(self, snapshots: Callable[[], Sequence[BreakerSnapshot]]) -> None:
        self.registry.register(BreakerCollector(snapshots))

    def watch_limiter(self, limiter: RateLimiter) -> None:
        self.registry.register(LimiterCollector(limiter))

    def saga_started(self, saga_name: str) -> None:
        self.started.labels(saga_name=saga_name).inc()

    def saga_finished(self, saga_name: str, status: InstanceStatus) -> None:
        self.finished.labels(saga_name=saga_name, status=status.value).inc()

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

    def render(self) -> bytes:
        return generate_latest(self.registry)


class BreakerCollector(Collector):
    """Each participant service's circuit breaker on this node, read at scrape time."""

    def __init__(self, snapshots: Callable[[], Sequence[BreakerSnapshot]]) -> None:
        self._snapshots = snapshots

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "saga_participant_circuit_state",
            "1 for the state each participant service's circuit breaker is in.",
            labels=["tenant", "service", "state"],
        )
        rate = GaugeMetricFamily(
            "saga_participant_failure_rate",
            "Failed calls / calls over the breaker's window.",
            labels=["tenant", "service"],
        )
        for snap in self._snapshots():
            for each in BreakerState:
                state.add_metric(
                    [snap.tenant_id, snap.service, each.value], float(snap.state is each)
                )
            rate.add_metric([snap.tenant_id, snap.service], snap.failure_rate)
        yield state
        yield rate


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
