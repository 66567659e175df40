"""Backoff and the circuit breaker, as plain logic with an injected clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chorus_lab.bus.base import AuthenticationError, BusError, BusUnavailableError
from chorus_lab.bus.retry import CircuitBreaker, RetryPolicy, call_with_retry


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


# Feature: real-time-data-flow, Property 2: Kafka error handling with retry and DLQ
@settings(max_examples=200)
@given(
    outcomes=st.lists(st.sampled_from(["ok", "transient", "permanent"]), min_size=1, max_size=12),
    max_attempts=st.integers(1, 6),
)
def test_retry_stops_at_success_a_permanent_error_or_the_attempt_limit(outcomes: list[str], max_attempts: int) -> None:
    clock = FakeClock()
    calls: list[str] = []
    policy = RetryPolicy(max_attempts=max_attempts, base_delay=0.1, max_delay=1.0, jitter=0.0)

    def operation() -> str:
        outcome = outcomes[min(len(calls), len(outcomes) - 1)]
        calls.append(outcome)
        if outcome == "transient":
            raise BusUnavailableError("broker unreachable")
        if outcome == "permanent":
            raise AuthenticationError("bad secret")
        return "done"

    try:
        result = call_with_retry(operation, policy=policy, sleep=clock.sleep)
    except BusError as exc:
        result = type(exc).__name__
    # The specification, step by step: transient errors are retried until the attempts
    # run out; success or a permanent error ends it at once.
    expected_calls, expected = 0, "BusUnavailableError"
    for attempt in range(max_attempts):
        outcome = outcomes[min(attempt, len(outcomes) - 1)]
        expected_calls += 1
        if outcome != "transient":
            expected = "done" if outcome == "ok" else "AuthenticationError"
            break
    assert result == expected
    assert len(calls) == expected_calls
    # Backoff: one sleep between consecutive attempts, doubling up to the cap.
    expected_sleep = sum(min(1.0, 0.1 * 2 ** (n - 1)) for n in range(1, len(calls)))
    assert clock.now == pytest.approx(expected_sleep)


def test_breaker_opens_after_repeated_failures_and_fails_fast() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=5.0, clock=clock)
    attempts: list[int] = []

    def failing() -> None:
        attempts.append(1)
        raise BusUnavailableError("down")

    policy = RetryPolicy(max_attempts=5, base_delay=0.0, max_delay=0.0, jitter=0.0)
    with pytest.raises(BusUnavailableError, match="circuit open"):
        call_with_retry(failing, policy=policy, breaker=breaker, sleep=clock.sleep)
    assert len(attempts) == 2
    clock.now += 5.0
    assert breaker.allow() and breaker.state == "half_open"
    assert call_with_retry(lambda: 42, policy=policy, breaker=breaker, sleep=clock.sleep) == 42
    assert breaker.state == "closed"


def test_a_failed_trial_call_reopens_the_breaker() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout=1.0, clock=clock)
    for _ in range(3):
        breaker.record_failure()
    clock.now = 2.0
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open" and not breaker.allow()


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
