"""The causal graph of agent interactions, kept incrementally, within fixed limits.

:class:`GraphTopologyManager` takes processed decisions (stage 1's output) and keeps a
directed multigraph: a **node** per agent (status ``active``/``quarantined``, latest
trust score) and an **edge** per (source, target, relationship type) with a strength in
0–1 that **decays with event time** (halving every ``half_life_s`` without interaction)
and is reinforced by each new interaction::

    s(t) = s(t_last) · 2^(−(t − t_last)/half_life)          decay
    s ← s(t) + w · (1 − s(t))                                 reinforcement by an edge of weight w

where ``w`` is the strength stage 1 gave the interaction (request 0.5, dependency 0.7,
conflict 0.9). An edge that has decayed below ``min_strength`` is gone (pruned at the next
:meth:`~GraphTopologyManager.snapshot`).

**Cost.** Every change is O(1) amortised (O(log E) for the eviction heap) per edge a
message carries, whatever the size of the graph: nothing global is recomputed per update.
Metrics that need the whole graph (clustering, average path length, centrality,
isolated nodes) are computed by :meth:`~GraphTopologyManager.snapshot`, on a cadence the
caller chooses, exactly on small graphs and by deterministic sampling on large ones.

**Limits** (DESIGN.md principle 7). At most ``max_nodes`` nodes and ``max_edges`` edges.
Beyond them the *weakest* edge goes first: because every edge decays at the same rate, the
edge with the smallest ``log2(s) + t_last/half_life`` is the weakest now and forever
after, so a heap on that key finds it in O(log E) (an interaction only raises the key, so
a reinforced edge's entry is corrected lazily when it reaches the top). The node evicted is the least recently
active one that is not quarantined. ``evictions`` counts both.

**Updates.** Every change yields :class:`~chorus_lab.schema.CausalGraphUpdate` events:
``node_added``, ``node_updated`` (trust moved by ``trust_step``), ``node_quarantined``
(``affected_nodes`` = the agent then its neighbours, ``edge_changes`` = every edge into or
out of it: the connection paths the quarantine cuts, R3.3), ``node_released``,
``edge_created``, ``edge_updated``, ``edge_removed`` and ``node_removed`` (evicted or
expired), ``loop_detected`` (a routing loop reported by the detector, with its edges) and
``metrics`` (after a snapshot). Each carries the current :class:`GraphMetrics`: exact
node/edge counts, the current loops and quarantined/isolated nodes, and the clustering
coefficient and average path length of the last snapshot.

>>> from datetime import datetime, UTC
>>> from chorus_lab.schema import CausalEdge
>>> t = datetime(2026, 1, 1, tzinfo=UTC)
>>> graph = GraphTopologyManager()
>>> updates = graph.add_edges([CausalEdge("a", "b", "request", 0.5, t, t)], t)
>>> [(u.update_type, u.affected_nodes) for u in updates]
[('node_added', ['a', 'b']), ('edge_created', ['a', 'b'])]
>>> [(u.update_type, u.graph_metrics.isolated_nodes) for u in graph.quarantine("b", t)]
[('node_quarantined', ['b', 'a'])]
>>> graph.snapshot(t).metrics.node_count
2
"""

from __future__ import annotations

import heapq
import math
import random
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from chorus_lab.schema import CausalEdge, CausalGraphUpdate, GraphMetrics, GraphUpdateType, ProcessedDecision

EdgeKey = tuple[str, str, str]
"""(source agent, target agent, relationship type)"""

Neighbours = Callable[[str], Iterable[str]]
"""A function giving a node's neighbours."""


@dataclass(frozen=True, slots=True)
class GraphConfig:
    """Limits, decay and metric sampling of the causal graph."""

    max_nodes: int = 100_000
    max_edges: int = 500_000
    half_life_s: float = 600.0
    """Edge strength halves per this much event time without interaction."""
    min_strength: float = 0.01
    """Edges weaker than this have expired (about 6.6 half-lives after a 0.5 interaction)."""
    trust_step: float = 5.0
    """A ``node_updated`` is emitted when trust moved this much since the last one."""
    top_k: int = 10
    """How many most central agents a snapshot lists."""
    exact_clustering_below: int = 2_000
    """Clustering is exact for at most this many active nodes, else sampled."""
    clustering_sample: int = 500
    exact_paths_below: int = 300
    """Average path length is exact (BFS from every node) up to this many active nodes."""
    path_sources: int = 4
    """BFS sources sampled for the average path length of a larger graph (each costs O(N + E))."""
    max_listed: int = 100
    """Isolated nodes listed in ``GraphMetrics`` (quarantined ones first); the count is in the snapshot."""
    max_affected: int = 200
    """Edges listed in a ``node_quarantined`` update, and paths by :meth:`affected_paths`."""
    loop_ttl_s: float = 300.0
    """A loop not reported again for this long is no longer current."""
    max_loops: int = 50
    max_batch: int = 500
    """Edges per ``edge_removed`` update."""
    seed: int = 0
    """Seed of the metric sampling (deterministic)."""

    def __post_init__(self) -> None:
        for name in ("max_nodes", "max_edges", "top_k", "clustering_sample", "path_sources", "max_listed", "max_affected", "max_loops", "max_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if self.half_life_s <= 0:
            raise ValueError(f"half_life_s must be positive, got {self.half_life_s!r}")
        if not 0.0 < self.min_strength < 1.0:
            raise ValueError(f"min_strength must be within (0, 1), got {self.min_strength!r}")


@dataclass(slots=True)
class Node:
    """One agent in the graph."""

    agent_id: str
    first_seen: datetime
    last_seen: datetime
    status: str = "active"
    trust: float = 100.0
    reported_trust: float = 100.0
    messages: int = 0


@dataclass(slots=True)
class Edge:
    """One relationship; ``strength`` is as of ``last_updated`` (see :meth:`strength_at`)."""

    source: str
    target: str
    relationship_type: str
    strength: float
    created_at: datetime
    last_updated: datetime
    updated_s: float
    interactions: int = 1
    heap_seq: int = 0

    def strength_at(self, now_s: float, half_life_s: float) -> float:
        """Strength after decay until ``now_s`` (never grows back for an earlier time)."""
        age = now_s - self.updated_s
        return self.strength if age <= 0 else self.strength * 2.0 ** (-age / half_life_s)

    def to_wire(self, now_s: float, half_life_s: float) -> CausalEdge:
        return CausalEdge(
            self.source,
            self.target,
            self.relationship_type,  # type: ignore[arg-type]
            min(1.0, max(0.0, self.strength_at(now_s, half_life_s))),
            self.created_at,
            self.last_updated,
        )


@dataclass(frozen=True, slots=True)
class GraphSnapshot:
    """Whole-graph metrics at one moment (what :meth:`GraphTopologyManager.snapshot` computes)."""

    metrics: GraphMetrics
    computed_at: datetime
    active_nodes: int
    quarantined: list[str]
    isolated_count: int
    top_central: list[tuple[str, float]]
    """(agent, degree centrality) of the ``top_k`` best-connected active agents."""
    exact: bool
    """False when clustering or path length was estimated by sampling."""
    evictions: dict[str, int]
    """``nodes`` and ``edges`` evicted by the limits, ``expired`` edges that decayed away,
    ``dropped`` edges of a message with more agents than the node limit holds."""
    limits: dict[str, int]

    def to_dict(self) -> dict[str, object]:
        """JSON-able form (for the metrics snapshot)."""
        m = self.metrics
        return {
            "node_count": m.node_count,
            "edge_count": m.edge_count,
            "active_nodes": self.active_nodes,
            "clustering_coefficient": round(m.clustering_coefficient, 6),
            "average_path_length": round(m.average_path_length, 6),
            "detected_loops": m.detected_loops,
            "quarantined": self.quarantined[:100],
            "isolated_count": self.isolated_count,
            "top_central": [[a, round(c, 6)] for a, c in self.top_central],
            "exact": self.exact,
            "evictions": dict(self.evictions),
            "limits": dict(self.limits),
        }


@dataclass(slots=True)
class _Loop:
    cycle: list[str]
    last_seen: float


@dataclass(slots=True)
class _Cached:
    clustering: float = 0.0
    path_length: float = 0.0
    isolated: list[str] = field(default_factory=list)
    """Isolated active nodes at the last snapshot (quarantined ones are added live)."""


class GraphTopologyManager:
    """Incremental causal graph with decaying edges, hard limits and snapshot metrics."""

    def __init__(self, config: GraphConfig | None = None) -> None:
        self.config = config or GraphConfig()
        self.nodes: OrderedDict[str, Node] = OrderedDict()
        """Least recently active first."""
        self.edges: dict[EdgeKey, Edge] = {}
        self._incident: dict[str, set[EdgeKey]] = {}
        self._adjacent: dict[str, dict[str, int]] = {}
        """Undirected neighbours with the number of edges between the pair."""
        self._heap: list[tuple[float, int, EdgeKey]] = []
        self._seq = 0
        self.quarantined: set[str] = set()
        self._loops: OrderedDict[tuple[str, ...], _Loop] = OrderedDict()
        self._cached = _Cached()
        self._listed: tuple[list[list[str]], list[str]] | None = None
        self._snapshots = 0
        self.evictions = {"nodes": 0, "edges": 0, "expired": 0, "dropped": 0}
        """Evicted ``nodes`` and ``edges`` (limits), ``expired`` edges (decay), ``dropped``
        edges whose endpoint could not be added (one message with more agents than fit)."""

    # ------------------------------------------------------------------ inputs

    def observe(self, decision: ProcessedDecision) -> list[CausalGraphUpdate]:
        """Apply one processed decision: its agents, status, trust and causal edges."""
        message = decision.original_message
        when = message.timestamp
        updates: list[CausalGraphUpdate] = []
        agents = [message.agent_id, *message.target_agents]
        updates += self._touch_nodes(agents, when)
        sender = self.nodes.get(message.agent_id)
        if sender is not None:
            sender.messages += 1
        updates += self._status_changes(decision, when)
        if decision.trust_impact.agent_id == message.agent_id:
            updates += self.set_trust(message.agent_id, decision.trust_impact.after, when)
        updates += self.add_edges(decision.causal_relationships, when, touch=False)
        return updates

    def add_edges(self, edges: Iterable[CausalEdge], when: datetime, *, touch: bool = True) -> list[CausalGraphUpdate]:
        """Create or reinforce edges (their nodes are added as needed). O(1) amortised per edge."""
        edges = list(edges)
        updates: list[CausalGraphUpdate] = []
        if touch:
            updates += self._touch_nodes([a for e in edges for a in (e.source_agent, e.target_agent)], when)
        created: list[CausalEdge] = []
        changed: list[CausalEdge] = []
        removed: list[CausalEdge] = []
        now_s = when.timestamp()
        for wire in edges:
            if wire.source_agent == wire.target_agent:
                continue
            if wire.source_agent not in self.nodes or wire.target_agent not in self.nodes:
                # A message with more agents than the node limit holds: keep what fits.
                self.evictions["dropped"] += 1
                continue
            edge, new = self._upsert(wire, now_s)
            (created if new else changed).append(edge.to_wire(edge.updated_s, self.config.half_life_s))
            removed += self._enforce_edge_limit(now_s)
        if created:
            updates.append(self._update("edge_created", _endpoints(created), created, when))
        if changed:
            updates.append(self._update("edge_updated", _endpoints(changed), changed, when))
        updates += self._removed(removed, when)
        return updates

    def set_trust(self, agent: str, trust: float, when: datetime) -> list[CausalGraphUpdate]:
        """Record an agent's trust; ``node_updated`` when it moved ``trust_step`` since last said."""
        node = self.nodes.get(agent)
        if node is None:
            return []
        node.trust = trust
        if abs(trust - node.reported_trust) < self.config.trust_step:
            return []
        node.reported_trust = trust
        return [self._update("node_updated", [agent], [], when)]

    def quarantine(self, agent: str, when: datetime) -> list[CausalGraphUpdate]:
        """Mark ``agent`` quarantined: it leaves the metrics graph; its connections are listed."""
        updates = self._touch_nodes([agent], when)
        node = self.nodes[agent]
        if node.status == "quarantined":
            return updates
        node.status = "quarantined"
        self.quarantined.add(agent)
        self._recheck_isolation(self._adjacent.get(agent, {}))
        now_s = when.timestamp()
        keys = sorted(self._incident.get(agent, ()))[: self.config.max_affected]
        cut = [self.edges[k].to_wire(now_s, self.config.half_life_s) for k in keys]
        neighbours = sorted(self._adjacent.get(agent, {}))
        updates.append(self._update("node_quarantined", [agent, *neighbours], cut, when))
        return updates

    def release(self, agent: str, when: datetime) -> list[CausalGraphUpdate]:
        """Mark ``agent`` active again."""
        node = self.nodes.get(agent)
        if node is None or node.status != "quarantined":
            return []
        node.status = "active"
        self.quarantined.discard(agent)
        self._recheck_isolation([agent, *self._adjacent.get(agent, {})])
        neighbours = sorted(self._adjacent.get(agent, {}))
        return [self._update("node_released", [agent, *neighbours], [], when)]

    def mark_loop(self, cycle: Sequence[str], when: datetime) -> list[CausalGraphUpdate]:
        """Record a routing loop (from the detector); ``loop_detected`` when it is new or returns."""
        if len(cycle) < 2:
            return []
        key = _rotation(cycle)
        now_s = when.timestamp()
        loop = self._loops.get(key)
        fresh = loop is None or now_s - loop.last_seen > self.config.loop_ttl_s
        self._loops[key] = _Loop(list(cycle), max(now_s, loop.last_seen if loop else now_s))
        self._loops.move_to_end(key)
        while len(self._loops) > self.config.max_loops:
            self._loops.popitem(last=False)
        self._listed = None
        if not fresh:
            return []
        updates = self._touch_nodes(list(cycle), when)
        pairs = list(zip(cycle, [*cycle[1:], cycle[0]]))
        on_loop = [
            edge.to_wire(now_s, self.config.half_life_s)
            for source, target in pairs
            for rel in ("dependency", "request", "conflict")
            if (edge := self.edges.get((source, target, rel))) is not None
        ]
        updates.append(self._update("loop_detected", list(cycle), on_loop, when))
        return updates

    # ------------------------------------------------------------------ queries

    def strength(self, source: str, target: str, relationship_type: str, when: datetime) -> float:
        """Current strength of an edge (0 when there is none)."""
        edge = self.edges.get((source, target, relationship_type))
        return 0.0 if edge is None else edge.strength_at(when.timestamp(), self.config.half_life_s)

    def neighbours(self, agent: str) -> list[str]:
        """Agents with an edge to or from ``agent``, sorted."""
        return sorted(self._adjacent.get(agent, {}))

    def affected_paths(self, agent: str) -> list[list[str]]:
        """Two-hop paths ``[u, agent, w]`` that run through ``agent`` (what its quarantine cuts).

        Bounded by ``max_affected``; sorted, so the answer is deterministic.
        """
        into = sorted({k[0] for k in self._incident.get(agent, ()) if k[1] == agent})
        out = sorted({k[1] for k in self._incident.get(agent, ()) if k[0] == agent})
        paths = [[u, agent, w] for u in into for w in out if u != w]
        return paths[: self.config.max_affected]

    def current_loops(self, when: datetime | None = None) -> list[list[str]]:
        """Loops reported within ``loop_ttl_s`` of ``when`` (all remembered ones when None)."""
        if when is None:
            return [loop.cycle for loop in self._loops.values()]
        now_s = when.timestamp()
        return [loop.cycle for loop in self._loops.values() if now_s - loop.last_seen <= self.config.loop_ttl_s]

    def metrics(self) -> GraphMetrics:
        """The metrics every update carries: exact counts, cached whole-graph figures. O(1)."""
        if self._listed is None:
            loops = [list(loop.cycle) for loop in self._loops.values()]
            quarantined = sorted(self.quarantined)
            isolated = quarantined + [a for a in self._cached.isolated if a not in self.quarantined]
            self._listed = (loops, isolated[: self.config.max_listed])
        loops, isolated = self._listed
        return GraphMetrics(
            node_count=len(self.nodes),
            edge_count=len(self.edges),
            clustering_coefficient=self._cached.clustering,
            average_path_length=self._cached.path_length,
            detected_loops=loops,
            isolated_nodes=isolated,
        )

    def to_networkx(self, when: datetime | None = None):  # type: ignore[no-untyped-def]
        """A ``networkx.MultiDiGraph`` copy (for notebooks), strengths as of ``when``. O(N + E)."""
        import networkx as nx

        graph = nx.MultiDiGraph()
        for node in self.nodes.values():
            graph.add_node(node.agent_id, status=node.status, trust=node.trust)
        for edge in self.edges.values():
            now_s = when.timestamp() if when is not None else edge.updated_s
            graph.add_edge(
                edge.source,
                edge.target,
                key=edge.relationship_type,
                relationship_type=edge.relationship_type,
                strength=edge.strength_at(now_s, self.config.half_life_s),
                interactions=edge.interactions,
            )
        return graph

    # ------------------------------------------------------------------ snapshot

    def snapshot(self, when: datetime) -> GraphSnapshot:
        """Prune expired edges and compute the whole-graph metrics.

        Cost O(N + E) for isolated nodes and centrality, plus clustering
        O(Σ deg²) over at most ``clustering_sample`` nodes, plus average path length
        O(path_sources · (N + E)) (all sources below ``exact_paths_below`` nodes). Call
        it on a cadence, not per message, after :meth:`expire` (which prunes what decayed).
        """
        config = self.config
        self._snapshots += 1
        rng = random.Random(f"{config.seed}:{self._snapshots}")
        active = [a for a in self.nodes if a not in self.quarantined]
        neighbours = self._active_neighbours
        exact = True
        if len(active) <= config.exact_clustering_below:
            clustering_nodes = active
        else:
            clustering_nodes = rng.sample(active, config.clustering_sample)
            exact = False
        clustering = _mean(local_clustering(a, neighbours) for a in clustering_nodes)
        if len(active) <= config.exact_paths_below:
            sources = active
        else:
            sources = rng.sample(active, min(config.path_sources, len(active)))
            exact = False
        path_length = average_path_length(sources, neighbours)
        isolated = [a for a in active if not any(n not in self.quarantined for n in self._adjacent.get(a, ()))]
        n = max(1, len(active) - 1)
        central = heapq.nlargest(config.top_k, active, key=lambda a: (len(self._adjacent.get(a, ())), a))
        top = [(a, len(neighbours(a)) / n) for a in central]
        self._cached = _Cached(clustering, path_length, isolated[: config.max_listed])
        self._listed = None
        quarantined = sorted(self.quarantined)
        return GraphSnapshot(
            metrics=self.metrics(),
            computed_at=when,
            active_nodes=len(active),
            quarantined=quarantined,
            isolated_count=len(isolated) + len(quarantined),
            top_central=top,
            exact=exact,
            evictions=dict(self.evictions),
            limits={"max_nodes": config.max_nodes, "max_edges": config.max_edges},
        )

    def expire(self, when: datetime) -> list[CausalGraphUpdate]:
        """Remove edges that decayed below ``min_strength`` and loops no longer current.

        O(k log E) for k expired edges.
        """
        config = self.config
        now_s = when.timestamp()
        threshold = math.log2(config.min_strength) + now_s / config.half_life_s
        removed: list[CausalEdge] = []
        while (key := self._pop_weakest(below=threshold)) is not None:
            removed.append(self._remove_edge(key, now_s))
            self.evictions["expired"] += 1
        stale = [k for k, loop in self._loops.items() if now_s - loop.last_seen > config.loop_ttl_s]
        for key in stale:
            del self._loops[key]
        if stale:
            self._listed = None
        return self._removed(removed, when)

    # ------------------------------------------------------------------ internals

    def _recheck_isolation(self, agents: Iterable[str]) -> None:
        """Keep the listed isolated nodes right across a status change, until the next snapshot."""
        isolated = dict.fromkeys(self._cached.isolated)
        for agent in agents:
            if agent in self.quarantined:
                continue
            if self._active_neighbours(agent):
                isolated.pop(agent, None)
            elif len(isolated) < self.config.max_listed:
                isolated[agent] = None
        self._cached.isolated = list(isolated)
        self._listed = None

    def _active_neighbours(self, agent: str) -> list[str]:
        return [n for n in self._adjacent.get(agent, ()) if n not in self.quarantined]

    def _touch_nodes(self, agents: Iterable[str], when: datetime) -> list[CausalGraphUpdate]:
        added: list[str] = []
        removed_nodes: list[str] = []
        removed_edges: list[CausalEdge] = []
        ordered = list(dict.fromkeys(agents))
        # A message naming more agents than the limit keeps its first ones (the sender first):
        # only those are safe from eviction while the others make room.
        protect = set(ordered[: self.config.max_nodes])
        for agent in ordered:
            node = self.nodes.get(agent)
            if node is not None:
                if when > node.last_seen:
                    node.last_seen = when
                self.nodes.move_to_end(agent)
                continue
            while len(self.nodes) >= self.config.max_nodes:
                victim = self._node_to_evict(protect)
                if victim is None:
                    break
                removed_edges += self._remove_node(victim, when.timestamp())
                removed_nodes.append(victim)
            if len(self.nodes) >= self.config.max_nodes:
                continue  # everything left is this message's own agents: the rest do not fit
            self.nodes[agent] = Node(agent, when, when)
            added.append(agent)
        updates = []
        if added:
            updates.append(self._update("node_added", added, [], when))
        updates += self._removed(removed_edges, when)
        if removed_nodes:
            updates.append(self._update("node_removed", removed_nodes, [], when))
        return updates

    def _node_to_evict(self, protect: set[str]) -> str | None:
        fallback = None
        for i, agent in enumerate(self.nodes):
            if agent in protect:
                continue
            if agent not in self.quarantined:
                return agent
            fallback = fallback or agent
            if i >= 16:  # a few quarantined ones in a row: evict the oldest rather than scan on
                break
        return fallback

    def _remove_node(self, agent: str, now_s: float) -> list[CausalEdge]:
        removed = [self._remove_edge(key, now_s) for key in sorted(self._incident.get(agent, ()))]
        self.nodes.pop(agent, None)
        self._incident.pop(agent, None)
        self._adjacent.pop(agent, None)
        if agent in self.quarantined:
            self.quarantined.discard(agent)
        self._listed = None
        self.evictions["nodes"] += 1
        return removed

    def _upsert(self, wire: CausalEdge, now_s: float) -> tuple[Edge, bool]:
        key: EdgeKey = (wire.source_agent, wire.target_agent, wire.relationship_type)
        config = self.config
        edge = self.edges.get(key)
        when = wire.last_updated
        when_s = when.timestamp()
        if edge is None:
            edge = Edge(key[0], key[1], key[2], wire.strength, wire.created_at, when, when_s)
            self.edges[key] = edge
            for agent in key[:2]:
                self._incident.setdefault(agent, set()).add(key)
            self._link(key[0], key[1], +1)
            new = True
        else:
            at = max(edge.updated_s, when_s)
            decayed = edge.strength_at(at, config.half_life_s)
            edge.strength = min(1.0, decayed + wire.strength * (1.0 - decayed))
            if when_s > edge.updated_s:
                edge.updated_s, edge.last_updated = when_s, when
            edge.interactions += 1
            new = False
        if new:
            self._push(key, edge)
        # A reinforced edge keeps its (now too low) heap entry: ranks only grow, so the
        # entry is a lower bound, corrected when it reaches the top (see _pop_weakest).
        return edge, new

    def _rank(self, edge: Edge) -> float:
        # The same decay for all edges makes this order "weakest now" at any later time.
        return math.log2(max(edge.strength, 1e-300)) + edge.updated_s / self.config.half_life_s

    def _push(self, key: EdgeKey, edge: Edge) -> None:
        self._seq += 1
        edge.heap_seq = self._seq
        heapq.heappush(self._heap, (self._rank(edge), self._seq, key))
        if len(self._heap) > 2 * len(self.edges) + 1024:
            self._heap = [(r, s, k) for r, s, k in self._heap if (e := self.edges.get(k)) is not None and e.heap_seq == s]
            heapq.heapify(self._heap)

    def _pop_weakest(self, below: float | None = None) -> EdgeKey | None:
        """Take the weakest edge off the heap (only if its rank is under ``below``), or None.

        Entries of removed edges are dropped; an entry whose edge was reinforced since is
        put back with its real rank. Amortised O(log E).
        """
        heap = self._heap
        while heap:
            rank, seq, key = heap[0]
            if below is not None and rank >= below:
                return None
            heapq.heappop(heap)
            edge = self.edges.get(key)
            if edge is None or edge.heap_seq != seq:
                continue
            actual = self._rank(edge)
            if actual > rank:
                heapq.heappush(heap, (actual, seq, key))
                continue
            return key
        return None

    def _enforce_edge_limit(self, now_s: float) -> list[CausalEdge]:
        removed = []
        while len(self.edges) > self.config.max_edges and (key := self._pop_weakest()) is not None:
            removed.append(self._remove_edge(key, now_s))
            self.evictions["edges"] += 1
        return removed

    def _remove_edge(self, key: EdgeKey, now_s: float) -> CausalEdge:
        edge = self.edges.pop(key)
        for agent in key[:2]:
            keys = self._incident.get(agent)
            if keys is not None:
                keys.discard(key)
        self._link(key[0], key[1], -1)
        return edge.to_wire(max(now_s, edge.updated_s), self.config.half_life_s)

    def _link(self, a: str, b: str, delta: int) -> None:
        for x, y in ((a, b), (b, a)):
            neighbours = self._adjacent.setdefault(x, {})
            count = neighbours.get(y, 0) + delta
            if count > 0:
                neighbours[y] = count
            else:
                neighbours.pop(y, None)

    def _removed(self, removed: list[CausalEdge], when: datetime) -> list[CausalGraphUpdate]:
        batch = self.config.max_batch
        return [
            self._update("edge_removed", _endpoints(removed[i : i + batch]), removed[i : i + batch], when)
            for i in range(0, len(removed), batch)
        ]

    def _status_changes(self, decision: ProcessedDecision, when: datetime) -> list[CausalGraphUpdate]:
        updates = []
        sender = decision.original_message.agent_id
        if "quarantined" in decision.processing_metadata.flags and sender not in self.quarantined:
            updates += self.quarantine(sender, when)  # quarantined by a signal, seen on its next message
        action = decision.intervention_action
        if action is not None and action.action == "quarantine":
            updates += self.quarantine(action.agent_id, when)
        elif action is not None and action.action == "release":
            updates += self.release(action.agent_id, when)
        return updates

    def _update(self, kind: GraphUpdateType, nodes: list[str], edges: list[CausalEdge], when: datetime) -> CausalGraphUpdate:
        return CausalGraphUpdate(kind, nodes, edges, self.metrics(), when)


def local_clustering(agent: str, neighbours: Neighbours) -> float:
    """Fraction of pairs of ``agent``'s neighbours that are linked (undirected). O(Σ deg).

    >>> adj = {"a": ["b", "c"], "b": ["a", "c"], "c": ["a", "b"]}
    >>> local_clustering("a", adj.__getitem__)
    1.0
    """
    around = set(neighbours(agent))
    around.discard(agent)
    degree = len(around)
    if degree < 2:
        return 0.0
    links = sum(1 for u in around for w in neighbours(u) if w in around and w != u)
    return links / (degree * (degree - 1))


def average_path_length(sources: Iterable[str], neighbours: Neighbours) -> float:
    """Mean shortest-path length (hops) from ``sources`` to every node they reach. O(|sources|·(N + E)).

    Over all nodes as sources this is the average over reachable ordered pairs, which
    stays defined when the graph is not connected; 0 when no pair is connected.

    >>> adj = {"a": ["b"], "b": ["a", "c"], "c": ["b"]}
    >>> round(average_path_length(adj, adj.__getitem__), 4)
    1.3333
    """
    total = pairs = 0
    for source in sources:
        seen = {source: 0}
        queue = deque([source])
        while queue:
            node = queue.popleft()
            depth = seen[node] + 1
            for nxt in neighbours(node):
                if nxt not in seen:
                    seen[nxt] = depth
                    total += depth
                    pairs += 1
                    queue.append(nxt)
    return total / pairs if pairs else 0.0


def _mean(values: Iterable[float]) -> float:
    total = count = 0
    for value in values:
        total += value
        count += 1
    return total / count if count else 0.0


def _endpoints(edges: list[CausalEdge]) -> list[str]:
    return list(dict.fromkeys(a for e in edges for a in (e.source_agent, e.target_agent)))


def _rotation(cycle: Sequence[str]) -> tuple[str, ...]:
    """The cycle started at its smallest agent, so every rotation names the same loop."""
    start = min(range(len(cycle)), key=lambda i: cycle[i])
    return tuple(cycle[start:]) + tuple(cycle[:start])


__all__ = [
    "Edge",
    "EdgeKey",
    "GraphConfig",
    "GraphSnapshot",
    "GraphTopologyManager",
    "Node",
    "average_path_length",
    "local_clustering",
]
