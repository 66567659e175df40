"""Routing loops: a task handed on until it comes back to an agent that already handed it on.

DESIGN.md's definition, which this module follows exactly:

- A **hand-off** is a ``delegate`` or ``forward`` (any message type but ``response``), or a
  free-form request (``message_type == "request"`` with no conventional ``action``) that
  starts a conversation or is caused (``causation_id``) by an earlier hand-off in the same
  ``correlation_id``. Hand-offs of one task form a *chain*, keyed by ``task_id`` (which
  defaults to the ``correlation_id``).
- **Replies are not hand-offs**: ``response`` messages and ``result``/``grant``/``deny``
  travel back to the asker. Resource traffic (``request_resource``, ``release``, …) is not
  a hand-off either.
- A **loop** is a hand-off whose target already handed the same task on, where the cycle
  it closes (walked back along ``causation_id``, or by order when the links are missing)
  holds at least ``min_agents`` (3) distinct agents. A↔B back-and-forth is a cycle of two
  and never a loop; neither is a cycle in the all-time communication graph, which this
  detector never looks at.

Cost: O(1) per message plus O(cycle length) when a loop closes; memory is bounded by
``max_chains`` × ``max_handoffs`` and ``max_messages``.

>>> from datetime import datetime, timedelta, UTC
>>> from chorus_lab.schema import AgentMessage
>>> from chorus_lab.patterns.common import observe_message
>>> t0 = datetime(2026, 1, 1, tzinfo=UTC)
>>> def hand(i, a, b, cause=None):
...     return observe_message(AgentMessage(a, t0 + timedelta(seconds=i), "request",
...         {"action": "delegate", "task_id": "t1"}, [b], "c1", {}, message_id=f"m{i}", causation_id=cause))
>>> detector = RoutingLoopDetector()
>>> detector.observe(hand(1, "a", "b")) + detector.observe(hand(2, "b", "c", "m1"))
[]
>>> [f.agents for f in detector.observe(hand(3, "c", "a", "m2"))]
[('a', 'b', 'c')]
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from chorus_lab.engine.content import ACTIONS
from chorus_lab.patterns.alerts import Finding
from chorus_lab.patterns.common import HANDOFF_ACTIONS, BoundedDict, Observation


@dataclass(frozen=True, slots=True)
class RoutingLoopConfig:
    """Thresholds of the routing-loop detector."""

    min_agents: int = 3
    """Distinct agents a cycle needs to be a loop (DESIGN.md: at least three)."""
    window_s: float = 600.0
    """A chain with no hand-off for this long is forgotten (event time)."""
    max_chains: int = 50_000
    """Chains (tasks) tracked at once; the least recently active is dropped first."""
    max_handoffs: int = 64
    """Hand-offs remembered per chain."""
    max_messages: int = 200_000
    """Hand-off message ids remembered for following ``causation_id`` links."""
    linked_confidence: float = 0.9
    """Confidence of a first return whose cycle is linked by ``causation_id`` end to end."""
    ordered_confidence: float = 0.6
    """Confidence of a first return reconstructed from hand-off order only."""

    def __post_init__(self) -> None:
        if self.min_agents < 3:
            raise ValueError(f"min_agents must be at least 3 (two agents talking is not a loop), got {self.min_agents}")
        for name in ("max_chains", "max_handoffs", "max_messages"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


@dataclass(frozen=True, slots=True)
class _HandOff:
    message_id: str
    sender: str
    chain: str
    correlation_id: str
    causation_id: str | None


@dataclass(slots=True)
class _Chain:
    handoffs: deque[_HandOff]
    handed_on: set[str] = field(default_factory=set)
    last_seen: float = 0.0
    returns: int = 0


class RoutingLoopDetector:
    """Follows hand-off chains and reports the ones that come back around."""

    pattern = "routing_loop"

    def __init__(self, config: RoutingLoopConfig | None = None) -> None:
        self.config = config or RoutingLoopConfig()
        self.chains: BoundedDict[str, _Chain] = BoundedDict(self.config.max_chains)
        self.handoffs: BoundedDict[str, _HandOff] = BoundedDict(self.config.max_messages)

    def observe(self, obs: Observation) -> list[Finding]:
        """Findings for one message (usually none). O(1), O(cycle) when a loop closes."""
        key = self._chain_key(obs)
        if key is None:
            return []
        message = obs.message
        config = self.config
        chain = self.chains.get(key)
        if chain is None or obs.seconds - chain.last_seen > config.window_s:
            chain = _Chain(deque(maxlen=config.max_handoffs))
        self.chains[key] = chain
        chain.last_seen = max(chain.last_seen, obs.seconds)
        handoff = _HandOff(message.message_id, message.agent_id, key, message.correlation_id, message.causation_id)

        findings = []
        for target in dict.fromkeys(message.target_agents):
            if target == message.agent_id or target not in chain.handed_on:
                continue
            cycle, evidence, linked = self._cycle(chain, handoff, target)
            if len(set(cycle)) >= config.min_agents:
                chain.returns += 1
                findings.append(self._finding(obs, key, chain, cycle, evidence, linked))
        chain.handed_on.add(message.agent_id)
        chain.handoffs.append(handoff)
        if len(chain.handed_on) > config.max_handoffs:
            # Bounded: forget agents whose hand-offs have left the chain's memory.
            chain.handed_on = {h.sender for h in chain.handoffs}
        self.handoffs[message.message_id] = handoff
        return findings

    def _chain_key(self, obs: Observation) -> str | None:
        """The task a hand-off belongs to, or None when the message is not a hand-off."""
        message, facts = obs.message, obs.facts
        if obs.is_reply:
            return None
        if facts.action in HANDOFF_ACTIONS:
            return facts.task_id or message.correlation_id
        raw_action = message.content.get("action") if isinstance(message.content, dict) else None
        if message.message_type != "request" or raw_action in ACTIONS:
            return None
        if message.causation_id is None:
            return message.correlation_id  # a conversation starts: the asker hands it on
        cause = self.handoffs.get(message.causation_id)
        if cause is not None and cause.correlation_id == message.correlation_id:
            return cause.chain
        return None

    def _cycle(self, chain: _Chain, handoff: _HandOff, target: str) -> tuple[list[str], list[str], bool]:
        """The agents from ``target``'s hand-off round to this one, and their message ids.

        Walks ``causation_id`` links back to ``target``'s own hand-off; when a link is
        missing or leaves the chain, falls back to the chain's order of hand-offs.
        """
        senders, ids = [handoff.sender], [handoff.message_id]
        step = handoff
        for _ in range(self.config.max_handoffs):
            cause = self.handoffs.get(step.causation_id) if step.causation_id else None
            if cause is None or cause.chain != handoff.chain:
                break
            senders.append(cause.sender)
            ids.append(cause.message_id)
            if cause.sender == target:
                return senders[::-1], ids[::-1], True
            step = cause
        # Order: everything since the target's last hand-off in this chain.
        ordered = list(chain.handoffs)
        start = max(i for i, h in enumerate(ordered) if h.sender == target) if any(h.sender == target for h in ordered) else 0
        tail = ordered[start:] + [handoff]
        return [h.sender for h in tail], [h.message_id for h in tail], False

    def _finding(
        self, obs: Observation, key: str, chain: _Chain, cycle: list[str], evidence: list[str], linked: bool
    ) -> Finding:
        agents = tuple(dict.fromkeys(cycle))
        base = self.config.linked_confidence if linked else self.config.ordered_confidence
        # Each further return is more evidence that the task circulates and is not re-asked.
        confidence = min(0.99, 1.0 - (1.0 - base) * 0.5 ** (chain.returns - 1))
        path = " → ".join([*cycle, cycle[0]])
        times = "once" if chain.returns == 1 else f"{chain.returns} times"
        return Finding(
            pattern="routing_loop",
            key=key,
            agents=agents,
            confidence=confidence,
            severity="high" if chain.returns >= 3 else "medium",
            description=(
                f"Task {key} is routed in a loop through {len(agents)} agents: {path}; "
                f"it reached an agent that had already handed it on {times}."
            ),
            evidence=tuple(evidence),
            detected_at=obs.message.timestamp,
            details={
                "cycle": list(agents),
                "path": cycle,
                "task": key,
                "returns": chain.returns,
                "linked_by": "causation" if linked else "order",
            },
        )


__all__ = ["RoutingLoopConfig", "RoutingLoopDetector"]
