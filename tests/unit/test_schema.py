"""The wire schemas: strict, helpful decoding and exact round trips."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chorus_lab.schema import (
    MAX_MESSAGE_BYTES,
    AgentMessage,
    Alert,
    CausalEdge,
    ConflictAnalysis,
    ProcessedDecision,
    ProcessingMetadata,
    SchemaError,
    TrustScoreUpdate,
    decode,
    decode_agent_message,
    encode,
)
from tests.strategies import agent_messages

SEED_MESSAGE = {
    "agent_id": "planner-1",
    "timestamp": "2026-03-01T12:00:00.123456+00:00",
    "message_type": "request",
    "content": {"action": "request_resource", "resource": "gpu-pool-1", "amount": 2},
    "target_agents": ["steward-1"],
    "correlation_id": "task-42",
    "metadata": {"model": "x"},
}


def test_a_plain_seed_object_is_accepted_and_gets_a_stable_id() -> None:
    first = decode_agent_message(json.dumps(SEED_MESSAGE).encode())
    second = decode_agent_message(json.dumps(SEED_MESSAGE))
    assert first.message_id == second.message_id
    assert first.message_id.startswith("m-")
    assert first.schema_version == 1
    assert first.causation_id is None
    assert first.timestamp == datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def test_timestamps_are_written_as_utc_with_microseconds() -> None:
    message = decode_agent_message({**SEED_MESSAGE, "timestamp": "2026-03-01T17:30:00+05:30"})
    assert json.loads(encode(message))["timestamp"] == "2026-03-01T12:00:00.000000Z"


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        ({"agent_id": None}, "agent_id", "expected a string"),
        ({"agent_id": ""}, "agent_id", "must not be empty"),
        ({"timestamp": "2026-03-01T12:00:00"}, "timestamp", "no time zone"),
        ({"timestamp": "yesterday"}, "timestamp", "not an ISO-8601"),
        ({"timestamp": 1700000000}, "timestamp", "expected an ISO-8601"),
        ({"message_type": "shout"}, "message_type", "must be one of"),
        ({"target_agents": "steward-1"}, "target_agents", "expected a list"),
        ({"target_agents": ["ok", 3]}, "target_agents[1]", "expected a string"),
        ({"content": []}, "content", "expected an object"),
        ({"schema_version": 99}, "schema_version", "unsupported version"),
        ({"surprise": 1}, "surprise", "unknown field"),
        ({"agent_id": "x" * 300}, "agent_id", "at most 256"),
    ],
)
def test_errors_name_the_field_and_the_problem(change: dict, field: str, problem: str) -> None:
    with pytest.raises(SchemaError) as caught:
        decode_agent_message({**SEED_MESSAGE, **change})
    assert caught.value.field == field
    assert problem in caught.value.problem


def test_a_missing_field_is_named() -> None:
    data = dict(SEED_MESSAGE)
    del data["correlation_id"]
    with pytest.raises(SchemaError, match="correlation_id: required field is missing"):
        decode_agent_message(data)


def test_oversized_payloads_are_refused_on_both_sides() -> None:
    huge = {**SEED_MESSAGE, "content": {"blob": "x" * MAX_MESSAGE_BYTES}}
    with pytest.raises(SchemaError, match="exceeds the limit"):
        decode_agent_message(json.dumps(huge).encode())
    with pytest.raises(SchemaError, match="exceeds the limit"):
        encode(decode_agent_message(huge))


def test_non_utf8_and_non_json_are_refused() -> None:
    with pytest.raises(SchemaError, match="not valid UTF-8 at byte 1"):
        decode_agent_message(b"{\xff}")
    with pytest.raises(SchemaError, match="invalid JSON"):
        decode_agent_message(b'{"agent_id": ')
    with pytest.raises(SchemaError, match="invalid JSON"):
        decode_agent_message(b'{"x": NaN}')
    with pytest.raises(SchemaError, match="expected a JSON object, got list"):
        decode_agent_message(b"[1, 2]")


def test_nested_errors_carry_the_full_path() -> None:
    message = decode_agent_message(SEED_MESSAGE)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    decision = ProcessedDecision(
        original_message=message,
        conflict_analysis=ConflictAnalysis(risk=0.2, confidence=0.9, conflict_type="none", reason="no competing demand"),
        trust_impact=TrustScoreUpdate(agent_id="planner-1", before=100.0, after=100.0, delta=0.0, reason="no evidence", timestamp=now),
        intervention_action=None,
        processing_metadata=ProcessingMetadata(
            instance_id="p-1", pipeline_version="1", topic="agent-messages-raw", partition=0, offset=7,
            received_at=now, processed_at=now, latency_ms=1.5,
        ),
        causal_relationships=[
            CausalEdge(source_agent="planner-1", target_agent="steward-1", relationship_type="request", strength=0.5, created_at=now, last_updated=now)
        ],
    )
    data = json.loads(encode(decision))
    assert decode(ProcessedDecision, data) == decision
    data["causal_relationships"][0]["strength"] = 1.5
    with pytest.raises(SchemaError) as caught:
        decode(ProcessedDecision, data)
    assert caught.value.field == "causal_relationships[0].strength"


def test_value_checks_apply_when_objects_are_built_in_code() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(SchemaError, match="delta"):
        TrustScoreUpdate(agent_id="a", before=50.0, after=60.0, delta=5.0, reason="r", timestamp=now)
    with pytest.raises(SchemaError, match="detected_at"):
        Alert(alert_id="x", pattern="byzantine", severity="high", confidence=0.9, description="d", affected_agents=[], evidence=[], detected_at=datetime(2026, 1, 1))


@settings(max_examples=200)
@given(agent_messages())
def test_encode_decode_is_exact(message: AgentMessage) -> None:
    assert decode_agent_message(encode(message)) == message


def _mutations() -> st.SearchStrategy[bytes]:
    valid = json.dumps(SEED_MESSAGE).encode()
    truncated = st.integers(0, len(valid) - 1).map(lambda n: valid[:n])
    retyped = st.tuples(st.sampled_from(sorted(SEED_MESSAGE)), st.none() | st.integers() | st.floats() | st.lists(st.integers(), max_size=2) | st.text(max_size=5)).map(
        lambda kv: json.dumps({**SEED_MESSAGE, kv[0]: kv[1]}, allow_nan=True).encode()
    )
    huge = st.sampled_from(sorted(SEED_MESSAGE)).map(lambda k: json.dumps({**SEED_MESSAGE, k: "x" * (MAX_MESSAGE_BYTES + 1)}).encode())
    flipped = st.tuples(st.integers(0, len(valid) - 1), st.integers(0, 255)).map(lambda p: valid[: p[0]] + bytes([p[1]]) + valid[p[0] + 1 :])
    return st.binary(max_size=200) | truncated | retyped | huge | flipped


@settings(max_examples=300)
@given(_mutations())
def test_any_bytes_decode_or_raise_a_schema_error_naming_a_field(raw: bytes) -> None:
    try:
        message = decode_agent_message(raw)
    except SchemaError as exc:
        assert exc.field and exc.problem
        assert str(exc).startswith(exc.field)
    else:
        assert decode_agent_message(encode(message)) == message
