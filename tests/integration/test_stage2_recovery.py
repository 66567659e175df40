"""Stage 2 recovers from its checkpoint and journal: SIGKILL and restart on the real broker."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections import Counter
from datetime import datetime
from typing import Any

from chorus_lab import config, simulate
from chorus_lab.analytics import PROCESSING_FIELDS
from chorus_lab.bus import Bus, TopicPartition
from chorus_lab.bus.kafka import KafkaBus
from chorus_lab.deadletter import DeadLetter
from chorus_lab.pipeline import encode_decision
from chorus_lab.processor import ProcessorSettings, StreamProcessor, Topics
from chorus_lab.schema import ProcessedDecision
from chorus_lab.stage2 import decisions_from_engine
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


def test_a_decision_the_core_fails_on_is_dead_lettered_once_and_stage2_goes_on(any_bus: Bus) -> None:
    """The core raises on one decision: exactly that decision goes to agent-messages-errors
    with its reason and bytes, the rest is processed, and a stage 2 stopped after it and
    restarted (checkpoint + journal replay) neither sends the error again nor diverges from
    a run that was never interrupted."""
    bus = any_bus
    items = _decisions()
    victim = items[len(items) // 3].original_message.message_id

    def failing_detector(decision: ProcessedDecision) -> None:
        if decision.original_message.message_id == victim:
            raise RuntimeError(f"injected detector failure on {victim}")

    # Mostly journal records (not checkpoints), so a restore replays batches through the core.
    settings = Stage2Settings(batch_size=40, snapshot_every=100_000, snapshot_interval_s=3600, create_topics=False)
    interrupted, reference = Topics(f"e2{uuid.uuid4().hex[:8]}-"), Topics(f"f2{uuid.uuid4().hex[:8]}-")
    for topics in (interrupted, reference):
        bus.admin().create_topics(topics.specs(PARTITIONS))
        _produce_decisions(bus, topics.decisions, items)

    uninterrupted = Stage2Processor(bus, "ref", "ref", topics=reference, settings=settings, fault_hook=failing_detector)
    uninterrupted.run_until_caught_up(180)
    assert uninterrupted.stats.errors == 1 and uninterrupted.stats.decisions == len(items) - 1, uninterrupted.stats.summary()

    group = f"s2err-{uuid.uuid4().hex[:6]}"
    first = Stage2Processor(bus, group, "one", topics=interrupted, settings=settings, fault_hook=failing_detector)
    first.start()
    try:
        deadline = time.monotonic() + 180
        while first.stats.errors == 0:  # until the batch dead-lettering the victim has committed
            assert time.monotonic() < deadline, first.stats.summary()
            first.step()
        for _ in range(3):  # a few journaled batches after it, for the restore to replay
            first.step()
        assert first.stats.decisions < len(items) - 1, "the first run finished before it could be stopped"
    finally:
        first.close()
    second = Stage2Processor(bus, group, "two", topics=interrupted, settings=settings, fault_hook=failing_detector)
    second.run_until_caught_up(180)
    assert second.stats.restored and second.stats.replayed > 0, second.stats.summary()
    assert second.stats.errors == 0, "the restart sent the dead letter again"
    assert first.stats.decisions + second.stats.decisions == len(items) - 1

    for topics in (interrupted, reference):
        reader = TopicReader(bus, [topics.errors, topics.decisions, topics.alerts, topics.name(config.METRICS)])
        reader.until(lambda: _read_all(reader), 60)
        (error,) = reader.records[topics.errors]
        (original,) = [r for r in reader.records[topics.decisions] if json.loads(r.value)["original_message"]["message_id"] == victim]
        letter = DeadLetter.from_record(error)
        assert (letter.stage, letter.error_type) == ("stage2", "RuntimeError")
        assert letter.message == f"injected detector failure on {victim}"
        assert letter.source == f"{topics.decisions}/{original.partition}/{original.offset}"
        assert (letter.original_value, letter.original_key) == (original.value, original.key)
        metrics = reader.values(topics.name(config.METRICS))
        assert sum(m["errors"]["by_kind"].get("stage2", 0) for m in metrics) == 1
        # The state was rolled back: the failed decision is in no window's count (the core
        # had taken it before the injected failure).
        assert [m["messages"] for m in metrics] == _per_window(items, metrics, skip=victim)
        if topics is interrupted:
            got_alerts, got_metrics = alert_lines(reader, topics.alerts), [_deterministic(m) for m in metrics]
        else:
            expected_alerts, expected_metrics = alert_lines(reader, topics.alerts), [_deterministic(m) for m in metrics]
        reader.close()
    assert sum(1 for a in expected_alerts if json.loads(a)["pattern"] != "quarantine") >= 1
    assert got_alerts == expected_alerts
    assert got_metrics == expected_metrics


def _decisions() -> list[ProcessedDecision]:
    """Stage 1's decisions for a small fleet with a routing loop (deterministic metadata)."""
    sim = simulate.simulate(simulate.SimulationConfig(agents=20, messages=600, seed=3, scenarios={"routing_loop": 1, "conflict": 1}))
    return decisions_from_engine(sim.messages)


def _produce_decisions(bus: Bus, topic: str, items: list[ProcessedDecision]) -> None:
    producer = bus.producer()
    for decision in items:
        producer.produce(topic, encode_decision(decision), decision.original_message.agent_id.encode())
    assert producer.flush(60) == 0
    producer.close()


def _deterministic(snapshot: dict[str, Any]) -> dict[str, Any]:
    """A metrics snapshot without its processing observations (wall-clock values)."""
    return {k: v for k, v in snapshot.items() if k not in PROCESSING_FIELDS}


def _per_window(items: list[ProcessedDecision], snapshots: list[dict[str, Any]], *, skip: str) -> list[int]:
    """How many of ``items`` (but ``skip``) fall in each snapshot's window, by event time."""
    bounds = [(datetime_of(m["window_start"]), datetime_of(m["window_end"])) for m in snapshots]
    return [
        sum(1 for d in items if start <= d.original_message.timestamp < end and d.original_message.message_id != skip)
        for start, end in bounds
    ]


def datetime_of(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
