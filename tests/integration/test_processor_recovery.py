"""Stage 1 recovers by replay: SIGKILL and restart, handover with signals, aborts, time-outs, fencing."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from chorus_lab import simulate
from chorus_lab.autoscale import group_lag
from chorus_lab.bus import Bus, ProducerFencedError, TransactionAbortedError, open_bus
from chorus_lab.bus.kafka import KafkaBus
from chorus_lab.pipeline import DetectionSignal, decision_fingerprint
from chorus_lab.processor import ProcessorSettings, StreamProcessor, Topics
from chorus_lab.schema import AgentMessage, ProcessedDecision, encode
from tests.integration.test_processor_harness import PARTITIONS, ChaosPredictor, Reader

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def fleet(agents: int, messages: int, seed: int) -> list[AgentMessage]:
    config = simulate.SimulationConfig(agents=agents, messages=messages, seed=seed, scenarios={"conflict": 1, "resource_hoarding": 1})
    return simulate.simulate(config).messages


def produce(bus: Bus, topic: str, messages: list[AgentMessage]) -> None:
    producer = bus.producer()
    for message in messages:
        producer.produce(topic, encode(message), message.agent_id.encode())
    assert producer.flush(60) == 0
    producer.close()


def comparable(decision: ProcessedDecision) -> dict[str, Any]:
    """The deterministic part, without the sandbox's topic name."""
    data = decision_fingerprint(decision)
    del data["processing_metadata"]["topic"]
    return data


def step_until(processor: StreamProcessor, done, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, processor.stats.summary()
        processor.step()


def chorus(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "chorus_lab.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_mid_stream_and_restart_commit_exactly_the_uninterrupted_decisions(kafka_broker: Any) -> None:
    """Kill -9 a processor mid-stream, start it again: the committed decisions (read_committed)
    equal an uninterrupted run's — none lost, none twice, the same trust scores. The restart
    decides in two worker processes, so their state is the checkpoints' plus the replay."""
    bus = KafkaBus(kafka_broker.bootstrap, properties={})
    messages = fleet(agents=40, messages=2500, seed=11)
    crashed, reference = Topics(f"k{uuid.uuid4().hex[:8]}-"), Topics(f"r{uuid.uuid4().hex[:8]}-")
    for topics in (crashed, reference):
        bus.admin().create_topics(topics.specs(PARTITIONS))
        produce(bus, topics.raw, messages)  # same order, same keys: same partitions and offsets
    settings = ProcessorSettings(batch_size=50, snapshot_every=100, session_timeout_s=6)
    StreamProcessor(bus, "reference", "ref-1", topics=reference, settings=settings).run_until_caught_up(120)
    expected_reader = Reader(bus, reference)
    expected_reader.until(lambda: expected_reader.count >= len(messages), 60)
    expected = {d.original_message.message_id: comparable(d) for ds in expected_reader.seen.decisions.values() for _, _, d in ds}
    expected_reader.close()
    assert len(expected) == len(messages)

    group = f"crash-{uuid.uuid4().hex[:6]}"
    command = ["process", "--bus", bus.url, "--group", group, "--instance", "worker-1", "--topic-prefix", crashed.prefix,
               "--batch-size", "50", "--snapshot-every", "100", "--session-timeout", "6"]
    reader = Reader(bus, crashed)
    first = chorus(*command)
    try:
        reader.until(lambda: reader.count >= len(messages) // 3, 90, alive=lambda: _running(first))
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    at_kill = reader.count
    assert at_kill < len(messages), "the first run finished before it could be killed"

    second = chorus(*command, "--decide-workers", "2")  # rebuilt into, and decided by, worker processes
    try:
        reader.until(lambda: reader.count >= len(messages), 120, alive=lambda: _running(second))
        deadline = time.monotonic() + 30
        while group_lag(bus, group, crashed.raw)[0] > 0:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        reader.poll(0.5)  # anything committed twice would show up now
    finally:
        second.send_signal(signal.SIGTERM)
        out, err = second.communicate(timeout=30)
    assert second.returncode == 0, err
    summary = re.search(r"(\d+) partition restores \((\d+) records replayed", out)
    assert summary and int(summary.group(1)) >= 1, out

    decided = [d for ds in reader.seen.decisions.values() for _, _, d in ds]
    reader.close()
    ids = [d.original_message.message_id for d in decided]
    assert len(ids) == len(set(ids)) == len(messages), "lost or duplicated decisions"
    got = {d.original_message.message_id: comparable(d) for d in decided}
    differing = [mid for mid in expected if got.get(mid) != expected[mid]]
    assert not differing, f"{len(differing)} decisions differ, e.g. {differing[:3]}"
    assert {d.processing_metadata.instance_id for d in decided} == {"worker-1"}


def _running(process: subprocess.Popen[str]) -> None:
    if process.poll() is not None:
        out, err = process.communicate()
        raise AssertionError(f"processor exited with {process.returncode}: {err[-2000:]}")


@pytest.mark.parametrize("workers", [(0, 0), (2, 1)], ids=["in-thread", "decide-workers"])
def test_a_new_owner_rebuilds_exactly_the_state_including_trust_signals(any_bus: Bus, workers: tuple[int, int]) -> None:
    """Hand every partition to another instance: checkpoint + replay give it the very same
    state the first one had, signals (whose timing a replay cannot know) included; also when
    the instances decide in worker processes (2, then 1), whose state is checkpointed and
    rebuilt through the pipes."""
    topics = Topics(f"h{uuid.uuid4().hex[:8]}-")
    any_bus.admin().create_topics(topics.specs(PARTITIONS))
    messages = fleet(agents=16, messages=600, seed=5)
    settings = ProcessorSettings(batch_size=40, snapshot_every=10_000, snapshot_interval_s=3600, decide_workers=workers[0])
    group = f"h-{uuid.uuid4().hex[:6]}"
    first = StreamProcessor(any_bus, group, "first", topics=topics, settings=settings)
    first.start()
    produce(any_bus, topics.raw, messages[:300])
    step_until(first, lambda: first.stats.records >= 300)
    agents = sorted({m.agent_id for m in messages})
    producer = any_bus.producer()
    signals = [DetectionSignal(agent, "byzantine" if i == 0 else "anomaly", 0.95 if i == 0 else 0.6, [f"e-{i}"], messages[299].timestamp)
               for i, agent in enumerate(agents[:4])]
    for item in signals:
        producer.produce(topics.signals, item.encode(), item.agent_id.encode())
    producer.produce(topics.signals, b'{"agent_id": "nobody"}', b"nobody")  # a bad signal: an error, not a stop
    assert producer.flush(30) == 0
    step_until(first, lambda: first.stats.signals >= len(signals) and sum(first.stats.errors.values()) >= 1)
    produce(any_bus, topics.raw, messages[300:])  # after the last checkpoint: replayed by the next owner
    step_until(first, lambda: first.stats.records >= len(messages) + len(signals) + 1)
    state = {p: first.decider.snapshot(p) for p in first.owned_partitions}
    assert first.stats.errors == {"decode": 1}
    first.close()

    second = StreamProcessor(any_bus, group, "second", topics=topics, settings=replace(settings, decide_workers=workers[1]))
    second.start()
    step_until(second, lambda: len(second.owned_partitions) == PARTITIONS)
    assert second.stats.restores == PARTITIONS and second.stats.replayed > 0
    assert {p: second.decider.snapshot(p) for p in second.owned_partitions} == state
    second.close()

    reader = Reader(any_bus, topics)
    quarantined = lambda: {a for r in reader.seen.alerts for a in json.loads(r.value)["affected_agents"]}  # noqa: E731
    reader.until(lambda: agents[0] in quarantined() and any(reader.seen.errors), 30)
    byzantine = [json.loads(r.value) for r in reader.seen.alerts if json.loads(r.value)["affected_agents"] == [agents[0]]]
    assert [(a["pattern"], a["details"]["action"], a["evidence"]) for a in byzantine] == [("quarantine", "quarantine", ["e-0"])]
    ((source, (letter,)),) = reader.seen.errors.items()
    assert source.startswith(topics.signals + "/") and letter.stage == "decode"
    reader.close()


def test_a_runaway_message_is_interrupted_and_dead_lettered(tmp_path: Path) -> None:
    """On the main thread a message over its budget is interrupted (SIGALRM), not waited for."""
    bus = open_bus(f"embedded://{tmp_path}/bus")
    topics = Topics("slow-")
    processor = StreamProcessor(bus, "g", "i", topics=topics, settings=ProcessorSettings(message_timeout_s=0.3), predictor=ChaosPredictor(sleep_s=60))
    processor.start()
    slow = AgentMessage("a-1", T0, "request", {"chaos": "sleep"}, [], "c", {}, message_id="m-slow")
    fine = AgentMessage("a-1", T0 + timedelta(seconds=1), "request", {}, [], "c", {}, message_id="m-fine")
    produce(bus, topics.raw, [slow, fine])
    began = time.monotonic()
    step_until(processor, lambda: processor.stats.records >= 2, timeout=30)
    assert time.monotonic() - began < 10
    assert processor.stats.errors == {"process": 1} and processor.stats.decisions == 1
    processor.close()
    reader = Reader(bus, topics)
    reader.until(lambda: reader.count >= 2, 10)
    ((_, (letter,)),) = reader.seen.errors.items()
    assert (letter.error_type, letter.original_key) == ("ProcessingTimeout", b"a-1")
    reader.close()


def test_an_aborted_transaction_is_retried_and_committed_once(tmp_path: Path) -> None:
    bus = open_bus(f"embedded://{tmp_path}/bus")
    topics = Topics("abort-")
    processor = StreamProcessor(bus, "g", "i", topics=topics, settings=ProcessorSettings(batch_size=30))
    processor.start()
    producer_commit = None
    failures = {"left": 1}

    def flaky_commit(timeout: float = 30.0) -> None:
        if failures["left"]:
            failures["left"] -= 1
            processor._producer.abort_transaction()  # as the bus does when a commit fails
            raise TransactionAbortedError("injected: coordinator moved")
        producer_commit(timeout)

    messages = fleet(agents=10, messages=100, seed=2)
    produce(bus, topics.raw, messages)
    step_until(processor, lambda: bool(processor.owned_partitions) or processor.stats.records > 0)
    producer_commit = processor._producer.commit_transaction
    processor._producer.commit_transaction = flaky_commit  # type: ignore[method-assign]
    step_until(processor, lambda: processor.stats.records >= len(messages) and not processor._retry)
    assert processor.stats.aborts == 1
    processor.close()
    reader = Reader(bus, topics)
    reader.until(lambda: reader.count >= len(messages), 10)
    reader.poll(0.2)
    ids = [d.original_message.message_id for ds in reader.seen.decisions.values() for _, _, d in ds]
    assert sorted(ids) == sorted(m.message_id for m in messages)
    reader.close()


def test_a_second_instance_with_the_same_id_fences_the_first(any_bus: Bus) -> None:
    topics = Topics(f"f{uuid.uuid4().hex[:8]}-")
    any_bus.admin().create_topics(topics.specs(PARTITIONS))
    group = f"f-{uuid.uuid4().hex[:6]}"
    zombie = StreamProcessor(any_bus, group, "same", topics=topics)
    zombie.start()
    produce(any_bus, topics.raw, fleet(agents=8, messages=50, seed=1))
    step_until(zombie, lambda: zombie.stats.records > 0)
    successor = StreamProcessor(any_bus, group, "same", topics=topics)
    successor.start()
    # Forty agents: new records in every partition, whichever half the zombie keeps.
    produce(any_bus, topics.raw, [AgentMessage(f"z-{i}", T0, "broadcast", {}, [], "c", {}, message_id=f"z-{i}") for i in range(40)])
    with pytest.raises(ProducerFencedError):
        step_until(zombie, lambda: False, timeout=60)
    zombie.close()
    successor.close()

