"""The live state's fold: what each record does, bounds, order independence, bad input."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import pytest

from chorus_lab import config
from chorus_lab.live.feed import OutRecord, pipeline_records
from chorus_lab.live.frames import alerts_frame, decisions_frame, metrics_frame, trust_frame
from chorus_lab.live.state import Limits, LiveState, TopN, apply_record
from chorus_lab.live.session import TOPICS
from chorus_lab.schema import Alert, CausalEdge, CausalGraphUpdate, GraphMetrics, encode
from chorus_lab.simulate import SimulationConfig, simulate

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def fold(records: list[OutRecord], limits: Limits | None = None) -> LiveState:
    state = LiveState(limits or Limits())
    for record in records:
        apply_record(state, TOPICS[record.topic], record.value)
    return state


@pytest.fixture(scope="module")
def records() -> list[OutRecord]:
    sim = simulate(SimulationConfig(agents=20, messages=800, seed=5))
    return list(pipeline_records(sim.messages, finish=sim.messages[-1].timestamp + timedelta(seconds=30)))


def graph_update(kind: str, nodes: list[str], edges: list[CausalEdge], seconds: float, loops: list[list[str]] | None = None) -> bytes:
    metrics = GraphMetrics(len(nodes), len(edges), 0.0, 0.0, loops or [], [])
    return encode(CausalGraphUpdate(kind, nodes, edges, metrics, T0 + timedelta(seconds=seconds)))  # type: ignore[arg-type]


def edge(a: str, b: str, strength: float, seconds: float) -> CausalEdge:
    return CausalEdge(a, b, "request", strength, T0, T0 + timedelta(seconds=seconds))


def test_trust_of_each_agent_is_that_of_its_last_decision(records: list[OutRecord]) -> None:
    from chorus_lab.schema import ProcessedDecision, decode

    expected: dict[str, float] = {}
    for record in records:
        if record.topic == config.DECISIONS:
            decision = decode(ProcessedDecision, record.value)
            expected[decision.original_message.agent_id] = decision.trust_impact.after
    state = fold(records)
    assert {a: state.agents[a].trust for a in expected} == expected
    frame = trust_frame(state)
    assert list(frame["trust"]) == sorted(frame["trust"])
    assert state.undecodable == 0


def test_every_topic_is_folded_and_counted(records: list[OutRecord]) -> None:
    state = fold(records)
    by_topic = {kind: sum(1 for r in records if TOPICS[r.topic] == kind) for kind in TOPICS.values()}
    assert state.records == by_topic
    assert state.version == len(records)
    alert_ids = {json.loads(r.value)["alert_id"] for r in records if r.topic == config.ALERTS}
    assert set(alerts_frame(state)["alert_id"]) == alert_ids and alert_ids
    assert len(metrics_frame(state)) == by_topic["metrics"] > 0
    assert state.edges and state.graph_metrics["node_count"] > 0


def test_bounded_collections_keep_the_latest(records: list[OutRecord]) -> None:
    state = fold(records, Limits(decisions=50, alerts=2, metrics=3, edges=40))
    full = fold(records)
    assert len(state.decisions) == 50
    assert [d["message_id"] for d in state.decisions.values()] == [d["message_id"] for d in full.decisions.values()][:50]
    frame = decisions_frame(state)
    assert frame["timestamp"].is_monotonic_increasing
    assert len(state.metrics) == 3 and len(state.alerts) == 2
    assert len(state.edges) <= 40 and state.edges_evicted > 0


def test_the_fold_does_not_depend_on_how_partitions_interleave(records: list[OutRecord]) -> None:
    """Per-key order is kept (as Kafka does per partition); across keys any interleaving."""
    rng = random.Random(7)
    queues: dict[tuple[str, bytes], list[OutRecord]] = {}
    for record in records:
        queues.setdefault((record.topic, record.key), []).append(record)
    shuffled: list[OutRecord] = []
    while queues:
        key = rng.choice(sorted(queues))
        shuffled.append(queues[key].pop(0))
        if not queues[key]:
            del queues[key]
    assert fold(shuffled).fingerprint() == fold(records).fingerprint()


def test_undecodable_records_are_counted_and_skipped() -> None:
    state = LiveState()
    assert not apply_record(state, "decisions", b"{}")
    assert not apply_record(state, "graph", b"\xff\xfe")
    assert not apply_record(state, "metrics", b"[1, 2]")
    assert not apply_record(state, "alerts", None)
    assert state.undecodable == 4 and state.version == 0
    assert state.last_error.startswith("alerts: ")
    with pytest.raises(ValueError, match="unknown record kind"):
        apply_record(state, "nope", b"{}")  # type: ignore[arg-type]


@pytest.mark.parametrize(("part", "field", "value", "reason"), [
    ("processing_metadata", "latency_ms", 10**400, "too large"),  # a JSON integer no float holds
    ("trust_impact", "after", "high", "trust_impact.after"),
    ("original_message", "timestamp", "yesterday", "original_message.timestamp"),
    ("causal_relationships", None, [{"source_agent": "a"}], "causal_relationships[0]"),
])
def test_a_bad_decision_is_counted_with_its_reason_and_the_next_one_still_folds(
    records: list[OutRecord], part: str, field: str | None, value: object, reason: str
) -> None:
    good = [r.value for r in records if r.topic == config.DECISIONS][:2]
    doc = json.loads(good[0])
    if field is None:
        doc[part] = value
    else:
        doc[part][field] = value
    state = LiveState()
    assert not apply_record(state, "decisions", json.dumps(doc).encode())
    assert state.undecodable == 1 and state.version == 0
    assert state.last_error.startswith("decisions: ") and reason in state.last_error, state.last_error
    assert apply_record(state, "decisions", good[1]) and state.version == 1


def test_quarantine_and_release_follow_event_time_not_arrival() -> None:
    state = LiveState()
    released = graph_update("node_released", ["x"], [], 20)
    quarantined = graph_update("node_quarantined", ["x", "y"], [edge("y", "x", 0.5, 5)], 10)
    apply_record(state, "graph", released)
    apply_record(state, "graph", quarantined)
    assert not state.agents["x"].quarantined
    other = LiveState()
    apply_record(other, "graph", quarantined)
    assert other.agents["x"].quarantined and other.agents["x"].affected_paths == [["y", "x", "request"]]
    apply_record(other, "graph", released)
    assert not other.agents["x"].quarantined


def test_edges_keep_the_latest_report_and_removals_apply() -> None:
    state = LiveState()
    apply_record(state, "graph", graph_update("edge_updated", ["a", "b"], [edge("a", "b", 0.9, 30)], 30))
    apply_record(state, "graph", graph_update("edge_created", ["a", "b"], [edge("a", "b", 0.5, 1)], 1))
    assert state.edges[("a", "b", "request")].strength == 0.9
    apply_record(state, "graph", graph_update("edge_removed", ["a", "b"], [edge("a", "b", 0.0, 40)], 40))
    assert ("a", "b", "request") not in state.edges


def test_loops_come_from_the_latest_graph_metrics() -> None:
    state = LiveState()
    apply_record(state, "graph", graph_update("loop_detected", ["a", "b", "c"], [], 5, loops=[["a", "b", "c"]]))
    assert state.loops == [["a", "b", "c"]] and state.loop_agents() == {"a", "b", "c"}
    apply_record(state, "graph", graph_update("edge_updated", ["a"], [], 3, loops=[]))
    assert state.loops == [["a", "b", "c"]]
    apply_record(state, "graph", graph_update("metrics", [], [], 9, loops=[]))
    assert state.loops == []


def test_alert_updates_keep_one_row_with_the_strongest_version() -> None:
    weak = Alert("al-1", "byzantine", "medium", 0.6, "first look", ["a"], ["m1"], T0)
    strong = Alert("al-1", "byzantine", "high", 0.95, "escalated", ["a"], ["m1", "m2"], T0 + timedelta(seconds=3))
    one, two = LiveState(), LiveState()
    for value in (encode(weak), encode(strong)):
        apply_record(one, "alerts", value)
    for value in (encode(strong), encode(weak)):
        apply_record(two, "alerts", value)
    assert one.alerts.values() == two.alerts.values()
    (row,) = one.alerts.values()
    assert row["confidence"] == 0.95 and row["detected_at"].startswith("2026-01-01T00:00:00.")


def test_topn_keeps_the_greatest_keys_in_any_order() -> None:
    keys = [(k,) for k in range(50)]
    results = set()
    for seed in range(5):
        random.Random(seed).shuffle(keys)
        top = TopN(7)
        for key in keys:
            top.put(key, key[0])
        results.add(tuple(top.values()))
    assert results == {tuple(range(49, 42, -1))}


def test_limits_reject_nonsense() -> None:
    with pytest.raises(ValueError, match="Limits.alerts"):
        Limits(alerts=0)
