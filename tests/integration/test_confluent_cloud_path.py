"""The Confluent Cloud code path for real: SASL_SSL + PLAIN against the local broker.

Settings come the way users give them — a client.properties file named by
CHORUS_KAFKA_CONFIG, or CHORUS_KAFKA_* variables — and the secret is never shown.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from chorus_lab.bus import AuthenticationError, BusUnavailableError, TopicPartition, TopicSpec
from chorus_lab.bus.kafka import KafkaBus
from chorus_lab.config import kafka_client_properties


def _properties_file(tmp_path: Path, broker, password: str) -> Path:
    path = tmp_path / "client.properties"
    path.write_text(
        f"bootstrap.servers={broker.sasl_bootstrap}\nsecurity.protocol=SASL_SSL\nsasl.mechanisms=PLAIN\n"
        f"sasl.username={broker.sasl_username}\nsasl.password={password}\nssl.ca.location={broker.ca_file}\n"
    )
    return path


def test_the_right_credentials_connect_and_carry_messages(kafka_broker, unique_topic, tmp_path: Path) -> None:
    properties = kafka_client_properties({"CHORUS_KAFKA_CONFIG": str(_properties_file(tmp_path, kafka_broker, kafka_broker.sasl_password))})
    bus = KafkaBus("", properties=properties)
    assert bus.url == f"kafka://{kafka_broker.sasl_bootstrap}"
    topic = unique_topic("sasl")
    assert bus.admin().create_topics([TopicSpec(topic, partitions=2)]) == [topic]
    producer = bus.producer()
    producer.produce(topic, b"hello", b"k")
    assert producer.flush(20) == 0
    consumer = bus.consumer(None)
    consumer.assign({TopicPartition(topic, p): 0 for p in range(2)})
    deadline = time.monotonic() + 20
    values: list[bytes | None] = []
    while not values and time.monotonic() < deadline:
        values = [r.value for r in consumer.consume(10, 0.5)]
    consumer.close()
    assert values == [b"hello"]


def test_a_wrong_password_fails_fast_naming_the_cause_without_the_secret(kafka_broker, tmp_path: Path) -> None:
    wrong = "not-the-secret-" + kafka_broker.sasl_password[:4][::-1] + "x9"
    properties = kafka_client_properties({"CHORUS_KAFKA_CONFIG": str(_properties_file(tmp_path, kafka_broker, wrong))})
    bus = KafkaBus("", properties=properties)
    started = time.monotonic()
    with pytest.raises(AuthenticationError) as caught:
        bus.check_connection(timeout=10)
    elapsed = time.monotonic() - started
    assert elapsed < 15
    text = str(caught.value)
    assert kafka_broker.sasl_bootstrap in text and "authentication" in text.lower()
    assert wrong not in text and kafka_broker.sasl_password not in text


def test_the_cli_reports_a_bad_secret_in_one_line_without_printing_it(kafka_broker, tmp_path: Path) -> None:
    wrong = "hunter2-wrong-secret"
    env = {"PATH": "/usr/bin:/bin", "CHORUS_KAFKA_CONFIG": str(_properties_file(tmp_path, kafka_broker, wrong))}
    result = subprocess.run(
        [sys.executable, "-m", "chorus_lab.cli", "topics", "describe", "--bus", "kafka://"], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path
    )
    assert result.returncode == 1
    assert "authentication to Kafka cluster" in result.stderr
    assert wrong not in result.stdout + result.stderr


def test_an_unreachable_cluster_is_named_after_retries() -> None:
    bus = KafkaBus("127.0.0.1:1", properties={})
    with pytest.raises(BusUnavailableError, match=r"127\.0\.0\.1:1"):
        bus.check_connection(timeout=2)
