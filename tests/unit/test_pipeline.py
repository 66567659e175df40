"""Stage 1's pure core (``chorus_lab.pipeline``): decisions, duplicates, partitions, signals."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chorus_lab import simulate
from chorus_lab.bus.partitioner import partition_for_key
from chorus_lab.pipeline import (
    PIPELINE_VERSION,
    DetectionSignal,
    RecordMeta,
    Stage1,
    decision_fingerprint,
    decode_message,
    encode_decision,
    intervention_alerts,
    validate,
    validate_signal,
)
from chorus_lab.schema import AgentMessage, ProcessedDecision, SchemaError, decode, encode, format_timestamp
from tests.strategies import agent_messages

T0 = datetime(2026, 1, 1, tzinfo=UTC)
RAW = "agent-messages-raw"


def msg(sender: str, mid: str, targets: list[str] | None = None, at: datetime = T0, **content: Any) -> AgentMessage:
    return AgentMessage(sender, at, "request", content, targets if targets is not None else ["steward"], "c-1", {}, message_id=mid)


def meta_for(message: AgentMessage, offset: int = 0, partitions: int = 6, **extra: Any) -> RecordMeta:
    key = message.agent_id.encode()
    return RecordMeta(RAW, partition_for_key(key, partitions), offset, key=key, **extra)


def test_a_decision_carries_message_analysis_trust_intervention_metadata_and_edges() -> None:
    stage = Stage1(instance_id="i-1", clock=lambda: T0 + timedelta(milliseconds=250))
    message = msg("planner-1", "m-1", ["steward-1", "steward-1", "planner-1"], action="request_resource", resource="gpu", amount=2)
    out = stage.decide(meta_for(message, offset=7, timestamp_ms=int(T0.timestamp() * 1000), received_at=T0 + timedelta(milliseconds=100)), message)
    decision = out.decision
    assert decision is not None and not out.duplicate
    assert decision.original_message == message
    assert decision.conflict_analysis.resource == "gpu" and 0.0 <= decision.conflict_analysis.risk <= 1.0
    assert (decision.trust_impact.agent_id, decision.trust_impact.after) == ("planner-1", 100.0)
    assert decision.intervention_action is None
    meta = decision.processing_metadata
    assert (meta.instance_id, meta.pipeline_version, meta.topic, meta.offset) == ("i-1", PIPELINE_VERSION, RAW, 7)
    assert meta.partition == partition_for_key(b"planner-1", 6)
    assert meta.received_at == T0 + timedelta(milliseconds=100) and meta.processed_at == T0 + timedelta(milliseconds=250)
    assert meta.latency_ms == 250.0
    # One edge per distinct target, none to itself.
    assert [(e.source_agent, e.target_agent) for e in decision.causal_relationships] == [("planner-1", "steward-1")]
    assert decode(ProcessedDecision, encode(decision)) == decision


def test_without_a_clock_the_core_uses_no_wall_time() -> None:
    message = msg("a-1", "m-1")
    first = Stage1().decide(meta_for(message, timestamp_ms=1_767_225_600_000), message).decision
    second = Stage1().decide(meta_for(message, timestamp_ms=1_767_225_600_000), message).decision
    assert first == second
    assert first is not None and first.processing_metadata.processed_at == first.processing_metadata.received_at


def test_a_duplicate_message_id_gets_no_second_decision_and_is_counted() -> None:
    stage = Stage1()
    message = msg("a-1", "m-1", action="request_resource", resource="gpu")
    assert stage.decide(meta_for(message, 0), message).decision is not None
    again = stage.decide(meta_for(message, 1), message)
    assert again.decision is None and again.duplicate and again.alerts == []
    assert (stage.counters.decisions, stage.counters.duplicates) == (1, 1)
    # The same id from another agent is another message.
    other = msg("b-2", "m-1")
    assert stage.decide(meta_for(other, 2), other).decision is not None


def test_state_is_kept_per_partition() -> None:
    stage = Stage1()
    message = msg("a-1", "m-1")
    stage.decide(RecordMeta(RAW, 0, 0, key=b"a-1"), message)
    # The same message in another partition meets a different engine (no duplicate there).
    assert stage.decide(RecordMeta(RAW, 1, 0, key=b"a-1"), message).decision is not None
    assert stage.partitions() == [0, 1]
    assert stage.drop(0) is not None and stage.partitions() == [1]


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), cut=st.floats(0.05, 0.95))
def test_snapshot_restore_then_continue_equals_an_uninterrupted_run(seed: int, cut: float) -> None:
    sim = simulate.simulate(simulate.SimulationConfig(agents=12, messages=250, seed=seed, scenarios={"conflict": 1}))
    signal_at = len(sim.messages) // 3
    inputs: list[tuple[str, Any]] = [("m", m) for m in sim.messages]
    inputs.insert(signal_at, ("s", DetectionSignal(sim.messages[0].agent_id, "anomaly", 0.8, ["x"], sim.messages[signal_at].timestamp)))

    def feed(stage: Stage1, items: list[tuple[str, Any]], start: int) -> list[dict[str, Any]]:
        outputs = []
        for index, (kind, item) in enumerate(items, start=start):
            if kind == "s":
                outputs.append(json.loads(json.dumps(stage.apply_signal(partition_for_key(item.agent_id.encode(), 3), item).trust, default=str)))
                continue
            out = stage.decide(meta_for(item, index, partitions=3), item)
            outputs.append(decision_fingerprint(out.decision) if out.decision else {"duplicate": item.message_id})
        return outputs

    whole = Stage1()
    expected = feed(whole, inputs, 0)
    split = int(len(inputs) * cut)
    first = Stage1()
    got = feed(first, inputs[:split], 0)
    restored = Stage1()
    for partition in first.partitions():
        # Through JSON, as a checkpoint travels.
        restored.restore(partition, json.loads(json.dumps(first.snapshot(partition))))
    got += feed(restored, inputs[split:], split)
    assert got == expected
    assert {p: restored.snapshot(p) for p in restored.partitions()} == {p: whole.snapshot(p) for p in whole.partitions()}


def test_restore_refuses_an_unknown_snapshot_version() -> None:
    with pytest.raises(ValueError, match="stage-1 snapshot version"):
        Stage1().restore(0, {"stage1_version": 99, "engine": {}})


# --------------------------------------------------------------------------- placement


def test_validate_requires_the_agent_id_as_key_and_its_murmur2_partition() -> None:
    message = msg("agent-7", "m-1")
    home = partition_for_key(b"agent-7", 6)
    validate(RecordMeta(RAW, home, 0, key=b"agent-7"), message, 6)
    with pytest.raises(SchemaError, match="record key b'agent-8' is not the agent_id") as wrong_key:
        validate(RecordMeta(RAW, home, 0, key=b"agent-8"), message, 6)
    assert wrong_key.value.field == "agent_id"
    with pytest.raises(SchemaError, match="record key None"):
        validate(RecordMeta(RAW, home, 0, key=None), message, 6)
    with pytest.raises(SchemaError, match=f"belongs in partition {home} of 6"):
        validate(RecordMeta(RAW, (home + 1) % 6, 0, key=b"agent-7"), message, 6)


def test_validate_signal_uses_the_same_placement_rule() -> None:
    signal = DetectionSignal("agent-7", "anomaly", 0.5, [], T0)
    home = partition_for_key(b"agent-7", 6)
    validate_signal(RecordMeta("chorus-trust-signals", home, 0, key=b"agent-7"), signal, 6)
    with pytest.raises(SchemaError):
        validate_signal(RecordMeta("chorus-trust-signals", home, 0, key=b"agent-8"), signal, 6)


# --------------------------------------------------------------------------- signals


def test_detection_signal_round_trips_and_names_the_field_at_fault() -> None:
    signal = DetectionSignal("a-1", "byzantine", 0.9, ["m-1", "m-2"], T0, alert_id="alert-1")
    assert DetectionSignal.decode(signal.encode()) == signal
    assert json.loads(signal.encode())["detected_at"] == "2026-01-01T00:00:00.000000Z"
    for raw, field in [
        (b'{"pattern": "x", "confidence": 0.5, "evidence": [], "detected_at": "2026-01-01T00:00:00Z"}', "agent_id"),
        (b'{"agent_id": "a", "pattern": "x", "confidence": "high", "evidence": [], "detected_at": "2026-01-01T00:00:00Z"}', "confidence"),
        (b'{"agent_id": "a", "pattern": "x", "confidence": -0.1, "evidence": [], "detected_at": "2026-01-01T00:00:00Z"}', "confidence"),
        (b'{"agent_id": "a", "pattern": "x", "confidence": 0.1, "evidence": [], "detected_at": "2026-01-01T00:00:00"}', "detected_at"),
        (b'{"agent_id": "a", "pattern": "", "confidence": 0.1, "evidence": [], "detected_at": "2026-01-01T00:00:00Z"}', "pattern"),
        (b'{"agent_id": "a", "pattern": "x", "confidence": 0.1, "evidence": [], "detected_at": "2026-01-01T00:00:00Z", "x": 1}', "x"),
    ]:
        with pytest.raises(SchemaError) as error:
            DetectionSignal.decode(raw)
        assert error.value.field == field, raw


def test_a_byzantine_signal_quarantines_once_and_raises_one_alert() -> None:
    stage = Stage1()
    signal = DetectionSignal("a-1", "byzantine", 0.95, ["m-1", "m-2"], T0, alert_id="alert-b1")
    home = partition_for_key(b"a-1", 6)
    first = stage.apply_signal(home, signal)
    assert first.intervention is not None and first.intervention.action == "quarantine"
    (alert,) = first.alerts
    assert (alert.pattern, alert.severity, alert.affected_agents, alert.evidence) == ("quarantine", "high", ["a-1"], ["m-1", "m-2"])
    assert alert.confidence == pytest.approx(1 - first.trust.after / 100)
    again = stage.apply_signal(home, signal)
    assert again.duplicate and again.alerts == [] and again.trust.delta == 0
    assert (stage.counters.signals, stage.counters.duplicate_signals) == (1, 1)
    # The agent's next message is flagged, and its request is not granted.
    request = msg("a-1", "m-3", at=T0 + timedelta(seconds=1), action="request_resource", resource="gpu")
    decision = stage.decide(meta_for(request), request).decision
    assert decision is not None and "quarantined" in decision.processing_metadata.flags
    assert decision.conflict_analysis.conflict_type == "denial"


def test_quarantine_by_low_trust_from_messages_raises_an_alert_in_the_decisions_output() -> None:
    stage = Stage1()
    home = partition_for_key(b"h-1", 6)
    for i in range(3):  # three hoarding findings at 0.8 take trust under 30
        stage.apply_signal(home, DetectionSignal("h-1", "resource_hoarding", 0.8, [f"e-{i}"], T0 + timedelta(seconds=i)))
    assert stage.engine(home).state.quarantine.is_quarantined("h-1")
    # After probation, with trust recovered by ageing, the next message releases the agent.
    later = msg("h-1", "m-9", at=T0 + timedelta(hours=3))
    out = stage.decide(meta_for(later), later)
    assert out.decision is not None and out.decision.intervention_action is not None
    assert out.decision.intervention_action.action == "release"
    (alert,) = out.alerts
    assert (alert.severity, alert.details["action"], alert.details["trigger"]) == ("info", "release", "m-9")


def test_intervention_alert_ids_are_deterministic() -> None:
    stage_a, stage_b = Stage1(), Stage1()
    signal = DetectionSignal("a-1", "byzantine", 0.99, ["m-1"], T0)
    home = partition_for_key(b"a-1", 6)
    assert stage_a.apply_signal(home, signal).alerts == stage_b.apply_signal(home, signal).alerts
    assert intervention_alerts([], trigger="x") == []


# --------------------------------------------------------------------------- encoding


@settings(max_examples=150, deadline=None)
@given(message=agent_messages(), clocked=st.booleans())
def test_encode_decision_is_byte_for_byte_schema_encode(message: AgentMessage, clocked: bool) -> None:
    stage = Stage1(clock=(lambda: T0) if clocked else None)
    decision = stage.decide(RecordMeta(RAW, 0, 3, timestamp_ms=5, key=message.agent_id.encode()), message).decision
    assert decision is not None
    assert encode_decision(decision) == encode(decision)


timestamp_writings = st.sampled_from(
    [
        format_timestamp,  # the canonical text, which the decoder hands on to the encoder
        lambda t: t.isoformat(),
        lambda t: t.astimezone(UTC).isoformat(timespec="milliseconds"),
        lambda t: t.isoformat(timespec="seconds"),
        # Texts of the canonical one's length that are not it:
        lambda t: format_timestamp(t).replace("T", " "),
        lambda t: format_timestamp(t).replace(".", ","),
        lambda t: "{}-W{:02d}-{}".format(*t.astimezone(UTC).isocalendar()) + format_timestamp(t)[10:],
    ]
)


# Feature: real-time-data-flow, Property 1: Message serialization round trip (a message decoded
# from any writing of its timestamp gives a decision the fast encoder writes exactly as the schema does)
@settings(max_examples=150, deadline=None)
@given(message=agent_messages(), other=agent_messages(), write=timestamp_writings, decode_other_first=st.booleans())
def test_a_decoded_message_s_decision_encodes_byte_for_byte_like_schema_encode(
    message: AgentMessage, other: AgentMessage, write: Any, decode_other_first: bool
) -> None:
    # The encoder reuses the text of the timestamp decoded last when it belongs to the
    # message it writes; any other text, or another message decoded in between, must not leak in.
    wire = json.loads(encode(message))
    wire["timestamp"] = write(message.timestamp)
    decoded = decode_message(json.dumps(wire, separators=(",", ":")).encode())
    if decode_other_first:
        decode_message(encode(other))
    stage = Stage1(clock=lambda: T0)
    decision = stage.decide(RecordMeta(RAW, 0, 3, timestamp_ms=5, key=decoded.agent_id.encode()), decoded).decision
    assert decision is not None
    assert encode_decision(decision) == encode(decision)


def test_encode_decision_falls_back_to_the_schema_encoder_for_odd_content() -> None:
    message = AgentMessage("a-1", T0, "broadcast", {"when": T0, "t": (1, 2)}, [], "c", {})
    decision = Stage1().decide(RecordMeta(RAW, 0, 0, key=b"a-1"), message).decision
    assert decision is not None
    assert encode_decision(decision) == encode(decision)
    assert json.loads(encode_decision(decision))["original_message"]["content"]["when"] == "2026-01-01T00:00:00.000000Z"


def test_fingerprint_drops_only_wall_clock_and_host_fields() -> None:
    message = msg("a-1", "m-1")
    one = Stage1(instance_id="x", clock=lambda: T0).decide(meta_for(message, received_at=T0), message).decision
    two = Stage1(instance_id="y", clock=lambda: T0 + timedelta(seconds=5)).decide(meta_for(message, received_at=T0 + timedelta(seconds=1)), message).decision
    assert one is not None and two is not None
    assert decision_fingerprint(one) == decision_fingerprint(two)
    assert set(decision_fingerprint(one)["processing_metadata"]) == {"pipeline_version", "topic", "partition", "offset", "flags"}


json_texts = st.one_of(
    agent_messages().map(encode),
    agent_messages().map(lambda m: json.dumps({**json.loads(encode(m)), "schema_version": 2}).encode()),
    agent_messages().map(lambda m: json.dumps({k: v for k, v in json.loads(encode(m)).items() if k not in ("message_id", "schema_version")}).encode()),
    st.dictionaries(
        st.sampled_from(["agent_id", "timestamp", "message_type", "content", "target_agents", "correlation_id", "metadata", "message_id", "causation_id", "schema_version", "extra"]),
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8), st.just("2026-01-01T00:00:00Z"), st.just("request"),
                  st.lists(st.text(max_size=3), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)),
    ).map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=40),
    st.just(b'{"agent_id": "a", "timestamp": NaN}'),
)


@settings(max_examples=300, deadline=None)
@given(raw=json_texts)
def test_the_fast_decoder_agrees_with_the_schema_decoder(raw: bytes) -> None:
    from chorus_lab.schema import decode_agent_message

    try:
        expected: AgentMessage | str = decode_agent_message(raw)
    except SchemaError as exc:
        expected = str(exc)
    try:
        got: AgentMessage | str = decode_message(raw)
    except SchemaError as exc:
        got = str(exc)
    assert got == expected
