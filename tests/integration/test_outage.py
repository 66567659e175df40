"""A real outage between an agent and Kafka: a loopback proxy in front of the broker is cut.

Messages sent while the connection is cut wait in the client's durable spool and arrive
once, in per-agent order, when it is back — also when the sending process died meanwhile.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chorus_lab.bus import TopicPartition, TopicSpec
from chorus_lab.bus.kafka import KafkaBus
from chorus_lab.client import AgentClient
from chorus_lab.schema import AgentMessage, decode_agent_message
from tests.strategies import aware_datetimes

# Reconnect quickly once the proxy is back, so each example's outage ends in well under a second.
FAST_RECONNECT = {"reconnect.backoff.ms": "50", "reconnect.backoff.max.ms": "200", "retry.backoff.ms": "20", "retry.backoff.max.ms": "100"}
AGENTS = ["ant-1", "bee-2", "cat-3", "dog-4"]


def _message(agent: str, n: int, when, run: str) -> AgentMessage:
    return AgentMessage(
        agent_id=agent, timestamp=when, message_type="broadcast", content={"action": "status", "n": n},
        target_agents=[], correlation_id=run, metadata={},
    )


def _read(broker, topic: str, done, timeout: float = 30.0) -> list[AgentMessage]:
    """Messages on ``topic`` (read directly, not through the proxy) until ``done(messages)``."""
    consumer = KafkaBus(broker.bootstrap, properties={}).consumer(None)
    consumer.assign({TopicPartition(topic, p): 0 for p in range(6)})
    found: list[AgentMessage] = []
    deadline = time.monotonic() + timeout
    try:
        while not done(found) and time.monotonic() < deadline:
            found += [decode_agent_message(r.value) for r in consumer.consume(500, 0.3)]
    finally:
        consumer.close()
    return found


phases = st.lists(st.tuples(st.sampled_from(AGENTS), st.sampled_from(["before", "during"])), min_size=1, max_size=20)


@pytest.fixture
def outage_client(kafka_broker, kafka_outage, unique_topic, tmp_path: Path) -> Iterator[tuple[AgentClient, str]]:
    """One client that reaches Kafka only through the proxy, and its topic."""
    topic = unique_topic("outage")
    KafkaBus(kafka_broker.bootstrap, properties={}).admin().create_topics([TopicSpec(topic, partitions=6)])
    with AgentClient(KafkaBus(kafka_outage.bootstrap, properties=FAST_RECONNECT), spool_dir=tmp_path / "spool", topic=topic) as client:
        yield client, topic


# Feature: real-time-data-flow, Property 3: Message buffering and replay on reconnection
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(plan=phases, start=aware_datetimes)
def test_messages_sent_during_an_outage_arrive_once_in_order(kafka_broker, kafka_outage, outage_client, plan, start) -> None:
    client, topic = outage_client
    sent: dict[str, list[str]] = defaultdict(list)
    before = [(a, i) for i, (a, phase) in enumerate(plan) if phase == "before"]
    during = [(a, i) for i, (a, phase) in enumerate(plan) if phase == "during"]
    run = uuid.uuid4().hex  # keeps this example's messages apart from earlier ones on the topic
    for agent, i in before:
        sent[agent].append(client.send(_message(agent, i, start, run)))
    assert client.flush(30) == 0
    kafka_outage.cut()
    for agent, i in during:
        sent[agent].append(client.send(_message(agent, i, start, run)))
    # Nothing sent during the outage can have been acknowledged: it is all in the spool.
    assert client.flush(0.2) == len(during)
    kafka_outage.restore()
    assert client.flush(30) == 0
    wanted = {mid for ids in sent.values() for mid in ids}
    received = _read(kafka_broker, topic, lambda found: wanted <= {m.message_id for m in found})
    by_agent: dict[str, list[str]] = defaultdict(list)
    for message in received:
        if message.message_id in wanted:
            by_agent[message.agent_id].append(message.message_id)
    assert dict(by_agent) == dict(sent)  # every message once, per-agent order kept


SENDER = """
import os, sys
from datetime import datetime, UTC
from pathlib import Path
from chorus_lab.bus.kafka import KafkaBus
from chorus_lab.client import AgentClient
from chorus_lab.schema import AgentMessage
bootstrap, topic, spool = sys.argv[1:4]
client = AgentClient(KafkaBus(bootstrap, properties={}), spool_dir=Path(spool), topic=topic)
for n in range(200):
    agent = "agent-%d" % (n % 5)
    client.send(AgentMessage(agent_id=agent, timestamp=datetime(2026, 1, 1, tzinfo=UTC), message_type="broadcast",
                             content={"n": n}, target_agents=[], correlation_id="c", metadata={}))
print(client.pending, flush=True)
os._exit(0)  # die without flushing, like a crash
"""


def test_a_crashed_senders_spool_is_replayed_by_the_next_client(kafka_broker, kafka_outage, unique_topic, tmp_path: Path) -> None:
    topic = unique_topic("crash")
    KafkaBus(kafka_broker.bootstrap, properties={}).admin().create_topics([TopicSpec(topic, partitions=6)])
    kafka_outage.cut()
    spool = tmp_path / "spool"
    child = subprocess.run([sys.executable, "-c", SENDER, kafka_outage.bootstrap, topic, str(spool)], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    assert int(child.stdout.strip()) == 200  # all 200 waited in the spool when the process died
    kafka_outage.restore()
    with AgentClient(KafkaBus(kafka_outage.bootstrap, properties=FAST_RECONNECT), spool_dir=spool, topic=topic) as client:
        assert client.pending == 200
        assert client.flush(30) == 0
    received = _read(kafka_broker, topic, lambda found: len(found) >= 200)
    assert len(received) == 200
    for agent in {m.agent_id for m in received}:
        numbers = [m.content["n"] for m in received if m.agent_id == agent]
        assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
