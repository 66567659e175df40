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
