"""The fleet-wide resource ledger as a table stage 1 reads (DESIGN.md principle 4).

Each stage-1 partition keeps a ledger of the messages *its* agents send, which is only a
fragment of the truth: a request lands in the requester's partition, the steward's
``grant`` in the steward's. Stage 2 sees every decision and publishes each resource's
state on the compacted ``chorus-resource-ledger`` topic. :class:`GlobalLedgerTable` holds
the latest of those records (like a Kafka Streams global table), and
:class:`MergedLedgerView` answers the predictor's questions from both: the table for the
fleet, and the partition's own ledger for whatever it learned after the table's record
(the table lags by the pipeline's latency). The view is the table's record of each
resource, then the events this partition saw after it (:class:`LocalNews`: its agents'
requests and releases, its stewards' grants and denials) replayed on top, then, for the
time since the table's newest record, what usually happens in that time: holdings end
(with the survival of the hold durations the table has seen), requests are answered
(after the stewards' usual latency: granted if they fit, else denied) and new holdings
begin (the resource's mean holding, as an M/G/∞ queue refills). Each step is a plain
function of the records, the partition's messages and the request's event time.

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

import bisect
import weakref
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from chorus_lab.engine.config import EngineConfig
from chorus_lab.engine.conflict import LedgerPredictor, Predictor
from chorus_lab.engine.content import ContentFacts, parse_content
from chorus_lab.engine.ledger import LedgerView, PendingRequest, ResourceLedger
from chorus_lab.schema import AgentMessage, ConflictAnalysis, parse_timestamp


MAX_DURATION_SAMPLES = 2000
"""Recent hold durations (and answer latencies) the table keeps to age its records."""
MIN_DURATION_SAMPLES = 50
"""Fewer samples than this and the table's records are not aged (too little to go on)."""
ANSWER_QUANTILE = 0.9
"""A request pending longer than this quantile of stewards' answer latency has been answered."""


class DurationSample:
    """The latest ``max_samples`` durations (seconds), kept sorted for quantiles and survival.

    >>> sample = DurationSample(max_samples=4)
    >>> for d in (1.0, 2.0, 3.0, 4.0, 5.0):
    ...     sample.add(d)
    >>> len(sample), sample.quantile(0.5), sample.survival(3.5, 1.0)
    (4, 4.0, 0.5)
    >>> sample.mean(), sample.mean_within(3.0)
    (3.5, 2.75)
    """

    def __init__(self, max_samples: int = MAX_DURATION_SAMPLES) -> None:
        self.max_samples = max_samples
        self._order: deque[float] = deque()
        self._sorted: list[float] = []
        self._total = 0.0

    def __len__(self) -> int:
        return len(self._sorted)

    def add(self, seconds: float) -> None:
        """Add one duration; the oldest goes when full. O(n) for the sorted insert (n ≤ 2,000)."""
        self._order.append(seconds)
        bisect.insort(self._sorted, seconds)
        self._total += seconds
        if len(self._order) > self.max_samples:
            oldest = self._order.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, oldest)]
            self._total -= oldest

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (nearest rank); 0 when empty."""
        if not self._sorted:
            return 0.0
        return self._sorted[min(len(self._sorted) - 1, int(q * len(self._sorted)))]

    def mean(self) -> float:
        """The mean duration (0 when empty)."""
        return self._total / len(self._sorted) if self._sorted else 0.0

    def mean_within(self, window: float) -> float:
        """E[min(duration, window)] over the sample (0 when empty). O(log n + durations ≤ window)."""
        if not self._sorted:
            return 0.0
        shorter = bisect.bisect_right(self._sorted, window)
        return (sum(self._sorted[:shorter]) + window * (len(self._sorted) - shorter)) / len(self._sorted)

    def survival(self, age: float, window: float) -> float:
        """P(duration > age + window | duration > age), from the sample; 1 when nothing outlived ``age``."""
        alive = len(self._sorted) - bisect.bisect_right(self._sorted, age)
        if alive == 0:
            return 1.0
        return (len(self._sorted) - bisect.bisect_right(self._sorted, age + window)) / alive


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
        self.holds = DurationSample()
        """How long holdings lasted: held_since to the record that no longer lists the holder."""
        self.answers = DurationSample()
        """Answer latency: request time to the record that no longer lists it pending."""
        self.latest: datetime | None = None
        """Event time of the newest record applied: nothing the table lacks happened before it."""
        self._occupancy: dict[str, tuple[float, float]] = {}
        """resource -> (∫ held dt, seconds covered) over its records: its mean holding."""

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
            self._learn(resource, old, entry)
        for agent in entry.pending:
            self._waits.setdefault(agent, set()).add(resource)
        self.entries[resource] = entry
        self.records += 1
        self.latest = when if self.latest is None else max(self.latest, when)
        return True

    def mean_held(self, resource: str) -> float:
        """The resource's time-averaged holding over its records (0 before two records)."""
        area, seconds = self._occupancy.get(resource, (0.0, 0.0))
        return area / seconds if seconds > 0.0 else 0.0

    def _learn(self, resource: str, old: TableEntry, new: TableEntry) -> None:
        """Hold durations, answer latencies and mean holding from how the resource's record changed."""
        area, seconds = self._occupancy.get(resource, (0.0, 0.0))
        dt = (new.timestamp - old.timestamp).total_seconds()
        self._occupancy[resource] = (area + sum(sorted(old.holders.values())) * dt, seconds + dt)
        for agent, since in sorted(old.held_since.items()):
            if agent not in new.holders:
                self.holds.add(max(0.0, (new.timestamp - since).total_seconds()))
        for agent, request in sorted(old.pending.items()):
            replaced = new.pending.get(agent)
            if replaced is None or replaced.message_id != request.message_id:
                self.answers.add(max(0.0, (new.timestamp - request.time).total_seconds()))

    def waits(self, agent_id: str) -> set[str]:
        """Resources the table shows ``agent_id`` waiting for."""
        return self._waits.get(agent_id, set())


NewsKind = Literal["request", "grant", "deny", "release", "hold"]

_LEDGER_KEYS = frozenset({"resource", "amount", "priority"})
"""Content keys a bad value of which makes the ledger ignore the message's action."""


@dataclass(frozen=True, slots=True)
class LocalEvent:
    """One thing the partition's own ledger was told about a resource."""

    time: datetime
    kind: NewsKind
    agent: str
    amount: float | None
    """The amount the message named (None: the ledger's default applies)."""
    request: PendingRequest | None = None
    """For a ``request``: the pending request it makes."""


class LocalNews:
    """What one partition's ledger was told, per resource, in arrival order (bounded).

    The table is a snapshot of the fleet as of its record's event time; the partition has
    seen some of what happened since (its own agents' requests and releases, its own
    stewards' grants and denials). :class:`MergedLedgerView` replays those newer events
    on top of the table's record, so a release or a denial seen here after the record
    counts at once instead of a pipeline latency later. Events mirror what
    :meth:`ResourceLedger.apply` would do with the message (quarantined requesters and
    grantees are refused there, so they are left out here too).
    """

    def __init__(self, max_events: int = 256) -> None:
        self.max_events = max_events
        self.events: dict[str, deque[LocalEvent]] = {}

    def record(self, message: AgentMessage, facts: ContentFacts, ledger: ResourceLedger, config: EngineConfig) -> None:
        """Note ``message`` (called before the ledger applies it, with the same facts)."""
        resource, action = facts.resource, facts.action
        if resource is None or action not in ("request_resource", "grant", "deny", "release", "hold"):
            return
        if not facts.bad.isdisjoint(_LEDGER_KEYS):
            return  # the ledger ignores the action too
        now = message.timestamp.astimezone(UTC)
        events = self.events.get(resource)
        if events is None:
            events = self.events[resource] = deque(maxlen=self.max_events)
        if action == "request_resource":
            if ledger.is_quarantined(message.agent_id):
                return
            request = PendingRequest(
                message.agent_id,
                resource,
                facts.amount if facts.amount is not None else config.default_amount,
                facts.priority if facts.priority is not None else config.default_priority,
                message.message_id,
                now,
            )
            events.append(LocalEvent(now, "request", message.agent_id, facts.amount, request))
        elif action in ("grant", "deny"):
            for target in dict.fromkeys(message.target_agents):
                if action == "grant" and ledger.is_quarantined(target):
                    continue
                events.append(LocalEvent(now, action, target, facts.amount))
        elif action == "release":
            events.append(LocalEvent(now, "release", message.agent_id, facts.amount))
        elif facts.amount is not None:
            events.append(LocalEvent(now, "hold", message.agent_id, facts.amount))

    def since(self, resource: str, when: datetime) -> list[LocalEvent]:
        """The events on ``resource`` stamped after ``when`` (the table has everything up to it)."""
        events = self.events.get(resource)
        if not events:
            return []
        while events and events[0].time <= when:
            events.popleft()  # in the table already: no later record is older than this one
        return list(events)


def replay(
    holders: Mapping[str, float], pending: Mapping[str, PendingRequest], events: list[LocalEvent], default_amount: float
) -> tuple[dict[str, float], dict[str, PendingRequest]]:
    """The table's holdings and pending requests after ``events``, as the ledger applies them.

    >>> t = datetime(2026, 1, 1, tzinfo=UTC)
    >>> asked = PendingRequest("b", "gpu", 1.0, 5.0, "m2", t)
    >>> replay({"a": 2.0}, {"b": asked}, [LocalEvent(t, "release", "a", None), LocalEvent(t, "grant", "b", None)], 1.0)
    ({'b': 1.0}, {})
    """
    held = dict(holders)
    waiting = dict(pending)
    for event in events:
        agent = event.agent
        if event.kind == "request":
            assert event.request is not None
            waiting[agent] = event.request
        elif event.kind == "grant":
            request = waiting.pop(agent, None)
            amount = event.amount if event.amount is not None else (request.amount if request is not None else default_amount)
            held[agent] = held.get(agent, 0.0) + amount
        elif event.kind == "deny":
            waiting.pop(agent, None)
        elif event.kind == "release":
            left = held.get(agent, 0.0) - (event.amount if event.amount is not None else held.get(agent, 0.0))
            if left <= 1e-9:
                held.pop(agent, None)
            else:
                held[agent] = left
        else:  # hold: the sender states what it holds now
            assert event.amount is not None
            held[agent] = event.amount
    return held, waiting


class MergedLedgerView:
    """The table for the fleet, overlaid with what the partition learned after it.

    Per resource with a table record: the record's holdings and pending requests, then
    every event the partition saw after the record (``news``: requests, grants, denials,
    releases, holds, replayed in order as the ledger applies them). Without ``news``, only
    the local ledger's holdings and requests newer than the record are overlaid (a release
    or a denial seen here then counts only once the table has it). Never the local
    ledger's older state: the table has seen everything older, and a requester's partition
    never sees the steward's answer. With ``news`` and ``now`` (the request's event time),
    the result is carried forward from the table's newest record to ``now`` (``_age``,
    ``_refill``): what usually happens in that time, since the view cannot see it. Capacity:
    the announced one from either; denials: the larger count; quarantine: local.
    """

    def __init__(
        self, local: ResourceLedger, table: GlobalLedgerTable, news: LocalNews | None = None, now: datetime | None = None
    ) -> None:
        self.local = local
        self.table = table
        self.news = news
        self.now = now
        """The request's event time: with ``news``, the merged state is aged to it."""
        self._ttl = timedelta(seconds=local.config.pending_ttl_s)

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
        if resource not in self.table.entries:
            return self.local.holders(resource)
        return self._merge(resource)[0]

    def held_total(self, resource: str) -> float:
        return sum(sorted(self.holders(resource).values())) + self._refill(resource)

    def _refill(self, resource: str) -> float:
        """Holdings granted since the table's newest record that are still held, expected.

        Carrying the record forward discounts the holdings it lists by their chance of
        having ended; holdings granted since (by stewards in other partitions) must be
        expected too, or an old record makes a resource look empty. For steady traffic
        (an M/G/∞ queue) the holdings begun within the last ``w`` seconds and still held
        average ``mean_held · E[min(D, w)] / E[D]`` (D a hold's duration).
        """
        entry = self.table.entries.get(resource)
        if entry is None or self.news is None or self.now is None or len(self.table.holds) < MIN_DURATION_SAMPLES:
            return 0.0
        known_until = max(entry.timestamp, self.table.latest or entry.timestamp)
        window = (self.now - known_until).total_seconds()
        mean = self.table.holds.mean()
        if window <= 0.0 or mean <= 0.0:
            return 0.0
        return self.table.mean_held(resource) * self.table.holds.mean_within(window) / mean

    def pending(self, resource: str, now: datetime | None = None) -> Mapping[str, PendingRequest]:
        if resource not in self.table.entries:
            return self.local.pending(resource, now)
        return {a: r for a, r in self._merge(resource)[1].items() if self._live(r, now)}

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

    def _merge(self, resource: str) -> tuple[dict[str, float], dict[str, PendingRequest]]:
        """Holdings and pending requests (before expiry) of a resource the table has."""
        entry = self.table.entries[resource]
        if self.news is not None:
            events = self.news.since(resource, entry.timestamp)
            held, waiting = replay(entry.holders, entry.pending, events, self.local.config.default_amount)
            if self.now is not None:
                held, waiting = self._age(entry, held, waiting, {e.agent for e in events}, self.capacity(resource))
            return held, waiting
        holders = dict(entry.holders)
        state = self.local.resources.get(resource)
        for agent, amount in self.local.holders(resource).items():
            since = state.held_since.get(agent) if state is not None else None
            if since is None or since > entry.timestamp:
                holders[agent] = amount
        pending = dict(entry.pending)
        pending.update({a: r for a, r in self.local.pending(resource).items() if r.time > entry.timestamp})
        return holders, pending

    def _live(self, request: PendingRequest, now: datetime | None) -> bool:
        return now is None or now - request.time <= self._ttl

    def _age(
        self,
        entry: TableEntry,
        held: dict[str, float],
        waiting: dict[str, PendingRequest],
        touched: set[str],
        capacity: float,
    ) -> tuple[dict[str, float], dict[str, PendingRequest]]:
        """The table's state carried forward from its record to the request (``self.now``).

        The record is a pipeline latency old. Holdings it lists (and the partition has no
        newer news of) are weighted by the chance that they are still held now, from the
        hold durations the table has seen; requests pending for longer than stewards
        usually take to answer have been answered: in arrival order, granted when they fit,
        else denied, as a steward does. Neither is applied before
        ``MIN_DURATION_SAMPLES`` durations of its kind were seen.
        """
        assert self.now is not None
        table = self.table
        # Nothing happened to the resource between its record and the table's newest record
        # (that would have produced a newer one): only the time since then is unknown.
        known_until = max(entry.timestamp, table.latest or entry.timestamp)
        window = (self.now - known_until).total_seconds()
        if window <= 0.0:
            return held, waiting
        if len(table.holds) >= MIN_DURATION_SAMPLES:
            for agent, since in sorted(entry.held_since.items()):
                if agent in held and agent not in touched:
                    held[agent] *= table.holds.survival((known_until - since).total_seconds(), window)
        if len(table.answers) < MIN_DURATION_SAMPLES:
            return held, waiting
        latency = timedelta(seconds=table.answers.quantile(ANSWER_QUANTILE))
        left: dict[str, PendingRequest] = {}
        for agent, request in sorted(waiting.items(), key=lambda item: (item[1].time, item[0])):
            # Answered since the table's newest record: due by now, not yet overdue then (a
            # request already overdue then waits on a steward that does not answer).
            if not (request.time + latency < self.now and request.time + latency >= known_until):
                left[agent] = request
            elif sum(sorted(held.values())) + request.amount <= capacity + 1e-9:
                held[agent] = held.get(agent, 0.0) + request.amount
        return held, left

    def staleness(self, resource: str) -> str | None:
        """Half a sentence for the reason: how far behind the table's record is, when it was aged."""
        entry = self.table.entries.get(resource)
        if entry is None or self.now is None or self.news is None:
            return None
        behind = (self.now - max(entry.timestamp, self.table.latest or entry.timestamp)).total_seconds()
        return f"fleet ledger {behind:.1f} s behind, carried forward with this partition's news since"


class _AssessmentView(MergedLedgerView):
    """A :class:`MergedLedgerView` that lives for one assessment and merges each resource once.

    The predictor asks about the same resource several times (its total, its requests, its
    holders, again in every step of the deadlock search), and each answer would replay the
    news and age the record anew. Neither the ledger nor the table changes while one
    message is assessed, so the first answer is kept; a long-lived view (which must follow
    the ledger) is a plain :class:`MergedLedgerView`. The dicts kept are handed out as
    they are: :class:`LedgerView` answers are read-only mappings.
    """

    def __init__(self, local: ResourceLedger, table: GlobalLedgerTable, news: LocalNews | None, now: datetime) -> None:
        super().__init__(local, table, news, now)
        self._merged: dict[str, tuple[dict[str, float], dict[str, PendingRequest]]] = {}
        self._held: dict[str, float] = {}

    def held_total(self, resource: str) -> float:
        held = self._held.get(resource)
        if held is None:
            held = self._held[resource] = super().held_total(resource)
        return held

    def _merge(self, resource: str) -> tuple[dict[str, float], dict[str, PendingRequest]]:
        merged = self._merged.get(resource)
        if merged is None:
            merged = self._merged[resource] = super()._merge(resource)
        return merged


class GlobalTablePredictor:
    """A predictor that reads :class:`MergedLedgerView` instead of the partition's own ledger.

    It sees every message of every partition it serves before that partition's ledger
    applies it, and keeps each ledger's :class:`LocalNews` (keyed by the ledger object, so
    partitions never share news: each stands for a stage-1 instance that only has its
    own). An empty table changes nothing: the inner predictor sees the local ledger as
    before. The news is not part of the engine's snapshot: after a restore it refills
    within one table lag, and only the risk in decisions depends on it.
    """

    def __init__(self, inner: Predictor, table: GlobalLedgerTable, *, use_news: bool = True) -> None:
        self.inner = inner
        self.table = table
        self.use_news = use_news
        self.name = getattr(inner, "name", type(inner).__name__)
        self._config = getattr(inner, "config", None) or EngineConfig()
        self._news: weakref.WeakKeyDictionary[ResourceLedger, LocalNews] = weakref.WeakKeyDictionary()

    def predict(self, message: AgentMessage, ledger: LedgerView) -> ConflictAnalysis:
        if not isinstance(ledger, ResourceLedger):
            return self.inner.predict(message, ledger)
        facts, _ = parse_content(message.content, max_amount=self._config.max_amount)
        analysis = self.inner.predict(message, self._view(ledger, message.timestamp.astimezone(UTC)))
        self._note(message, facts, ledger)
        return analysis

    def assess(self, message: AgentMessage, facts: ContentFacts, ledger: LedgerView) -> ConflictAnalysis:
        """:meth:`predict` with the content already parsed (only for an inner ``LedgerPredictor``)."""
        if not isinstance(self.inner, LedgerPredictor):
            raise TypeError(f"assess needs a LedgerPredictor inside, not {type(self.inner).__name__}; call predict")
        if not isinstance(ledger, ResourceLedger):
            return self.inner.assess(message, facts, ledger)
        analysis = self.inner.assess(message, facts, self._view(ledger, message.timestamp.astimezone(UTC)))
        self._note(message, facts, ledger)
        return analysis

    def news(self, ledger: ResourceLedger) -> LocalNews | None:
        """The news kept for ``ledger`` (None with ``use_news=False``)."""
        if not self.use_news:
            return None
        news = self._news.get(ledger)
        if news is None:
            news = self._news[ledger] = LocalNews()
        return news

    def _view(self, ledger: ResourceLedger, now: datetime) -> LedgerView:
        if not self.table.entries:
            return ledger
        return _AssessmentView(ledger, self.table, self.news(ledger), now)

    def _note(self, message: AgentMessage, facts: ContentFacts, ledger: ResourceLedger) -> None:
        """Record ``message`` as news *after* predicting it (a request is not its own competitor)."""
        news = self.news(ledger)
        if news is not None:
            news.record(message, facts, ledger, self._config)


def default_global_predictor(table: GlobalLedgerTable, config: EngineConfig | None = None) -> GlobalTablePredictor:
    """The default ledger predictor, reading through ``table``."""
    from chorus_lab.engine.conflict import LedgerPredictor

    return GlobalTablePredictor(LedgerPredictor(config), table)


__all__ = [
    "GlobalLedgerTable",
    "GlobalTablePredictor",
    "LocalEvent",
    "LocalNews",
    "MergedLedgerView",
    "TableEntry",
    "DurationSample",
    "default_global_predictor",
    "replay",
]
