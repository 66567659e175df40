"""The causal graph: incremental updates, decay, limits, quarantine, loops and metrics."""

from __future__ import annotations

import math
import random

import networkx as nx
import pytest

from chorus_lab.engine import PredictionEngine
from chorus_lab.graph import GraphConfig, GraphTopologyManager, average_path_length, local_clustering
from chorus_lab.schema import CausalEdge, InterventionAction
from tests.properties.fleet import at, decide, msg


def edge(a: str, b: str, seconds: float = 0.0, rel: str = "request", strength: float = 0.5) -> CausalEdge:
    return CausalEdge(a, b, rel, strength, at(seconds), at(seconds))  # type: ignore[arg-type]


def test_a_decision_adds_its_agents_and_edges_with_updates() -> None:
    graph = GraphTopologyManager()
    decision = decide(msg("a", ["b", "c"], "m-1", 0.0, action="delegate", task_id="t"))
    updates = graph.observe(decision)
    assert [u.update_type for u in updates] == ["node_added", "edge_created"]
    assert updates[0].affected_nodes == ["a", "b", "c"]
    assert {(e.source_agent, e.target_agent, e.relationship_type) for e in updates[1].edge_changes} == {
        ("a", "b", "dependency"),
        ("a", "c", "dependency"),
    }
    assert updates[1].graph_metrics.node_count == 3 and updates[1].graph_metrics.edge_count == 2
    again = graph.observe(decide(msg("a", ["b"], "m-2", 10.0, action="delegate", task_id="t")))
    assert [u.update_type for u in again] == ["edge_updated"]
    assert again[0].edge_changes[0].last_updated == at(10.0)
    assert graph.nodes["a"].messages == 2


def test_strength_decays_by_half_life_and_is_reinforced() -> None:
    graph = GraphTopologyManager(GraphConfig(half_life_s=100.0))
    graph.add_edges([edge("a", "b", 0.0)], at(0.0))
    assert graph.strength("a", "b", "request", at(100.0)) == pytest.approx(0.25)
    assert graph.strength("a", "b", "request", at(200.0)) == pytest.approx(0.125)
    graph.add_edges([edge("a", "b", 100.0)], at(100.0))
    # decayed 0.25, reinforced by 0.5: 0.25 + 0.5 · 0.75
    assert graph.strength("a", "b", "request", at(100.0)) == pytest.approx(0.625)
    assert graph.edges[("a", "b", "request")].interactions == 2
    assert graph.edges[("a", "b", "request")].created_at == at(0.0)


def test_a_late_interaction_does_not_wind_the_clock_back() -> None:
    graph = GraphTopologyManager(GraphConfig(half_life_s=100.0))
    graph.add_edges([edge("a", "b", 100.0)], at(100.0))
    graph.add_edges([edge("a", "b", 50.0)], at(50.0))
    stored = graph.edges[("a", "b", "request")]
    assert stored.last_updated == at(100.0)
    assert stored.strength == pytest.approx(0.75)


def test_expired_edges_are_pruned_and_counted() -> None:
    graph = GraphTopologyManager(GraphConfig(half_life_s=10.0, min_strength=0.1))
    graph.add_edges([edge("a", "b", 0.0), edge("c", "d", 25.0)], at(25.0))
    updates = graph.expire(at(30.0))  # a→b: 0.5 · 2^-3 = 0.0625 < 0.1; c→d: 0.35
    assert [u.update_type for u in updates] == ["edge_removed"]
    assert [(e.source_agent, e.target_agent) for e in updates[0].edge_changes] == [("a", "b")]
    assert set(graph.edges) == {("c", "d", "request")}
    assert graph.evictions["expired"] == 1


def test_edge_limit_evicts_the_weakest_now() -> None:
    graph = GraphTopologyManager(GraphConfig(max_edges=2, half_life_s=10.0))
    graph.add_edges([edge("a", "b", 0.0, strength=0.9)], at(0.0))
    graph.add_edges([edge("c", "d", 20.0, strength=0.5)], at(20.0))  # a→b is 0.225 by now
    updates = graph.add_edges([edge("e", "f", 20.0, strength=0.5)], at(20.0))
    assert set(graph.edges) == {("c", "d", "request"), ("e", "f", "request")}
    assert graph.evictions["edges"] == 1
    removed = [u for u in updates if u.update_type == "edge_removed"]
    assert removed and removed[0].edge_changes[0].source_agent == "a"
    assert removed[0].edge_changes[0].strength == pytest.approx(0.225)


def test_node_limit_evicts_the_least_recently_active_but_keeps_quarantined_ones() -> None:
    graph = GraphTopologyManager(GraphConfig(max_nodes=3))
    graph.add_edges([edge("old", "q", 0.0)], at(0.0))
    graph.quarantine("q", at(0.0))
    graph.add_edges([edge("x", "q", 1.0)], at(1.0))
    updates = graph.add_edges([edge("new", "x", 2.0)], at(2.0))
    assert set(graph.nodes) == {"q", "x", "new"}
    assert graph.evictions["nodes"] == 1
    kinds = [u.update_type for u in updates]
    assert "node_removed" in kinds and "edge_removed" in kinds
    assert ("old", "q", "request") not in graph.edges
    assert len(graph.nodes) <= 3


def test_a_message_naming_more_agents_than_the_limit_keeps_its_sender() -> None:
    graph = GraphTopologyManager(GraphConfig(max_nodes=3))
    graph.observe(decide(msg("b", ["c", "d"], "m-1", 0.0)))
    graph.observe(decide(msg("s", ["b", "c", "d"], "m-2", 1.0)))
    # Every node in the graph is one of the message's agents: its last target makes room.
    assert set(graph.nodes) == {"s", "b", "c"}
    assert graph.evictions["nodes"] == 1


def test_quarantine_lists_the_cut_connections_and_isolates_the_agent() -> None:
    graph = GraphTopologyManager()
    graph.add_edges([edge("a", "q", 0.0), edge("q", "b", 0.0), edge("q", "c", 0.0), edge("b", "c", 0.0)], at(0.0))
    (update,) = graph.quarantine("q", at(1.0))
    assert update.update_type == "node_quarantined"
    assert update.affected_nodes == ["q", "a", "b", "c"]
    assert {(e.source_agent, e.target_agent) for e in update.edge_changes} == {("a", "q"), ("q", "b"), ("q", "c")}
    assert update.graph_metrics.isolated_nodes[:2] == ["q", "a"]  # a's only neighbour is cut off
    assert graph.affected_paths("q") == [["a", "q", "b"], ["a", "q", "c"]]
    assert graph.nodes["q"].status == "quarantined"
    assert graph.quarantine("q", at(2.0)) == []  # already quarantined: nothing new
    (released,) = graph.release("q", at(3.0))
    assert released.update_type == "node_released"
    assert "q" not in released.graph_metrics.isolated_nodes and "a" not in released.graph_metrics.isolated_nodes


def test_decisions_carry_quarantine_and_release_to_the_graph() -> None:
    graph = GraphTopologyManager()
    base = decide(msg("q", ["b"], "m-1", 0.0))
    action = InterventionAction("quarantine", "q", "trust 20 below 30", at(0.0), 20.0)
    decision = type(base)(base.original_message, base.conflict_analysis, base.trust_impact, action, base.processing_metadata, base.causal_relationships)
    kinds = [u.update_type for u in graph.observe(decision)]
    assert kinds == ["node_added", "node_quarantined", "edge_created"]
    assert graph.quarantined == {"q"}


def test_trust_changes_are_reported_in_steps() -> None:
    graph = GraphTopologyManager(GraphConfig(trust_step=5.0))
    graph.add_edges([edge("a", "b")], at(0.0))
    assert graph.set_trust("a", 97.0, at(1.0)) == []
    (update,) = graph.set_trust("a", 94.0, at(2.0))
    assert update.update_type == "node_updated" and update.affected_nodes == ["a"]
    assert graph.nodes["a"].trust == 94.0


def test_loops_are_highlighted_once_and_expire() -> None:
    graph = GraphTopologyManager(GraphConfig(loop_ttl_s=60.0))
    graph.add_edges([edge("a", "b", 0.0, "dependency"), edge("b", "c", 0.0, "dependency"), edge("c", "a", 0.0, "dependency")], at(0.0))
    (update,) = graph.mark_loop(["b", "c", "a"], at(1.0))
    assert update.update_type == "loop_detected" and update.affected_nodes == ["b", "c", "a"]
    assert len(update.edge_changes) == 3
    assert update.graph_metrics.detected_loops == [["b", "c", "a"]]
    assert graph.mark_loop(["a", "b", "c"], at(2.0)) == []  # the same loop, rotated
    assert graph.current_loops(at(30.0)) == [["a", "b", "c"]]
    graph.expire(at(100.0))
    assert graph.metrics().detected_loops == []


def test_metrics_match_networkx_on_a_small_graph() -> None:
    rng = random.Random(4)
    graph = GraphTopologyManager()
    reference = nx.Graph()
    agents = [f"a{i}" for i in range(30)]
    for _ in range(80):
        a, b = rng.sample(agents, 2)
        graph.add_edges([edge(a, b)], at(0.0))
        reference.add_edge(a, b)
    snapshot = graph.snapshot(at(0.0))
    assert snapshot.exact
    assert snapshot.metrics.clustering_coefficient == pytest.approx(nx.average_clustering(reference))
    lengths = dict(nx.all_pairs_shortest_path_length(reference))
    pairs = [d for source, row in lengths.items() for target, d in row.items() if source != target]
    assert snapshot.metrics.average_path_length == pytest.approx(sum(pairs) / len(pairs))
    degree = nx.degree_centrality(reference)
    top = sorted(degree.values(), reverse=True)[:10]
    assert [c for _, c in snapshot.top_central] == pytest.approx(top)


def test_quarantined_agents_leave_the_metrics_graph() -> None:
    graph = GraphTopologyManager()
    graph.add_edges([edge("a", "hub"), edge("b", "hub"), edge("c", "hub")], at(0.0))
    assert graph.snapshot(at(0.0)).metrics.average_path_length == pytest.approx(1.5)
    graph.quarantine("hub", at(1.0))
    snapshot = graph.snapshot(at(1.0))
    assert snapshot.metrics.average_path_length == 0.0
    assert snapshot.isolated_count == 4
    assert snapshot.metrics.isolated_nodes == ["hub", "a", "b", "c"]


def test_large_graphs_are_sampled_deterministically() -> None:
    def build() -> GraphTopologyManager:
        rng = random.Random(7)
        g = GraphTopologyManager(GraphConfig(exact_clustering_below=100, clustering_sample=50, exact_paths_below=100, path_sources=4))
        for _ in range(3000):
            a, b = rng.randrange(1000), rng.randrange(1000)
            g.add_edges([edge(f"n{a}", f"n{b}")], at(0.0))
        return g

    first, second = build().snapshot(at(0.0)), build().snapshot(at(0.0))
    assert not first.exact
    assert first.metrics == second.metrics
    assert 0.0 < first.metrics.average_path_length < 20


def test_updates_do_not_recompute_whole_graph_metrics() -> None:
    graph = GraphTopologyManager()
    graph.add_edges([edge("a", "b"), edge("b", "c"), edge("c", "a")], at(0.0))
    assert graph.metrics().clustering_coefficient == 0.0  # nothing computed yet
    graph.snapshot(at(0.0))
    assert graph.metrics().clustering_coefficient == pytest.approx(1.0)
    graph.add_edges([edge("c", "d")], at(1.0))  # would lower it; only the next snapshot says so
    assert graph.metrics().clustering_coefficient == pytest.approx(1.0)
    assert graph.metrics().edge_count == 4


def test_self_edges_are_ignored() -> None:
    graph = GraphTopologyManager()
    updates = graph.add_edges([edge("a", "a")], at(0.0))
    assert [u.update_type for u in updates] == ["node_added"]
    assert graph.edges == {}


def test_helpers_on_tiny_graphs() -> None:
    star = {"h": ["a", "b", "c"], "a": ["h"], "b": ["h"], "c": ["h"]}
    assert local_clustering("h", star.__getitem__) == 0.0
    assert average_path_length(star, star.__getitem__) == pytest.approx(1.5)
    assert average_path_length([], star.__getitem__) == 0.0


def test_to_networkx_copies_the_graph() -> None:
    engine = PredictionEngine()
    graph = GraphTopologyManager()
    graph.observe(decide(msg("a", ["b"], "m-1", 0.0), engine))
    copy = graph.to_networkx(at(600.0))
    assert copy.nodes["a"]["status"] == "active"
    assert math.isclose(copy.edges["a", "b", "request"]["strength"], 0.25)


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="max_edges"):
        GraphConfig(max_edges=0)
    with pytest.raises(ValueError, match="min_strength"):
        GraphConfig(min_strength=1.5)


def test_a_reinforced_edge_is_not_evicted_for_its_old_weakness() -> None:
    graph = GraphTopologyManager(GraphConfig(max_edges=2, half_life_s=10.0))
    graph.add_edges([edge("a", "b", 0.0, strength=0.5), edge("c", "d", 1.0, strength=0.5)], at(1.0))
    graph.add_edges([edge("a", "b", 30.0, strength=0.5)], at(30.0))  # a→b was the weakest; now it is fresh
    graph.add_edges([edge("e", "f", 30.0, strength=0.5)], at(30.0))
    assert set(graph.edges) == {("a", "b", "request"), ("e", "f", "request")}
    graph.expire(at(30.0))
    assert ("a", "b", "request") in graph.edges
