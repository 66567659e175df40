"""Fixtures for tests that run the same way on both bus backends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from chorus_lab.bus import Bus, TopicSpec, open_bus
from chorus_lab.bus.kafka import KafkaBus


@pytest.fixture(params=["embedded", "kafka"])
def any_bus(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Bus]:
    """The embedded bus in a temporary directory, or the session's real Kafka broker."""
    if request.param == "embedded":
        bus: Bus = open_bus(f"embedded://{tmp_path}/bus")
    else:
        broker = request.getfixturevalue("kafka_broker")
        # properties={}: ignore any CHORUS_KAFKA_* settings of the machine running the tests.
        bus = KafkaBus(broker.bootstrap, properties={})
    yield bus
    bus.close()


def make_topics(bus: Bus, *names: str, partitions: int = 6, **config: str) -> None:
    """Create fresh topics for one test."""
    bus.admin().create_topics([TopicSpec(name, partitions=partitions, config=config) for name in names])


@pytest.fixture
def topic_for_test(any_bus: Bus, unique_topic) -> str:
    """A fresh 6-partition topic for this test on ``any_bus`` (shared by its Hypothesis examples)."""
    name = unique_topic("t")
    make_topics(any_bus, name)
    return name
