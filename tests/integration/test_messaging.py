"""Agent messages through the bus, on both backends: round trip, per-agent order, bad input."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chorus_lab.bus import Bus, Record, TopicPartition
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


# Feature: real-time-data-flow, Property 1: Message serialization round trip
@SHARED
@given(message=agent_messages())
def test_round_trip_through_the_bus(any_bus: Bus, message: AgentMessage, topic_for_test: str, tmp_path: Path) -> None:
    partition = TopicPartition(topic_for_test, partition_for_key(message.agent_id.encode(), 6))
    consumer = _from_end(any_bus, [partition])
    producer = any_bus.producer()
    producer.produce(topic_for_test, encode(message), message.agent_id.encode())
    assert producer.flush(30) == 0
    try:
        records = read_until(lambda: consumer.consume(100, 0.5), lambda rs: any(decode_agent_message(r.value).message_id == message.message_id for r in rs))
    finally:
        consumer.close()
    matching = [decode_agent_message(r.value) for r in records if decode_agent_message(r.value).message_id == message.message_id]
    assert matching == [message]
    assert records[-1].key == message.agent_id.encode()


agent_batches = st.lists(st.tuples(st.sampled_from(["alpha-1", "beta-2", "gamma-3", "delta-4", "eps-5"]), agent_messages()), min_size=1, max_size=25)


# Feature: real-time-data-flow, Property 6: Agent-specific message ordering
@SHARED
@given(batch=agent_batches)
def test_per_agent_order_is_kept_in_the_agents_partition(any_bus: Bus, batch: list[tuple[str, AgentMessage]], topic_for_test: str, tmp_path_factory) -> None:
    sent: dict[str, list[str]] = defaultdict(list)
    spool = tmp_path_factory.mktemp("spool")
    consumer = _from_end(any_bus, [TopicPartition(topic_for_test, p) for p in range(6)])
    with AgentClient(any_bus, spool_dir=spool, topic=topic_for_test) as client:
        for agent, template in batch:
            message = AgentMessage(**{**_fields(template), "agent_id": agent, "message_id": ""})
            sent[agent].append(client.send(message))
        assert client.flush(30) == 0
    wanted = {mid for ids in sent.values() for mid in ids}
    try:
        records = read_until(lambda: consumer.consume(500, 0.5), lambda rs: wanted <= {decode_agent_message(r.value).message_id for r in rs})
    finally:
        consumer.close()
    received: dict[str, list[str]] = defaultdict(list)
    for record in records:
        message = decode_agent_message(record.value)
        if message.message_id in wanted:
            assert record.partition == partition_for_key(message.agent_id.encode(), 6)
            received[message.agent_id].append(message.message_id)
    # Identical messages share a content-derived id; the order of first sightings is what counts.
    assert {a: list(dict.fromkeys(ids)) for a, ids in received.items()} == {a: list(dict.fromkeys(ids)) for a, ids in sent.items()}


def _fields(message: AgentMessage) -> dict:
    return {name: getattr(message, name) for name in message.__dataclass_fields__}


bad_records = st.one_of(
    st.binary(max_size=100),
    st.just(b'{"agent_id": "a-1", "timestamp": "2026-01-01T00:00:00"'),
    st.just(b'{"agent_id": 5}'),
    st.just(b"\xff\xfe not utf-8"),
    st.text(max_size=20).map(lambda t: ('{"agent_id": "%s"}' % t.replace('"', "")).encode()),
    st.integers(1_000_001, 1_000_100).map(lambda n: b'{"agent_id": "' + b"x" * n + b'"}'),
)


# Bad input never stops a reader: each bad record is dead-lettered with its reason, each good one is read, in order.
@SHARED
@given(records=st.lists(st.one_of(bad_records.map(lambda b: ("bad", b)), agent_messages(agent=st.just("fuzz-1")).map(lambda m: ("good", encode(m)))), min_size=1, max_size=12))
def test_fuzzed_input_is_dead_lettered_and_reading_goes_on(any_bus: Bus, records: list[tuple[str, bytes]], topic_for_test: str) -> None:
    dlq = topic_for_test + "-dlq"
    make_topics(any_bus, dlq, partitions=1)
    consumer = _from_end(any_bus, [TopicPartition(topic_for_test, 0)])
    dlq_consumer = _from_end(any_bus, [TopicPartition(dlq, 0)])
    producer = any_bus.producer()
    for _kind, value in records:
        producer.produce(topic_for_test, value, b"fuzz-1", partition=0)
    assert producer.flush(30) == 0
    reader = MessageReader(any_bus, consumer, dlq_topic=dlq)
    good, bad = [], []
    deadline = time.monotonic() + 30
    while len(good) + len(bad) < len(records) and time.monotonic() < deadline:
        batch = reader.read(100, 0.5)
        good += [d.message for d in batch.messages]
        bad += batch.dead_letters
    reader.close()
    assert [encode(m) for m in good] == [v for k, v in records if k == "good"]
    assert len(bad) == sum(1 for k, _ in records if k == "bad")
    try:
        dead_records = read_until(lambda: dlq_consumer.consume(100, 0.5), lambda rs: len(rs) >= len(bad))
    finally:
        dlq_consumer.close()
    dead = [DeadLetter.from_record(r) for r in dead_records]
    assert [(d.original_value, d.stage) for d in dead] == [(v, "decode") for k, v in records if k == "bad"]
    for letter in dead:
        assert letter.error_type == "SchemaError" and letter.message and letter.field
        assert letter.source.startswith(f"{topic_for_test}/0/")


def _from_end(bus: Bus, partitions: list[TopicPartition]):
    """A consumer that will read only what arrives on ``partitions`` from now on."""
    consumer = bus.consumer(None)
    consumer.assign({tp: consumer.watermarks(tp)[1] for tp in partitions})
    return consumer
