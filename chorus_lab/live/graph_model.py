"""What the causal-graph widget draws, as plain data: filters, level of detail, classes.

:func:`graph_model` turns a :class:`~chorus_lab.live.state.LiveState` plus the viewer's
:class:`GraphFilters` (agent search, trust range, relationship types, time window, a time
to scrub back to, the selected agent) into a :class:`GraphModel`: the visible nodes and
edges with their cytoscape classes, positions, a summary line and a text fallback.
The widget (``graph_view.py``) only applies differences between two models.

Classes: nodes ``quarantined``, ``loop``, ``alerting``, ``selected``; edges the
relationship type, ``loop`` (a hop of a routing loop), ``affected`` (a path a quarantine
cuts), ``strong``/``fading`` by strength.

>>> from datetime import datetime, UTC
>>> from chorus_lab.live.state import LiveState, _put_edge
>>> state = LiveState()
>>> _put_edge(state, ("a", "b", "request"), 0.8, "2026-01-01T00:00:00.000000Z", "2026-01-01T00:00:00.000000Z")
>>> model = graph_model(state, GraphFilters())
>>> [n.id for n in model.nodes], [(e.source, e.target, e.classes) for e in model.edges]
(['a', 'b'], [('a', 'b', 'request strong')])
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from chorus_lab.live import layout
from chorus_lab.live.lod import DEFAULT_MAX_VISIBLE, NodeFacts, select_visible, summary_line
from chorus_lab.live.render import trust_text
from chorus_lab.live.state import EdgeKey, LiveState
from chorus_lab.schema import format_timestamp, parse_timestamp

RELATIONSHIP_TYPES = ("request", "dependency", "conflict")
DEFAULT_MAX_VISIBLE_EDGES = 600


@dataclass(frozen=True, slots=True)
class GraphFilters:
    """What the viewer asked to see."""

    search: str = ""
    """Substring of agent ids to keep (case-insensitive); empty keeps all."""
    trust_min: float = 0.0
    trust_max: float = 100.0
    relationships: frozenset[str] = frozenset(RELATIONSHIP_TYPES)
    window_s: float | None = None
    """Only edges updated within this many seconds before the latest event time."""
    at: str | None = None
    """Scrub back: show the graph as of this event time (ISO-8601); None is live."""
    selected: str | None = None
    max_visible: int = DEFAULT_MAX_VISIBLE
    max_visible_edges: int = DEFAULT_MAX_VISIBLE_EDGES
    """Edges drawn at most: loop, quarantine and selected-agent edges first, then the strongest."""


@dataclass(frozen=True, slots=True)
class NodeView:
    id: str
    label: str
    classes: str
    trust: float
    position: tuple[float, float]


@dataclass(frozen=True, slots=True)
class EdgeView:
    id: str
    source: str
    target: str
    relationship: str
    strength: float
    classes: str


@dataclass(frozen=True, slots=True)
class GraphModel:
    nodes: list[NodeView] = field(default_factory=list)
    edges: list[EdgeView] = field(default_factory=list)
    summary: str = ""
    total_agents: int = 0
    total_edges: int = 0

    def text(self, limit: int = 60) -> str:
        """The text fallback: the summary, then one line per visible edge."""
        lines = [self.summary]
        for node in self.nodes:
            if "quarantined" in node.classes:
                lines.append(f"[quarantined] {node.id} (trust {trust_text(node.trust)})")
        for edge in self.edges[:limit]:
            marks = " ".join(c for c in edge.classes.split() if c in ("loop", "affected"))
            lines.append(f"{edge.source} -{edge.relationship}-> {edge.target} ({edge.strength:.2f}){' ' + marks if marks else ''}")
        if len(self.edges) > limit:
            lines.append(f"… {len(self.edges) - limit} more edges")
        return "\n".join(lines)


def edge_id(key: EdgeKey) -> str:
    """The cytoscape id of an edge.

    >>> edge_id(("a", "b", "request"))
    'a->b:request'
    """
    return f"{key[0]}->{key[1]}:{key[2]}"


def loop_hops(loops: Iterable[list[str]]) -> set[tuple[str, str]]:
    """The directed hops of the given cycles.

    >>> sorted(loop_hops([["a", "b", "c"]]))
    [('a', 'b'), ('b', 'c'), ('c', 'a')]
    """
    hops: set[tuple[str, str]] = set()
    for loop in loops:
        for i, agent in enumerate(loop):
            hops.add((agent, loop[(i + 1) % len(loop)]))
    return hops


def magnitude(count: int) -> int:
    """The order of magnitude (in powers of two) the level of detail ranks activity by.

    Ranking the busiest agents by exact message count (then degree) changed the drawn set
    at almost every refresh of a large fleet: each change is a node widget created and one
    closed, the node lists sent again and the page's graph rebuilt. By magnitude, ties
    broken by id, an agent trades places only when its activity crosses a power of two.

    >>> [magnitude(n) for n in (0, 1, 2, 3, 4, 7, 8, 1000)]
    [0, 1, 2, 2, 3, 3, 4, 10]
    """
    return count.bit_length()


def _cutoff(state: LiveState, filters: GraphFilters) -> str | None:
    if filters.window_s is None:
        return None
    now = filters.at or state.watermark
    if not now:
        return None
    return format_timestamp(parse_timestamp(now) - timedelta(seconds=filters.window_s))


def graph_model(state: LiveState, filters: GraphFilters, positions: dict[str, tuple[float, float]] | None = None, *,
                exhaustive: bool = False) -> GraphModel:
    """The graph to draw for ``filters``; ``positions`` are the ones already on screen.

    O(agents + edges) for the filters plus O(n log n) for the level of detail. When no
    filter drops agents (the usual live view), relevance is judged only for the agents
    that can be shown (see :func:`_candidates`); ``exhaustive`` judges every agent instead
    (the reference the tests hold the shortcut to).
    """
    cutoff = _cutoff(state, filters)
    at = filters.at
    search = filters.search.strip().lower()
    loops = [] if at else state.loops
    loop_agents = {a for loop in loops for a in loop}
    alerting = state.alerting_agents()
    neighbours: Mapping[str, Iterable[str]]
    kept_edges: list[tuple[EdgeKey, float]] | None
    # The live, unfiltered graph (the usual view) reads the adjacency the state keeps up to
    # date instead of walking every edge on each refresh; any filter on edges walks them.
    everything = at is None and cutoff is None and set(state.edge_types) <= filters.relationships
    if everything and sum(state.edge_types.values()) == len(state.edges):
        neighbours = state.adjacency
        kept_edges = None  # found among the shown agents below
        kept_count = len(state.edges)
    else:
        walked: dict[str, set[str]] = {}
        kept_edges = []
        for key, info in state.edges.items():
            if key[2] not in filters.relationships:
                continue
            if at is not None and info.first_seen > at:
                continue
            if cutoff is not None and info.last_updated < cutoff:
                continue
            kept_edges.append((key, info.strength))
            walked.setdefault(key[0], set()).add(key[1])
            walked.setdefault(key[1], set()).add(key[0])
        neighbours = walked
        kept_count = len(kept_edges)
    facts: dict[str, NodeFacts] = {}
    # The selected agent and its neighbourhood stay visible whatever the search says.
    near = neighbours.get(filters.selected, ()) if filters.selected else ()
    agents_kept = not search and filters.trust_min <= 0.0 and filters.trust_max >= 100.0 and at is None and cutoff is None
    judged = state.agents.keys() if exhaustive or not agents_kept else _candidates(state, neighbours, loop_agents, alerting, filters)
    for agent in judged:
        info = state.agents[agent]
        if search and search not in agent.lower() and agent != filters.selected and agent not in near:
            continue
        if not filters.trust_min <= info.trust <= filters.trust_max:
            continue
        if at is not None and agent not in neighbours and (not info.last_seen or info.last_seen > at):
            continue
        if cutoff is not None and agent not in neighbours and info.last_seen < cutoff and not info.quarantined:
            continue
        facts[agent] = NodeFacts(
            quarantined=info.quarantined,
            in_loop=agent in loop_agents,
            alerts=alerting.get(agent, 0),
            messages=magnitude(info.messages),
            degree=magnitude(len(neighbours.get(agent, ()))),
        )
    visible = select_visible(facts, neighbours, max_visible=filters.max_visible, selected=filters.selected)
    shown = set(visible)
    quarantined = [a for a in visible if facts[a].quarantined]
    placed = layout.place(positions or {}, sorted(visible), neighbours, quarantined=quarantined)
    hops = loop_hops(loops)
    affected = {tuple(p) for a in quarantined for p in state.agents[a].affected_paths}
    nodes = []
    for agent in sorted(visible):
        f = facts[agent]
        classes = [c for c, on in (("quarantined", f.quarantined), ("loop", f.in_loop), ("alerting", f.alerts > 0),
                                   ("selected", agent == filters.selected)) if on]
        nodes.append(NodeView(agent, agent, " ".join(classes), state.agents[agent].trust, placed[agent]))
    if kept_edges is None:
        kept_edges = _edges_among(state, shown)
    candidates = []
    for key, strength in kept_edges:
        if key[0] not in shown or key[1] not in shown:
            continue
        marks = []
        if (key[0], key[1]) in hops:
            marks.append("loop")
        if key in affected or facts[key[0]].quarantined or facts[key[1]].quarantined:
            marks.append("affected")
        pinned = bool(marks) or filters.selected in (key[0], key[1])
        # Strength in tenths: edges trade places only when one is clearly stronger (see magnitude()).
        candidates.append(((not pinned, -round(strength, 1), key), key, strength, marks))
    # Each edge is a widget on the page: keep the marked ones and the strongest.
    chosen = sorted(candidates)[: filters.max_visible_edges]
    edges = []
    for _, key, strength, marks in sorted(chosen, key=lambda c: c[1]):
        classes = [key[2], *marks]
        classes.append("strong" if strength >= 0.7 else "fading" if strength < 0.2 else "")
        edges.append(EdgeView(edge_id(key), key[0], key[1], key[2], round(strength, 1), " ".join(c for c in classes if c)))
    # Every quarantined agent is judged (a candidate), so facts has them all.
    hidden_quarantined = sum(1 for a, f in facts.items() if f.quarantined and a not in shown)
    total = len(state.agents) if agents_kept else len(facts)
    summary = summary_line(total, len(visible), hidden_quarantined, kept_count - len(edges))
    if len(candidates) > len(edges):
        summary += f"; {len(candidates) - len(edges)} weaker edges between shown agents hidden"
    if at is not None:
        summary = f"as of {at}: " + summary
    return GraphModel(nodes, edges, summary, total, kept_count)


def _candidates(state: LiveState, neighbours: Mapping[str, Iterable[str]], loop_agents: set[str], alerting: Mapping[str, int],
                filters: GraphFilters) -> set[str]:
    """The agents :func:`~chorus_lab.live.lod.select_visible` can pick when no filter drops agents.

    Building the level of detail's facts for all 10,000 agents of a fleet was most of a
    refresh. Every agent outside tiers 0-5 (selected, its neighbours, quarantined, their
    neighbours, in a loop, alerting) is ranked by (messages, degree, id) alone, so only
    the ``max_visible`` busiest of them can beat the rest: those, plus every agent of the
    other tiers, give the same selection as judging everyone (tested against it).
    """
    agents = state.agents
    found = {a for a, info in agents.items() if info.quarantined}
    for agent in list(found):
        found.update(neighbours.get(agent, ()))
    if filters.selected in agents:
        found.add(filters.selected)
        found.update(neighbours.get(filters.selected, ()))
    found.update(a for a in loop_agents if a in agents)
    found.update(a for a in alerting if a in agents)
    budget = filters.max_visible
    if len(agents) > budget:
        # The budget-th greatest message count: only agents at or above it can be among the busiest.
        # Magnitude grows with the count, so "at or above the magnitude of the budget-th
        # greatest count" is "at least the smallest count of that magnitude".
        threshold = magnitude(heapq.nlargest(budget, [info.messages for info in agents.values()])[-1])
        least = 1 << (threshold - 1) if threshold > 0 else 0
        busy = [a for a, info in agents.items() if info.messages >= least]
        found.update(heapq.nsmallest(budget, busy, key=lambda a: (-magnitude(agents[a].messages), -magnitude(len(neighbours.get(a, ()))), a)))
    else:
        found.update(agents)
    return found


def _edges_among(state: LiveState, agents: set[str]) -> list[tuple[EdgeKey, float]]:
    """The edges (key, strength) with both ends in ``agents``, found from the adjacency.

    O(edges around ``agents``), not O(all edges): ``agents`` is the few hundred shown.
    """
    found = []
    for source in agents:
        for target in state.adjacency.get(source, ()):
            if target not in agents:
                continue
            for relationship in state.edge_types:
                info = state.edges.get((source, target, relationship))
                if info is not None:
                    found.append(((source, target, relationship), info.strength))
    return found
