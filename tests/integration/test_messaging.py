"""Agent messages through the bus, on both backends: round trip, per-agent order, bad input."""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chorus_lab.bus import Bus, Consumer, Producer, Record, TopicPartition
from chorus_lab.bus.partitioner import partition_for_key
from chorus_lab.client import AgentClient
from chorus_lab.deadletter import DeadLetter
from chorus_lab.ingest import MessageReader
from chorus_lab.schema import AgentMessage, decode_agent_message, encode
from tests.integration.conftest import make_topics
from tests.strategies import agent_messages

SHARED = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def read_until(consumer_read: Callable[[], list[Record]], done: Callable[[list[Record]], bool], timeout: float = 30.0) -> list[Record]:
    """Read until ``done(all records so far)`` or the deadline; return what was read."""
    records: list[Record] = []
    deadline = time.monotonic() + timeout
    while not done(records) and time.monotonic() < deadline:
        records.extend(consumer_read())
    return records


@pytest.fixture
def pipe(any_bus: Bus, topic_for_test: str) -> Iterator[tuple[Producer, Consumer]]:
    """A producer, and a consumer reading every partition of the test's topic from its start."""
    producer = any_bus.producer()
    consumer = any_bus.consumer(None)
    consumer.assign({TopicPartition(topic_for_test, p): 0 for p in range(6)})
    yield producer, consumer
    consumer.close()
    producer.close()


# Feature: real-time-data-flow, Property 1: Message serialization round trip
@SHARED
@given(message=agent_messages())
def test_round_trip_through_the_bus(pipe: tuple[Producer, Consumer], message: AgentMessage, topic_for_test: str) -> None:
    producer, consumer = pipe
    producer.produce(topic_for_test, encode(message), message.agent_id.encode())
    assert producer.flush(30) == 0
    records = read_until(lambda: consumer.consume(100, 0.2), lambda rs: bool(rs))
    assert len(records) == 1  # this example's message, and nothing else
    assert decode_agent_message(records[0].value) == message
    assert records[0].key == message.agent_id.encode()
    assert records[0].partition == partition_for_key(message.agent_id.encode(), 6)


agent_batches = st.lists(st.tuples(st.sampled_from(["alpha-1", "beta-2", "gamma-3", "delta-4", "eps-5"]), agent_messages()), min_size=1, max_size=25)


@pytest.fixture
def agent_client(any_bus: Bus, topic_for_test: str, tmp_path: Path) -> Iterator[AgentClient]:
    with AgentClient(any_bus, spool_dir=tmp_path / "spool", topic=topic_for_test) as client:
        yield client


# Feature: real-time-data-flow, Property 6: Agent-specific message ordering
@SHARED
@given(batch=agent_batches)
def test_per_agent_order_is_kept_in_the_agents_partition(
    agent_client: AgentClient, pipe: tuple[Producer, Consumer], batch: list[tuple[str, AgentMessage]]
) -> None:
    _producer, consumer = pipe
    sent: dict[str, list[str]] = defaultdict(list)
    run = uuid.uuid4().hex  # message ids of this example only
    for agent, template in batch:
        message = AgentMessage(**{**_fields(template), "agent_id": agent, "message_id": "", "correlation_id": run})
        sent[agent].append(agent_client.send(message))
    assert agent_client.flush(30) == 0
    expected = sum(map(len, sent.values()))
    records = read_until(lambda: consumer.consume(500, 0.2), lambda rs: len(rs) >= expected)
    assert len(records) == expected
    received: dict[str, list[str]] = defaultdict(list)
    for record in records:
        message = decode_agent_message(record.value)
        assert message.correlation_id == run
        assert record.partition == partition_for_key(message.agent_id.encode(), 6)
        received[message.agent_id].append(message.message_id)
    assert dict(received) == dict(sent)


def _fields(message: AgentMessage) -> dict:
    return {name: getattr(message, name) for name in message.__dataclass_fields__}


bad_records = st.one_of(
    st.binary(max_size=100),
    st.just(b'{"agent_id": "a-1", "timestamp": "2026-01-01T00:00:00"'),
    st.just(b'{"agent_id": 5}'),
    st.just(b"\xff\xfe not utf-8"),
    st.text(max_size=20).map(lambda t: ('{"agent_id": "%s"}' % t.replace('"', "")).encode()),
    # Huge fields, yet under Kafka's record limit (larger records never reach a consumer;
    # tests/unit/test_schema.py covers those).
    st.integers(257, 200_000).map(lambda n: b'{"agent_id": "' + b"x" * n + b'"}'),
)


@pytest.fixture
def fuzz_rig(any_bus: Bus, topic_for_test: str) -> Iterator[tuple[Producer, MessageReader, Consumer, str]]:
    """A producer into partition 0, a reader of it, and a consumer of the reader's dead letters."""
    dlq = topic_for_test + "-dlq"
    make_topics(any_bus, dlq, partitions=1)
    producer = any_bus.producer()
    source = any_bus.consumer(None)
    source.assign({TopicPartition(topic_for_test, 0): 0})
    reader = MessageReader(any_bus, source, dlq_topic=dlq)
    dead_letters = any_bus.consumer(None)
    dead_letters.assign({TopicPartition(dlq, 0): 0})
    yield producer, reader, dead_letters, dlq
    dead_letters.close()
    reader.close()
    producer.close()


# Bad input never stops a reader: each bad record is dead-lettered with its reason, each good one is read, in order.
@SHARED
@given(records=st.lists(st.one_of(bad_records.map(lambda b: ("bad", b)), agent_messages(agent=st.just("fuzz-1")).map(lambda m: ("good", encode(m)))), min_size=1, max_size=12))
def test_fuzzed_input_is_dead_lettered_and_reading_goes_on(fuzz_rig, records: list[tuple[str, bytes]], topic_for_test: str) -> None:
    producer, reader, dead_letters, dlq = fuzz_rig
    for _kind, value in records:
        producer.produce(topic_for_test, value, b"fuzz-1", partition=0)
    assert producer.flush(30) == 0
    good, bad = [], []
    deadline = time.monotonic() + 30
    while len(good) + len(bad) < len(records) and time.monotonic() < deadline:
        batch = reader.read(100, 0.2)
        good += [d.message for d in batch.messages]
        bad += batch.dead_letters
    assert [encode(m) for m in good] == [v for k, v in records if k == "good"]
    assert len(bad) == sum(1 for k, _ in records if k == "bad")
    dead_records = read_until(lambda: dead_letters.consume(100, 0.2), lambda rs: len(rs) >= len(bad))
    dead = [DeadLetter.from_record(r) for r in dead_records]
    assert [(d.original_value, d.stage) for d in dead] == [(v, "decode") for k, v in records if k == "bad"]
    for letter in dead:
        assert letter.error_type == "SchemaError" and letter.message and letter.field
        assert letter.source.startswith(f"{topic_for_test}/0/")
