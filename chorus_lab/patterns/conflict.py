"""Resource conflicts that actually happen: contention bursts and deadlocks.

Stage 1 *predicts* the risk of every request (``ConflictAnalysis``); this detector
raises an alert when a conflict *materialises* as an incident, not for every ordinary
denial on a busy resource (those are the predictor's business and its calibration data):

- **contention** — within ``burst_window_s`` before a request that its steward then
  *denies*, at least ``min_contenders`` distinct agents asked for the resource, their
  demand exceeds its capacity by ``min_excess``, and that many requests in so short a
  time is improbable for this resource: the Poisson tail probability of its long-run
  request rate is at most ``max_p_value``. On a resource that is always busy, three
  requests at once are normal and are not an incident; on a quiet one they are. A burst
  is judged when the denial comes and judged again on every request that still falls
  within ``burst_window_s`` of the denied one (then as the requests within
  ``burst_window_s`` before that request, so a burst never spans more than the window):
  a steward that answers quickly denies before the whole burst has arrived, and the
  burst is what the definition measures, not the moment of the answer.
- **deadlock** — a request that closes a cycle in the fleet-wide *wait-for graph*: agent
  x waits for agent y when x wants a resource that y holds and that cannot take x's
  amount now. x *wants* a resource from its request until it is granted it, or, once
  denied, for ``wait_memory_s`` more (a denied agent that keeps what it holds and retries
  is still waiting: the ledger forgets a denied request, a deadlock does not). Holdings
  come from stage 2's resource ledger. A deadlock *persists*: a cycle is reported when it
  has closed ``deadlock_sightings`` (3) times — its members keep holding and keep asking —
  each within ``deadlock_window_s`` of the previous; ordinary hold-and-wait on busy
  resources closes a cycle once or twice before a holder lets go.

Confidence: deadlocks over several resources ``cross_resource_confidence`` (0.9), within
one resource ``same_resource_confidence`` (0.7); contention rises with how far the burst is beyond ``max_p_value``,
``0.6 + 0.39·(1 − exp(−decades))``, where decades = log10(max_p_value / p).
Only deadlock participants get a trust signal: contenders did nothing wrong.

Cost per message: O(requests of that resource within the window) and, for a request
that does not fit, the deadlock search (bounded by ``EngineConfig.deadlock_search_depth``).
Memory bounded by ``max_resources`` and the window.

>>> from datetime import datetime, timedelta, UTC
>>> from chorus_lab.engine.ledger import ResourceLedger
>>> from chorus_lab.schema import AgentMessage
>>> from chorus_lab.patterns.common import observe_message
>>> t0, ledger, detector = datetime(2026, 1, 1, tzinfo=UTC), ResourceLedger(), ConflictDetector()
>>> def send(s, sender, target, kind, **content):
...     m = AgentMessage(sender, t0 + timedelta(seconds=s), kind, {"resource": "r", **content},
...                      [target], "c", {}, message_id=f"m{s}")
...     obs = observe_message(m)
...     found = detector.observe(obs, ledger)          # before the ledger takes the message
...     return found + detector.after(obs, ledger, ledger.apply(m))
>>> _ = send(0, "s", "all", "broadcast", action="status", capacity=2)
>>> _ = [send(100 + i / 5, f"a{i}", "s", "request", action="request_resource", amount=2 - i // 2) for i in range(3)]
>>> _ = send(103.1, "s", "a0", "response", action="grant", amount=1)
>>> _ = send(103.2, "s", "a1", "response", action="grant", amount=1)
>>> [(f.agents, f.details["kind"]) for f in send(103.3, "s", "a2", "response", action="deny")]
[(('a0', 'a1', 'a2'), 'contention')]
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime

from chorus_lab.engine.config import EngineConfig
from chorus_lab.engine.ledger import LedgerUpdate, ResourceLedger
from chorus_lab.patterns.alerts import Finding
from chorus_lab.patterns.common import BoundedDict, Observation, poisson_tail


@dataclass(frozen=True, slots=True)
class ConflictConfig:
    """Thresholds of the conflict detector (durations in seconds of event time)."""

    burst_window_s: float = 1.0
    """Requests this close before a denied one count as one burst."""
    min_contenders: int = 3
    """Distinct requesters in a burst."""
    min_excess: float = 2.0
    """Demand in the burst beyond capacity (2: clearly beyond, not a one-unit overshoot)."""
    max_p_value: float = 1e-4
    """A burst at least this improbable for the resource's usual request rate is an incident."""
    min_history_s: float = 60.0
    """A resource's request rate is trusted after this long (no contention alert before)."""
    answer_window_s: float = 30.0
    """How long after a request its denial still counts towards a burst."""
    deadlock_sightings: int = 3
    """Times a wait-for cycle must close (each within ``deadlock_window_s`` of the last) to be reported."""
    deadlock_window_s: float = 60.0
    wait_memory_s: float = 5.0
    """A denied agent still wants the resource this long (unless granted it meanwhile)."""
    max_depth: int = 8
    """Longest wait-for cycle searched (agents)."""
    cross_resource_confidence: float = 0.9
    same_resource_confidence: float = 0.7
    max_resources: int = 10_000
    max_requests: int = 256
    """Recent requests remembered per resource."""


@dataclass(slots=True)
class _Resource:
    first_seen: float
    requests: int = 0
    recent: deque[tuple[float, str, float, str]] = field(default_factory=deque)
    """(time, requester, amount, message id)"""
    denial: tuple[float, tuple[str, ...], str] | None = None
    """The latest denial: (when the denied request was made, denied agents, denial message id)."""
    reported: str = ""
    """Message id of the latest request in the last burst reported (a burst that did not grow is not reported again)."""


class ConflictDetector:
    """Contention bursts (against each resource's usual demand) and wait-for cycles."""

    pattern = "conflict"

    def __init__(self, config: ConflictConfig | None = None, engine_config: EngineConfig | None = None) -> None:
        self.config = config or ConflictConfig()
        self.engine_config = engine_config or EngineConfig()
        self._resources: BoundedDict[str, _Resource] = BoundedDict(self.config.max_resources)
        self._cycles: BoundedDict[frozenset[str], tuple[float, float, int, frozenset[str]]] = BoundedDict(1024)
        """cycle members -> (first seen, last seen, sightings, members whose request closed it)"""
        self._wants: BoundedDict[str, dict[str, tuple[float, str, float]]] = BoundedDict(self.config.max_resources * 10)
        """agent -> resource -> (since, request id, amount)"""

    def observe(self, obs: Observation, ledger: ResourceLedger) -> list[Finding]:
        """Findings for ``obs``, judged against the ledger *before* it is applied."""
        facts = obs.facts
        if facts.action == "request_resource" and facts.resource is not None:
            return self._deadlock(obs, ledger, facts.resource)
        return []

    def after(self, obs: Observation, ledger: ResourceLedger, update: LedgerUpdate | None) -> list[Finding]:
        """Findings once ``obs`` was applied (``update`` is what it did): contention."""
        facts, resource = obs.facts, obs.facts.resource
        if resource is None:
            return []
        state = self._resources.get(resource)
        if state is None:
            state = self._resources[resource] = _Resource(obs.seconds)
        if facts.action == "grant":
            for agent in obs.message.target_agents:
                wants = self._wants.get(agent)
                if wants is not None:
                    wants.pop(resource, None)
        if facts.action == "request_resource":
            amount = facts.amount if facts.amount is not None else self.engine_config.default_amount
            wants = self._wants.get(obs.message.agent_id) or {}
            wants[resource] = (obs.seconds, obs.message.message_id, amount)
            self._wants[obs.message.agent_id] = wants
            state.recent.append((obs.seconds, obs.message.agent_id, amount, obs.message.message_id))
            state.requests += 1
            horizon = obs.seconds - self.config.burst_window_s - self.config.answer_window_s
            while state.recent and (state.recent[0][0] < horizon or len(state.recent) > self.config.max_requests):
                state.recent.popleft()
            if state.denial is not None and obs.seconds - state.denial[0] <= self.config.burst_window_s:
                return self._contention(obs, ledger, resource, state)  # the burst grew after a denial
            return []
        if facts.action == "deny" and update is not None and update.denied:
            asked = [r[0] for r in state.recent if r[1] in update.denied]
            if not asked:
                return []
            state.denial = (asked[-1], tuple(update.denied), obs.message.message_id)
            return self._contention(obs, ledger, resource, state)
        return []

    # ------------------------------------------------------------------ contention

    def _contention(self, obs: Observation, ledger: ResourceLedger, resource: str, state: _Resource) -> list[Finding]:
        """Judge the burst around ``state.denial`` as it stands at ``obs`` (a denial or a later request)."""
        config = self.config
        assert state.denial is not None
        asked_at, denied, denial_id = state.denial
        # At a denial, the burst is the window before the denied request (as always); judged
        # again at a later request, it is the window before *that* request, which still holds
        # the denied one: a burst never spans more than burst_window_s.
        since = asked_at if obs.facts.action == "deny" else obs.seconds
        burst = [r for r in state.recent if since - config.burst_window_s <= r[0] <= obs.seconds]
        contenders = sorted({r[1] for r in burst})
        demand = sum({r[1]: r[2] for r in burst}.values())
        capacity = ledger.capacity(resource)
        if len(contenders) < config.min_contenders or demand < capacity + config.min_excess:
            return []
        if burst[-1][3] == state.reported:
            return []
        first = burst[0][0]
        history = first - state.first_seen
        if history < config.min_history_s:
            return []
        before = state.requests - len([r for r in state.recent if r[0] >= first])
        rate = max(before, 1) / history
        expected = rate * (obs.seconds - first + config.burst_window_s)
        # Arrivals are counted per agent, as contenders and demand are: one agent asking
        # again within the burst (a retry, a second task of a busy agent) is not another
        # independent arrival, and counting it would make ordinary bursts look improbable.
        p_value = poisson_tail(len(contenders), expected)
        if p_value > config.max_p_value:
            return []
        decades = math.log10(config.max_p_value / max(p_value, 1e-300))
        confidence = 0.6 + 0.39 * (1.0 - math.exp(-decades))
        state.reported = burst[-1][3]
        return [
            Finding(
                pattern="conflict",
                key=f"contention:{resource}",
                agents=tuple(contenders),
                confidence=confidence,
                severity="medium",
                description=(
                    f"Contention on {resource}: {len(contenders)} agents asked for {demand:g} within "
                    f"{obs.seconds - first:.1f} s against a capacity of {capacity:g}, and {', '.join(denied)} "
                    f"was denied ({len(contenders)} agents asking this close together has probability {p_value:.1g} at the usual "
                    f"{rate * 60:.1f} requests/min)."
                ),
                evidence=tuple(dict.fromkeys([r[3] for r in burst] + [denial_id, obs.message.message_id])),
                detected_at=obs.message.timestamp,
                details={
                    "kind": "contention",
                    "resource": resource,
                    "capacity": capacity,
                    "demand": demand,
                    "contenders": contenders,
                    "denied": list(denied),
                    "p_value": p_value,
                    "usual_requests_per_s": round(rate, 6),
                },
                culprits=(),
            )
        ]

    # ------------------------------------------------------------------ deadlock

    def _deadlock(self, obs: Observation, ledger: ResourceLedger, resource: str) -> list[Finding]:
        facts, message = obs.facts, obs.message
        amount = facts.amount if facts.amount is not None else self.engine_config.default_amount
        capacity = facts.capacity if facts.capacity is not None else ledger.capacity(resource)
        found = self.find_cycle(message.agent_id, resource, amount, capacity, ledger, obs.seconds)
        if found is None:
            return []
        cycle, waits = found
        resources = sorted(set(waits.values()))
        members = frozenset(cycle)
        first, last, count, askers = self._cycles.get(members) or (obs.seconds, obs.seconds, 0, frozenset())
        if obs.seconds - last > self.config.deadlock_window_s:
            first, count, askers = obs.seconds, 0, frozenset()
        count += 1
        askers = askers | {message.agent_id}
        self._cycles[members] = (first, obs.seconds, count, askers)
        # A deadlock persists: its members keep holding *and keep asking*. Every member must
        # have closed the cycle with a request of its own; one agent retrying against a
        # partner that asked once and moved on is not a deadlock (it dissolves on its own).
        if count < self.config.deadlock_sightings or askers != members:
            return []
        if len(resources) >= 2:
            confidence = self.config.cross_resource_confidence
        else:
            confidence = self.config.same_resource_confidence
        evidence = [message.message_id] + [self._wants[a][r][1] for a, r in waits.items() if a != message.agent_id]
        return [self._deadlock_finding(message.timestamp, evidence, cycle, waits, resources, confidence, ledger)]

    def find_cycle(
        self, requester: str, resource: str, amount: float, capacity: float, ledger: ResourceLedger, now: float
    ) -> tuple[tuple[str, ...], dict[str, str]] | None:
        """The wait-for cycle ``requester`` closes by wanting ``amount`` of ``resource``, if any.

        Breadth-first over holders (sorted, so the shortest cycle is found and the answer is
        deterministic); O(V + E) of the wait-for graph within ``max_depth``. Returns the
        cycle (requester first) and what each member waits for.
        """
        if amount + ledger.held_total(resource) <= capacity:
            return None
        start = sorted(h for h in ledger.holders(resource) if h != requester)
        parent: dict[str, tuple[str, str]] = {h: (requester, resource) for h in start}
        frontier = start
        for _ in range(self.config.max_depth - 1):
            following: list[str] = []
            for agent in frontier:
                for holder, wanted in self._waits_on(agent, ledger, now):
                    if holder == requester:
                        cycle, waits = [agent], {agent: wanted}
                        while parent[cycle[-1]][0] != requester:
                            previous, what = parent[cycle[-1]]
                            waits[previous] = what
                            cycle.append(previous)
                        waits[requester] = resource
                        return (requester, *reversed(cycle)), waits
                    if holder not in parent:
                        parent[holder] = (agent, wanted)
                        following.append(holder)
            frontier = following
            if not frontier:
                break
        return None

    def _waits_on(self, agent: str, ledger: ResourceLedger, now: float) -> list[tuple[str, str]]:
        """(holder, resource) pairs ``agent`` is blocked on, sorted."""
        blocked: set[tuple[str, str]] = set()
        for wanted, (since, _, amount) in (self._wants.get(agent) or {}).items():
            if not self._still_wants(agent, wanted, now - since, ledger):
                continue
            if amount + ledger.held_total(wanted) > ledger.capacity(wanted):
                blocked.update((h, wanted) for h in ledger.holders(wanted) if h != agent)
        return sorted(blocked)

    def _still_wants(self, agent: str, resource: str, age: float, ledger: ResourceLedger) -> bool:
        """Whether ``agent`` still waits for ``resource``, ``age`` seconds after its latest request.

        Granted wants are dropped when the grant comes. A denied request is still wanted for
        ``wait_memory_s`` (an agent that keeps waiting asks again); an unanswered one until
        ``answer_window_s`` has passed: a request nobody answered for that long was ignored,
        and its requester is waiting for nothing it shows any more (the ledger keeps it
        pending for an hour, which must not make it a deadlock member minutes later).
        """
        if age <= self.config.wait_memory_s:
            return True
        return age <= self.config.answer_window_s and ledger.pending(resource).get(agent) is not None

    def _deadlock_finding(
        self,
        when: datetime,
        evidence: list[str],
        cycle: tuple[str, ...],
        waits: dict[str, str],
        resources: list[str],
        confidence: float,
        ledger: ResourceLedger,
    ) -> Finding:
        holds = {agent: sorted(r for r in resources if ledger.resources[r].holders.get(agent, 0.0) > 0) for agent in cycle}
        path = " → ".join([*cycle, cycle[0]])
        who = "; ".join(f"{a} holds {', '.join(h) or 'part of it'} and wants {waits.get(a, '?')}" for a, h in holds.items())
        return Finding(
            pattern="conflict",
            key="deadlock:" + ",".join(sorted(cycle)),
            agents=tuple(sorted(cycle)),
            confidence=confidence,
            severity="high",
            description=(
                f"Deadlock over {', '.join(resources)}: {path}, each waiting for what the next one holds ({who})."
            ),
            evidence=tuple(dict.fromkeys(evidence)),
            detected_at=when,
            details={"kind": "deadlock", "cycle": list(cycle), "resources": resources, "wants": waits, "holds": holds},
        )


__all__ = ["ConflictConfig", "ConflictDetector"]
