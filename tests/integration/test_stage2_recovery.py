"""Stage 2 recovers from its checkpoint and journal: SIGKILL and restart on the real broker."""

from __future__ import annotations

import json
import signal
import uuid
from collections import Counter
from typing import Any

from chorus_lab import simulate
from chorus_lab.bus import TopicPartition
from chorus_lab.bus.kafka import KafkaBus
from chorus_lab.processor import ProcessorSettings, StreamProcessor, Topics
from chorus_lab.stage2_processor import Stage2Processor, Stage2Settings
from tests.integration.test_processor_harness import PARTITIONS
from tests.integration.test_processor_recovery import _running, chorus, produce
from tests.integration.test_stage2_pipeline import TopicReader


def alert_lines(reader: TopicReader, topic: str) -> Counter[str]:
    return Counter(json.dumps(v, sort_keys=True) for v in reader.values(topic))


def test_sigkill_stage2_mid_stream_and_restart_commits_exactly_the_uninterrupted_alerts(kafka_broker: Any) -> None:
    bus = KafkaBus(kafka_broker.bootstrap, properties={})
    scenarios = {"routing_loop": 2, "resource_hoarding": 1, "communication_cascade": 1, "byzantine": 1, "conflict": 1}
    messages = simulate.simulate(simulate.SimulationConfig(agents=40, messages=4000, seed=12, scenarios=scenarios)).messages
    crashed, reference = Topics(f"k2{uuid.uuid4().hex[:8]}-"), Topics(f"r2{uuid.uuid4().hex[:8]}-")
    for topics in (crashed, reference):
        bus.admin().create_topics(topics.specs(PARTITIONS))
        produce(bus, topics.raw, messages)
        # Stage 1 first, alone: the decisions (deterministic) are the input of both stage-2 runs.
        StreamProcessor(bus, "s1", "s1", topics=topics, settings=ProcessorSettings(batch_size=500)).run_until_caught_up(120)
    # Event-time order across partitions is then exact (every partition is read ahead).
    settings = Stage2Settings(batch_size=50, snapshot_every=400, create_topics=False)
    Stage2Processor(bus, "ref", "ref", topics=reference, settings=settings).run_until_caught_up(120)
    expected_reader = TopicReader(bus, [reference.alerts, reference.signals])
    expected_reader.until(lambda: _read_all(expected_reader), 60)
    expected = alert_lines(expected_reader, reference.alerts)
    expected_signals = alert_lines(expected_reader, reference.signals)
    expected_reader.close()
    assert sum(1 for a in expected if json.loads(a)["pattern"] != "quarantine") >= 5

    group = f"s2crash-{uuid.uuid4().hex[:6]}"
    command = ["process", "--stage", "2", "--bus", bus.url, "--group", group, "--topic-prefix", crashed.prefix,
               "--batch-size", "50", "--snapshot-every", "400"]
    ends = _last_offsets(bus, crashed)
    total = sum(ends.values())
    first = chorus(*command, "--instance", "one")
    try:
        _wait(lambda: _committed(bus, group, crashed, ends) >= total // 3, first)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    assert _committed(bus, group, crashed, ends) < total, "the first run finished before it could be killed"

    second = chorus(*command, "--instance", "two")
    try:
        _wait(lambda: _committed(bus, group, crashed, ends) == total, second)
    finally:
        second.send_signal(signal.SIGTERM)
        out, err = second.communicate(timeout=30)
    assert second.returncode == 0, err
    assert "restored: yes" in out, out

    reader = TopicReader(bus, [crashed.alerts, crashed.signals])
    reader.until(lambda: _read_all(reader), 60)
    got, got_signals = alert_lines(reader, crashed.alerts), alert_lines(reader, crashed.signals)
    reader.close()
    assert sum(got.values()) == sum(expected.values()), (sum(got.values()), sum(expected.values()))
    assert got == expected, f"lost: {list((expected - got).elements())[:2]}; doubled or new: {list((got - expected).elements())[:2]}"
    assert got_signals == expected_signals


def _last_offsets(bus: KafkaBus, topics: Topics) -> dict[int, int]:
    """Per decisions partition: one past its last record (markers excluded)."""
    reader = TopicReader(bus, [topics.decisions])
    reader.until(lambda: _read_all(reader), 60)
    ends = {p: 0 for p in range(PARTITIONS)}
    for record in reader.records[topics.decisions]:
        ends[record.partition] = max(ends[record.partition], record.offset + 1)
    reader.close()
    return ends


def _committed(bus: KafkaBus, group: str, topics: Topics, ends: dict[int, int]) -> int:
    """How far the group has committed, summed over partitions and capped at ``ends``."""
    consumer = bus.consumer(group)
    try:
        committed = consumer.committed([TopicPartition(topics.decisions, p) for p in range(PARTITIONS)])
    finally:
        consumer.close()
    return sum(min(ends[tp.partition], o or 0) for tp, o in committed.items())


def _read_all(reader: TopicReader) -> bool:
    """True once the reader has read each of its partitions to its end."""
    for record in reader.consumer.consume(1000, 0.05):
        reader.records[record.topic].append(record)
    consumer = reader.consumer
    for tp in consumer.assignment():
        low, high = consumer.watermarks(tp)
        position = consumer.position([tp])[tp]
        if high > low and (position is None or position < high):
            return False
    return True


def _wait(condition, process, timeout: float = 120.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        _running(process)
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
