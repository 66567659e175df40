"""Produce failures that retrying cannot fix go to the dead-letter topic, with the reason."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from chorus_lab.bus import Bus, TopicPartition
from chorus_lab.bus.kafka import KafkaBus
from chorus_lab.client import AgentClient
from chorus_lab.deadletter import DeadLetter
from chorus_lab.schema import AgentMessage, decode_agent_message, encode
from tests.integration.conftest import make_topics

LIMIT = 1024  # the raw topic's max.message.bytes in this test


def _consumer_from_end(bus: Bus, topic: str):
    consumer = bus.consumer(None)
    tp = TopicPartition(topic, 0)
    consumer.assign({tp: consumer.watermarks(tp)[1]})
    return consumer


@st.composite
def payloads(draw: st.DrawFn) -> AgentMessage:
    # Random bytes in base64 barely compress, so the encoded size decides the outcome.
    blob = base64.b64encode(draw(st.binary(min_size=0, max_size=3 * LIMIT))).decode()
    return AgentMessage(
        agent_id="big-1", timestamp=datetime(2026, 1, 1, tzinfo=UTC), message_type="broadcast",
        content={"blob": blob, "n": draw(st.integers())}, target_agents=[], correlation_id="c", metadata={},
    )


@pytest.fixture
def limited_topics(kafka_broker, unique_topic, tmp_path: Path) -> Iterator[tuple[KafkaBus, AgentClient, str, str]]:
    """A raw topic that takes at most LIMIT bytes per record, its DLQ, and a client for both."""
    bus = KafkaBus(kafka_broker.bootstrap, properties={})
    raw, dlq = unique_topic("raw"), unique_topic("dlq")
    make_topics(bus, raw, partitions=1, **{"max.message.bytes": str(LIMIT)})
    make_topics(bus, dlq, partitions=1)
    with AgentClient(bus, spool_dir=tmp_path / "spool", topic=raw, dlq_topic=dlq) as client:
        yield bus, client, raw, dlq


BIG = AgentMessage(
    agent_id="big-1", timestamp=datetime(2026, 1, 1, tzinfo=UTC), message_type="broadcast",
    content={"blob": base64.b64encode(bytes(range(256)) * 12).decode(), "n": 0}, target_agents=[], correlation_id="c", metadata={},
)


# Feature: real-time-data-flow, Property 2: Kafka error handling with retry and DLQ
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@example(message=BIG)
@given(message=payloads())
def test_a_message_the_broker_rejects_lands_in_the_dlq_with_its_reason(limited_topics, message: AgentMessage) -> None:
    bus, client, raw, dlq = limited_topics
    raw_reader, dlq_reader = _consumer_from_end(bus, raw), _consumer_from_end(bus, dlq)
    client.send(message)
    assert client.flush(30) == 0  # delivered somewhere: nothing is left behind
    landed: dict[str, list] = {"raw": [], "dlq": []}
    deadline = time.monotonic() + 20
    while not (landed["raw"] or landed["dlq"]) and time.monotonic() < deadline:
        landed["raw"] += raw_reader.consume(10, 0.1)
        landed["dlq"] += dlq_reader.consume(10, 0.1)
    raw_reader.close()
    dlq_reader.close()
    assert len(landed["raw"]) + len(landed["dlq"]) == 1
    size = len(encode(message))
    if size < LIMIT - 200:
        assert landed["raw"], "a message well under the limit must not be dead-lettered"
    if size > 2 * LIMIT:
        assert landed["dlq"], "a message twice the limit cannot have been accepted"
    if landed["raw"]:
        assert decode_agent_message(landed["raw"][0].value) == message
    else:
        letter = DeadLetter.from_record(landed["dlq"][0])
        assert letter.stage == "produce"
        assert "MSG_SIZE_TOO_LARGE" in letter.message or "too large" in letter.message.lower()
        assert decode_agent_message(letter.original_value) == message
        assert letter.original_key == b"big-1"
