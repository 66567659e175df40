"""Pipeline outputs for a live view without a running stream processor.

:func:`pipeline_records` runs agent messages through the pure cores in-process (stage 1
then stage 2, stage 2's trust signals fed back to stage 1) and yields the records the
processor would publish on the four topics a :class:`~chorus_lab.live.session.LiveSession`
follows, with the processor's keys. :func:`produce_records` writes them onto a bus. Used by
the tests, the notebooks' self-contained examples and benchmarks; the live pipeline
(``chorus-lab run``) publishes the same records itself.

>>> from chorus_lab.simulate import SimulationConfig, simulate
>>> sim = simulate(SimulationConfig(agents=10, messages=60, seed=3, scenarios={}))
>>> records = list(pipeline_records(sim.messages))
>>> sorted({r.topic for r in records})
['agent-decisions-processed', 'analytics-metrics', 'causal-graph-updates']
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import NamedTuple

from chorus_lab import config
from chorus_lab.bus import Bus, BusError, TopicSpec
from chorus_lab.bus.partitioner import partition_for_key
from chorus_lab.pipeline import DetectionSignal, RecordMeta, Stage1, encode_decision
from chorus_lab.schema import AgentMessage, encode
from chorus_lab.stage2 import Stage2, Stage2Output, alert_key, graph_update_key

FOLLOWED = (config.DECISIONS, config.ALERTS, config.GRAPH_UPDATES, config.METRICS)


class OutRecord(NamedTuple):
    topic: str
    key: bytes
    value: bytes


def pipeline_records(messages: Iterable[AgentMessage], *, partitions: int = config.DEFAULT_PARTITIONS, topic_prefix: str = "",
                     finish: datetime | None = None) -> Iterator[OutRecord]:
    """Decisions, alerts, graph updates and metrics for ``messages``, in processing order.

    ``finish`` (an event time) closes the metric windows up to it at the end, so the last
    snapshots are published too.
    """
    stage1, stage2 = Stage1(instance_id="feed"), Stage2()
    topic = {name: topic_prefix + name for name in FOLLOWED}
    offsets = [0] * partitions
    for message in messages:
        key = message.agent_id.encode()
        partition = partition_for_key(key, partitions)
        meta = RecordMeta(config.RAW, partition, offsets[partition], int(message.timestamp.timestamp() * 1000), key)
        offsets[partition] += 1
        out1 = stage1.decide(meta, message)
        for alert in out1.alerts:
            yield OutRecord(topic[config.ALERTS], alert_key(alert).encode(), encode(alert))
        if out1.decision is None:
            continue
        yield OutRecord(topic[config.DECISIONS], key, encode_decision(out1.decision))
        out2 = stage2.process(out1.decision)
        yield from _stage2_records(out2, topic)
        for signal in out2.trust_signals:
            fed = DetectionSignal(signal.agent_id, signal.pattern, signal.confidence, list(signal.evidence), signal.timestamp, signal.alert_id)
            result = stage1.apply_signal(partition_for_key(signal.agent_id.encode(), partitions), fed)
            for alert in result.alerts:
                yield OutRecord(topic[config.ALERTS], alert_key(alert).encode(), encode(alert))
    if finish is not None:
        yield from _stage2_records(stage2.tick(finish), topic)


def _stage2_records(out: Stage2Output, topic: dict[str, str]) -> Iterator[OutRecord]:
    for update in out.graph_updates:
        yield OutRecord(topic[config.GRAPH_UPDATES], graph_update_key(update).encode(), encode(update))
    for alert in out.alerts:
        yield OutRecord(topic[config.ALERTS], alert_key(alert).encode(), encode(alert))
    for snapshot in out.metrics:
        yield OutRecord(topic[config.METRICS], b"snapshot", json.dumps(snapshot, separators=(",", ":")).encode())


def create_live_topics(bus: Bus, *, topic_prefix: str = "", partitions: int = config.DEFAULT_PARTITIONS) -> None:
    """Create the four followed topics (with the project's specs) if they are missing."""
    wanted = {topic_prefix + name for name in FOLLOWED}
    specs = [s for s in config.topic_specs(partitions, prefix=topic_prefix) if s.name in wanted]
    bus.admin().create_topics([TopicSpec(s.name, s.partitions, s.retention_ms, s.cleanup_policy, s.replication_factor) for s in specs])


def produce_records(bus: Bus, records: Iterable[OutRecord], *, flush_every: int = 5_000) -> int:
    """Produce ``records`` onto ``bus``; return how many. Raises ``BusError`` if some are not delivered."""
    producer = bus.producer()
    count = 0
    try:
        for record in records:
            while True:
                try:
                    producer.produce(record.topic, record.value, record.key)
                    break
                except BufferError:
                    producer.poll(0.1)
            count += 1
            if count % flush_every == 0:
                producer.flush(60)
        if producer.flush(60):
            raise BusError(f"{bus.url}: not every live record was delivered within 60 s")
    finally:
        producer.close()
    return count
