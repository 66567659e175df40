"""The live view's light readers agree with the strict codec on what they read."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from chorus_lab import config
from chorus_lab.live import wire
from chorus_lab.live.feed import OutRecord, pipeline_records
from chorus_lab.schema import Alert, CausalGraphUpdate, ProcessedDecision, SchemaError, decode, format_timestamp
from chorus_lab.simulate import SimulationConfig, simulate


@pytest.fixture(scope="module")
def records() -> list[OutRecord]:
    sim = simulate(SimulationConfig(agents=25, messages=1200, seed=8))
    return list(pipeline_records(sim.messages, finish=sim.messages[-1].timestamp + timedelta(seconds=20)))


def edges(items: list) -> list[wire.EdgeFacts]:  # type: ignore[type-arg]
    return [wire.EdgeFacts(e.source_agent, e.target_agent, e.relationship_type, e.strength,
                           format_timestamp(e.created_at), format_timestamp(e.last_updated)) for e in items]


def test_decisions_read_as_the_codec_decodes_them(records: list[OutRecord]) -> None:
    values = [r.value for r in records if r.topic == config.DECISIONS]
    assert values
    for value in values:
        d = decode(ProcessedDecision, value)
        m, action = d.original_message, d.intervention_action
        assert wire.read_decision(value) == wire.DecisionFacts(
            m.agent_id, format_timestamp(m.timestamp), m.message_id, m.message_type, str(m.content.get("action") or ""),
            m.target_agents, d.conflict_analysis.risk, d.conflict_analysis.conflict_type, d.trust_impact.before,
            d.trust_impact.after, d.trust_impact.delta, action.action if action else "",
            format_timestamp(action.timestamp) if action else "", d.processing_metadata.flags,
            d.processing_metadata.latency_ms, edges(d.causal_relationships),
        )


def test_alerts_and_graph_updates_read_as_the_codec_decodes_them(records: list[OutRecord]) -> None:
    alerts = [r.value for r in records if r.topic == config.ALERTS]
    updates = [r.value for r in records if r.topic == config.GRAPH_UPDATES]
    assert alerts and updates
    for value in alerts:
        a = decode(Alert, value)
        assert wire.read_alert(value) == wire.AlertFacts(a.alert_id, a.pattern, a.severity, a.confidence, a.description,
                                                         a.affected_agents, len(a.evidence), format_timestamp(a.detected_at))
    for value in updates:
        u = decode(CausalGraphUpdate, value)
        facts = wire.read_graph_update(value)
        assert (facts.update_type, facts.affected_nodes, facts.edges, facts.timestamp, facts.detected_loops) == (
            u.update_type, u.affected_nodes, edges(u.edge_changes), format_timestamp(u.timestamp), u.graph_metrics.detected_loops)
        assert facts.metrics["node_count"] == u.graph_metrics.node_count


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (["original_message", "agent_id"], 7, "original_message.agent_id"),
        (["trust_impact", "after"], 140.0, "trust_impact.after"),
        (["trust_impact", "after"], True, "trust_impact.after"),
        (["original_message", "timestamp"], "2026-01-01T00:00:00", "original_message.timestamp"),
        (["causal_relationships"], [{"source_agent": "a"}], "causal_relationships[0].target_agent"),
        (["intervention_action"], "quarantine", "intervention_action"),
    ],
)
def test_a_wrong_field_the_view_uses_is_rejected_by_name(records: list[OutRecord], path: list[str], value: object, field: str) -> None:
    doc = json.loads(next(r.value for r in records if r.topic == config.DECISIONS))
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    raw = json.dumps(doc).encode()
    with pytest.raises(SchemaError) as caught:
        wire.read_decision(raw)
    assert caught.value.field == field
    with pytest.raises(SchemaError):
        decode(ProcessedDecision, raw)


def test_the_fast_readers_agree_with_the_checked_ones_or_leave_the_record_to_them(records: list[OutRecord]) -> None:
    import copy

    docs = [json.loads(r.value) for r in records if r.topic == config.DECISIONS]
    fast = [wire._decision_fast(doc) for doc in docs]
    assert sum(f is not None for f in fast) > len(docs) // 2, "the usual decision takes the fast path"
    for doc, facts in zip(docs, fast, strict=True):
        if facts is not None:
            assert facts == wire._decision_checked(doc)
    plain = next(doc for doc, facts in zip(docs, fast, strict=True) if facts is not None and doc["causal_relationships"])
    for part, field, value in [("original_message", "timestamp", "2026-01-01T00:00:00+00:00"), ("trust_impact", "after", True),
                               ("conflict_analysis", "risk", "0.5"), ("processing_metadata", "latency_ms", -1.0),
                               ("original_message", "target_agents", ["a", 1])]:
        changed = copy.deepcopy(plain)
        changed[part][field] = value
        assert wire._decision_fast(changed) is None, f"{part}.{field} = {value!r} goes to the checked reader"
    edge = plain["causal_relationships"][0]
    assert wire._edge_fast(edge) is not None
    for field, value in [("strength", 1.5), ("strength", False), ("created_at", "2026-01-01T00:00:00Z"), ("source_agent", None)]:
        assert wire._edge_fast(dict(edge, **{field: value})) is None, f"edge {field} = {value!r} goes to the checked reader"
