"""Stage 2 in the stream, on the real broker: raw → stage 1 → stage 2 → alerts, graph, and trust back to stage 1."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from chorus_lab import audit, config, simulate
from chorus_lab.bus import Bus, Record, TopicPartition
from chorus_lab.bus.kafka import KafkaBus
from chorus_lab.bus.partitioner import partition_for_key
from chorus_lab.processor import ProcessorSettings, StreamProcessor, Topics
from chorus_lab.schema import AgentMessage, ProcessedDecision, decode, encode
from chorus_lab.stage2_processor import Stage2Processor, Stage2Settings
from tests.integration.test_processor_harness import PARTITIONS
from tests.integration.test_processor_recovery import produce


class Running:
    """A runner (stage 1 or 2) in a background thread; failures are reported to the test."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.stop = threading.Event()
        self.failure: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.runner.run(self.stop)
        except BaseException as exc:  # noqa: BLE001 (reported by check)
            self.failure.append(exc)

    def check(self) -> None:
        assert not self.failure, f"{type(self.runner).__name__} stopped: {self.failure[0]!r}"

    def close(self) -> None:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive()
        self.check()


class TopicReader:
    """Reads whole topics read_committed from the start and keeps every record."""

    def __init__(self, bus: Bus, topics: list[str], partitions: int = PARTITIONS) -> None:
        self.consumer = bus.consumer(None)
        self.consumer.assign({TopicPartition(t, p): 0 for t in topics for p in range(partitions)})
        self.records: dict[str, list[Record]] = {t: [] for t in topics}

    def until(self, done: Callable[[], bool], timeout: float, alive: Callable[[], None] = lambda: None) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            alive()
            assert time.monotonic() < deadline, {t: len(r) for t, r in self.records.items()}
            for record in self.consumer.consume(1000, 0.05):
                self.records[record.topic].append(record)

    def values(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(r.value) for r in self.records[topic]]

    def close(self) -> None:
        self.consumer.close()


def test_a_routing_loop_goes_raw_to_stage1_to_stage2_and_its_trust_signal_back_to_stage1(kafka_broker: Any) -> None:
    bus = KafkaBus(kafka_broker.bootstrap, properties={})
    topics = Topics(f"s2{uuid.uuid4().hex[:8]}-")
    bus.admin().create_topics(topics.specs(PARTITIONS))
    sim = simulate.simulate(simulate.SimulationConfig(agents=20, messages=600, seed=7, scenarios={"routing_loop": 1}))
    (label,) = sim.labels
    stage1 = Running(StreamProcessor(bus, f"g1-{uuid.uuid4().hex[:6]}", "s1", topics=topics, settings=ProcessorSettings(batch_size=100, snapshot_every=500)))
    # The fleet is sent 15x faster than its event time passes, so a quiet partition's
    # allowance (idle_lateness_s, event time) is scaled up to match a real-time fleet's 2 s.
    settings2 = Stage2Settings(batch_size=100, snapshot_every=300, idle_lateness_s=30.0)
    stage2 = Running(Stage2Processor(bus, f"g2-{uuid.uuid4().hex[:6]}", "s2", topics=topics, settings=settings2))
    graph, ledger = topics.name(config.GRAPH_UPDATES), topics.name(config.RESOURCE_LEDGER)
    reader = TopicReader(bus, [topics.alerts, topics.signals, graph, ledger, topics.decisions])

    def alive() -> None:
        stage1.check()
        stage2.check()

    try:
        # A fleet sends over time: paced, so stage 2 sees the partitions interleaved about
        # as they happen (see docs/processor.md, "Stage 2": order across partitions).
        producer = bus.producer()
        for message in simulate.paced(sim.messages, 300.0):
            producer.produce(topics.raw, encode(message), message.agent_id.encode())
            producer.poll(0)
        assert producer.flush(30) == 0
        producer.close()
        # The injected loop's alert, and no other: stage 2 puts the six partitions' decisions
        # back in event-time order, so honest hand-off chains do not look like loops.
        loop_alerts = lambda: [a for a in reader.values(topics.alerts) if a["pattern"] == "routing_loop" and set(label.agents) <= set(a["affected_agents"])]  # noqa: E731
        reader.until(lambda: bool(loop_alerts()) and len(reader.records[topics.decisions]) >= len(sim.messages), 120, alive)
        alert = loop_alerts()[0]
        assert alert["confidence"] >= 0.9 and alert["evidence"], alert
        others = [a for a in reader.values(topics.alerts) if a["pattern"] == "routing_loop" and a["alert_id"] != alert["alert_id"]]
        assert not others, others
        reader.until(lambda: any(u["update_type"] == "loop_detected" for u in reader.values(graph)), 30, alive)
        assert any(u["update_type"] == "edge_created" for u in reader.values(graph))
        assert reader.records[ledger], "resource traffic must publish the ledger"

        # The trust signals: keyed by agent, on the partition of the agent's raw messages.
        signals = [r for r in reader.records[topics.signals] if json.loads(r.value)["alert_id"] == alert["alert_id"]]
        assert {json.loads(r.value)["agent_id"] for r in signals} == set(alert["affected_agents"])
        for record in signals:
            assert record.key == json.loads(record.value)["agent_id"].encode()
            assert record.partition == partition_for_key(record.key, PARTITIONS)

        # Stage 1 applies them: each blamed agent's next decision starts from a lower trust.
        processor = stage1.runner
        deadline = time.monotonic() + 60
        while processor.stats.signals < len(signals):
            alive()
            assert time.monotonic() < deadline, processor.stats.summary()
            time.sleep(0.05)
        last = {}
        for record in reader.records[topics.decisions]:
            decision = decode(ProcessedDecision, record.value)
            last[decision.original_message.agent_id] = decision
        later = max(d.original_message.timestamp for d in last.values()) + timedelta(seconds=1)
        blamed = sorted(alert["affected_agents"])
        produce(bus, topics.raw, [
            AgentMessage(agent, later, "broadcast", {"status": "idle"}, [], f"after-{agent}", {}, message_id=f"after-{agent}") for agent in blamed
        ])
        after = lambda: {d.original_message.agent_id: d for d in (decode(ProcessedDecision, r.value) for r in reader.records[topics.decisions]) if d.original_message.message_id.startswith("after-")}  # noqa: E731
        reader.until(lambda: len(after()) == len(blamed), 60, alive)
        for agent, decision in after().items():
            before_loop = last[agent].trust_impact.after
            assert decision.trust_impact.before < before_loop - 1.0, (agent, before_loop, decision.trust_impact)

        # Both stages write system-alerts, each in its own hash-chain lane: the trail verifies.
        loop_record = next(r for r in reader.records[topics.alerts] if json.loads(r.value)["alert_id"] == alert["alert_id"])
        assert loop_record.header("audit.lane") == b"stage2", loop_record.headers
        reports = audit.verify(bus, [topics.alerts, topics.decisions])
        assert all(report.ok for report in reports), [str(r) for r in reports if not r.ok]
    finally:
        reader.close()
        stage2.close()
        stage1.close()
