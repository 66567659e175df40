"""Resource hoarding: holding a resource far longer than the fleet does while refusing it.

DESIGN.md: an agent that holds resources while others wait for them, and denies or
ignores requests for them, *consistently* (a rate over a window, not one event),
measured against the fleet's normal holding behaviour. Here that is, for an agent X and
a resource R, at the event time of a refusal:

1. X **holds** R (in stage 2's resource ledger: granted to X, or X announced a ``hold``);
2. X's hold has lasted longer than the fleet's normal hold: ``hold_factor`` × the
   ``hold_quantile`` of recently completed holds (releases), at least ``min_hold_s``;
3. within ``window_s``, X **refused** at least ``min_refusals`` requests for R addressed
   to X — a ``deny`` it sent while holding, or a request it left unanswered for
   ``ignore_after_s`` — and refusals are at least ``min_refusal_ratio`` of its answers
   (a holder that mostly grants is sharing, not hoarding).

The honest look-alike is a steward that denies because its resource is full: it does not
hold the resource itself, so (1) fails however often it denies. A holder that keeps a
resource for a long time but is never asked for it, or shares it when asked, is not a
hoarder either.

Cost per message: O(log P) for P requests awaiting an answer, O(1) otherwise; memory is
bounded by ``max_pending``, ``max_tracked`` and ``hold_samples``.

>>> from datetime import datetime, timedelta, UTC
>>> from chorus_lab.engine.ledger import ResourceLedger
>>> from chorus_lab.schema import AgentMessage
>>> from chorus_lab.patterns.common import observe_message
>>> t0 = datetime(2026, 1, 1, tzinfo=UTC)
>>> ledger, detector = ResourceLedger(), HoardingDetector(HoardingConfig(default_hold_s=60))
>>> def send(s, sender, target, kind, **content):
...     m = AgentMessage(sender, t0 + timedelta(seconds=s), kind, content, [target], "c", {},
...                      message_id=f"m{s}")
...     update = ledger.apply(m)
...     return detector.observe(observe_message(m), ledger, update)
>>> _ = send(0, "h", "all", "broadcast", action="hold", resource="gpu", amount=4)
>>> findings = []
>>> for s in (100, 110, 120):
...     _ = send(s, f"w{s}", "h", "request", action="request_resource", resource="gpu")
...     findings += send(s + 1, "h", f"w{s}", "response", action="deny", resource="gpu")
>>> [(f.agents, f.details["refused"]) for f in findings]
[(('h',), 3)]
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime

from chorus_lab.engine.ledger import LedgerUpdate, ResourceLedger
from chorus_lab.patterns.alerts import Finding
from chorus_lab.patterns.common import BoundedDict, Observation


@dataclass(frozen=True, slots=True)
class HoardingConfig:
    """Thresholds of the hoarding detector (durations in seconds of event time)."""

    window_s: float = 600.0
    """Refusals and grants counted over this window."""
    min_refusals: int = 3
    """Refusals within the window before it is called hoarding (not one event)."""
    min_refusal_ratio: float = 0.75
    """Refusals over all answers (refusals + grants) by the holder within the window."""
    ignore_after_s: float = 10.0
    """A request to a holder with no answer for this long counts as ignored."""
    hold_quantile: float = 0.99
    """Quantile of the fleet's completed holds taken as its normal longest hold."""
    hold_factor: float = 2.5
    """A hold is long beyond ``hold_factor`` × that quantile."""
    min_hold_s: float = 5.0
    """Never call a hold shorter than this long, whatever the fleet does."""
    default_hold_s: float = 60.0
    """The long-hold threshold until ``min_hold_samples`` holds have completed."""
    min_hold_samples: int = 50
    hold_samples: int = 2_000
    """Completed holds remembered for the fleet's quantile."""
    max_pending: int = 100_000
    """Requests to holders awaiting an answer, remembered at once."""
    max_tracked: int = 50_000
    """(holder, resource) pairs with refusal history remembered at once."""

    def __post_init__(self) -> None:
        if self.min_refusals < 1:
            raise ValueError(f"min_refusals must be at least 1, got {self.min_refusals}")
        if not 0.0 < self.hold_quantile <= 1.0:
            raise ValueError(f"hold_quantile must be within (0, 1], got {self.hold_quantile}")
        if not 0.0 <= self.min_refusal_ratio <= 1.0:
            raise ValueError(f"min_refusal_ratio must be within 0–1, got {self.min_refusal_ratio}")


@dataclass(slots=True)
class _Pending:
    request_id: str
    requester: str
    holder: str
    resource: str
    seconds: float


@dataclass(slots=True)
class _Record:
    """One holder's answers about one resource within the window."""

    refusals: deque[tuple[float, str, str, str]] = field(default_factory=deque)
    """(time, request id, "denied" | "ignored", requester)"""
    grants: deque[float] = field(default_factory=deque)


class HoardingDetector:
    """Watches what holders answer when asked for what they hold."""

    pattern = "resource_hoarding"

    def __init__(self, config: HoardingConfig | None = None) -> None:
        self.config = config or HoardingConfig()
        self._pending: BoundedDict[str, _Pending] = BoundedDict(self.config.max_pending)
        self._by_pair: BoundedDict[tuple[str, str], str] = BoundedDict(self.config.max_pending)
        self._deadlines: list[tuple[float, str]] = []
        self._records: BoundedDict[tuple[str, str], _Record] = BoundedDict(self.config.max_tracked)
        self._holds: deque[float] = deque(maxlen=self.config.hold_samples)
        self._sorted_holds: list[float] = []
        self._threshold_stale = True
        self._threshold = self.config.default_hold_s

    # ------------------------------------------------------------------ public

    def observe(self, obs: Observation, ledger: ResourceLedger, update: LedgerUpdate | None) -> list[Finding]:
        """Findings after ``obs`` was applied to ``ledger`` (``update`` is what it did)."""
        findings = self.advance(obs.message.timestamp, ledger)
        message, facts = obs.message, obs.facts
        if update is not None and update.action == "release" and update.held_for_s is not None:
            self._holds.append(update.held_for_s)
            self._threshold_stale = True
        if obs.is_reply:
            self._answered(obs)
        resource = facts.resource
        if resource is None:
            return findings
        if facts.action == "request_resource":
            self._expect_answer(obs, ledger, resource)
        elif facts.action == "deny" and update is not None and update.sender_held > 0.0:
            for requester in dict.fromkeys(message.target_agents):
                refusal = (obs.seconds, message.causation_id or message.message_id, "denied", requester)
                finding = self._refused(message.timestamp, ledger, message.agent_id, resource, refusal)
                if finding is not None:
                    findings.append(finding)
        elif facts.action == "grant":
            record = self._records.get((message.agent_id, resource))
            if record is not None:
                record.grants.append(obs.seconds)
        return findings

    def advance(self, when: datetime, ledger: ResourceLedger) -> list[Finding]:
        """Requests to holders that went unanswered by ``when`` become refusals (ignored)."""
        findings: list[Finding] = []
        now = when.timestamp()
        deadline = self.config.ignore_after_s
        while self._deadlines and self._deadlines[0][0] <= now:
            _, request_id = heapq.heappop(self._deadlines)
            pending = self._pending.pop(request_id, None)
            if pending is None:
                continue
            refusal = (pending.seconds + deadline, request_id, "ignored", pending.requester)
            finding = self._refused(when, ledger, pending.holder, pending.resource, refusal)
            if finding is not None:
                findings.append(finding)
        return findings

    def normal_hold_s(self) -> float:
        """The fleet's long-hold threshold now (seconds)."""
        config = self.config
        if self._threshold_stale:
            self._threshold_stale = False
            if len(self._holds) >= config.min_hold_samples:
                ordered = sorted(self._holds)
                index = min(len(ordered) - 1, int(config.hold_quantile * len(ordered)))
                self._threshold = max(config.min_hold_s, config.hold_factor * ordered[index])
            else:
                self._threshold = max(config.min_hold_s, config.default_hold_s)
        return self._threshold

    # ------------------------------------------------------------------ helpers

    def _answered(self, obs: Observation) -> None:
        """A reply from a holder settles the request it answers (by causation, else by pair)."""
        message = obs.message
        cause = self._pending.get(message.causation_id) if message.causation_id else None
        if cause is not None and cause.holder == message.agent_id:
            del self._pending[cause.request_id]
            return
        for requester in message.target_agents:
            request_id = self._by_pair.pop((message.agent_id, requester), None)
            pending = self._pending.get(request_id) if request_id else None
            if pending is not None and obs.facts.resource in (None, pending.resource):
                del self._pending[request_id]

    def _expect_answer(self, obs: Observation, ledger: ResourceLedger, resource: str) -> None:
        state = ledger.resources.get(resource)
        if state is None:
            return
        for target in dict.fromkeys(obs.message.target_agents):
            # Only requests to an agent that holds the resource can be hoarding refusals.
            if target != obs.message.agent_id and state.holders.get(target, 0.0) > 0.0:
                request_id = obs.message.message_id
                self._pending[request_id] = _Pending(request_id, obs.message.agent_id, target, resource, obs.seconds)
                self._by_pair[(target, obs.message.agent_id)] = request_id
                heapq.heappush(self._deadlines, (obs.seconds + self.config.ignore_after_s, request_id))
                break
        if len(self._deadlines) > 2 * self.config.max_pending:  # bounded: drop what was evicted
            self._deadlines = [d for d in self._deadlines if d[1] in self._pending]
            heapq.heapify(self._deadlines)

    def _refused(
        self,
        when: datetime,
        ledger: ResourceLedger,
        holder: str,
        resource: str,
        refusal: tuple[float, str, str, str],
    ) -> Finding | None:
        config = self.config
        state = ledger.resources.get(resource)
        if state is None or state.holders.get(holder, 0.0) <= 0.0:
            return None  # not holding (any more): a steward denying when full, or let go
        key = (holder, resource)
        record = self._records.get(key)
        if record is None:
            record = self._records[key] = _Record()
        else:
            self._records.touch(key)
        record.refusals.append(refusal)
        now = when.timestamp()
        horizon = now - config.window_s
        while record.refusals and record.refusals[0][0] < horizon:
            record.refusals.popleft()
        while record.grants and record.grants[0] < horizon:
            record.grants.popleft()
        since = state.held_since.get(holder)
        age = now - since.timestamp() if since is not None else 0.0
        normal = self.normal_hold_s()
        refused = len(record.refusals)
        ratio = refused / (refused + len(record.grants))
        if refused < config.min_refusals or ratio < config.min_refusal_ratio or age < normal:
            return None
        return self._finding(when, ledger, holder, resource, record, age, normal, ratio)

    def _finding(
        self,
        when: datetime,
        ledger: ResourceLedger,
        holder: str,
        resource: str,
        record: _Record,
        age: float,
        normal: float,
        ratio: float,
    ) -> Finding:
        refused = len(record.refusals)
        denied = sum(1 for r in record.refusals if r[2] == "denied")
        waiters = sorted({r[3] for r in record.refusals})
        # Each further refusal halves the chance that this is a one-off; a holder that also
        # grants some requests is less clearly hoarding.
        confidence = min(0.99, ratio * (1.0 - 0.5 ** (refused - 1)))
        held = ledger.resources[resource].holders.get(holder, 0.0)
        capacity = ledger.capacity(resource)
        severity = "high" if len(waiters) >= 3 or age >= 3 * normal else "medium"
        return Finding(
            pattern="resource_hoarding",
            key=f"{holder}:{resource}",
            agents=(holder,),
            confidence=confidence,
            severity=severity,
            description=(
                f"{holder} has held {held:g} of {resource} (capacity {capacity:g}) for {age:.0f} s, "
                f"longer than the fleet's normal {normal:.0f} s, and refused {refused} requests for it "
                f"({denied} denied, {refused - denied} ignored) from {len(waiters)} waiting agent(s)."
            ),
            evidence=tuple(r[1] for r in record.refusals),
            detected_at=when,
            details={
                "resource": resource,
                "holder": holder,
                "held": held,
                "capacity": capacity,
                "hold_age_s": round(age, 3),
                "normal_hold_s": round(normal, 3),
                "refused": refused,
                "denied": denied,
                "ignored": refused - denied,
                "granted": len(record.grants),
                "refusal_ratio": round(ratio, 3),
                "waiters": waiters,
            },
        )


__all__ = ["HoardingConfig", "HoardingDetector"]
