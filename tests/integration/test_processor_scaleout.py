"""Two stage-1 instances share a 6-partition topic on the real broker, across rebalances."""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from typing import Any

from chorus_lab import simulate
from chorus_lab.bus import DeliveryReport
from chorus_lab.bus.kafka import KafkaBus
from chorus_lab.pipeline import RecordMeta, Stage1
from chorus_lab.processor import ProcessorSettings, StreamProcessor, Topics
from chorus_lab.schema import encode
from tests.integration.test_processor_harness import PARTITIONS, Reader
from tests.integration.test_processor_recovery import comparable


def test_two_instances_decide_each_message_once_in_agent_order_across_join_and_leave(kafka_broker: Any) -> None:
    """Instance A starts alone, B joins mid-stream, A stops mid-stream: every message is
    decided exactly once, each agent's decisions keep its order, and the state follows its
    partitions (the decisions equal one uninterrupted pure run's)."""
    bus = KafkaBus(kafka_broker.bootstrap, properties={})
    topics = Topics(f"s{uuid.uuid4().hex[:8]}-")
    bus.admin().create_topics(topics.specs(PARTITIONS))
    messages = simulate.simulate(simulate.SimulationConfig(agents=36, messages=2400, seed=21, scenarios={"conflict": 1})).messages
    settings = ProcessorSettings(batch_size=60, snapshot_every=150, session_timeout_s=6)
    group = f"scale-{uuid.uuid4().hex[:6]}"
    instances = {name: StreamProcessor(bus, group, name, topics=topics, settings=settings) for name in ("a", "b")}
    stops = {name: threading.Event() for name in instances}
    failures: list[BaseException] = []

    def run(name: str) -> None:
        try:
            instances[name].run(stops[name])
        except BaseException as exc:
            failures.append(exc)

    placed: list[tuple[int, int] | None] = [None] * len(messages)

    def send() -> None:
        producer = bus.producer()
        for index, message in enumerate(messages):

            def delivered(report: DeliveryReport, index: int = index) -> None:
                placed[index] = (report.partition, report.offset)

            producer.produce(topics.raw, encode(message), message.agent_id.encode(), on_delivery=delivered)
            if index % 100 == 99:
                producer.poll(0)
                time.sleep(0.25)  # ~400 msg/s for ~6 s: both rebalances happen mid-stream
        assert producer.flush(30) == 0

    threads = {name: threading.Thread(target=run, args=(name,), daemon=True) for name in instances}
    sender = threading.Thread(target=send, daemon=True)
    reader = Reader(bus, topics)
    sender.start()
    threads["a"].start()
    reader.until(lambda: reader.count >= 300, 60)
    threads["b"].start()  # joins: A gives up half of its partitions
    reader.until(lambda: reader.count >= 800 and len(instances["b"].owned_partitions) > 0, 60)
    assert 0 < len(instances["a"].owned_partitions) < PARTITIONS
    assert sender.is_alive(), "the input ended before the rebalances; slow the sender down"
    stops["a"].set()  # leaves: B takes over A's partitions and their state
    threads["a"].join(30)
    assert not threads["a"].is_alive() and not failures, failures
    sender.join(60)
    reader.until(lambda: reader.count >= len(messages), 90)
    reader.poll(1.0)  # a decision committed twice would arrive now
    assert instances["b"].owned_partitions == list(range(PARTITIONS))
    stops["b"].set()
    threads["b"].join(30)
    assert not failures, failures
    reader.close()

    decided = [(p, o, d) for ds in reader.seen.decisions.values() for p, o, d in ds]
    ids = [d.original_message.message_id for _, _, d in decided]
    assert len(ids) == len(set(ids)) == len(messages), "a message was decided twice or not at all"
    by_agent: dict[str, list[Any]] = defaultdict(list)
    for _, _, decision in sorted(decided, key=lambda item: (item[0], item[1])):
        by_agent[decision.original_message.agent_id].append(decision)
    sent: dict[str, list[str]] = defaultdict(list)
    for message in messages:
        sent[message.agent_id].append(message.message_id)
    for agent, ids_in_order in sent.items():
        assert [d.original_message.message_id for d in by_agent[agent]] == ids_in_order, agent
    assert {d.processing_metadata.instance_id for _, _, d in decided} == {"a", "b"}
    assert instances["b"].stats.restores > 0  # B rebuilt the partitions A handed over

    # The same messages through one pure, uninterrupted stage: identical decisions.
    reference = Stage1()
    expected = {}
    for message, where in zip(messages, placed, strict=True):
        assert where is not None
        partition, offset = where
        meta = RecordMeta(topics.raw, partition, offset, key=message.agent_id.encode())
        decision = reference.decide(meta, message).decision
        assert decision is not None
        expected[message.message_id] = comparable(decision)
    got = {d.original_message.message_id: comparable(d) for _, _, d in decided}
    differing = [mid for mid in expected if got[mid] != expected[mid]]
    assert not differing, f"{len(differing)} decisions differ from the uninterrupted run, e.g. {differing[:3]}"
