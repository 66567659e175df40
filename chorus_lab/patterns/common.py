"""Small shared pieces of the detectors: the observation they read, bounded maps, time.

Every detector reads the same :class:`Observation` of one processed decision: the
message, its parsed content conventions and the event time as float seconds (cheap
arithmetic for windows). Nothing here reads a clock: time is the message's own.

>>> from datetime import datetime, UTC
>>> from chorus_lab.schema import AgentMessage
>>> m = AgentMessage("a", datetime(2026, 1, 1, tzinfo=UTC), "response",
...                  {"action": "grant", "resource": "gpu"}, ["b"], "c", {}, message_id="m-1")
>>> obs = observe_message(m)
>>> obs.facts.action, obs.is_reply, obs.seconds
('grant', True, 1767225600.0)
>>> lru = BoundedDict(2)
>>> lru["x"] = 1; lru["y"] = 2; lru["z"] = 3
>>> list(lru), lru.evicted
(['y', 'z'], 1)
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

from chorus_lab.engine.content import ContentFacts, parse_content
from chorus_lab.schema import AgentMessage, ProcessedDecision

K = TypeVar("K")
V = TypeVar("V")

REPLY_ACTIONS = frozenset({"result", "grant", "deny"})
"""Actions that answer someone: replies travelling back are never hand-offs."""

HANDOFF_ACTIONS = frozenset({"delegate", "forward"})
"""Actions that hand a task on to the target."""


@dataclass(frozen=True, slots=True)
class Observation:
    """One processed message, as every detector sees it."""

    message: AgentMessage
    facts: ContentFacts
    seconds: float
    """Event time as POSIX seconds (the message's ``timestamp``)."""
    decision: ProcessedDecision | None = None

    @property
    def is_reply(self) -> bool:
        """A ``response`` message, or a ``result``/``grant``/``deny`` whatever its type."""
        return self.message.message_type == "response" or self.facts.action in REPLY_ACTIONS


def observe_message(message: AgentMessage, decision: ProcessedDecision | None = None) -> Observation:
    """Parse ``message`` once for all detectors. O(size of content)."""
    facts, _ = parse_content(message.content)
    return Observation(message, facts, message.timestamp.timestamp(), decision)


def observe_decision(decision: ProcessedDecision) -> Observation:
    """:func:`observe_message` for the message a decision carries."""
    return observe_message(decision.original_message, decision)


class BoundedDict(OrderedDict[K, V], Generic[K, V]):
    """A dict that keeps at most ``limit`` keys, forgetting the least recently *set* one.

    ``evicted`` counts what was forgotten (DESIGN.md principle 7: a limit that is hit
    shows in a metric). Reading does not refresh a key; call :meth:`touch` for that.
    Setting and eviction are O(1).
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.limit = limit
        self.evicted = 0

    def __setitem__(self, key: K, value: V) -> None:
        if key in self:
            self.move_to_end(key)
        super().__setitem__(key, value)
        while len(self) > self.limit:
            self.popitem(last=False)
            self.evicted += 1

    def touch(self, key: K) -> None:
        """Mark ``key`` as recently used, so it is evicted last."""
        self.move_to_end(key)


def poisson_tail(n: int, mean: float) -> float:
    """P(N ≥ n) for N ~ Poisson(mean). O(n).

    >>> round(poisson_tail(3, 0.5), 4), poisson_tail(0, 2.0)
    (0.0144, 1.0)
    """
    if n <= 0:
        return 1.0
    if mean <= 0:
        return 0.0
    term = math.exp(-mean)
    below = term
    for k in range(1, n):
        term *= mean / k
        below += term
    return max(0.0, 1.0 - below) if below < 0.999999 else _upper_sum(n, mean)


def _upper_sum(n: int, mean: float) -> float:
    """The tail summed directly, where 1 − CDF would lose all precision."""
    term = math.exp(-mean + n * math.log(mean) - math.lgamma(n + 1))
    total, k = 0.0, n
    while term > 1e-300 and k < n + 1000:
        total += term
        k += 1
        term *= mean / k
    return total


__all__ = ["BoundedDict", "HANDOFF_ACTIONS", "Observation", "REPLY_ACTIONS", "observe_decision", "observe_message", "poisson_tail"]
