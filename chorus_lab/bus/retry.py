"""Exponential backoff and a circuit breaker for bus operations.

Both take the clock and the sleep function as parameters, so their behaviour is plain,
testable logic; production code passes ``time.monotonic`` and ``time.sleep``.

>>> policy = RetryPolicy(max_attempts=4, base_delay=0.1, max_delay=1.0, jitter=0.0)
>>> [policy.delay(n) for n in range(1, 4)]
[0.1, 0.2, 0.4]
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from chorus_lab.bus.base import BusError, BusUnavailableError

T = TypeVar("T")
BreakerState = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to retry: delay ``base * multiplier**(n-1)``, capped, jittered."""

    max_attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.2
    """Fraction of the delay added at random, so that many clients do not retry in step."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.base_delay < 0 or self.max_delay < self.base_delay:
            raise ValueError(f"need 0 <= base_delay <= max_delay, got {self.base_delay}, {self.max_delay}")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        delay = min(self.max_delay, self.base_delay * self.multiplier ** (attempt - 1))
        if self.jitter and rng is not None:
            delay += delay * self.jitter * rng.random()
        return delay


@dataclass(slots=True)
class CircuitBreaker:
    """Stops calling a failing dependency for ``reset_timeout`` seconds after
    ``failure_threshold`` consecutive failures, then lets one trial call through.

    >>> clock = iter([0.0, 1.0, 31.0]).__next__
    >>> breaker = CircuitBreaker(failure_threshold=2, reset_timeout=30.0, clock=clock)
    >>> breaker.record_failure(); breaker.record_failure(); breaker.state
    'open'
    >>> breaker.allow(), breaker.allow()
    (False, True)
    """

    failure_threshold: int = 5
    reset_timeout: float = 30.0
    clock: Callable[[], float] = time.monotonic
    state: BreakerState = "closed"
    failures: int = 0
    opened_at: float = field(default=0.0)

    def allow(self) -> bool:
        """Whether a call may go through now (moves open → half-open when the timeout passed)."""
        if self.state == "open" and self.clock() - self.opened_at >= self.reset_timeout:
            self.state = "half_open"
        return self.state != "open"

    def record_success(self) -> None:
        self.state = "closed"
        self.failures = 0

    def record_failure(self) -> None:
        self.failures += 1
        if self.state == "half_open" or self.failures >= self.failure_threshold:
            self.state = "open"
            self.opened_at = self.clock()


def call_with_retry(
    operation: Callable[[], T],
    *,
    policy: RetryPolicy,
    breaker: CircuitBreaker | None = None,
    describe: str = "bus operation",
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> T:
    """Run ``operation``, retrying retriable ``BusError``s with backoff.

    A non-retriable error is raised at once. When the attempts run out, the last error is
    raised. An open breaker fails fast with ``BusUnavailableError``.
    """
    last: BusError | None = None
    for attempt in range(1, policy.max_attempts + 1):
        if breaker is not None and not breaker.allow():
            raise BusUnavailableError(f"{describe}: circuit open after {breaker.failures} consecutive failures; not trying until it resets") from last
        try:
            result = operation()
        except BusError as exc:
            if breaker is not None and exc.retriable:
                breaker.record_failure()
            if not exc.retriable:
                raise
            last = exc
            if attempt < policy.max_attempts:
                sleep(policy.delay(attempt, rng))
            continue
        if breaker is not None:
            breaker.record_success()
        return result
    assert last is not None
    raise last
