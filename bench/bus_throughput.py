"""Produce and consume N agent messages through each bus backend; compare with bare confluent-kafka.

Usage:
    .venv/bin/python bench/bus_throughput.py [--messages 200000] [--rounds 3] [--bootstrap HOST:PORT]

Without --bootstrap a local Apache Kafka is started for the run (and stopped after). For the
kafka backend the script also runs a bare confluent-kafka produce loop and consume loop with
the same client settings against the same broker, alternating with the backend in every
round, and prints the backend's throughput as a ratio of the bare loop's (median of rounds).
The machines are shared and noisy: read the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import confluent_kafka

from chorus_lab.broker import BrokerConfig, LocalBroker, install
from chorus_lab.bus import Bus, TopicPartition, TopicSpec
from chorus_lab.bus.embedded import EmbeddedBus
from chorus_lab.bus.kafka import _CONSUMER_DEFAULTS, _CONSUMER_REQUIRED, _PRODUCER_DEFAULTS, _PRODUCER_REQUIRED, KafkaBus
from chorus_lab.schema import AgentMessage, encode

PARTITIONS = 6


def make_messages(count: int) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs of realistic encoded agent messages, 500 agents."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    pairs = []
    for i in range(count):
        agent = f"agent-{i % 500:04d}"
        message = AgentMessage(
            agent_id=agent, timestamp=start + timedelta(milliseconds=i), message_type="request",
            content={"action": "request_resource", "resource": f"gpu-pool-{i % 7}", "amount": 1 + i % 3, "priority": i % 10},
            target_agents=[f"agent-{(i + 1) % 500:04d}"], correlation_id=f"task-{i // 4}", metadata={"bench": True},
        )
        pairs.append((agent.encode(), encode(message)))
    return pairs


def timed(run: Callable[[], int]) -> float:
    """Messages per second of ``run`` (which returns how many messages it handled)."""
    began = time.perf_counter()
    handled = run()
    return handled / (time.perf_counter() - began)


# --------------------------------------------------------------------------- through the bus contract


def bus_produce(bus: Bus, topic: str, pairs: list[tuple[bytes, bytes]]) -> int:
    producer = bus.producer()
    for key, value in pairs:
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.01)
    left = producer.flush(120)
    producer.close()
    return len(pairs) - left


def bus_consume(bus: Bus, topic: str, count: int) -> int:
    consumer = bus.consumer(None)
    consumer.assign({TopicPartition(topic, p): 0 for p in range(PARTITIONS)})
    seen = 0
    deadline = time.monotonic() + 120
    while seen < count and time.monotonic() < deadline:
        seen += len(consumer.consume(1000, 0.5))
    consumer.close()
    return seen


# --------------------------------------------------------------------------- bare confluent-kafka


def bare_produce(bootstrap: str, topic: str, pairs: list[tuple[bytes, bytes]]) -> int:
    producer = confluent_kafka.Producer({**_PRODUCER_DEFAULTS, **_PRODUCER_REQUIRED, "bootstrap.servers": bootstrap})
    for key, value in pairs:
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.01)
    left = producer.flush(120)
    return len(pairs) - left


def bare_consume(bootstrap: str, topic: str, count: int) -> int:
    consumer = confluent_kafka.Consumer(
        {**_CONSUMER_DEFAULTS, **_CONSUMER_REQUIRED, "bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex}"}
    )
    consumer.assign([confluent_kafka.TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    seen = 0
    deadline = time.monotonic() + 120
    while seen < count and time.monotonic() < deadline:
        for message in consumer.consume(num_messages=1000, timeout=0.5):
            # What any consumer needs of a record: where it is, its key and its value.
            if message.error() is None:
                message.partition(), message.offset(), message.key(), message.value()
                seen += 1
    consumer.close()
    return seen


# --------------------------------------------------------------------------- the run


def fresh_topic(bus: Bus, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    bus.admin().create_topics([TopicSpec(name, partitions=PARTITIONS)])
    return name


def run(bootstrap: str, messages: int, rounds: int) -> None:
    pairs = make_messages(messages)
    size = sum(len(v) for _, v in pairs) / len(pairs)
    print(f"{messages} messages of {size:.0f} bytes on average, {PARTITIONS} partitions, {rounds} rounds (median shown)\n")
    kafka = KafkaBus(bootstrap, properties={})
    results: dict[str, list[float]] = {k: [] for k in ("embedded produce", "embedded consume", "kafka produce", "kafka consume", "bare produce", "bare consume")}
    for round_number in range(rounds):
        with tempfile.TemporaryDirectory() as folder:
            embedded = EmbeddedBus(Path(folder))
            topic = fresh_topic(embedded, "bench")
            results["embedded produce"].append(timed(lambda: bus_produce(embedded, topic, pairs)))
            results["embedded consume"].append(timed(lambda: bus_consume(embedded, topic, messages)))
            embedded.close()
        # Alternate which goes first, so neither always gets the warmer broker.
        order = ["bus", "bare"] if round_number % 2 == 0 else ["bare", "bus"]
        for which in order:
            topic = fresh_topic(kafka, f"bench-{which}")
            if which == "bus":
                results["kafka produce"].append(timed(lambda: bus_produce(kafka, topic, pairs)))
                results["kafka consume"].append(timed(lambda: bus_consume(kafka, topic, messages)))
            else:
                results["bare produce"].append(timed(lambda: bare_produce(bootstrap, topic, pairs)))
                results["bare consume"].append(timed(lambda: bare_consume(bootstrap, topic, messages)))
        print(f"round {round_number + 1}/{rounds} done", file=sys.stderr)
    median = {name: statistics.median(values) for name, values in results.items()}
    print(f"{'path':20} {'msg/s':>10}")
    for name, value in median.items():
        print(f"{name:20} {value:>10,.0f}")
    print()
    print(f"kafka backend / bare confluent-kafka, produce: {median['kafka produce'] / median['bare produce']:.2f}")
    print(f"kafka backend / bare confluent-kafka, consume: {median['kafka consume'] / median['bare consume']:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bootstrap", help="an existing broker (default: start a local one for the run)")
    args = parser.parse_args()
    if args.bootstrap:
        run(args.bootstrap, args.messages, args.rounds)
        return 0
    install(progress=lambda text: print(text, file=sys.stderr))
    with tempfile.TemporaryDirectory() as folder, LocalBroker(BrokerConfig(data_dir=Path(folder))) as broker:
        run(broker.info.bootstrap, args.messages, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
