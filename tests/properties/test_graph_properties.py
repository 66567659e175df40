"""Properties 7 and 9: the causal graph follows every interaction; quarantine isolates."""

from __future__ import annotations

import networkx as nx
from hypothesis import given, settings
from hypothesis import strategies as st

from chorus_lab.engine import PredictionEngine
from chorus_lab.graph import GraphConfig, GraphTopologyManager
from chorus_lab.schema import AgentMessage
from tests.properties.fleet import decide, msg

AGENTS = [f"ag-{i}" for i in range(12)]
ACTIONS = [None, "delegate", "forward", "request_resource", "status", "claim", "grant", "deny", "release"]


@st.composite
def interactions(draw: st.DrawFn, max_size: int = 40) -> list[AgentMessage]:
    """Messages between a dozen agents, in event-time order (sometimes a little late)."""
    out, t = [], 0.0
    for i in range(draw(st.integers(1, max_size))):
        t += draw(st.floats(0.0, 120.0))
        late = draw(st.floats(0.0, 5.0)) if draw(st.integers(0, 9)) == 0 else 0.0
        sender = draw(st.sampled_from(AGENTS))
        targets = draw(st.lists(st.sampled_from(AGENTS), max_size=5))
        kind = draw(st.sampled_from(["request", "response", "broadcast"]))
        action = draw(st.sampled_from(ACTIONS))
        content = {"action": action, "resource": "gpu"} if action else {"text": "hi"}
        out.append(msg(sender, targets, f"m{i}", max(0.0, t - late), kind, **content))
    return out


# Feature: real-time-data-flow, Property 7: Real-time graph updates
@settings(max_examples=100, deadline=None)
@given(interactions(), st.sampled_from([GraphConfig(), GraphConfig(max_nodes=5, max_edges=8)]))
def test_every_interaction_updates_the_graph(messages: list[AgentMessage], config: GraphConfig) -> None:
    engine, graph = PredictionEngine(), GraphTopologyManager(config)
    for message in messages:
        decision = decide(message, engine)
        before, dropped = set(graph.nodes), graph.evictions["dropped"]
        updates = graph.observe(decision)
        added = {a for u in updates if u.update_type == "node_added" for a in u.affected_nodes}
        everyone = {message.agent_id, *message.target_agents}
        fits = len(everyone) <= config.max_nodes
        assert added == everyone - before if fits else added <= everyone - before
        changed = {
            (e.source_agent, e.target_agent, e.relationship_type)
            for u in updates
            if u.update_type in ("edge_created", "edge_updated")
            for e in u.edge_changes
        }
        skipped = 0
        for wire in decision.causal_relationships:
            key = (wire.source_agent, wire.target_agent, wire.relationship_type)
            if key not in changed:  # only when one message names more agents than the limit
                assert not fits
                skipped += 1
                continue
            assert key in graph.edges or len(graph.edges) == config.max_edges
            assert {wire.source_agent, wire.target_agent} <= set(graph.nodes)
            if key in graph.edges:
                edge = graph.edges[key]
                assert edge.last_updated >= message.timestamp and 0.0 < edge.strength <= 1.0
        assert graph.evictions["dropped"] - dropped == skipped
        for update in updates:
            assert update.timestamp == message.timestamp
        if updates:  # each update carries the counts as they stand after it
            assert updates[-1].graph_metrics.node_count == len(graph.nodes)
            assert updates[-1].graph_metrics.edge_count == len(graph.edges)
        assert len(graph.nodes) <= config.max_nodes and len(graph.edges) <= config.max_edges
        assert message.agent_id in graph.nodes


# Feature: real-time-data-flow, Property 9: Quarantine status visualization
@settings(max_examples=100, deadline=None)
@given(interactions(max_size=30), st.sampled_from(AGENTS))
def test_a_quarantined_agent_is_shown_isolated_with_its_cut_paths(messages: list[AgentMessage], agent: str) -> None:
    engine, graph = PredictionEngine(), GraphTopologyManager()
    for message in messages:
        graph.observe(decide(message, engine))
    when = messages[-1].timestamp
    incident = {k for k in graph.edges if agent in k[:2]}
    neighbours = {k[0] if k[1] == agent else k[1] for k in incident}
    updates = graph.quarantine(agent, when)
    (update,) = [u for u in updates if u.update_type == "node_quarantined"]
    assert update.affected_nodes[0] == agent and set(update.affected_nodes[1:]) == neighbours
    assert {(e.source_agent, e.target_agent, e.relationship_type) for e in update.edge_changes} == incident
    assert agent in update.graph_metrics.isolated_nodes
    assert graph.nodes[agent].status == "quarantined"
    paths = graph.affected_paths(agent)
    assert all(p[1] == agent and (p[0], agent) in {k[:2] for k in incident} and (agent, p[2]) in {k[:2] for k in incident} for p in paths)

    snapshot = graph.snapshot(when)
    assert agent in snapshot.metrics.isolated_nodes and agent in snapshot.quarantined
    reference = nx.Graph()
    reference.add_nodes_from(a for a in graph.nodes if a != agent)
    reference.add_edges_from((s, t) for s, t, _ in graph.edges if agent not in (s, t) and s != t)
    assert abs(snapshot.metrics.clustering_coefficient - (nx.average_clustering(reference) if len(reference) else 0.0)) < 1e-9
    alone = {a for a in reference if reference.degree(a) == 0}
    assert set(snapshot.metrics.isolated_nodes) == alone | {agent}

    (released,) = graph.release(agent, when)
    assert released.update_type == "node_released" and graph.nodes[agent].status == "active"
    assert (agent in released.graph_metrics.isolated_nodes) == (not neighbours)
