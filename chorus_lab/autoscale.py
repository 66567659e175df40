"""Scale stage 1 from consumer lag: a small local supervisor (``chorus-lab process --autoscale``).

The signal is the group's lag on ``agent-messages-raw``: per partition, the end offset
minus the group's committed offset, summed. The policy is the one KEDA's Kafka scaler
applies, so the same numbers drive an orchestrator (``docs/processor.md``):

    desired = ceil(total lag / lag_threshold), between min_instances and
              min(max_instances, partitions)   (more members than partitions sit idle)

Scaling up happens as soon as the lag asks for it; scaling down waits until the lag has
asked for fewer instances for ``cooldown_s`` (KEDA's ``cooldownPeriod``), one instance at a
time, so a short lull does not stop an instance that the next burst needs again.

:class:`Supervisor` applies the policy to local processes: each instance is a
``chorus-lab process`` child with a stable instance id (``<prefix>-<slot>``), so a child
that dies and is started again fences its predecessor. Stopping is SIGTERM: the child
commits its batch and leaves the group, and its partitions move at once.

>>> policy = ScalePolicy(max_instances=4, lag_threshold=1000)
>>> desired_instances(lag=0, partitions=6, policy=policy), desired_instances(lag=2500, partitions=6, policy=policy)
(1, 3)
>>> desired_instances(lag=10**9, partitions=2, policy=policy)
2
"""

from __future__ import annotations

import logging
import math
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from chorus_lab.bus import Bus, TopicError, TopicPartition

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ScalePolicy:
    """When to add and remove stage-1 instances (KEDA's Kafka-scaler terms in brackets)."""

    min_instances: int = 1
    max_instances: int = 6
    """Upper bound (``maxReplicaCount``); never more than the partition count."""
    lag_threshold: int = 5_000
    """Lag one instance is expected to absorb (``lagThreshold``)."""
    cooldown_s: float = 30.0
    """How long the lag must ask for fewer instances before one stops (``cooldownPeriod``)."""
    interval_s: float = 2.0
    """How often lag is measured (``pollingInterval``)."""

    def __post_init__(self) -> None:
        if not 0 <= self.min_instances <= self.max_instances:
            raise ValueError(f"need 0 <= min_instances <= max_instances, got {self.min_instances}, {self.max_instances}")
        if self.lag_threshold < 1:
            raise ValueError(f"lag_threshold must be at least 1, got {self.lag_threshold}")


def desired_instances(lag: int, partitions: int, policy: ScalePolicy) -> int:
    """How many instances the lag asks for: ``ceil(lag / threshold)``, clamped to the bounds."""
    upper = max(policy.min_instances, min(policy.max_instances, partitions))
    return max(policy.min_instances, min(upper, math.ceil(max(lag, 0) / policy.lag_threshold)))


@dataclass(slots=True)
class ScaleDecider:
    """The policy with memory: scale up at once, down one step after ``cooldown_s`` of asking.

    >>> decider = ScaleDecider(ScalePolicy(max_instances=3, lag_threshold=10, cooldown_s=5))
    >>> decider.next(current=1, lag=25, partitions=6, now=0.0)
    3
    >>> decider.next(current=3, lag=0, partitions=6, now=1.0), decider.next(current=3, lag=0, partitions=6, now=6.5)
    (3, 2)
    """

    policy: ScalePolicy
    _low_since: float | None = field(default=None)

    def next(self, *, current: int, lag: int, partitions: int, now: float) -> int:
        wanted = desired_instances(lag, partitions, self.policy)
        if wanted >= current:
            self._low_since = None
            return wanted
        if self._low_since is None:
            self._low_since = now
        if now - self._low_since >= self.policy.cooldown_s:
            self._low_since = now  # the next step down waits a full cooldown again
            return current - 1
        return current


def group_lag(bus: Bus, group_id: str, topic: str) -> tuple[int, int]:
    """(total lag, partition count) of ``group_id`` on ``topic``.

    A partition the group never committed counts from the log start (as a new member with
    ``auto.offset.reset=earliest`` would read it).
    """
    description = bus.admin().describe(topic)
    if description is None:
        raise TopicError(f"topic {topic} does not exist on {bus.url}")
    partitions = [TopicPartition(topic, p) for p in range(description.partitions)]
    # A consumer that never subscribes does not join the group; it only reads its offsets.
    consumer = bus.consumer(group_id)
    try:
        committed = consumer.committed(partitions)
        lag = 0
        for tp in partitions:
            low, high = consumer.watermarks(tp)
            position = committed.get(tp)
            lag += max(0, high - (low if position is None else max(position, low)))
    finally:
        consumer.close()
    return lag, description.partitions


class Supervisor:
    """Runs ``chorus-lab process`` children and keeps their number where the lag wants it.

    ``command(slot)`` gives a child's command line; ``lag()`` gives (lag, partitions).
    Both are injectable so the loop can be tested without processes or a bus.
    """

    def __init__(
        self,
        command: Callable[[int], Sequence[str]],
        lag: Callable[[], tuple[int, int]],
        policy: ScalePolicy,
        *,
        report: Callable[[str], None] = print,
    ) -> None:
        self.command = command
        self.lag = lag
        self.policy = policy
        self.decider = ScaleDecider(policy)
        self.report = report
        self.children: dict[int, subprocess.Popen[bytes]] = {}

    def run(self, stop: threading.Event) -> None:
        """Measure, scale, repeat until ``stop``; then stop every child."""
        try:
            while not stop.is_set():
                self.tick(time.monotonic())
                stop.wait(self.policy.interval_s)
        finally:
            for slot in sorted(self.children, reverse=True):
                self._stop(slot)

    def tick(self, now: float) -> int:
        """One round: restart dead children, measure lag, start or stop one or more; return the count."""
        for slot, child in list(self.children.items()):
            code = child.poll()
            if code is not None:
                self.report(f"instance {slot} exited with status {code}; starting it again")
                del self.children[slot]
                self._start(slot)
        try:
            lag, partitions = self.lag()
        except Exception as exc:  # the bus may be briefly unreachable; keep what runs
            log.warning("cannot measure lag: %s", exc)
            return len(self.children)
        current = len(self.children)
        wanted = self.decider.next(current=current, lag=lag, partitions=partitions, now=now)
        if wanted != current:
            self.report(f"lag {lag} on {partitions} partitions: {current} → {wanted} instance(s)")
        while len(self.children) < wanted:
            self._start(min(set(range(len(self.children) + 1)) - set(self.children)))
        while len(self.children) > wanted:
            self._stop(max(self.children))
        return len(self.children)

    def _start(self, slot: int) -> None:
        self.children[slot] = subprocess.Popen(list(self.command(slot)))

    def _stop(self, slot: int, timeout: float = 30.0) -> None:
        child = self.children.pop(slot)
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("instance %d did not stop within %.0fs; killing it", slot, timeout)
                child.kill()
                child.wait()


def process_command(bus_url: str, group_id: str, instance_id: str, extra: Sequence[str] = ()) -> list[str]:
    """The command line of one ``chorus-lab process`` child."""
    return [sys.executable, "-m", "chorus_lab.cli", "process", "--bus", bus_url, "--group", group_id, "--instance", instance_id, *extra]


__all__ = ["ScaleDecider", "ScalePolicy", "Supervisor", "desired_instances", "group_lag", "process_command"]
