"""The resource ledger: who may use how much of what, who holds it, who waits for it.

The ledger is rebuilt from the messages themselves (REQUIREMENTS.md, "Conventions inside
content"):

- ``request_resource`` (from the requester): adds a pending request; a new request from
  the same agent for the same resource replaces its earlier one (asking twice is not twice
  the demand). A request from a quarantined agent is not recorded but counted as refused.
- ``grant`` (from the resource's steward to the requesters in ``target_agents``): moves the
  granted amount (``amount``, else the pending amount) from pending to held. A grant to a
  quarantined agent is refused: the ledger does not hand resources to quarantined agents.
- ``deny`` (steward to requesters): clears their pending request, counts a denial.
- ``release`` (from a holder): reduces its holding by ``amount`` (all of it when absent).
- ``hold`` (from a holder): states that the sender holds ``amount`` now.
- any message with ``resource`` and ``capacity``: announces the resource's capacity.

Bad values never raise: they are reported as warnings and the action that needed them has
no effect on the ledger.

>>> from datetime import datetime, UTC
>>> from chorus_lab.schema import AgentMessage
>>> t = datetime(2026, 1, 1, tzinfo=UTC)
>>> def msg(sender, targets, **content):
...     return AgentMessage(sender, t, "request", content, targets, "c", {})
>>> ledger = ResourceLedger()
>>> _ = ledger.apply(msg("a", ["steward"], action="request_resource", resource="gpu", amount=3))
>>> _ = ledger.apply(msg("steward", ["a"], action="grant", resource="gpu"))
>>> dict(ledger.holders("gpu")), dict(ledger.pending("gpu"))
({'a': 3.0}, {})
>>> ledger.apply(msg("a", [], action="release", resource="gpu", amount=-1)).warnings
['content.amount: must be greater than 0 and at most 1e+12, got -1 (ignored)', 'release of gpu ignored by the ledger: bad amount']
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from chorus_lab.engine.config import EngineConfig
from chorus_lab.engine.content import ContentFacts, parse_content
from chorus_lab.schema import AgentMessage, format_timestamp, parse_timestamp

_EPSILON = 1e-9
"""Holdings below this are float residue of releases, not holdings."""

_USED_KEYS: dict[str, tuple[str, ...]] = {
    "request_resource": ("resource", "amount", "priority"),
    "grant": ("resource", "amount"),
    "deny": ("resource",),
    "release": ("resource", "amount"),
    "hold": ("resource", "amount"),
}
"""The keys each ledger action relies on; a bad value in one of them voids the action."""


@dataclass(frozen=True, slots=True)
class PendingRequest:
    """A request for a resource that has been neither granted nor denied yet."""

    agent_id: str
    resource: str
    amount: float
    priority: float
    message_id: str
    time: datetime


@dataclass(slots=True)
class ResourceState:
    """Everything the ledger knows about one resource."""

    capacity: float | None = None
    """Announced capacity; None means the configured default applies."""
    holders: dict[str, float] = field(default_factory=dict)
    held_since: dict[str, datetime] = field(default_factory=dict)
    pending: dict[str, PendingRequest] = field(default_factory=dict)
    denials: dict[str, int] = field(default_factory=dict)
    refusals: dict[str, int] = field(default_factory=dict)
    """Requests or grants the ledger refused because the agent was quarantined."""


@dataclass(frozen=True, slots=True)
class LedgerUpdate:
    """What one message did to the ledger."""

    action: str | None = None
    resource: str | None = None
    warnings: list[str] = field(default_factory=list)
    """Bad content, and messages that disagree with the ledger (an unsolicited grant,
    holdings beyond capacity, releasing more than held). Refusals are in ``refused``."""
    granted: list[str] = field(default_factory=list)
    """Targets whose grant moved into holdings."""
    denied: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    """Agents whose request or grant was refused because they are quarantined."""
    released: float = 0.0
    held_for_s: float | None = None
    """For a release: how long the sender had held the resource."""
    sender_held: float = 0.0
    """What the sender held of the resource when the message arrived."""


class LedgerView(Protocol):
    """The read-only questions a predictor may ask the ledger."""

    def capacity(self, resource: str) -> float: ...

    def capacity_known(self, resource: str) -> bool: ...

    def known(self, resource: str) -> bool: ...

    def holders(self, resource: str) -> Mapping[str, float]: ...

    def held_total(self, resource: str) -> float: ...

    def pending(self, resource: str, now: datetime | None = None) -> Mapping[str, PendingRequest]: ...

    def waiting_for(self, agent_id: str, now: datetime | None = None) -> list[PendingRequest]: ...

    def denials(self, resource: str, agent_id: str) -> int: ...

    def is_quarantined(self, agent_id: str) -> bool: ...


class ResourceLedger:
    """Capacity, holdings, pending requests and denials per resource."""

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.resources: dict[str, ResourceState] = {}
        self.quarantined: set[str] = set()
        # Index agent -> resources it has pending requests on (derived; rebuilt on restore).
        self._waits: dict[str, set[str]] = {}
        # Built once: every liveness check compares against it (several per message).
        self._ttl = timedelta(seconds=self.config.pending_ttl_s)

    # ------------------------------------------------------------------ view

    def capacity(self, resource: str) -> float:
        state = self.resources.get(resource)
        if state is None or state.capacity is None:
            return self.config.default_capacity
        return state.capacity

    def capacity_known(self, resource: str) -> bool:
        state = self.resources.get(resource)
        return state is not None and state.capacity is not None

    def known(self, resource: str) -> bool:
        """Whether anything (capacity, holdings, requests, denials) is recorded for it."""
        return resource in self.resources

    def holders(self, resource: str) -> Mapping[str, float]:
        state = self.resources.get(resource)
        return dict(state.holders) if state else {}

    def held_total(self, resource: str) -> float:
        state = self.resources.get(resource)
        # Sorted, so the float sum does not depend on insertion order (restore equality).
        return sum(sorted(state.holders.values())) if state else 0.0

    def pending(self, resource: str, now: datetime | None = None) -> Mapping[str, PendingRequest]:
        """Live pending requests (those younger than ``pending_ttl_s`` at ``now``)."""
        state = self.resources.get(resource)
        if state is None:
            return {}
        if now is None:
            return dict(state.pending)
        ttl = self._ttl
        return {agent: req for agent, req in state.pending.items() if now - req.time <= ttl}

    def waiting_for(self, agent_id: str, now: datetime | None = None) -> list[PendingRequest]:
        """The agent's live pending requests, sorted by resource."""
        found = []
        for resource in sorted(self._waits.get(agent_id, ())):
            request = self.resources[resource].pending.get(agent_id)
            if request is not None and self._live(request, now):
                found.append(request)
        return found

    def denials(self, resource: str, agent_id: str) -> int:
        state = self.resources.get(resource)
        return state.denials.get(agent_id, 0) if state else 0

    def refusals(self, resource: str, agent_id: str) -> int:
        state = self.resources.get(resource)
        return state.refusals.get(agent_id, 0) if state else 0

    def is_quarantined(self, agent_id: str) -> bool:
        return agent_id in self.quarantined

    def set_quarantined(self, agent_id: str, quarantined: bool) -> None:
        """Tell the ledger an agent's quarantine status (the pipeline keeps this in sync)."""
        if quarantined:
            self.quarantined.add(agent_id)
        else:
            self.quarantined.discard(agent_id)

    # ------------------------------------------------------------------ update

    def apply(self, message: AgentMessage, facts: ContentFacts | None = None) -> LedgerUpdate:
        """Apply one message; return what changed and any warnings. Never raises on content.

        ``facts`` may be passed when the caller already parsed the content (their warnings
        are then the caller's to report); otherwise the content is parsed here and its
        warnings are included.
        """
        warnings: list[str] = []
        if facts is None:
            facts, warnings = parse_content(message.content, max_amount=self.config.max_amount)
        now = message.timestamp.astimezone(UTC)
        resource = facts.resource

        if resource is not None and facts.capacity is not None:
            self._state(resource).capacity = facts.capacity

        action = facts.action
        if action not in _USED_KEYS:
            return LedgerUpdate(action, resource, warnings)
        bad = [key for key in _USED_KEYS[action] if key in facts.bad]
        if bad:
            warnings.append(f"{action} of {resource or '?'} ignored by the ledger: bad {', '.join(bad)}")
            return LedgerUpdate(action, resource, warnings)
        if resource is None:
            warnings.append(f"{action} ignored by the ledger: content.resource is missing")
            return LedgerUpdate(action, resource, warnings)

        state = self._state(resource)
        self._expire(resource, now)
        sender = message.agent_id
        sender_held = state.holders.get(sender, 0.0)
        targets = list(dict.fromkeys(message.target_agents))
        if action == "request_resource":
            return self._request(message, facts, resource, sender_held, warnings)
        if action == "grant":
            return self._grant(facts, resource, targets, now, sender_held, warnings)
        if action == "deny":
            return self._deny(resource, targets, sender_held, warnings)
        if action == "release":
            return self._release(sender, facts, resource, now, sender_held, warnings)
        return self._hold(sender, facts, resource, now, sender_held, warnings)

    def _request(
        self,
        message: AgentMessage,
        facts: ContentFacts,
        resource: str,
        sender_held: float,
        warnings: list[str],
    ) -> LedgerUpdate:
        sender = message.agent_id
        state = self.resources[resource]
        if sender in self.quarantined:
            self._drop_pending(resource, sender)
            state.refusals[sender] = state.refusals.get(sender, 0) + 1
            return LedgerUpdate("request_resource", resource, warnings, refused=[sender], sender_held=sender_held)
        request = PendingRequest(
            agent_id=sender,
            resource=resource,
            amount=facts.amount if facts.amount is not None else self.config.default_amount,
            priority=facts.priority if facts.priority is not None else self.config.default_priority,
            message_id=message.message_id,
            time=message.timestamp.astimezone(UTC),
        )
        state.pending[sender] = request
        self._waits.setdefault(sender, set()).add(resource)
        return LedgerUpdate("request_resource", resource, warnings, sender_held=sender_held)

    def _grant(
        self,
        facts: ContentFacts,
        resource: str,
        targets: list[str],
        now: datetime,
        sender_held: float,
        warnings: list[str],
    ) -> LedgerUpdate:
        state = self.resources[resource]
        if not targets:
            warnings.append(f"grant of {resource} names no target agent")
        granted: list[str] = []
        refused: list[str] = []
        for target in targets:
            request = state.pending.get(target)
            self._drop_pending(resource, target)
            if target in self.quarantined:
                state.refusals[target] = state.refusals.get(target, 0) + 1
                refused.append(target)
                continue
            if facts.amount is not None:
                amount = facts.amount
            elif request is not None:
                amount = request.amount
            else:
                amount = self.config.default_amount
            if request is None:
                warnings.append(f"grant of {resource} to {target}, which has no pending request")
            state.holders[target] = state.holders.get(target, 0.0) + amount
            state.held_since.setdefault(target, now)
            granted.append(target)
        total = self.held_total(resource)
        capacity = self.capacity(resource)
        if granted and total > capacity + _EPSILON:
            warnings.append(f"{resource} is now held beyond its capacity ({total:g} of {capacity:g})")
        return LedgerUpdate("grant", resource, warnings, granted=granted, refused=refused, sender_held=sender_held)

    def _deny(self, resource: str, targets: list[str], sender_held: float, warnings: list[str]) -> LedgerUpdate:
        state = self.resources[resource]
        if not targets:
            warnings.append(f"deny of {resource} names no target agent")
        for target in targets:
            self._drop_pending(resource, target)
            state.denials[target] = state.denials.get(target, 0) + 1
        return LedgerUpdate("deny", resource, warnings, denied=targets, sender_held=sender_held)

    def _release(
        self,
        sender: str,
        facts: ContentFacts,
        resource: str,
        now: datetime,
        sender_held: float,
        warnings: list[str],
    ) -> LedgerUpdate:
        state = self.resources[resource]
        if sender_held <= 0.0:
            warnings.append(f"release of {resource} by {sender}, which holds none of it")
            return LedgerUpdate("release", resource, warnings)
        amount = facts.amount if facts.amount is not None else sender_held
        if amount > sender_held + _EPSILON:
            warnings.append(f"{sender} released {amount:g} of {resource} but held only {sender_held:g}")
            amount = sender_held
        since = state.held_since.get(sender)
        held_for = max(0.0, (now - since).total_seconds()) if since is not None else None
        remaining = sender_held - amount
        if remaining <= _EPSILON:
            state.holders.pop(sender, None)
            state.held_since.pop(sender, None)
        else:
            state.holders[sender] = remaining
        return LedgerUpdate("release", resource, warnings, released=amount, held_for_s=held_for, sender_held=sender_held)

    def _hold(
        self,
        sender: str,
        facts: ContentFacts,
        resource: str,
        now: datetime,
        sender_held: float,
        warnings: list[str],
    ) -> LedgerUpdate:
        state = self.resources[resource]
        if facts.amount is not None:
            state.holders[sender] = facts.amount
            state.held_since.setdefault(sender, now)
        return LedgerUpdate("hold", resource, warnings, sender_held=sender_held)

    # ------------------------------------------------------------------ helpers

    def _state(self, resource: str) -> ResourceState:
        state = self.resources.get(resource)
        if state is None:
            state = self.resources[resource] = ResourceState()
        return state

    def _live(self, request: PendingRequest, now: datetime | None) -> bool:
        return now is None or now - request.time <= self._ttl

    def _expire(self, resource: str, now: datetime) -> None:
        ttl = self._ttl
        expired = [agent for agent, request in self.resources[resource].pending.items() if now - request.time > ttl]
        for agent in expired:
            self._drop_pending(resource, agent)

    def _drop_pending(self, resource: str, agent_id: str) -> None:
        self.resources[resource].pending.pop(agent_id, None)
        waits = self._waits.get(agent_id)
        if waits is not None:
            waits.discard(resource)
            if not waits:
                del self._waits[agent_id]

    # ------------------------------------------------------------------ snapshot

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able copy of the ledger's state."""
        return {
            "quarantined": sorted(self.quarantined),
            "resources": {
                name: {
                    "capacity": state.capacity,
                    "holders": dict(state.holders),
                    "held_since": {a: format_timestamp(t) for a, t in state.held_since.items()},
                    "pending": {
                        a: {
                            "amount": r.amount,
                            "priority": r.priority,
                            "message_id": r.message_id,
                            "time": format_timestamp(r.time),
                        }
                        for a, r in state.pending.items()
                    },
                    "denials": dict(state.denials),
                    "refusals": dict(state.refusals),
                }
                for name, state in self.resources.items()
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], config: EngineConfig | None = None) -> ResourceLedger:
        """Rebuild a ledger from :meth:`to_dict` output."""
        ledger = cls(config)
        ledger.quarantined = set(data["quarantined"])
        for name, raw in data["resources"].items():
            state = ResourceState(
                capacity=raw["capacity"],
                holders={a: float(v) for a, v in raw["holders"].items()},
                held_since={a: parse_timestamp(t) for a, t in raw["held_since"].items()},
                pending={
                    a: PendingRequest(a, name, float(r["amount"]), float(r["priority"]), r["message_id"], parse_timestamp(r["time"]))
                    for a, r in raw["pending"].items()
                },
                denials={a: int(n) for a, n in raw["denials"].items()},
                refusals={a: int(n) for a, n in raw["refusals"].items()},
            )
            ledger.resources[name] = state
            for agent in state.pending:
                ledger._waits.setdefault(agent, set()).add(name)
        return ledger
