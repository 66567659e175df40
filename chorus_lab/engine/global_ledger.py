"""The fleet-wide resource ledger as a table stage 1 reads (DESIGN.md principle 4).

Each stage-1 partition keeps a ledger of the messages *its* agents send, which is only a
fragment of the truth: a request lands in the requester's partition, the steward's
``grant`` in the steward's. Stage 2 sees every decision and publishes each resource's
state on the compacted ``chorus-resource-ledger`` topic. :class:`GlobalLedgerTable` holds
the latest of those records (like a Kafka Streams global table), and
:class:`MergedLedgerView` answers the predictor's questions from both: the table for the
fleet, and the partition's own ledger for whatever it learned after the table's record
(the table lags by the pipeline's latency).

:class:`GlobalTablePredictor` wraps any predictor so it reads the merged view; nothing else
in the engine reads the table. The engine's state (trust, quarantine, its own ledger)
never depends on the table, so recovery by replay still rebuilds it exactly; what the
table changes is a decision's ``conflict_analysis``, which depends on what the table held
when it was decided (docs/engine.md, "Global ledger").

>>> from datetime import datetime, UTC
>>> from chorus_lab.schema import AgentMessage
>>> table = GlobalLedgerTable()
>>> table.apply({"resource": "gpu", "timestamp": "2026-01-01T00:00:05Z", "state": {
...     "capacity": 2, "capacity_known": True, "holders": {"a": 2.0}, "held_since": {"a": "2026-01-01T00:00:01Z"},
...     "pending": {}, "denials": {}}})
True
>>> local = ResourceLedger()
>>> view = MergedLedgerView(local, table)
>>> view.capacity("gpu"), dict(view.holders("gpu")), view.held_total("gpu")
(2.0, {'a': 2.0}, 2.0)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from chorus_lab.engine.config import EngineConfig
from chorus_lab.engine.conflict import LedgerPredictor, Predictor
from chorus_lab.engine.content import ContentFacts
from chorus_lab.engine.ledger import LedgerView, PendingRequest, ResourceLedger
from chorus_lab.schema import AgentMessage, ConflictAnalysis, parse_timestamp


@dataclass(frozen=True, slots=True)
class TableEntry:
    """One resource as stage 2 last published it."""

    capacity: float | None
    holders: dict[str, float]
    held_since: dict[str, datetime]
    pending: dict[str, PendingRequest]
    denials: dict[str, int]
    timestamp: datetime
    """Event time of the decision that produced the record."""


class GlobalLedgerTable:
    """The latest ``chorus-resource-ledger`` record per resource."""

    def __init__(self) -> None:
        self.entries: dict[str, TableEntry] = {}
        self._waits: dict[str, set[str]] = {}
        """agent -> resources it has a pending request on (in the table)."""
        self.records = 0

    def __len__(self) -> int:
        return len(self.entries)

    def apply(self, value: Mapping[str, Any]) -> bool:
        """Take one record value (``stage2.LedgerRecord.to_dict()``); False when older than the one held.

        Raises ``KeyError``/``ValueError`` for a record that is not of that form.
        """
        resource = str(value["resource"])
        state = value["state"]
        when = parse_timestamp(value["timestamp"])
        old = self.entries.get(resource)
        if old is not None and when < old.timestamp:
            return False
        entry = TableEntry(
            capacity=float(state["capacity"]) if state.get("capacity_known") else None,
            holders={a: float(v) for a, v in state["holders"].items()},
            held_since={a: parse_timestamp(t) for a, t in state.get("held_since", {}).items()},
            pending={
                a: PendingRequest(a, resource, float(r["amount"]), float(r["priority"]), str(r["message_id"]), parse_timestamp(r["time"]))
                for a, r in state["pending"].items()
            },
            denials={a: int(n) for a, n in state.get("denials", {}).items()},
            timestamp=when,
        )
        if old is not None:
            for agent in old.pending:
                self._waits.get(agent, set()).discard(resource)
        for agent in entry.pending:
            self._waits.setdefault(agent, set()).add(resource)
        self.entries[resource] = entry
        self.records += 1
        return True

    def waits(self, agent_id: str) -> set[str]:
        """Resources the table shows ``agent_id`` waiting for."""
        return self._waits.get(agent_id, set())


class MergedLedgerView:
    """The table for the fleet, overlaid with what the local ledger learned after it.

    Per resource: an agent's holding or pending request comes from the local ledger only
    when it is newer than the table's record (the table has seen everything older, and the
    local ledger of a requester's partition never sees the steward's answer), else from
    the table. Capacity: the
    announced one from either; denials: the larger count.
    """

    def __init__(self, local: ResourceLedger, table: GlobalLedgerTable) -> None:
        self.local = local
        self.table = table

    def capacity(self, resource: str) -> float:
        entry = self.table.entries.get(resource)
        if self.local.capacity_known(resource) or entry is None or entry.capacity is None:
            return self.local.capacity(resource)
        return entry.capacity

    def capacity_known(self, resource: str) -> bool:
        entry = self.table.entries.get(resource)
        return self.local.capacity_known(resource) or (entry is not None and entry.capacity is not None)

    def known(self, resource: str) -> bool:
        return self.local.known(resource) or resource in self.table.entries

    def holders(self, resource: str) -> Mapping[str, float]:
        entry = self.table.entries.get(resource)
        local = self.local.holders(resource)
        if entry is None:
            return local
        merged = dict(entry.holders)
        state = self.local.resources.get(resource)
        for agent, amount in local.items():
            since = state.held_since.get(agent) if state is not None else None
            # Older local news is in the table already (stage 2 saw that message too), and
            # what the table says since (a release seen elsewhere) is fresher.
            if since is None or since > entry.timestamp:
                merged[agent] = amount
        return merged

    def held_total(self, resource: str) -> float:
        return sum(sorted(self.holders(resource).values()))

    def pending(self, resource: str, now: datetime | None = None) -> Mapping[str, PendingRequest]:
        entry = self.table.entries.get(resource)
        local = self.local.pending(resource, now)
        if entry is None:
            return local
        merged = {a: r for a, r in entry.pending.items() if self._live(r, now)}
        for agent, request in local.items():
            # A local request older than the table's record was answered or is listed there:
            # the requester's partition never sees the steward's grant or denial.
            if request.time > entry.timestamp:
                merged[agent] = request
        return merged

    def waiting_for(self, agent_id: str, now: datetime | None = None) -> list[PendingRequest]:
        resources = {r.resource for r in self.local.waiting_for(agent_id, now)} | self.table.waits(agent_id)
        found = []
        for resource in sorted(resources):
            request = self.pending(resource, now).get(agent_id)
            if request is not None:
                found.append(request)
        return found

    def denials(self, resource: str, agent_id: str) -> int:
        entry = self.table.entries.get(resource)
        table = entry.denials.get(agent_id, 0) if entry is not None else 0
        return max(self.local.denials(resource, agent_id), table)

    def is_quarantined(self, agent_id: str) -> bool:
        return self.local.is_quarantined(agent_id)

    def _live(self, request: PendingRequest, now: datetime | None) -> bool:
        return now is None or now - request.time <= timedelta(seconds=self.local.config.pending_ttl_s)


class GlobalTablePredictor:
    """A predictor that reads :class:`MergedLedgerView` instead of the partition's own ledger.

    An empty table changes nothing: the inner predictor sees the local ledger as before.
    """

    def __init__(self, inner: Predictor, table: GlobalLedgerTable) -> None:
        self.inner = inner
        self.table = table
        self.name = getattr(inner, "name", type(inner).__name__)

    def predict(self, message: AgentMessage, ledger: LedgerView) -> ConflictAnalysis:
        if not self.table.entries or not isinstance(ledger, ResourceLedger):
            return self.inner.predict(message, ledger)
        return self.inner.predict(message, MergedLedgerView(ledger, self.table))

    def assess(self, message: AgentMessage, facts: ContentFacts, ledger: LedgerView) -> ConflictAnalysis:
        """:meth:`predict` with the content already parsed (only for an inner ``LedgerPredictor``)."""
        if not isinstance(self.inner, LedgerPredictor):
            raise TypeError(f"assess needs a LedgerPredictor inside, not {type(self.inner).__name__}; call predict")
        if not self.table.entries or not isinstance(ledger, ResourceLedger):
            return self.inner.assess(message, facts, ledger)
        return self.inner.assess(message, facts, MergedLedgerView(ledger, self.table))


def default_global_predictor(table: GlobalLedgerTable, config: EngineConfig | None = None) -> GlobalTablePredictor:
    """The default ledger predictor, reading through ``table``."""
    from chorus_lab.engine.conflict import LedgerPredictor

    return GlobalTablePredictor(LedgerPredictor(config), table)


__all__ = ["GlobalLedgerTable", "GlobalTablePredictor", "MergedLedgerView", "TableEntry", "default_global_predictor"]
