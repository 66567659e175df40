"""Stage 2 composed: outputs per topic, dedup, determinism, feedback, metrics cadence."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from chorus_lab.engine import PredictionEngine
from chorus_lab.schema import encode, to_dict
from chorus_lab.simulate import SimulationConfig, simulate
from chorus_lab.stage2 import (
    Stage2,
    Stage2Config,
    alert_key,
    decision_from_engine,
    graph_update_key,
)
from tests.properties.fleet import Pipeline, at, decide, msg


def run_simulation(seed: int, messages: int = 3000, scenarios: dict[str, int] | None = None) -> tuple[list, Stage2]:
    sim = simulate(SimulationConfig(agents=30, messages=messages, seed=seed, scenarios=scenarios if scenarios is not None else {"routing_loop": 1, "byzantine": 1}))
    engine, stage2 = PredictionEngine(), Stage2()
    outputs = []
    for offset, message in enumerate(sim.messages):
        out = stage2.process(decision_from_engine(message, engine.process(message), offset=offset))
        outputs.append(out)
        for signal in out.trust_signals:
            engine.apply_signal(*signal.engine_args())
    return outputs, stage2


def fingerprint(outputs: list) -> str:
    parts = []
    for out in outputs:
        parts.append([to_dict(a) for a in out.alerts])
        parts.append([to_dict(u) for u in out.graph_updates])
        parts.append([s.to_dict() for s in out.trust_signals])
        parts.append([r.to_dict() for r in out.ledger_updates])
        parts.append(out.metrics)
    return json.dumps(parts, sort_keys=True, default=str)


def test_the_same_input_gives_the_same_output() -> None:
    first, _ = run_simulation(5)
    second, _ = run_simulation(5)
    assert fingerprint(first) == fingerprint(second)


def test_every_output_is_encodable_for_its_topic() -> None:
    outputs, _ = run_simulation(6)
    alerts = [a for out in outputs for a in out.alerts]
    assert {a.pattern for a in alerts} >= {"routing_loop", "byzantine"}
    for out in outputs:
        for alert in out.alerts:
            encode(alert)
            assert alert_key(alert)
        for update in out.graph_updates:
            encode(update)
            assert graph_update_key(update)
        for signal in out.trust_signals:
            json.dumps(signal.to_dict())
        for record in out.ledger_updates:
            json.dumps(record.to_dict())
        for snapshot in out.metrics:
            json.dumps(snapshot)
    assert sum(len(out.metrics) for out in outputs) > 5
    assert any(u.update_type == "metrics" for out in outputs for u in out.graph_updates)


def test_a_redelivered_decision_is_dropped() -> None:
    stage2 = Stage2()
    decision = decide(msg("a", ["b"], "m-1", 0.0))
    assert stage2.process(decision).graph_updates
    again = stage2.process(decision)
    assert again.duplicate and again.graph_updates == [] and stage2.duplicates == 1


def test_ledger_updates_carry_the_resource_state() -> None:
    stage2 = Stage2()
    stage2.process(decide(msg("s", ["x"], "m-0", 0.0, "broadcast", action="status", resource="gpu", capacity=4)))
    out = stage2.process(decide(msg("a", ["s"], "m-1", 1.0, action="request_resource", resource="gpu", amount=2)))
    (record,) = out.ledger_updates
    assert record.resource == "gpu" and record.state["capacity"] == 4.0 and "a" in record.state["pending"]
    out = stage2.process(decide(msg("s", ["a"], "m-2", 2.0, "response", cause="m-1", action="grant", resource="gpu", amount=2)))
    assert out.ledger_updates[0].state["holders"] == {"a": 2.0}
    assert stage2.process(decide(msg("a", ["b"], "m-3", 3.0, topic="chat"))).ledger_updates == []


def test_signals_are_what_stage_1_reads() -> None:
    from chorus_lab.pipeline import DetectionSignal as WireSignal

    pipeline = Pipeline()
    path = ["x", "a", "b", "c", "a"]
    pipeline.feed(msg(s, [t], f"h{i}", float(i), corr="c", action="delegate", task_id="t") for i, (s, t) in enumerate(zip(path, path[1:])))
    signals = [s for out in pipeline.outputs for s in out.trust_signals]
    assert signals
    for signal in signals:
        wire = WireSignal.decode(json.dumps(signal.to_dict()))
        assert (wire.agent_id, wire.pattern, wire.confidence, wire.alert_id) == (signal.agent_id, signal.pattern, signal.confidence, signal.alert_id)
        assert wire.detected_at == signal.timestamp and wire.evidence == list(signal.evidence)


def test_signals_go_once_per_incident_and_once_more_on_escalation() -> None:
    pipeline = Pipeline()
    claims = [
        msg("liar", [f"p{i}"], f"c{i}", float(i), "broadcast", corr=f"k{i}", action="claim", claim={"key": "region", "value": ["eu", "us"][i % 2]})
        for i in range(8)
    ]
    pipeline.feed(claims)
    signals = [s for out in pipeline.outputs for s in out.trust_signals]
    assert [(s.agent_id, s.pattern) for s in signals] == [("liar", "byzantine"), ("liar", "byzantine")]
    assert signals[0].confidence < 0.9 <= signals[1].confidence


def test_patterns_can_be_switched_off() -> None:
    pipeline = Pipeline(Stage2Config(patterns=("anomaly",)))
    path = ["x", "a", "b", "c", "a", "b"]
    pipeline.feed(msg(s, [t], f"h{i}", float(i), corr="c", action="delegate", task_id="t") for i, (s, t) in enumerate(zip(path, path[1:])))
    assert pipeline.alerts == []
    with pytest.raises(ValueError, match="unknown"):
        Stage2Config(patterns=("telepathy",))


def test_tick_closes_windows_and_notices_ignored_requests() -> None:
    stage2 = Stage2()
    engine = PredictionEngine()
    feed = [
        msg("s", ["h"], "m0", 0.0, "broadcast", action="hold", resource="gpu", amount=2),
        *[msg(f"w{i}", ["s"], f"r{i}", 100.0 + i, action="request_resource", resource="gpu") for i in range(4)],
    ]
    for m in feed:
        stage2.process(decision_from_engine(m, engine.process(m)))
    out = stage2.tick(at(130.0), consumer_lag={"total": 7})
    assert [a.pattern for a in out.alerts] == ["resource_hoarding"]
    assert out.metrics and out.metrics[-1]["consumer_lag"] == {"total": 7}


def test_errors_count_in_the_metrics() -> None:
    stage2 = Stage2()
    stage2.process(decide(msg("a", ["b"], "m-1", 0.0)))
    stage2.observe_error(at(1.0), "validation")
    out = stage2.tick(at(20.0))
    assert out.metrics[0]["errors"]["count"] == 1


def test_a_quarantine_shows_in_graph_alerts_and_metrics() -> None:
    pipeline = Pipeline(Stage2Config(quarantine_alerts=True))
    liar = [
        msg("liar", [f"p{i}"], f"c{i}", float(i), "broadcast", corr=f"k{i}", action="claim", claim={"key": "region", "value": ["eu", "us"][i % 2]})
        for i in range(6)
    ]
    pipeline.feed([*liar, msg("liar", ["p1"], "after", 20.0, "broadcast", action="status")])
    assert "liar" in pipeline.stage2.graph.quarantined
    quarantine = [a for a in pipeline.alerts if a.pattern == "quarantine"]
    assert len(quarantine) == 1 and quarantine[0].affected_agents == ["liar"]
    updates = [u for u in pipeline.graph_updates if u.update_type == "node_quarantined"]
    assert len(updates) == 1 and updates[0].affected_nodes[0] == "liar"
    assert "liar" in updates[0].graph_metrics.isolated_nodes


def test_decision_from_engine_is_deterministic() -> None:
    m = msg("a", ["b"], "m-1", 0.0)
    assert decision_from_engine(m, PredictionEngine().process(m)) == decision_from_engine(m, PredictionEngine().process(m))
    assert decision_from_engine(m, PredictionEngine().process(m)).processing_metadata.received_at == m.timestamp


def test_metrics_windows_follow_event_time_not_arrival() -> None:
    stage2 = Stage2()
    outs = [stage2.process(decide(msg("a", ["b"], f"m{i}", 3.0 * i))) for i in range(10)]
    closed = [s for out in outs for s in out.metrics]
    assert [s["messages"] for s in closed] == [4, 3]  # windows [0, 10) and [10, 20)
    assert closed[0]["graph"]["node_count"] == 2
    assert outs[-1].metrics == [] and at(27.0) - at(0.0) == timedelta(seconds=27)
