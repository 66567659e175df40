"""What only the embedded backend promises: durability on disk, several OS processes on one
directory, group membership that expires, lazy retention and compaction.

The shared contract (partitioning, groups, transactions, admin) is tested against both
backends in ``tests/integration/test_bus_contract.py``. The worker processes used here are
this same file run as a script (see the bottom), so they need nothing but the package.
"""

from __future__ import annotations

import doctest
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from chorus_lab.bus import (
    BusError,
    Consumer,
    CommitFailedError,
    ConfigurationError,
    DeliveryReport,
    Producer,
    ProducerFencedError,
    Record,
    TopicError,
    TopicPartition,
    TopicSpec,
    TransactionAbortedError,
    open_bus,
)
from chorus_lab.bus import embedded
from chorus_lab.bus.embedded import EmbeddedBus

DEADLINE = 30.0
THIS_FILE = Path(__file__).resolve()


def wait_until(condition: Callable[[], bool], what: str, deadline: float = DEADLINE) -> float:
    """Poll ``condition`` until it holds and return the seconds it took; fail at ``deadline``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start >= deadline:
            pytest.fail(f"timed out after {deadline:.0f}s waiting for {what}")
        time.sleep(0.01)
    return time.monotonic() - start


def deliver(producer: Producer, records: Sequence[tuple[str, bytes | None, bytes | None]], **kwargs: object) -> list[DeliveryReport]:
    """Produce ``(topic, key, value)`` records and flush; return the reports (all successful)."""
    reports: list[DeliveryReport] = []
    for topic, key, value in records:
        producer.produce(topic, value, key, on_delivery=reports.append, **kwargs)  # type: ignore[arg-type]
    assert producer.flush() == 0
    assert [r.error for r in reports] == [None] * len(records)
    return reports


def read_all(bus: EmbeddedBus, topic: str, partitions: int, expected: int) -> list[Record]:
    """Every record of ``topic`` from the log start, with a group-less consumer."""
    records: list[Record] = []
    with bus.consumer(None) as consumer:
        consumer.assign({TopicPartition(topic, p): None for p in range(partitions)})
        end = time.monotonic() + DEADLINE
        while len(records) < expected and time.monotonic() < end:
            records.extend(consumer.consume(1000, timeout=0.1))
        records.extend(consumer.consume(1000, timeout=0.2))
    return records


def gather(consumers: Sequence[Consumer], count: int, deadline: float = DEADLINE) -> list[Record]:
    """Consume from ``consumers`` until at least ``count`` records arrived; return them all."""
    records: list[Record] = []

    def enough() -> bool:
        for consumer in consumers:
            records.extend(consumer.consume(100, timeout=0.02))
        return len(records) >= count

    wait_until(enough, f"{count} records", deadline)
    return records


def split_between(
    consumers: Sequence[Consumer], partitions: set[TopicPartition], seen: list[Record] | None = None
) -> Callable[[], bool]:
    """A condition: every consumer owns some partitions, none twice, all of them together.

    Checking it consumes; records read meanwhile go to ``seen``.
    """

    def check() -> bool:
        for consumer in consumers:
            records = consumer.consume(100, timeout=0.02)
            if seen is not None:
                seen.extend(records)
        owned = [set(c.assignment()) for c in consumers]
        return all(owned) and sum(map(len, owned)) == len(partitions) and set().union(*owned) == partitions

    return check


@pytest.fixture
def bus(tmp_path: Path) -> EmbeddedBus:
    return EmbeddedBus(tmp_path / "bus")


def new_topic(bus: EmbeddedBus, partitions: int = 1, **spec: object) -> str:
    name = f"t-{uuid.uuid4().hex[:10]}"
    assert bus.admin().create_topics([TopicSpec(name, partitions=partitions, **spec)]) == [name]  # type: ignore[arg-type]
    return name


def run_worker(*args: str) -> subprocess.Popen[str]:
    """Start this file as a worker process (see ``main`` below)."""
    return subprocess.Popen([sys.executable, str(THIS_FILE), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# --------------------------------------------------------------------------- basics


def test_module_docstring_examples_run() -> None:
    result = doctest.testmod(embedded)
    assert result.attempted >= 2 and result.failed == 0


def test_the_url_names_the_absolute_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    bus = EmbeddedBus("relative/bus")
    assert bus.url == "embedded://" + str(tmp_path.resolve() / "relative" / "bus")
    assert (tmp_path / "relative" / "bus" / "bus.sqlite3").is_file()
    assert open_bus("embedded://relative/bus").url == bus.url
    assert open_bus(bus.url).url == bus.url


def test_a_consumer_without_a_group_cannot_join_or_commit(bus: EmbeddedBus) -> None:
    topic = new_topic(bus)
    consumer = bus.consumer(None)
    with pytest.raises(ConfigurationError):
        consumer.subscribe([topic])
    consumer.assign({TopicPartition(topic, 0): None})
    with pytest.raises(ConfigurationError):
        consumer.commit()
    with pytest.raises(TopicError):
        consumer.watermarks(TopicPartition(topic, 7))
    consumer.close()
    with pytest.raises(BusError):
        consumer.consume()


def test_a_full_producer_raises_buffer_error_until_polled(tmp_path: Path) -> None:
    bus = EmbeddedBus(tmp_path, max_buffered=10)
    topic = new_topic(bus)
    reports: list[DeliveryReport] = []
    producer = bus.producer()
    for i in range(10):
        producer.produce(topic, b"%d" % i, on_delivery=reports.append)
    with pytest.raises(BufferError):
        producer.produce(topic, b"one too many", on_delivery=reports.append)
    assert producer.poll() == 10
    assert [r.offset for r in reports] == list(range(10))
    producer.produce(topic, b"room again", on_delivery=reports.append)
    assert producer.flush() == 0
    assert reports[-1].offset == 10


def test_a_keyless_record_for_a_compacted_topic_is_refused(bus: EmbeddedBus) -> None:
    topic = new_topic(bus, cleanup_policy="compact")
    reports: list[DeliveryReport] = []
    with bus.producer() as producer:
        producer.produce(topic, b"no key", on_delivery=reports.append)
        producer.produce(topic, b"keyed", b"k", on_delivery=reports.append)
        producer.produce(topic, b"bad partition", b"k", partition=3, on_delivery=reports.append)
        producer.flush()
    assert isinstance(reports[0].error, TopicError)
    assert reports[1].error is None and reports[1].offset == 0
    assert isinstance(reports[2].error, TopicError)


def test_an_invalid_topic_name_is_refused_as_kafka_would(bus: EmbeddedBus) -> None:
    with pytest.raises(TopicError, match="not valid"):
        bus.admin().create_topics([TopicSpec("has space")])
    assert bus.admin().list_topics() == []


# --------------------------------------------------------------------------- durability


def test_records_offsets_and_topics_survive_reopening(tmp_path: Path) -> None:
    first = EmbeddedBus(tmp_path)
    topic = new_topic(first, partitions=3, retention_ms=None)
    with first.producer() as producer:
        reports = deliver(producer, [(topic, b"k%d" % (i % 7), b"v%d" % i) for i in range(300)])
    consumer = first.consumer("g")
    consumer.subscribe([topic])
    wait_until(lambda: bool(consumer.consume(1000, timeout=0.05)) or len(consumer.assignment()) == 3, "an assignment")
    committed = {TopicPartition(topic, p): 5 + p for p in range(3)}
    consumer.commit(committed)
    consumer.close()

    again = EmbeddedBus(tmp_path)
    description = again.admin().describe(topic)
    assert description is not None and description.partitions == 3 and description.config["retention.ms"] == "-1"
    records = read_all(again, topic, 3, expected=300)
    assert {(r.partition, r.offset, r.key, r.value) for r in records} == {(r.partition, r.offset, r.key, r.value) for r in reports}
    with again.consumer("g") as reopened:
        assert reopened.committed(list(committed)) == committed
        reopened.subscribe([topic])
        expected = {(r.partition, r.offset) for r in reports if r.offset >= committed[TopicPartition(topic, r.partition)]}
        resumed = gather([reopened], len(expected))
        assert len(resumed) == len(expected)
        assert {(r.partition, r.offset) for r in resumed} == expected


def test_a_flushed_write_survives_the_writer_being_killed(tmp_path: Path) -> None:
    bus = EmbeddedBus(tmp_path)
    topic = new_topic(bus, partitions=2)
    worker = run_worker("write-then-die", str(tmp_path), topic, "500", "300")
    stdout, stderr = worker.communicate(timeout=DEADLINE)
    assert worker.returncode == -signal.SIGKILL, stderr
    assert stdout.strip() == "flushed 500"
    records = read_all(bus, topic, 2, expected=500)
    # Exactly the flushed records: the 300 queued when the process died never appear, not even in part.
    assert sorted(int(r.value or b"") for r in records) == list(range(500))


def test_processes_writing_and_reading_one_directory_lose_and_repeat_nothing(tmp_path: Path) -> None:
    bus = EmbeddedBus(tmp_path)
    topic = new_topic(bus, partitions=4)
    group, stop = "readers", tmp_path / "stop"
    per_writer = 4000
    readers = [run_worker("read", str(tmp_path), topic, group, str(stop), str(tmp_path / f"reader-{i}")) for i in range(2)]
    # Both readers own partitions before anything is written, so both get a share.
    wait_until(lambda: all((tmp_path / f"reader-{i}.ready").exists() for i in range(2)), "both readers to own partitions")
    writers = [run_worker("write", str(tmp_path), topic, f"w{i}", str(per_writer)) for i in range(2)]
    for writer in writers:
        _, stderr = writer.communicate(timeout=DEADLINE * 2)
        assert writer.returncode == 0, stderr

    watcher = bus.consumer(group)  # reads the group's committed offsets; never joins
    partitions = [TopicPartition(topic, p) for p in range(4)]
    ends = {tp: watcher.watermarks(tp)[1] for tp in partitions}
    assert sum(ends.values()) == 2 * per_writer
    wait_until(lambda: watcher.committed(partitions) == ends, "the readers to commit everything", deadline=DEADLINE * 2)
    stop.touch()
    for reader in readers:
        _, stderr = reader.communicate(timeout=DEADLINE)
        assert reader.returncode == 0, stderr

    shares = [json.loads((tmp_path / f"reader-{i}.json").read_text()) for i in range(2)]
    assert all(shares), "both readers should have read a share"
    seen = [tuple(item) for share in shares for item in share]
    assert len(seen) == len({(p, o) for p, o, _ in seen}) == 2 * per_writer, "a record was read twice or not at all"
    assert sorted(v for _, _, v in seen) == sorted(f"w{w}:{i}" for w in range(2) for i in range(per_writer))
    by_partition: dict[int, list[int]] = defaultdict(list)
    by_key: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for partition, offset, value in seen:
        by_partition[partition].append(offset)
        writer_id, seq = value.split(":")
        by_key[f"{writer_id}-k{int(seq) % 50}"].append((offset, int(seq)))
    for partition, offsets in by_partition.items():
        assert sorted(offsets) == list(range(ends[TopicPartition(topic, partition)]))
    for pairs in by_key.values():
        assert [seq for _, seq in sorted(pairs)] == sorted(seq for _, seq in pairs), "per-key order was broken"


# --------------------------------------------------------------------------- groups


def test_a_silent_member_is_dropped_after_its_session_timeout(tmp_path: Path) -> None:
    bus = EmbeddedBus(tmp_path, session_timeout=0.5)
    topic = new_topic(bus, partitions=4)
    everything = {TopicPartition(topic, p) for p in range(4)}
    events: list[tuple[str, str, list[TopicPartition]]] = []

    def recorder(name: str, what: str) -> Callable[[list[TopicPartition]], None]:
        return lambda partitions: events.append((name, what, partitions))

    members = [bus.consumer("g"), bus.consumer("g")]
    for name, member in zip("ab", members):
        member.subscribe([topic], on_assign=recorder(name, "assign"), on_revoke=recorder(name, "revoke"))
    wait_until(split_between(members, everything), "a split")
    a, b = members
    held_by_b = set(b.assignment())
    b_positions = b.position(held_by_b)

    # b stops calling consume: a takes b's partitions once b's session has expired.
    silent_since = time.monotonic()
    wait_until(lambda: not a.consume(100, timeout=0.02) and set(a.assignment()) == everything, "a to take over")
    # b's last heartbeat may be one heartbeat interval (0.125 s) older than its last consume.
    assert time.monotonic() - silent_since >= 0.3, "b was dropped before its session timed out"
    assert set(events[-1][2]) == held_by_b and events[-1][:2] == ("a", "assign")

    with pytest.raises(CommitFailedError):
        b.commit(b_positions)
    events.clear()
    b.consume(100, timeout=0)  # b finds out it was dropped, gives up what it held and rejoins
    assert events[0] == ("b", "revoke", sorted(held_by_b))
    wait_until(split_between(members, everything), "a new split after b rejoined")
    for member in members:
        member.close()


def test_a_member_that_closes_hands_over_at_once(tmp_path: Path) -> None:
    bus = EmbeddedBus(tmp_path, session_timeout=60.0)
    topic = new_topic(bus, partitions=4)
    everything = {TopicPartition(topic, p) for p in range(4)}
    revoked: list[TopicPartition] = []
    a, b = bus.consumer("g"), bus.consumer("g")
    a.subscribe([topic])
    b.subscribe([topic], on_revoke=revoked.extend)
    wait_until(split_between([a, b], everything), "a split")
    held_by_b = b.assignment()
    b.close()
    assert revoked == held_by_b
    # Far sooner than the 60 s session timeout.
    wait_until(lambda: not a.consume(100, timeout=0.02) and set(a.assignment()) == everything, "a to take over", deadline=5.0)
    a.close()


def test_offsets_committed_in_on_revoke_are_where_the_next_owner_starts(bus: EmbeddedBus) -> None:
    topic = new_topic(bus, partitions=4)
    everything = {TopicPartition(topic, p) for p in range(4)}
    with bus.producer() as producer:
        deliver(producer, [(topic, b"k%d" % i, b"old-%d" % i) for i in range(40)])
    a = bus.consumer("g")
    a.subscribe([topic], on_revoke=lambda tps: a.commit(a.position(tps)))
    assert len(gather([a], 40)) == 40

    b = bus.consumer("g")
    b.subscribe([topic])
    during_rebalance: list[Record] = []
    # b looks first: it must wait for a to let go, not read from where nothing was committed.
    wait_until(split_between([b, a], everything, during_rebalance), "a split")
    assert during_rebalance == [], "the new owner re-read records its predecessor had committed"
    with bus.producer() as producer:
        deliver(producer, [(topic, b"k%d" % i, b"new-%d" % i) for i in range(8)])
    new = gather([a, b], 8)
    assert sorted(r.value or b"" for r in new) == sorted(b"new-%d" % i for i in range(8))
    a.close()
    b.close()


def test_a_new_group_reading_from_latest_skips_the_history(bus: EmbeddedBus) -> None:
    topic = new_topic(bus, partitions=2)
    with bus.producer() as producer:
        deliver(producer, [(topic, b"k%d" % i, b"history") for i in range(10)])
    consumer = bus.consumer("latecomers", auto_offset_reset="latest")
    consumer.subscribe([topic])
    seen: list[Record] = []

    def assigned() -> bool:
        seen.extend(consumer.consume(100, timeout=0.02))
        return len(consumer.assignment()) == 2

    wait_until(assigned, "an assignment")
    with bus.producer() as producer:
        deliver(producer, [(topic, b"k1", b"news")])
    seen += gather([consumer], 1)
    seen += consumer.consume(100, timeout=0.2)
    assert [r.value for r in seen] == [b"news"]
    consumer.close()


def test_consume_wakes_up_soon_after_a_record_arrives(bus: EmbeddedBus) -> None:
    topic = new_topic(bus)
    consumer = bus.consumer(None)
    consumer.assign({TopicPartition(topic, 0): None})
    started = time.monotonic()
    assert consumer.consume(10, timeout=0.3) == []
    assert 0.3 <= time.monotonic() - started < 1.0

    sent_at: list[float] = []

    def produce_later() -> None:
        time.sleep(0.3)  # sets the scene: the consumer below is already waiting
        with bus.producer() as producer:
            sent_at.append(time.monotonic())
            producer.produce(topic, b"wake up")
            producer.flush()

    thread = threading.Thread(target=produce_later)
    thread.start()
    records = consumer.consume(10, timeout=10.0)
    returned_at = time.monotonic()
    thread.join()
    assert [r.value for r in records] == [b"wake up"]
    assert returned_at - sent_at[0] < 0.15, "consume noticed the record late"
    consumer.close()


# --------------------------------------------------------------------------- transactions


def test_a_transaction_with_a_refused_record_writes_nothing(bus: EmbeddedBus) -> None:
    topic = new_topic(bus)
    reports: list[DeliveryReport] = []
    producer = bus.producer(transactional_id="tx")
    with pytest.raises(BusError):
        producer.produce(topic, b"outside a transaction")
    producer.init_transactions()
    producer.begin_transaction()
    producer.produce(topic, b"fine", on_delivery=reports.append)
    producer.produce("no-such-topic", b"refused", on_delivery=reports.append)
    with pytest.raises(TransactionAbortedError, match="no-such-topic"):
        producer.commit_transaction()
    assert isinstance(reports[0].error, TransactionAbortedError)
    assert isinstance(reports[1].error, TopicError)
    producer.abort_transaction()  # harmless after a failed commit
    with bus.consumer(None) as consumer:
        assert consumer.watermarks(TopicPartition(topic, 0)) == (0, 0)
    producer.begin_transaction()
    producer.produce(topic, b"retried", on_delivery=reports.append)
    producer.commit_transaction()
    assert reports[-1].error is None and reports[-1].offset == 0
    producer.close()


def test_offsets_from_a_member_that_lost_its_partition_abort_the_transaction(tmp_path: Path) -> None:
    bus = EmbeddedBus(tmp_path, session_timeout=0.5)
    source, sink = new_topic(bus), new_topic(bus)
    tp = TopicPartition(source, 0)
    with bus.producer() as producer:
        deliver(producer, [(source, b"k", b"input")])
    zombie, successor = bus.consumer("g"), bus.consumer("g")
    zombie.subscribe([source])
    gather([zombie], 1)
    producer = bus.producer(transactional_id="stage")
    producer.init_transactions()
    producer.begin_transaction()
    producer.produce(sink, b"output")
    producer.send_offsets_to_transaction({tp: 1}, zombie)
    # The zombie stalls; the successor joins and takes its partition after the session timeout.
    successor.subscribe([source])
    wait_until(lambda: not successor.consume(10, timeout=0.05) and successor.assignment() == [tp], "the takeover")
    with pytest.raises(TransactionAbortedError):
        producer.commit_transaction()
    assert successor.committed([tp]) == {tp: None}
    assert successor.watermarks(TopicPartition(sink, 0)) == (0, 0)
    for closeable in (producer, zombie, successor):
        closeable.close()


def test_fencing_reaches_across_processes(tmp_path: Path) -> None:
    bus = EmbeddedBus(tmp_path)
    topic = new_topic(bus)
    old = bus.producer(transactional_id="stage-1")
    old.init_transactions()
    worker = run_worker("init-transactions", str(tmp_path), "stage-1")
    _, stderr = worker.communicate(timeout=DEADLINE)
    assert worker.returncode == 0, stderr
    old.begin_transaction()
    old.produce(topic, b"zombie")
    with pytest.raises(ProducerFencedError):
        old.commit_transaction()
    with pytest.raises(ProducerFencedError):
        old.begin_transaction()
    with bus.consumer(None) as consumer:
        assert consumer.watermarks(TopicPartition(topic, 0)) == (0, 0)


# --------------------------------------------------------------------------- retention, compaction


def test_retention_drops_the_expired_prefix_lazily(tmp_path: Path) -> None:
    bus = EmbeddedBus(tmp_path, maintenance_interval=0.0)  # every write may run maintenance
    kept_forever = new_topic(bus, retention_ms=None)
    expiring = new_topic(bus, retention_ms=60_000)
    compacted = new_topic(bus, retention_ms=60_000, cleanup_policy="compact")
    old = time.time_ns() // 1_000_000 - 120_000
    with bus.producer() as producer:
        for topic in (kept_forever, expiring, compacted):
            deliver(producer, [(topic, b"k%d" % i, b"old-%d" % i) for i in range(5)], timestamp_ms=old)
            deliver(producer, [(topic, b"k%d" % i, b"new-%d" % i) for i in range(3)])
    with bus.consumer(None) as consumer:
        assert consumer.watermarks(TopicPartition(expiring, 0)) == (5, 8)
        assert consumer.watermarks(TopicPartition(kept_forever, 0)) == (0, 8)
        assert consumer.watermarks(TopicPartition(compacted, 0))[1] == 8  # compact-only: no time limit
        assert consumer.offsets_for_time(expiring, 0) == {0: 5}
    assert [r.value for r in read_all(bus, expiring, 1, expected=3)] == [b"new-%d" % i for i in range(3)]
    assert len(read_all(bus, kept_forever, 1, expected=8)) == 8


def test_retention_waits_for_maintenance_and_a_reader_behind_it_moves_to_the_log_start(tmp_path: Path) -> None:
    bus = EmbeddedBus(tmp_path, maintenance_interval=None)
    topic = new_topic(bus, retention_ms=60_000)
    with bus.producer() as producer:
        deliver(producer, [(topic, None, b"%d" % i) for i in range(10)])
    consumer = bus.consumer("g")
    consumer.assign({TopicPartition(topic, 0): 2})
    assert [r.offset for r in consumer.consume(3, timeout=DEADLINE)] == [2, 3, 4]
    assert consumer.watermarks(TopicPartition(topic, 0)) == (0, 10), "retention must wait for maintenance"
    assert bus.enforce_retention(now_ms=time.time_ns() // 1_000_000 + 3_600_000) == 10
    assert consumer.watermarks(TopicPartition(topic, 0)) == (10, 10)
    with bus.producer() as producer:
        deliver(producer, [(topic, None, b"after")])
    records = consumer.consume(10, timeout=DEADLINE)
    assert [(r.offset, r.value) for r in records] == [(10, b"after")]
    consumer.close()


def test_compaction_keeps_the_newest_record_per_key(tmp_path: Path) -> None:
    bus = EmbeddedBus(tmp_path, maintenance_interval=None)  # only the explicit compact() below
    topic = new_topic(bus, cleanup_policy="compact", config={"delete.retention.ms": "1000"})
    now = time.time_ns() // 1_000_000
    with bus.producer() as producer:
        reports = deliver(
            producer,
            [(topic, b"a", b"a1"), (topic, b"b", b"b1"), (topic, b"a", b"a2"), (topic, b"c", b"c1"), (topic, b"b", b"b2"), (topic, b"a", b"a3")],
        )
        reports += deliver(producer, [(topic, b"c", None)], timestamp_ms=now - 10_000)  # an old tombstone
        reports += deliver(producer, [(topic, b"d", b"d1")])
        reports += deliver(producer, [(topic, b"d", None)])  # a fresh tombstone, kept for now
    assert bus.compact(topic) == 6
    survivors = read_all(bus, topic, 1, expected=3)
    offsets = {r.value: r.offset for r in reports}
    assert [(r.offset, r.key, r.value) for r in survivors] == [(offsets[b"b2"], b"b", b"b2"), (offsets[b"a3"], b"a", b"a3"), (8, b"d", None)]
    with bus.consumer(None) as consumer:
        assert consumer.watermarks(TopicPartition(topic, 0)) == (0, 9), "compaction keeps offsets and bounds"
    with pytest.raises(TopicError):
        bus.compact(new_topic(bus))


def test_compaction_also_runs_lazily_on_writes(tmp_path: Path) -> None:
    bus = EmbeddedBus(tmp_path, maintenance_interval=0.0)
    topic = new_topic(bus, cleanup_policy="compact", partitions=2)
    with bus.producer() as producer:
        deliver(producer, [(topic, b"agent-%d" % (i % 4), b"v%d" % i) for i in range(40)])
    survivors = read_all(bus, topic, 2, expected=4)
    assert sorted(r.value or b"" for r in survivors) == [b"v36", b"v37", b"v38", b"v39"]


# --------------------------------------------------------------------------- worker processes


def main(argv: list[str]) -> int:
    """Entry point of the worker processes the tests above start."""
    command, directory, *rest = argv
    bus = EmbeddedBus(directory)
    if command == "write":
        topic, writer_id, count = rest[0], rest[1], int(rest[2])
        failures: list[DeliveryReport] = []

        def check(report: DeliveryReport) -> None:
            if report.error is not None:
                failures.append(report)

        with bus.producer() as producer:
            for i in range(count):
                producer.produce(topic, f"{writer_id}:{i}".encode(), f"{writer_id}-k{i % 50}".encode(), on_delivery=check)
                if i % 250 == 0:
                    producer.poll()  # many small transactions, to interleave with the other writer
            if producer.flush() != 0:
                return 2
        return 1 if failures else 0
    if command == "write-then-die":
        topic, flushed, queued = rest[0], int(rest[1]), int(rest[2])
        producer = bus.producer()
        for i in range(flushed):
            producer.produce(topic, b"%d" % i)
        assert producer.flush() == 0
        for i in range(flushed, flushed + queued):
            producer.produce(topic, b"%d" % i)
        print(f"flushed {flushed}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    if command == "read":
        topic, group, stop, out = rest[0], rest[1], Path(rest[2]), rest[3]
        seen: list[tuple[int, int, str]] = []
        with bus.consumer(group) as consumer:
            consumer.subscribe([topic])
            while not stop.exists():
                records = consumer.consume(300, timeout=0.05)
                seen.extend((r.partition, r.offset, (r.value or b"").decode()) for r in records)
                if records:
                    consumer.commit()
                if consumer.assignment():
                    Path(out + ".ready").touch()
        Path(out + ".json").write_text(json.dumps(seen))
        return 0
    if command == "init-transactions":
        with bus.producer(transactional_id=rest[0]) as producer:
            producer.init_transactions()
        return 0
    raise SystemExit(f"unknown worker command {command!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
