"""The bus contract, run against both backends: the embedded log and a real Kafka broker.

Every test here must pass on both, so none of them relies on timing: Kafka is
asynchronous (rebalances, metadata, transaction markers), so each wait is a loop that
stops when the condition holds or fails at a deadline. Offsets are compared with what the
bus itself reported (delivery reports, watermarks), never assumed dense across
transactions, where Kafka leaves gaps for its commit markers.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence

import pytest

from chorus_lab.bus import (
    Bus,
    BusError,
    Consumer,
    DeliveryReport,
    Producer,
    ProducerFencedError,
    Record,
    TopicError,
    TopicPartition,
    TopicSpec,
    open_bus,
)
from chorus_lab.bus.embedded import EmbeddedBus
from chorus_lab.bus.partitioner import partition_for_key

# Generous: a Kafka group join or transaction takes seconds; the embedded bus milliseconds.
DEADLINE = 60.0
# How long "nothing more arrives" is watched for; a bounded negative check.
QUIET = 1.0


@pytest.fixture(params=["embedded", pytest.param("kafka", marks=pytest.mark.kafka)])
def bus(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bus]:
    """The backend under test: a fresh embedded bus, or the session's Kafka broker."""
    if request.param == "embedded":
        backend: Bus = EmbeddedBus(tmp_path_factory.mktemp("bus"))
    else:
        broker = request.getfixturevalue("kafka_broker")
        backend = open_bus(broker.bus_url)
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture
def make_topic(bus: Bus) -> Iterator[Callable[..., str]]:
    """``make(partitions=3, **spec)`` creates a topic no other test uses and returns its name."""
    admin = bus.admin()
    created: list[str] = []

    def make(partitions: int = 3, **spec: object) -> str:
        name = f"contract-{uuid.uuid4().hex[:12]}"
        assert admin.create_topics([TopicSpec(name, partitions=partitions, **spec)]) == [name]  # type: ignore[arg-type]
        created.append(name)
        return name

    yield make
    try:
        admin.delete_topics(created)
    except BusError:
        pass  # cleanup only; names are unique, so a leftover topic harms no other test


def wait_until(condition: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() >= end:
            pytest.fail(f"timed out after {deadline:.0f}s waiting for {what}")
        time.sleep(0.05)


def produce_and_wait(producer: Producer, records: Sequence[tuple[str, bytes | None, bytes | None]], **kwargs: object) -> list[DeliveryReport]:
    """Produce ``(topic, key, value)`` records, wait for every delivery report, require success."""
    reports: list[DeliveryReport] = []
    for topic, key, value in records:
        producer.produce(topic, value, key, on_delivery=reports.append, **kwargs)  # type: ignore[arg-type]
    end = time.monotonic() + DEADLINE
    while len(reports) < len(records) and time.monotonic() < end:
        producer.flush(5.0)
    assert len(reports) == len(records), f"{len(reports)} of {len(records)} delivery reports arrived"
    failed = [r.error for r in reports if r.error is not None]
    assert not failed, f"deliveries failed: {failed[:3]}"
    return reports


def consume_until(consumers: Sequence[Consumer], count: int, deadline: float = DEADLINE) -> list[Record]:
    """Consume from all ``consumers`` until ``count`` records arrived (fails at the deadline)."""
    records: list[Record] = []
    end = time.monotonic() + deadline
    while len(records) < count:
        if time.monotonic() >= end:
            pytest.fail(f"timed out after {deadline:.0f}s with {len(records)} of {count} records")
        for consumer in consumers:
            records.extend(consumer.consume(500, timeout=0.1))
    assert len(records) == count, f"expected {count} records, got {len(records)}"
    return records


def assert_quiet(consumer: Consumer) -> None:
    """Nothing more arrives within ``QUIET`` seconds."""
    extra = consumer.consume(500, timeout=QUIET)
    assert extra == [], f"unexpected records: {[(r.partition, r.offset, r.value) for r in extra[:5]]}"


def reader(bus: Bus, topic: str, partitions: int) -> Consumer:
    """A group-less consumer of every partition of ``topic``, from the log start."""
    consumer = bus.consumer(None, auto_offset_reset="earliest")
    consumer.assign({TopicPartition(topic, p): None for p in range(partitions)})
    return consumer


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# --------------------------------------------------------------------------- producing


def test_keyed_records_land_in_the_murmur2_partition_and_keep_per_key_order(bus: Bus, make_topic: Callable[..., str]) -> None:
    topic = make_topic(partitions=6)
    keys = [f"agent-{i}".encode() for i in range(24)]
    sent = [(topic, key, key + b":%d" % seq) for seq in range(5) for key in keys]
    with bus.producer() as producer:
        reports = produce_and_wait(producer, sent)

    for report in reports:
        assert report.key is not None
        assert report.partition == partition_for_key(report.key, 6), report
    assert len({r.partition for r in reports}) > 1

    with reader(bus, topic, 6) as consumer:
        records = consume_until([consumer], len(sent))
        assert_quiet(consumer)
    for record in records:
        assert record.key is not None
        assert record.partition == partition_for_key(record.key, 6)
    # Where the producer was told a record went is where consumers find it.
    assert {(r.partition, r.offset): r.value for r in records} == {(r.partition, r.offset): r.value for r in reports}
    per_key: dict[bytes, list[bytes]] = defaultdict(list)
    per_partition: dict[int, list[int]] = defaultdict(list)
    for record in records:
        assert record.key is not None and record.value is not None
        per_key[record.key].append(record.value)
        per_partition[record.partition].append(record.offset)
    for key in keys:
        assert per_key[key] == [key + b":%d" % seq for seq in range(5)]
    for offsets in per_partition.values():
        assert offsets == sorted(set(offsets))


def test_explicit_partition_headers_and_timestamps_round_trip(bus: Bus, make_topic: Callable[..., str]) -> None:
    topic = make_topic(partitions=3)
    stamp = now_ms() - 5_000
    headers = (("trace", b"first"), ("origin", b"test"), ("trace", b"second"))
    reports: list[DeliveryReport] = []
    with bus.producer() as producer:
        producer.produce(topic, b"pinned", b"some-key", partition=2, headers=headers, timestamp_ms=stamp, on_delivery=reports.append)
        producer.produce(topic, b"keyless", on_delivery=reports.append)
        end = time.monotonic() + DEADLINE
        while len(reports) < 2 and time.monotonic() < end:
            producer.flush(5.0)
    assert [r.error for r in reports] == [None, None]
    reported = {r.value: r for r in reports}  # callbacks of different partitions come in any order
    assert reported[b"pinned"].partition == 2
    assert 0 <= reported[b"keyless"].partition < 3

    with reader(bus, topic, 3) as consumer:
        records = {r.value: r for r in consume_until([consumer], 2)}
    pinned = records[b"pinned"]
    assert (pinned.partition, pinned.key, pinned.timestamp_ms) == (2, b"some-key", stamp)
    assert pinned.headers == headers
    assert pinned.header("trace") == b"second"
    assert records[b"keyless"].key is None
    assert records[b"keyless"].partition == reported[b"keyless"].partition


def test_produce_to_a_missing_topic_reports_a_topic_error(bus: Bus) -> None:
    missing = f"contract-missing-{uuid.uuid4().hex[:12]}"
    reports: list[DeliveryReport] = []
    with bus.producer() as producer:
        producer.produce(missing, b"lost", b"k", on_delivery=reports.append)
        end = time.monotonic() + DEADLINE
        while not reports and time.monotonic() < end:
            producer.flush(5.0)
    assert len(reports) == 1
    assert isinstance(reports[0].error, TopicError), reports[0]
    assert bus.admin().describe(missing) is None, "the topic must not be auto-created"


# --------------------------------------------------------------------------- consuming


def test_a_group_resumes_after_its_committed_offsets(bus: Bus, make_topic: Callable[..., str]) -> None:
    topic = make_topic(partitions=3)
    group = f"contract-group-{uuid.uuid4().hex[:8]}"
    with bus.producer() as producer:
        produce_and_wait(producer, [(topic, b"k%d" % (i % 10), b"first-%d" % i) for i in range(30)])

    first = bus.consumer(group)
    first.subscribe([topic])
    records = consume_until([first], 30)
    by_partition: dict[TopicPartition, list[Record]] = defaultdict(list)
    for record in records:
        by_partition[record.topic_partition].append(record)
    # Commit the middle of each partition: the next run must start exactly there.
    commit_at = {tp: rs[len(rs) // 2].offset for tp, rs in by_partition.items()}
    first.commit(commit_at)
    assert first.committed(list(commit_at)) == commit_at
    first.close()

    second = bus.consumer(group)
    second.subscribe([topic])
    expected = {(r.partition, r.offset, r.value) for r in records if r.offset >= commit_at[r.topic_partition]}
    resumed = consume_until([second], len(expected))
    assert {(r.partition, r.offset, r.value) for r in resumed} == expected
    assert_quiet(second)
    second.commit()  # the current positions: everything read so far
    ends = {TopicPartition(topic, p): second.watermarks(TopicPartition(topic, p))[1] for p in range(3)}
    assert second.committed(list(ends)) == ends
    second.close()

    with bus.producer() as producer:
        produce_and_wait(producer, [(topic, b"k%d" % i, b"second-%d" % i) for i in range(5)])
    third = bus.consumer(group)
    third.subscribe([topic])
    fresh = consume_until([third], 5)
    assert sorted(r.value or b"" for r in fresh) == sorted(b"second-%d" % i for i in range(5))
    assert_quiet(third)
    third.close()


def test_two_members_split_the_partitions_and_see_every_record_once(bus: Bus, make_topic: Callable[..., str]) -> None:
    topic = make_topic(partitions=4)
    group = f"contract-group-{uuid.uuid4().hex[:8]}"
    everything = {TopicPartition(topic, p) for p in range(4)}
    members = [bus.consumer(group), bus.consumer(group)]
    for member in members:
        member.subscribe([topic])

    def split() -> bool:
        for member in members:
            member.consume(100, timeout=0.1)
        a, b = (set(m.assignment()) for m in members)
        return bool(a) and bool(b) and not a & b and a | b == everything

    wait_until(split, "both members to own half of the partitions")

    sent = [(topic, b"agent-%d" % (i % 40), b"v-%d" % i) for i in range(200)]
    with bus.producer() as producer:
        produce_and_wait(producer, sent)
    seen: list[list[Record]] = [[], []]
    end = time.monotonic() + DEADLINE
    while sum(map(len, seen)) < len(sent) and time.monotonic() < end:
        for index, member in enumerate(members):
            batch = member.consume(100, timeout=0.1)
            owned = set(member.assignment())
            assert all(r.topic_partition in owned for r in batch), "a member read a partition it does not own"
            seen[index].extend(batch)
    everyone = seen[0] + seen[1]
    assert len({(r.partition, r.offset) for r in everyone}) == len(everyone) == len(sent)
    assert sorted(r.value for r in everyone if r.value is not None) == sorted(v for _, _, v in sent if v is not None)
    assert seen[0] and seen[1], "both members should have read their share"

    # A member that leaves hands its partitions over to the one that stays, which goes on
    # from the committed offsets (uncommitted records would be read again, as in Kafka).
    for member in members:
        member.commit()
    members[1].close()
    wait_until(lambda: not members[0].consume(100, timeout=0.1) and set(members[0].assignment()) == everything, "the remaining member to own every partition")
    with bus.producer() as producer:
        produce_and_wait(producer, [(topic, b"agent-%d" % i, b"after-%d" % i) for i in range(20)])
    after = consume_until([members[0]], 20)
    assert sorted(r.value or b"" for r in after) == sorted(b"after-%d" % i for i in range(20))
    members[0].close()


def test_seek_position_and_watermarks(bus: Bus, make_topic: Callable[..., str]) -> None:
    topic = make_topic(partitions=2)
    tp = TopicPartition(topic, 0)
    consumer = bus.consumer(None)
    assert consumer.watermarks(tp) == (0, 0)
    with bus.producer() as producer:
        reports = produce_and_wait(producer, [(topic, None, b"v%d" % i) for i in range(10)], partition=0)
    end_offset = reports[-1].offset + 1
    wait_until(lambda: consumer.watermarks(tp) == (reports[0].offset, end_offset), "the watermarks to cover the records")
    assert consumer.watermarks(TopicPartition(topic, 1)) == (0, 0)

    consumer.assign({tp: reports[0].offset})
    records = consume_until([consumer], 10)
    assert [r.offset for r in records] == [r.offset for r in reports]
    assert [r.value for r in records] == [b"v%d" % i for i in range(10)]
    assert consumer.position([tp]) == {tp: end_offset}

    consumer.seek(tp, reports[4].offset)
    again = consume_until([consumer], 6)
    assert [(r.offset, r.value) for r in again] == [(r.offset, r.value) for r in records[4:]]
    assert_quiet(consumer)
    consumer.close()


def test_offsets_for_time(bus: Bus, make_topic: Callable[..., str]) -> None:
    topic = make_topic(partitions=2)
    base = now_ms() - 60_000
    reports: list[DeliveryReport] = []
    with bus.producer() as producer:
        for i in range(10):
            producer.produce(topic, b"t%d" % i, partition=0, timestamp_ms=base + i * 1000, on_delivery=reports.append)
        end = time.monotonic() + DEADLINE
        while len(reports) < 10 and time.monotonic() < end:
            producer.flush(5.0)
    assert [r.error for r in reports] == [None] * 10
    consumer = bus.consumer(None)
    wait_until(lambda: consumer.watermarks(TopicPartition(topic, 0))[1] > reports[-1].offset, "the records to be readable")
    end_offset = consumer.watermarks(TopicPartition(topic, 0))[1]

    assert consumer.offsets_for_time(topic, base + 3_500) == {0: reports[4].offset, 1: 0}
    assert consumer.offsets_for_time(topic, base + 4_000) == {0: reports[4].offset, 1: 0}
    assert consumer.offsets_for_time(topic, base - 1)[0] == reports[0].offset
    assert consumer.offsets_for_time(topic, base + 60_000) == {0: end_offset, 1: 0}
    with pytest.raises(TopicError):
        consumer.offsets_for_time(f"contract-missing-{uuid.uuid4().hex[:12]}", base)
    consumer.close()


# --------------------------------------------------------------------------- transactions


def test_a_transaction_commits_records_and_offsets_together(bus: Bus, make_topic: Callable[..., str]) -> None:
    source, sink = make_topic(partitions=1), make_topic(partitions=1)
    group = f"contract-group-{uuid.uuid4().hex[:8]}"
    tp = TopicPartition(source, 0)
    with bus.producer() as producer:
        produce_and_wait(producer, [(source, b"k%d" % i, b"in-%d" % i) for i in range(6)])
    consumer = bus.consumer(group)
    consumer.subscribe([source])
    inputs = consume_until([consumer], 6)

    producer = bus.producer(transactional_id=f"contract-txn-{uuid.uuid4().hex[:8]}")
    producer.init_transactions()
    producer.begin_transaction()
    for record in inputs:
        producer.produce(sink, b"aborted:" + (record.value or b""), record.key)
    producer.send_offsets_to_transaction({tp: inputs[-1].offset + 1}, consumer)
    producer.abort_transaction()
    assert consumer.committed([tp]) == {tp: None}, "offsets sent in an aborted transaction must not commit"

    producer.begin_transaction()
    for record in inputs[:3]:
        producer.produce(sink, b"committed:" + (record.value or b""), record.key)
    producer.send_offsets_to_transaction({tp: inputs[3].offset}, consumer)
    producer.commit_transaction()
    wait_until(lambda: consumer.committed([tp]) == {tp: inputs[3].offset}, "the transaction's offsets to be committed")

    # The aborted records precede the committed ones in the log: a reader that saw them
    # would get them first.
    with reader(bus, sink, 1) as out:
        visible = consume_until([out], 3)
        assert [r.value for r in visible] == [b"committed:" + (r.value or b"") for r in inputs[:3]]
        assert_quiet(out)
    producer.close()
    consumer.close()


def test_a_fenced_producer_cannot_commit(bus: Bus, make_topic: Callable[..., str]) -> None:
    topic = make_topic(partitions=1)
    transactional_id = f"contract-txn-{uuid.uuid4().hex[:8]}"
    old = bus.producer(transactional_id=transactional_id)
    old.init_transactions()
    old.begin_transaction()
    old.produce(topic, b"zombie", b"k")

    successor = bus.producer(transactional_id=transactional_id)
    successor.init_transactions()
    with pytest.raises(ProducerFencedError):
        old.produce(topic, b"zombie-2", b"k")
        old.flush(10.0)
        old.commit_transaction()
    old.close()

    successor.begin_transaction()
    successor.produce(topic, b"successor", b"k")
    successor.commit_transaction()
    successor.close()
    with reader(bus, topic, 1) as out:
        assert [r.value for r in consume_until([out], 1)] == [b"successor"]
        assert_quiet(out)


# --------------------------------------------------------------------------- admin


def test_topic_admin_creates_describes_refuses_a_different_spec_and_deletes(bus: Bus) -> None:
    admin = bus.admin()
    name = f"contract-admin-{uuid.uuid4().hex[:12]}"
    spec = TopicSpec(name, partitions=3, retention_ms=3_600_000, cleanup_policy="compact")
    assert admin.create_topics([spec]) == [name]
    try:
        description = admin.describe(name)
        assert description is not None
        assert description.name == name
        assert description.partitions == 3
        assert description.config["cleanup.policy"] == "compact"
        assert description.config["retention.ms"] == "3600000"
        assert admin.verify(spec) == []
        assert name in admin.list_topics()
        assert admin.create_topics([spec]) == [], "an existing topic that matches is left alone"

        different = TopicSpec(name, partitions=4, retention_ms=60_000, cleanup_policy="compact")
        with pytest.raises(TopicError) as raised:
            admin.create_topics([different])
        message = str(raised.value)
        assert name in message and "partitions" in message and "retention.ms" in message
        assert admin.describe(name).partitions == 3  # type: ignore[union-attr]
        assert len(admin.verify(different)) == 2
    finally:
        admin.delete_topics([name])
    wait_until(lambda: admin.describe(name) is None and name not in admin.list_topics(), "the topic to be deleted")
    assert admin.verify(spec) == [f"topic {name} does not exist"]
