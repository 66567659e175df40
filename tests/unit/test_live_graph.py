"""Level of detail, layout and the graph model: the pure parts of the graph widget."""

from __future__ import annotations

import pytest

from chorus_lab.live import layout
from chorus_lab.live.graph_model import GraphFilters, graph_model
from chorus_lab.live.lod import NodeFacts, select_visible
from chorus_lab.live.state import LiveState, _put_edge

T = "2026-01-01T00:00:{:02d}.000000Z"


def test_level_of_detail_caps_and_prefers_the_relevant() -> None:
    facts = {f"n{i:03d}": NodeFacts(messages=i) for i in range(500)}
    facts["q"] = NodeFacts(quarantined=True)
    facts["l"] = NodeFacts(in_loop=True)
    facts["al"] = NodeFacts(alerts=3)
    visible = select_visible(facts, {}, max_visible=10)
    assert len(visible) == 10
    assert visible[:3] == ["q", "l", "al"]
    assert visible[3:] == [f"n{i:03d}" for i in range(499, 492, -1)]


def test_selected_agent_and_its_neighbourhood_come_first() -> None:
    facts = {f"n{i}": NodeFacts(messages=100) for i in range(20)} | {"quiet": NodeFacts(), "friend": NodeFacts()}
    visible = select_visible(facts, {"quiet": ["friend"]}, max_visible=4, selected="quiet")
    assert visible[:2] == ["quiet", "friend"]


def test_quarantined_neighbours_are_kept_as_affected_paths() -> None:
    facts = {f"n{i:02d}": NodeFacts(messages=100 - i) for i in range(30)} | {"q": NodeFacts(quarantined=True), "peer": NodeFacts()}
    visible = select_visible(facts, {"q": ["peer"]}, max_visible=5)
    assert visible[:2] == ["q", "peer"]


def test_level_of_detail_rejects_an_empty_budget() -> None:
    with pytest.raises(ValueError, match="max_visible"):
        select_visible({}, {}, max_visible=0)


def test_layout_is_incremental_and_isolates_quarantine() -> None:
    first = layout.place({}, ["a", "b", "c"], {"b": ["a"]})
    again = layout.place(first, ["a", "b", "c", "d"], {"d": ["c"]})
    assert all(again[k] == first[k] for k in first)
    assert layout.RING - 0.01 <= layout.distance(again["d"], again["c"]) <= 5 * layout.RING
    crowd = layout.place({"hub": (0.0, 0.0)}, ["hub"] + [f"leaf{i}" for i in range(40)], {f"leaf{i}": ["hub"] for i in range(40)})
    assert len({layout._cell(p) for p in crowd.values()}) == 41, "no two nodes share a cell"
    moved = layout.place(again, ["a", "b", "c", "d"], {}, quarantined=["b"])
    assert moved["b"][0] == layout.QUARANTINE_X
    assert {k: moved[k] for k in "acd"} == {k: again[k] for k in "acd"}
    assert len(set(layout.place({}, [f"x{i}" for i in range(200)], {}).values())) == 200


def two_cliques(state: LiveState) -> None:
    for i, (a, b, kind) in enumerate([("a", "b", "request"), ("b", "c", "request"), ("c", "a", "request"),
                                      ("x", "y", "conflict"), ("y", "z", "dependency")]):
        _put_edge(state, (a, b, kind), 0.1 + 0.2 * i, T.format(i * 10), T.format(i * 10))
    state.agent("a").messages = 9
    state.loops = [["a", "b", "c"]]


def test_graph_model_marks_loops_quarantine_and_filters() -> None:
    state = LiveState()
    two_cliques(state)
    state.agent("y").quarantined = True
    state.agent("y").affected_paths = [["x", "y", "conflict"]]
    model = graph_model(state, GraphFilters())
    classes = {n.id: n.classes for n in model.nodes}
    assert classes["a"] == "loop" and classes["y"] == "quarantined"
    edges = {(e.source, e.target): e.classes for e in model.edges}
    assert "loop" in edges[("a", "b")] and "affected" in edges[("x", "y")]
    assert model.nodes[[n.id for n in model.nodes].index("y")].position[0] == layout.QUARANTINE_X
    assert "[quarantined] y" in model.text()

    only_conflicts = graph_model(state, GraphFilters(relationships=frozenset({"conflict"})))
    assert [(e.source, e.target) for e in only_conflicts.edges] == [("x", "y")]
    searched = graph_model(state, GraphFilters(search="A"))
    assert [n.id for n in searched.nodes] == ["a"]
    state.agent("z").trust = 10.0
    low = graph_model(state, GraphFilters(trust_min=0, trust_max=20))
    assert [n.id for n in low.nodes] == ["z"]


def test_time_window_and_scrubbing_show_the_past() -> None:
    state = LiveState()
    two_cliques(state)
    state.watermark = T.format(40)
    recent = graph_model(state, GraphFilters(window_s=15))
    assert [(e.source, e.target) for e in recent.edges] == [("x", "y"), ("y", "z")]
    past = graph_model(state, GraphFilters(at=T.format(10)))
    assert sorted((e.source, e.target) for e in past.edges) == [("a", "b"), ("b", "c")]
    assert past.summary.startswith("as of")


def test_graph_model_summarizes_what_the_budget_leaves_out() -> None:
    state = LiveState()
    for i in range(50):
        _put_edge(state, (f"s{i}", f"t{i}", "request"), 0.5, T.format(0), T.format(1))
    model = graph_model(state, GraphFilters(max_visible=10))
    assert len(model.nodes) == 10
    assert model.summary.startswith("showing 10 of 100 agents")
    assert all(e.source in {n.id for n in model.nodes} and e.target in {n.id for n in model.nodes} for e in model.edges)


def _churned_state(seed: int) -> LiveState:
    """Edges added, updated, removed by graph updates and evicted by the edge limit."""
    import random

    from chorus_lab.live.state import Limits, apply_graph_update
    from chorus_lab.live.wire import EdgeFacts, GraphFacts

    rng = random.Random(seed)
    state = LiveState(Limits(edges=rng.choice([5, 40, 1000])))
    agents = [f"a{i}" for i in range(rng.randint(2, 30))]
    types = ["request", "dependency", "conflict", "unusual"][: rng.randint(1, 4)]
    for _ in range(rng.randint(10, 200)):
        when = f"2026-01-01T00:00:{rng.randint(0, 59):02d}.000000Z"
        a, b, kind = rng.choice(agents), rng.choice(agents), rng.choice(types)
        edge = EdgeFacts(a, b, kind, rng.random(), when, when)
        if rng.random() < 0.15:
            apply_graph_update(state, GraphFacts(rng.choice(["edge_removed", "node_removed"]), [a], [edge], when, [], {}))
        elif rng.random() < 0.05:
            apply_graph_update(state, GraphFacts("node_quarantined", [a], [edge], when, [[a, b]], {}))
        else:
            _put_edge(state, (a, b, kind), edge.strength, when, f"2026-01-01T00:01:{rng.randint(0, 59):02d}.000000Z")
        state.agent(a).trust = rng.choice([10.0, 50.0, rng.random() * 100])
        state.agent(a).messages += rng.randint(0, 3)
    return state


@pytest.mark.parametrize("seed", range(40))
def test_kept_adjacency_gives_the_same_graph_as_walking_every_edge(seed: int) -> None:
    import copy

    from chorus_lab.live.state import earliest_edge

    state = _churned_state(seed)
    walked: dict[str, dict[str, int]] = {}
    for source, target, _kind in state.edges:
        walked.setdefault(source, {}).setdefault(target, 0)
        walked[source][target] += 1
        walked.setdefault(target, {}).setdefault(source, 0)
        walked[target][source] += 1
    assert state.adjacency == walked
    assert earliest_edge(state) == min((e.first_seen for e in state.edges.values()), default="")
    # An unknown relationship type makes graph_model walk every edge (its general path).
    walking = copy.deepcopy(state)
    walking.edge_types["not-a-type-in-the-filters"] = 0
    selected = sorted(state.agents)[seed % len(state.agents)]
    for filters in (GraphFilters(), GraphFilters(selected=selected), GraphFilters(max_visible=3, max_visible_edges=4, selected=selected)):
        assert graph_model(state, filters) == graph_model(walking, filters)


@pytest.mark.parametrize("seed", range(20))
def test_top_trust_rows_are_the_first_rows_of_the_full_sort(seed: int) -> None:
    from chorus_lab.live.render import SORT_KEYS, sort_trust_rows
    from chorus_lab.live.view import top_trust_rows, trust_rows

    state = _churned_state(seed)
    state.agent("q1").quarantined = True
    for by in SORT_KEYS:
        for descending in (False, True):
            for limit in (1, 3, 200):
                assert top_trust_rows(state, by, descending=descending, limit=limit) == sort_trust_rows(trust_rows(state), by, descending=descending)[:limit]


@pytest.mark.parametrize("seed", range(40))
def test_judging_only_the_candidates_picks_what_judging_every_agent_picks(seed: int) -> None:
    import random

    state = _churned_state(seed)
    rng = random.Random(seed)
    agents = sorted(state.agents)
    for agent in rng.sample(agents, k=min(len(agents), rng.randint(0, 3))):
        state.agent(agent).quarantined = True
    if rng.random() < 0.5:
        state.loops = [rng.sample(agents, k=min(len(agents), 3))]
    if seed % 2:  # many equal message counts: the degree, then the id, break the ties
        for agent in agents:
            state.agent(agent).messages = rng.choice([0, 1, 2])
    selected = rng.choice([None, agents[seed % len(agents)], "not-an-agent"])
    for budget in (1, 3, 10, 300):
        for filters in (GraphFilters(max_visible=budget, selected=selected),
                        GraphFilters(max_visible=budget, selected=selected, relationships=frozenset({"request"}))):
            assert graph_model(state, filters) == graph_model(state, filters, exhaustive=True)
