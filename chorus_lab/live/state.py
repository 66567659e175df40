"""The live state a viewer holds, and how each record read from the bus folds into it.

:class:`LiveState` is what one :class:`~chorus_lab.live.session.LiveSession` knows about
the fleet: agents (trust, quarantine, activity), the causal graph's edges and loops, recent
decisions, alerts and metric snapshots. :func:`apply_record` folds one record of the four
followed topics into it; there is no I/O, no thread and no clock in here.

**Order independence.** A session reads several partitions, and two sessions may see them
interleaved differently. So that every viewer converges to the same state (R4.5), each
piece of state is merged by a key carried in the data, never by arrival order:

- per agent, trust comes from its decisions, which all sit in one partition (the raw topic
  is keyed by agent) and so arrive in the same order everywhere;
- quarantine status, edges and the graph's loops keep the value with the greatest
  ``(event time, value)`` key;
- bounded collections (decisions, alerts, metrics, edges) keep the ``limit`` greatest keys,
  which is the same set whatever order the records came in.

>>> from datetime import datetime, UTC
>>> from chorus_lab.schema import Alert, encode
>>> state = LiveState()
>>> alert = Alert("al-1", "routing_loop", "high", 0.9, "loop a→b→c", ["a", "b", "c"], [], datetime(2026, 1, 1, tzinfo=UTC))
>>> apply_record(state, "alerts", encode(alert))
True
>>> sorted(state.agents), state.version
(['a', 'b', 'c'], 1)
>>> apply_record(state, "alerts", b"not json"), state.undecodable
(False, 1)
"""

from __future__ import annotations

import heapq
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from chorus_lab.live.wire import AlertFacts, DecisionFacts, GraphFacts, read_alert, read_decision, read_graph_update
from chorus_lab.schema import SchemaError, load_json

Kind = Literal["decisions", "alerts", "graph", "metrics"]
KINDS: tuple[Kind, ...] = ("decisions", "alerts", "graph", "metrics")
EdgeKey = tuple[str, str, str]
"""(source agent, target agent, relationship type)"""


@dataclass(frozen=True, slots=True)
class Limits:
    """How much a session keeps. Beyond a limit the oldest entries go (DESIGN.md principle 7)."""

    decisions: int = 5_000
    alerts: int = 1_000
    metrics: int = 720
    """Metric snapshots (two hours at the default 10 s window)."""
    edges: int = 50_000
    trust_history: int = 60
    """Trust points remembered per agent, for the agent panel."""

    def __post_init__(self) -> None:
        for name in ("decisions", "alerts", "metrics", "edges", "trust_history"):
            if getattr(self, name) < 1:
                raise ValueError(f"Limits.{name} must be at least 1, got {getattr(self, name)}")


@dataclass(slots=True)
class AgentInfo:
    """What a viewer knows about one agent."""

    agent_id: str
    trust: float = 100.0
    quarantined: bool = False
    quarantine_key: tuple[str, bool] = ("", False)
    """(event time, status) of the latest quarantine fact; the greatest key wins."""
    messages: int = 0
    last_seen: str = ""
    trust_history: deque[tuple[str, float]] = field(default_factory=deque)
    affected_paths: list[list[str]] = field(default_factory=list)
    """Edges ``[source, target, type]`` cut by its latest quarantine (R3.3)."""


@dataclass(slots=True)
class EdgeInfo:
    """One relationship of the causal graph as last reported."""

    strength: float
    first_seen: str
    last_updated: str


class TopN:
    """The ``limit`` entries with the greatest keys, whatever order they arrive in.

    Re-adding a key replaces its value only when the new value sorts higher, so the result
    does not depend on arrival order either.

    >>> top = TopN(2)
    >>> for k in [3, 1, 5, 2]:
    ...     _ = top.put((k,), f"v{k}")
    >>> top.values()
    ['v5', 'v3']
    """

    __slots__ = ("limit", "_items", "_heap")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: dict[tuple[Any, ...], Any] = {}
        self._heap: list[tuple[Any, ...]] = []

    def put(self, key: tuple[Any, ...], value: Any, *, rank: Any = None) -> bool:
        """Keep ``value`` under ``key``; return whether anything changed."""
        if key in self._items:
            old = self._items[key]
            if rank is None or rank <= _rank(old):
                return False
            self._items[key] = value
            return True
        if len(self._items) >= self.limit:
            smallest = self._heap[0]
            if key <= smallest:
                return False
            heapq.heapreplace(self._heap, key)
            del self._items[smallest]
        else:
            heapq.heappush(self._heap, key)
        self._items[key] = value
        return True

    def get(self, key: tuple[Any, ...]) -> Any:
        return self._items.get(key)

    def pop(self, key: tuple[Any, ...]) -> Any:
        """Remove ``key`` (O(n): for rare corrections, not the hot path)."""
        value = self._items.pop(key)
        self._heap.remove(key)
        heapq.heapify(self._heap)
        return value

    def keys(self) -> list[tuple[Any, ...]]:
        return list(self._items)

    def values(self) -> list[Any]:
        """Values, greatest key first."""
        return [self._items[k] for k in sorted(self._items, reverse=True)]

    def greatest(self, n: int, where: Callable[[Any], bool]) -> list[Any]:
        """The ``n`` values with the greatest keys among those ``where`` accepts, greatest first.

        Filters before sorting: an agent panel wants its agent's few of 5,000 decisions.

        >>> top = TopN(5)
        >>> for k in [3, 1, 5, 2]:
        ...     _ = top.put((k,), k)
        >>> top.greatest(2, lambda v: v % 2 == 1)
        [5, 3]
        """
        return [value for _, value in heapq.nlargest(n, ((k, v) for k, v in self._items.items() if where(v)), key=lambda kv: kv[0])]

    def __len__(self) -> int:
        return len(self._items)


def _rank(value: Any) -> Any:
    return value.get("_rank") if isinstance(value, dict) else None


@dataclass(slots=True)
class LiveState:
    """Everything one viewer holds. Mutated only by :func:`apply_record` (and its helpers)."""

    limits: Limits = field(default_factory=Limits)
    agents: dict[str, AgentInfo] = field(default_factory=dict)
    edges: dict[EdgeKey, EdgeInfo] = field(default_factory=dict)
    loops: list[list[str]] = field(default_factory=list)
    loops_when: str = ""
    """Event time of the graph update the loops and graph metrics come from ("" before any)."""
    graph_metrics: dict[str, Any] = field(default_factory=dict)
    decisions: TopN = field(init=False)
    alerts: TopN = field(init=False)
    metrics: TopN = field(init=False)
    records: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    undecodable: int = 0
    last_error: str = ""
    version: int = 0
    watermark: str = ""
    """Greatest event time seen (ISO-8601), the "now" of time windows."""
    edges_evicted: int = 0
    adjacency: dict[str, dict[str, int]] = field(default_factory=dict)
    """Agent → neighbour → edges between the two (either direction, any type), kept in step
    with ``edges`` so a refresh reads the graph's shape without walking every edge."""
    edge_types: dict[str, int] = field(default_factory=dict)
    """Edges kept per relationship type (tells a refresh whether a type filter drops any)."""
    earliest: str | None = ""
    """Earliest ``first_seen`` of the kept edges ("" without edges; None: to recompute)."""

    def __post_init__(self) -> None:
        self.decisions = TopN(self.limits.decisions)
        self.alerts = TopN(self.limits.alerts)
        self.metrics = TopN(self.limits.metrics)

    def agent(self, agent_id: str) -> AgentInfo:
        info = self.agents.get(agent_id)
        if info is None:
            info = self.agents[agent_id] = AgentInfo(agent_id, trust_history=deque(maxlen=self.limits.trust_history))
        return info

    def alerting_agents(self) -> dict[str, int]:
        """Alerts kept per affected agent."""
        counts: dict[str, int] = {}
        for row in self.alerts.values():
            for agent in row["affected_agents"]:
                counts[agent] = counts.get(agent, 0) + 1
        return counts

    def loop_agents(self) -> set[str]:
        return {agent for loop in self.loops for agent in loop}

    def quarantined(self) -> list[str]:
        return sorted(a for a, info in self.agents.items() if info.quarantined)

    def fingerprint(self) -> dict[str, Any]:
        """The viewer-visible state as plain data (for comparing two sessions)."""
        return {
            "agents": {a: (round(i.trust, 6), i.quarantined, i.messages) for a, i in sorted(self.agents.items())},
            "edges": {"|".join(k): round(e.strength, 6) for k, e in sorted(self.edges.items())},
            "loops": self.loops,
            "decisions": [d["message_id"] for d in self.decisions.values()],
            "alerts": [(a["alert_id"], a["confidence"]) for a in self.alerts.values()],
            "metrics": [m["window_start"] for m in self.metrics.values()],
        }


# --------------------------------------------------------------------------- folding


def apply_record(state: LiveState, kind: Kind, value: bytes | None) -> bool:
    """Fold one record's value of topic ``kind`` into ``state``; return whether it was applied.

    A value that cannot be decoded is counted in ``state.undecodable`` (with the reason in
    ``state.last_error``) and skipped: one bad record must not stop a dashboard.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown record kind {kind!r}; expected one of {', '.join(KINDS)}")
    try:
        if kind == "decisions":
            apply_decision(state, read_decision(value or b""))
        elif kind == "alerts":
            apply_alert(state, read_alert(value or b""))
        elif kind == "graph":
            apply_graph_update(state, read_graph_update(value or b""))
        else:
            apply_metrics(state, load_json(value or b""))
    except (SchemaError, KeyError, TypeError, ValueError, OverflowError) as exc:  # OverflowError: a huge JSON integer
        state.undecodable += 1
        state.last_error = f"{kind}: {exc}"[:300]
        return False
    state.records[kind] += 1
    state.version += 1
    return True


def _see(state: LiveState, when: str) -> None:
    if when > state.watermark:
        state.watermark = when


def _set_quarantine(info: AgentInfo, when: str, status: bool) -> None:
    key = (when, status)
    if key >= info.quarantine_key:
        info.quarantine_key = key
        info.quarantined = status


def apply_decision(state: LiveState, d: DecisionFacts) -> None:
    """Trust, quarantine, activity and edges from one processed decision."""
    when = d.timestamp
    _see(state, when)
    info = state.agent(d.agent_id)
    info.messages += 1
    info.last_seen = max(info.last_seen, when)
    info.trust = d.trust_after
    if not info.trust_history or info.trust_history[-1][1] != d.trust_after:
        info.trust_history.append((when, d.trust_after))
    if d.intervention in ("quarantine", "release"):
        _set_quarantine(info, d.intervention_at, d.intervention == "quarantine")
    elif "quarantined" in d.flags:
        _set_quarantine(info, when, True)
    for target in d.targets:
        state.agent(target)
    for edge in d.edges:
        _put_edge(state, (edge.source, edge.target, edge.relationship), edge.strength, edge.created_at, edge.last_updated)
    row = {
        "timestamp": when,
        "agent_id": d.agent_id,
        "message_id": d.message_id,
        "message_type": d.message_type,
        "action": d.action,
        "targets": ",".join(d.targets),
        "risk": d.risk,
        "conflict_type": d.conflict_type,
        "trust_before": d.trust_before,
        "trust_after": d.trust_after,
        "trust_delta": d.trust_delta,
        "intervention": d.intervention,
        "flags": ",".join(d.flags),
        "latency_ms": d.latency_ms,
    }
    state.decisions.put((when, d.message_id), row)


def apply_alert(state: LiveState, alert: AlertFacts) -> None:
    """Keep the alert (its latest update wins: highest confidence, then longest evidence)."""
    when = alert.detected_at
    _see(state, when)
    for agent in alert.affected_agents:
        state.agent(agent)
    row = {
        "detected_at": when,
        "alert_id": alert.alert_id,
        "pattern": alert.pattern,
        "severity": alert.severity,
        "confidence": alert.confidence,
        "description": alert.description,
        "affected_agents": list(alert.affected_agents),
        "evidence": alert.evidence,
        "_rank": (alert.confidence, alert.evidence, alert.description),
    }
    # Updates of one incident share its alert_id: keep the strongest version under the
    # earliest detection time, so the result does not depend on which arrived first.
    old_key = next((key for key in state.alerts.keys() if key[1] == alert.alert_id), None)
    if old_key is not None:
        old = state.alerts.pop(old_key)
        best = row if row["_rank"] > old["_rank"] else old
        row = dict(best, detected_at=min(old["detected_at"], when))
    state.alerts.put((row["detected_at"], alert.alert_id), row)


def apply_graph_update(state: LiveState, update: GraphFacts) -> None:
    """Nodes, edges, quarantine, loops and graph metrics from one causal-graph update."""
    when = update.timestamp
    _see(state, when)
    kind = update.update_type
    if kind != "node_removed":
        for agent in update.affected_nodes:
            state.agent(agent)
    if kind in ("edge_removed", "node_removed"):
        for edge in update.edges:
            key = (edge.source, edge.target, edge.relationship)
            current = state.edges.get(key)
            if current is not None and current.last_updated <= edge.last_updated:
                _remove_edge(state, key)
    else:
        for edge in update.edges:
            _put_edge(state, (edge.source, edge.target, edge.relationship), edge.strength, edge.created_at, edge.last_updated)
    if kind in ("node_quarantined", "node_released") and update.affected_nodes:
        info = state.agent(update.affected_nodes[0])
        _set_quarantine(info, when, kind == "node_quarantined")
        if kind == "node_quarantined":
            info.affected_paths = [[e.source, e.target, e.relationship] for e in update.edges]
    # The greatest (event time, loops as JSON) wins. Times are canonical text of one length,
    # so the time decides unless equal; only then are the loops encoded to break the tie
    # (encoding them for every update was a sixth of folding one).
    if when > state.loops_when or (when == state.loops_when and _loops_text(update.detected_loops) > _loops_text(state.loops)):
        state.loops_when = when
        state.loops = [list(loop) for loop in update.detected_loops]
        state.graph_metrics = dict(update.metrics)


def _loops_text(loops: list[list[str]]) -> str:
    return json.dumps(loops, sort_keys=True)


def apply_metrics(state: LiveState, snapshot: dict[str, Any]) -> None:
    """Keep one metrics snapshot, flattened to the series the plots and frames show."""
    start = snapshot["window_start"]
    if not isinstance(start, str):
        raise TypeError(f"window_start: expected a string, got {type(start).__name__}")
    _see(state, snapshot.get("window_end") or start)
    state.metrics.put((start,), flatten_metrics(snapshot))


def flatten_metrics(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The plotted series of one ``analytics-metrics`` snapshot, as one flat row.

    >>> flatten_metrics({"window_start": "t0", "throughput_per_s": 12.5})["throughput_per_s"]
    12.5
    """

    def number(*path: str) -> float:
        value: Any = snapshot
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else float("nan")

    return {
        "window_start": snapshot["window_start"],
        "window_end": snapshot.get("window_end", ""),
        "messages": number("messages"),
        "throughput_per_s": number("throughput_per_s"),
        "latency_p50_ms": number("latency_ms", "p50"),
        "latency_p95_ms": number("latency_ms", "p95"),
        "errors": number("errors", "count"),
        "error_rate": number("errors", "rate"),
        "consumer_lag": number("consumer_lag", "total"),
        "conflict_rate": number("conflicts", "conflict_rate"),
        "alerts_new": number("alerts", "new"),
        "trust_mean": number("trust", "mean"),
        "quarantined": number("trust", "quarantined"),
    }


def _put_edge(state: LiveState, key: EdgeKey, strength: float, created: str, updated: str) -> None:
    state.agent(key[0])
    state.agent(key[1])
    current = state.edges.get(key)
    if current is None:
        state.edges[key] = EdgeInfo(strength, created, updated)
        _link(state, key, +1)
        _saw_first(state, created)
        if len(state.edges) > state.limits.edges:
            _evict_edges(state)
        return
    current.first_seen = min(current.first_seen, created)
    _saw_first(state, created)
    if (updated, strength) > (current.last_updated, current.strength):
        current.strength = strength
        current.last_updated = updated


def _evict_edges(state: LiveState) -> None:
    """Drop the least recently updated tenth of the edges (ties: the weakest, then by key)."""
    drop = max(1, state.limits.edges // 10)
    oldest = heapq.nsmallest(drop, state.edges.items(), key=lambda item: (item[1].last_updated, item[1].strength, item[0]))
    for key, _ in oldest:
        _remove_edge(state, key)
    state.edges_evicted += len(oldest)


def _remove_edge(state: LiveState, key: EdgeKey) -> None:
    removed = state.edges.pop(key)
    _link(state, key, -1)
    if removed.first_seen == state.earliest:
        state.earliest = None  # the earliest edge may be gone: recompute when asked


def _saw_first(state: LiveState, first_seen: str) -> None:
    if state.earliest is not None and (state.earliest == "" or first_seen < state.earliest):
        state.earliest = first_seen


def earliest_edge(state: LiveState) -> str:
    """Earliest ``first_seen`` of the graph's edges ("" without edges), for the time slider.

    Kept as edges arrive; walks the edges only after the earliest one was removed.

    >>> state = LiveState()
    >>> _put_edge(state, ("a", "b", "request"), 0.5, "t2", "t2"); _put_edge(state, ("b", "c", "request"), 0.5, "t1", "t3")
    >>> earliest_edge(state)
    't1'
    >>> _remove_edge(state, ("b", "c", "request")); earliest_edge(state)
    't2'
    """
    if state.earliest is None or (state.earliest == "" and state.edges):
        state.earliest = min((e.first_seen for e in state.edges.values()), default="")
    return state.earliest


def _link(state: LiveState, key: EdgeKey, step: int) -> None:
    """Count the edge ``key`` in (``step`` +1) or out of (-1) the adjacency and type counts."""
    source, target, relationship = key
    for a, b in ((source, target), (target, source)):
        around = state.adjacency.setdefault(a, {})
        left = around.get(b, 0) + step
        if left > 0:
            around[b] = left
        else:
            around.pop(b, None)
            if not around:
                del state.adjacency[a]
    left = state.edge_types.get(relationship, 0) + step
    if left > 0:
        state.edge_types[relationship] = left
    else:
        state.edge_types.pop(relationship, None)
