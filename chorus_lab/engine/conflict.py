"""Conflict prediction: the risk that a resource request ends in a conflict.

A :class:`Predictor` turns a message and a read-only view of the resource ledger into a
:class:`~chorus_lab.schema.ConflictAnalysis`. The default, :class:`LedgerPredictor`, is
deterministic and explainable; another predictor (an LLM-backed one, say) can be plugged
into the pipeline without touching the rest.

The default model is one logistic function of what the ledger knows when the request
arrives (``docs/engine.md`` discusses the choice)::

    u = (amount + held) / capacity                       load if the request were granted
    c = Σ_competitors amount_j · σ((prio_j − prio) / s) / capacity    weighted waiting demand
    z = k · (u + c − u0) + w_D · deadlock + w_n · ln(1 + denials)
    risk = σ(z), or 1 when the requester is quarantined (the ledger refuses it for certain)

It is monotone in each input: more demand, less capacity, more or higher-priority
competitors, a deadlock, earlier denials or quarantine never lower the risk.

>>> from datetime import datetime, UTC
>>> from chorus_lab.schema import AgentMessage
>>> from chorus_lab.engine.ledger import ResourceLedger
>>> ledger = ResourceLedger()
>>> t = datetime(2026, 1, 1, tzinfo=UTC)
>>> m = AgentMessage("a", t, "request",
...     {"action": "request_resource", "resource": "gpu", "amount": 10, "capacity": 10}, [], "c", {})
>>> _ = ledger.apply(AgentMessage("s", t, "broadcast", {"resource": "gpu", "capacity": 10}, [], "c", {}))
>>> analysis = LedgerPredictor().predict(m, ledger)
>>> round(analysis.risk, 3), analysis.conflict_type
(0.168, 'none')
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from chorus_lab.engine.config import EngineConfig
from chorus_lab.engine.content import ContentFacts, parse_content
from chorus_lab.engine.ledger import LedgerView
from chorus_lab.schema import AgentMessage, ConflictAnalysis, ConflictType

PREDICTOR_NAME = "ledger-v1"


class Predictor(Protocol):
    """Anything that can assess a message against the ledger."""

    def predict(self, message: AgentMessage, ledger: LedgerView) -> ConflictAnalysis:
        """The risk (0–1) that ``message`` ends in a conflict, with its explanation.

        Called *before* the message is applied to the ledger. Must not modify the ledger.
        """
        ...


def sigmoid(z: float) -> float:
    """The logistic function, without overflow for large ``|z|``.

    >>> sigmoid(0.0), sigmoid(-1000.0), sigmoid(1000.0)
    (0.5, 0.0, 1.0)
    """
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@dataclass(frozen=True, slots=True)
class RiskFactors:
    """The inputs of the risk formula for one request, kept for the explanation."""

    amount: float
    priority: float
    held: float
    capacity: float
    load: float
    """u: (amount + held) / capacity."""
    contention: float
    """c: priority-weighted competing demand / capacity."""
    denials: int
    deadlock: tuple[str, ...]
    """The wait-for cycle the request would close (starting with the requester), or ()."""
    quarantined: bool
    competitors: tuple[str, ...]
    outranking: tuple[str, ...]
    """Competitors waiting at equal or higher priority."""


def risk_from_factors(factors: RiskFactors, config: EngineConfig) -> float:
    """The logistic risk of :class:`RiskFactors` (the formula in the module docstring).

    >>> f = RiskFactors(1, 5, 0, 1, 1.0, 0.0, 0, (), False, (), ())   # a free mutex
    >>> round(risk_from_factors(f, EngineConfig()), 3)
    0.168
    """
    if factors.quarantined:
        return 1.0
    # Clamped so absurd loads cannot overflow; beyond 1e6 the risk is 1 anyway.
    pressure = min(factors.load, 1e6) + min(factors.contention, 1e6)
    z = config.risk_load_slope * (pressure - config.risk_load_center)
    if factors.deadlock:
        z += config.risk_deadlock_weight
    z += config.risk_denial_weight * math.log1p(factors.denials)
    return min(1.0, max(0.0, sigmoid(z)))


def find_deadlock(
    requester: str,
    resource: str,
    amount: float,
    ledger: LedgerView,
    now: datetime | None,
    max_depth: int,
    capacity: float | None = None,
    held: float | None = None,
) -> tuple[str, ...]:
    """The wait-for cycle that ``requester`` would close by waiting for ``resource``.

    Agent x *waits for* agent y when x has a pending request on a resource y holds that
    cannot be satisfied now (held + requested > capacity). The request makes the
    requester wait for every other holder of ``resource`` (if it cannot be satisfied);
    a deadlock is a path from one of those holders back to the requester. Breadth-first,
    neighbours in sorted order, so the shortest cycle is found and the answer is
    deterministic. Cost: O(V + E) of the wait-for graph within ``max_depth``.
    ``capacity`` overrides the ledger's capacity of ``resource`` (the request may announce it);
    ``held`` is the ledger's ``held_total(resource)`` when the caller already has it.
    """
    if capacity is None:
        capacity = ledger.capacity(resource)
    if held is None:
        held = ledger.held_total(resource)
    if amount + held <= capacity:
        return ()
    start = sorted(a for a in ledger.holders(resource) if a != requester)
    parent: dict[str, str] = {agent: requester for agent in start}
    frontier = start
    for _ in range(max_depth - 1):
        next_frontier: list[str] = []
        for agent in frontier:
            for successor in _waits_on(agent, ledger, now):
                if successor == requester:
                    cycle = [agent]
                    while parent[cycle[-1]] != requester:
                        cycle.append(parent[cycle[-1]])
                    return (requester, *reversed(cycle))
                if successor not in parent:
                    parent[successor] = agent
                    next_frontier.append(successor)
        frontier = next_frontier
        if not frontier:
            break
    return ()


def _number(value: float) -> str:
    """At most two decimals, no trailing zeros: holdings carried forward are expectations.

    >>> _number(12.0), _number(2.384615), _number(1e6)
    ('12', '2.38', '1000000')
    """
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _staleness(ledger: LedgerView, resource: str) -> str | None:
    """What a lagging view says its numbers rest on (``MergedLedgerView.staleness``), else None.

    An optional method, not part of :class:`LedgerView`: only a view that lags the fleet has it.
    """
    method = getattr(ledger, "staleness", None)
    return method(resource) if method is not None else None


def _waits_on(agent: str, ledger: LedgerView, now: datetime | None) -> list[str]:
    """The agents ``agent`` is blocked on, sorted."""
    blocked_by: set[str] = set()
    for request in ledger.waiting_for(agent, now):
        if request.amount + ledger.held_total(request.resource) > ledger.capacity(request.resource):
            blocked_by.update(h for h in ledger.holders(request.resource) if h != agent)
    return sorted(blocked_by)


class LedgerPredictor:
    """The default predictor: a logistic function of load, contention, deadlock, history."""

    name = PREDICTOR_NAME

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()

    def predict(self, message: AgentMessage, ledger: LedgerView) -> ConflictAnalysis:
        facts, _ = parse_content(message.content, max_amount=self.config.max_amount)
        return self.assess(message, facts, ledger)

    def assess(self, message: AgentMessage, facts: ContentFacts, ledger: LedgerView) -> ConflictAnalysis:
        """Like :meth:`predict`, for a caller that already parsed the content."""
        if facts.action != "request_resource":
            return ConflictAnalysis(
                risk=0.0,
                confidence=1.0,
                conflict_type="none",
                reason="Not a resource request, so there is nothing to conflict over.",
                resource=facts.resource,
                predictor=self.name,
            )
        unusable = [key for key in ("resource", "amount", "priority") if key in facts.bad]
        if facts.resource is None or unusable:
            what = f"bad {', '.join(unusable)}" if unusable else "no resource named"
            return ConflictAnalysis(
                risk=0.0,
                confidence=0.5,
                conflict_type="none",
                reason=f"Resource request not assessed ({what}); the ledger ignores it.",
                resource=facts.resource,
                predictor=self.name,
            )
        factors = self.factors(message, facts, ledger)
        risk = risk_from_factors(factors, self.config)
        return ConflictAnalysis(
            risk=risk,
            confidence=self._confidence(facts, factors, ledger),
            conflict_type=self._conflict_type(factors, risk),
            reason=explain(facts.resource, factors, risk, _staleness(ledger, facts.resource)),
            resource=facts.resource,
            competing_agents=list(factors.competitors),
            predictor=self.name,
        )

    def factors(self, message: AgentMessage, facts: ContentFacts, ledger: LedgerView) -> RiskFactors:
        """Read the inputs of the risk formula off the ledger."""
        assert facts.resource is not None
        resource = facts.resource
        config = self.config
        requester = message.agent_id
        now = message.timestamp.astimezone(UTC)
        amount = facts.amount if facts.amount is not None else config.default_amount
        priority = facts.priority if facts.priority is not None else config.default_priority
        # A capacity announced in the request itself counts already.
        capacity = facts.capacity if facts.capacity is not None else ledger.capacity(resource)
        held = ledger.held_total(resource)
        waiting = {
            agent: request
            for agent, request in ledger.pending(resource, now).items()
            # A quarantined agent's request will not be granted, so it takes nothing away.
            if agent != requester and not ledger.is_quarantined(agent)
        }
        weighted = sum(
            sorted(r.amount * sigmoid((r.priority - priority) / config.priority_scale) for r in waiting.values())
        )
        holders = {agent for agent in ledger.holders(resource) if agent != requester}
        return RiskFactors(
            amount=amount,
            priority=priority,
            held=held,
            capacity=capacity,
            load=(amount + held) / capacity,
            contention=weighted / capacity,
            denials=ledger.denials(resource, requester),
            deadlock=find_deadlock(requester, resource, amount, ledger, now, config.deadlock_search_depth, capacity, held),
            quarantined=ledger.is_quarantined(requester),
            competitors=tuple(sorted(holders | set(waiting))),
            outranking=tuple(sorted(a for a, r in waiting.items() if r.priority >= priority)),
        )

    def _conflict_type(self, factors: RiskFactors, risk: float) -> ConflictType:
        if factors.quarantined:
            return "denial"
        if factors.deadlock:
            return "deadlock"
        if risk < self.config.conflict_type_threshold:
            return "none"
        if factors.load > 1.0:
            return "over_capacity"
        if factors.contention > 0.0 and factors.load + factors.contention > 1.0:
            return "contention"
        if factors.denials > 0:
            return "denial"
        return "over_capacity" if not factors.outranking else "contention"

    def _confidence(self, facts: ContentFacts, factors: RiskFactors, ledger: LedgerView) -> float:
        """How much the ledger knows about the resource: announced capacity, recorded use."""
        assert facts.resource is not None
        resource = facts.resource
        # The verdict on a quarantined requester is certain: the ledger refuses it.
        if factors.quarantined:
            return 1.0
        confidence = 0.5
        if ledger.capacity_known(resource) or facts.capacity is not None:
            confidence += 0.3
        if ledger.known(resource):
            confidence += 0.2
        return confidence


def explain(resource: str, factors: RiskFactors, risk: float, basis: str | None = None) -> str:
    """One sentence an operator can read, naming the numbers behind ``risk``.

    ``basis``, when given, says what the ledger numbers rest on (a lagging fleet table).

    >>> f = RiskFactors(4, 5, 8, 10, 1.2, 0.0, 0, (), False, ("b",), ())
    >>> explain("gpu", f, 0.77)
    'Risk 0.77: request for 4 of gpu would bring use to 12/10 (120% of capacity); also held or wanted by b.'
    """
    parts = [
        f"request for {factors.amount:g} of {resource} would bring use to "
        f"{_number(factors.amount + factors.held)}/{factors.capacity:g} ({factors.load:.0%} of capacity)"
    ]
    if factors.quarantined:
        parts.insert(0, "the requester is quarantined, so the ledger will not grant it")
    if factors.deadlock:
        cycle = " → ".join((*factors.deadlock, factors.deadlock[0]))
        parts.append(f"deadlock: {cycle} each wait for what the next holds")
    if factors.outranking:
        parts.append(
            f"{len(factors.outranking)} competitor(s) wait at equal or higher priority "
            f"({', '.join(factors.outranking)})"
        )
    elif factors.competitors:
        parts.append(f"also held or wanted by {', '.join(factors.competitors)}")
    if factors.denials:
        parts.append(f"denied {factors.denials} time(s) before")
    if basis:
        parts.append(basis)
    return f"Risk {risk:.2f}: " + "; ".join(parts) + "."
