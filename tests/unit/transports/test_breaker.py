"""The circuit breaker's state machine, on a fake clock."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saga_orchestrator.definition.participants import BreakerSettings
from saga_orchestrator.transports.breaker import (
    HALF_OPEN_RETRY_AFTER,
    BreakerBook,
    BreakerSnapshot,
    BreakerState,
    CircuitBreaker,
    Permit,
)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def breaker(clock: FakeClock, **fields: Any) -> CircuitBreaker:
    defaults: dict[str, Any] = {
        "failure_rate": 0.5,
        "window": 30,
        "minimum_calls": 4,
        "open_for": 10,
        "half_open_probes": 1,
    }
    return CircuitBreaker(BreakerSettings.model_validate(defaults | fields), clock)


def calls(subject: CircuitBreaker, *failures: bool) -> None:
    for failed in failures:
        permit = subject.try_acquire()
        assert permit is not None
        subject.record(permit, failed)


def opened(clock: FakeClock, **fields: Any) -> CircuitBreaker:
    subject = breaker(clock, minimum_calls=1, **fields)
    calls(subject, True)
    assert subject.state is BreakerState.OPEN
    return subject


def probe(subject: CircuitBreaker) -> Permit:
    permit = subject.try_acquire()
    assert permit is not None and permit.probe
    return permit


# --- closed ---


def test_a_new_breaker_is_closed_and_admits() -> None:
    subject = breaker(FakeClock())

    assert subject.state is BreakerState.CLOSED
    assert subject.try_acquire() == Permit(epoch=0, probe=False)
    assert subject.retry_after() == 0.0


def test_below_minimum_calls_failures_do_not_open() -> None:
    subject = breaker(FakeClock(), minimum_calls=4)

    calls(subject, True, True, True)

    assert subject.state is BreakerState.CLOSED
    assert subject.window() == (3, 3)


def test_it_opens_on_the_call_that_reaches_minimum_calls_and_the_rate() -> None:
    subject = breaker(FakeClock(), minimum_calls=4, failure_rate=0.5)

    calls(subject, False, False, True)
    assert subject.state is BreakerState.CLOSED
    calls(subject, True)  # 2 of 4 = exactly the rate

    assert subject.state is BreakerState.OPEN
    assert subject.try_acquire() is None


def test_a_rate_below_the_threshold_keeps_it_closed() -> None:
    subject = breaker(FakeClock(), minimum_calls=4, failure_rate=0.5)

    calls(subject, *[False] * 6, True, True, True)  # 3 of 9

    assert subject.state is BreakerState.CLOSED
    assert subject.failure_rate() == pytest.approx(3 / 9)


def test_successes_after_failures_dilute_the_rate() -> None:
    subject = breaker(FakeClock(), minimum_calls=10, failure_rate=0.5)

    calls(subject, True, True, True, True, *[False] * 6)

    assert subject.state is BreakerState.CLOSED


def test_calls_older_than_the_window_no_longer_count() -> None:
    clock = FakeClock(1000.0)
    subject = breaker(clock, window=30, minimum_calls=4, failure_rate=0.5)
    calls(subject, True, True, True)

    clock.now = 1029.9  # bucket 1000 is still inside the 30 one-second buckets
    assert subject.window() == (3, 3)
    clock.now = 1030.0
    assert subject.window() == (0, 0)
    calls(subject, True)

    assert subject.state is BreakerState.CLOSED
    assert subject.window() == (1, 1)


def test_the_window_slides_bucket_by_bucket() -> None:
    clock = FakeClock(1000.0)
    subject = breaker(clock, window=3, minimum_calls=100)
    for _ in range(4):
        calls(subject, True)
        clock.now += 1

    assert subject.window() == (2, 2)  # now 1004: buckets 1002 and 1003 remain


# --- open ---


def test_open_rejects_and_counts_down() -> None:
    clock = FakeClock()
    subject = opened(clock, open_for=10)

    clock.now += 4
    assert subject.try_acquire() is None
    assert subject.retry_after() == 6.0
    clock.now += 5.5
    assert subject.retry_after() == 0.5
    assert subject.state is BreakerState.OPEN


def test_after_open_for_it_is_half_open() -> None:
    clock = FakeClock()
    subject = opened(clock, open_for=10)

    clock.now += 10

    assert subject.state is BreakerState.HALF_OPEN
    assert subject.retry_after() == 0.0


# --- half-open ---


def test_half_open_admits_exactly_the_probes_at_once() -> None:
    clock = FakeClock()
    subject = opened(clock, open_for=10, half_open_probes=2)
    clock.now += 10

    first, second = probe(subject), probe(subject)

    assert first.epoch == second.epoch
    assert subject.try_acquire() is None
    assert subject.retry_after() == HALF_OPEN_RETRY_AFTER


def test_half_open_retry_after_never_exceeds_open_for() -> None:
    clock = FakeClock()
    subject = opened(clock, open_for=0.2)
    clock.now += 0.2
    probe(subject)

    assert subject.retry_after() == 0.2


def test_all_probes_succeeding_closes_it_with_a_fresh_window() -> None:
    clock = FakeClock()
    subject = opened(clock, open_for=10, half_open_probes=2)
    clock.now += 10
    first, second = probe(subject), probe(subject)

    subject.record(first, False)
    assert subject.state is BreakerState.HALF_OPEN
    assert subject.try_acquire() is None  # both trial slots were used
    subject.record(second, False)

    assert subject.state is BreakerState.CLOSED
    assert subject.window() == (0, 0)
    permit = subject.try_acquire()
    assert permit is not None and not permit.probe


def test_any_probe_failing_opens_it_again_for_open_for() -> None:
    clock = FakeClock()
    subject = opened(clock, open_for=10, half_open_probes=2)
    clock.now += 10
    first, second = probe(subject), probe(subject)

    subject.record(first, False)
    clock.now += 3
    subject.record(second, True)

    assert subject.state is BreakerState.OPEN
    assert subject.retry_after() == 10.0
    assert subject.try_acquire() is None


def test_a_released_probe_frees_its_slot() -> None:
    clock = FakeClock()
    subject = opened(clock)
    clock.now += 10
    permit = probe(subject)

    subject.release(permit)

    assert subject.state is BreakerState.HALF_OPEN
    probe(subject)


def test_releasing_a_closed_permit_counts_nothing() -> None:
    subject = breaker(FakeClock())
    permit = subject.try_acquire()
    assert permit is not None

    subject.release(permit)

    assert subject.window() == (0, 0)


def test_an_outcome_from_an_earlier_state_is_ignored() -> None:
    clock = FakeClock()
    subject = breaker(clock, minimum_calls=1, failure_rate=1.0, open_for=10)
    slow = subject.try_acquire()
    assert slow is not None
    calls(subject, True)  # opens
    clock.now += 10
    trial = probe(subject)

    subject.record(slow, True)  # admitted while closed: says nothing about now
    assert subject.state is BreakerState.HALF_OPEN
    subject.record(trial, False)
    assert subject.state is BreakerState.CLOSED
    subject.record(trial, True)  # a duplicate, from the half-open epoch

    assert subject.state is BreakerState.CLOSED
    assert subject.window() == (0, 0)


def test_a_slow_success_cannot_close_an_open_breaker() -> None:
    clock = FakeClock()
    subject = breaker(clock, minimum_calls=1, failure_rate=1.0)
    slow = subject.try_acquire()
    assert slow is not None
    calls(subject, True)

    subject.record(slow, False)

    assert subject.state is BreakerState.OPEN


# --- disabled ---


def test_a_disabled_breaker_admits_everything() -> None:
    subject = breaker(FakeClock(), enabled=False, minimum_calls=1)

    calls(subject, *[True] * 20)

    assert subject.state is BreakerState.CLOSED
    assert subject.retry_after() == 0.0
    assert subject.window() == (0, 0)


# --- the book ---


def test_the_book_keeps_one_breaker_per_tenant_and_service() -> None:
    book = BreakerBook(clock=FakeClock())
    settings_ = BreakerSettings()

    first = book.get("acme", "payments", settings_)

    assert book.get("acme", "payments", BreakerSettings()) is first
    assert book.get("other", "payments", settings_) is not first
    assert book.get("acme", "orders", settings_) is not first


def test_changed_settings_rebuild_the_breaker_closed() -> None:
    clock = FakeClock()
    book = BreakerBook(clock=clock)
    old = book.get("acme", "payments", BreakerSettings(minimum_calls=1))
    calls(old, True)
    assert book.state_of("acme", "payments") is BreakerState.OPEN

    new = book.get("acme", "payments", BreakerSettings(minimum_calls=2))

    assert new is not old
    assert book.state_of("acme", "payments") is BreakerState.CLOSED


def test_an_unknown_service_is_closed() -> None:
    assert BreakerBook().state_of("acme", "never-called") is BreakerState.CLOSED


def test_the_snapshot_lists_every_breaker_in_order() -> None:
    clock = FakeClock()
    book = BreakerBook(clock=clock)
    calls(book.get("b-tenant", "svc", BreakerSettings(minimum_calls=10)), True, False, False, False)
    calls(book.get("a-tenant", "svc", BreakerSettings(minimum_calls=1, open_for=10)), True)
    clock.now += 2.5

    assert book.snapshot() == [
        BreakerSnapshot(
            tenant_id="a-tenant",
            service="svc",
            state=BreakerState.OPEN,
            failure_rate=1.0,
            calls=1,
            retry_after=7.5,
        ),
        BreakerSnapshot(
            tenant_id="b-tenant",
            service="svc",
            state=BreakerState.CLOSED,
            failure_rate=0.25,
            calls=4,
            retry_after=0.0,
        ),
    ]


# --- properties ---

Step = tuple[str, float]
steps = st.lists(
    st.one_of(
        st.tuples(st.just("acquire"), st.just(0.0)),
        st.tuples(st.sampled_from(["succeed", "fail", "release"]), st.just(0.0)),
        st.tuples(st.just("wait"), st.floats(min_value=0.1, max_value=20)),
    ),
    max_size=80,
)


@settings(max_examples=300)
@given(steps, st.integers(min_value=1, max_value=3))
def test_half_open_admits_at_most_the_probes_per_trial(ops: list[Step], probes: int) -> None:
    """A model: in half-open, a trial slot is used by each probe issued in that state (until
    it is released); open rejects everything; closed admits everything."""
    clock = FakeClock()
    subject = breaker(clock, minimum_calls=2, failure_rate=0.5, half_open_probes=probes)
    held: list[Permit] = []
    trials: dict[int, int] = {}
    for op, seconds in ops:
        if op == "acquire":
            state, epoch = subject.state, subject.epoch
            permit = subject.try_acquire()
            full = trials.get(epoch, 0) >= probes
            expected_rejection = state is BreakerState.OPEN or (
                state is BreakerState.HALF_OPEN and full
            )
            assert (permit is None) == expected_rejection
            if permit is not None:
                assert permit.probe == (state is BreakerState.HALF_OPEN)
                trials[epoch] = trials.get(epoch, 0) + permit.probe
                held.append(permit)
        elif op == "wait":
            clock.now += seconds
        elif held:
            permit = held.pop(0)
            if op == "release":
                subject.release(permit)
                if permit.probe and permit.epoch == subject.epoch:
                    trials[permit.epoch] -= 1
            else:
                subject.record(permit, op == "fail")
        assert all(count <= probes for count in trials.values())
