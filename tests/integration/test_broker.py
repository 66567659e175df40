"""The local Apache Kafka broker: install, start, SASL_SSL, the outage proxy, detached mode."""

from __future__ import annotations

import json
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from chorus_lab import broker as broker_module
from chorus_lab.broker import (
    BrokerConfig,
    BrokerError,
    BrokerInfo,
    LocalBroker,
    check_reachable,
    install,
    install_dir,
    start_detached,
    status,
    stop_detached,
)
from tests.support.tcp_proxy import TcpProxy

# Every test here needs Java and the broker installed from Maven Central.
pytestmark = pytest.mark.kafka


def create_topic(bootstrap: str, name: str, partitions: int = 3) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        future.result(timeout=30)


def consume_all(
    bootstrap: str, topic: str, expected: int, timeout: float = 30
) -> list[tuple[bytes | None, bytes | None]]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{topic}-reader",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    received: list[tuple[bytes | None, bytes | None]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(received) < expected and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=100, timeout=0.5):
                assert message.error() is None, message.error()
                received.append((message.key(), message.value()))
    finally:
        consumer.close()
    return received


def wait_for(condition: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


# --------------------------------------------------------------------------- install


def test_second_install_is_instant_and_does_not_run_maven(monkeypatch: pytest.MonkeyPatch) -> None:
    home = install()
    assert (home / ".installed.json").exists()

    def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError("install() ran a command although the marker is present")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    started = time.monotonic()
    assert install() == home
    assert time.monotonic() - started < 0.5


def test_install_names_the_missing_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BrokerError, match="apt-get install -y openjdk-17-jre-headless maven"):
        install(cache_dir=tmp_path / "cache")
    assert not (install_dir(tmp_path / "cache") / ".installed.json").exists()


# --------------------------------------------------------------------------- plaintext


def test_broker_answers_and_round_trips_messages(kafka_broker: BrokerInfo, unique_topic: Callable[[str], str]) -> None:
    assert kafka_broker.bus_url == f"kafka://{kafka_broker.bootstrap}"
    topic = unique_topic("roundtrip")
    create_topic(kafka_broker.bootstrap, topic)
    metadata = AdminClient({"bootstrap.servers": kafka_broker.bootstrap}).list_topics(timeout=10)
    assert len(metadata.topics[topic].partitions) == 3

    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap, "partitioner": "murmur2_random"})
    sent = [(f"agent-{i % 4}".encode(), f"message {i}".encode()) for i in range(20)]
    for key, value in sent:
        producer.produce(topic, value=value, key=key)
    assert producer.flush(30) == 0

    assert sorted(consume_all(kafka_broker.bootstrap, topic, expected=len(sent))) == sorted(sent)


def test_topics_are_not_created_implicitly(kafka_broker: BrokerInfo, unique_topic: Callable[[str], str]) -> None:
    topic = unique_topic("never-created")
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap, "message.timeout.ms": 1000})
    reports: list[KafkaError | None] = []
    producer.produce(topic, b"x", on_delivery=lambda err, msg: reports.append(err))
    producer.flush(10)
    assert reports and reports[0] is not None
    assert topic not in AdminClient({"bootstrap.servers": kafka_broker.bootstrap}).list_topics(timeout=10).topics


# --------------------------------------------------------------------------- SASL_SSL


def test_sasl_ssl_with_the_right_credentials_connects(kafka_broker: BrokerInfo) -> None:
    conf: dict[str, Any] = kafka_broker.sasl_client_config()
    check_reachable(conf, timeout=20)
    metadata = AdminClient(conf).list_topics(timeout=10)
    assert metadata.brokers
    # The broker advertises its SASL_SSL address to SASL_SSL clients.
    assert {f"{b.host}:{b.port}" for b in metadata.brokers.values()} == {kafka_broker.sasl_bootstrap}


def test_sasl_wrong_password_fails_fast_with_an_authentication_error(kafka_broker: BrokerInfo) -> None:
    right = kafka_broker.sasl_password
    assert right
    wrong = "wrong-" + right[::-1]
    errors: list[KafkaError] = []
    conf: dict[str, Any] = {**kafka_broker.sasl_client_config(), "sasl.password": wrong}
    settings: dict[str, Any] = {**conf, "error_cb": errors.append}
    admin = AdminClient(settings)

    def auth_error_seen() -> bool:
        try:
            admin.list_topics(timeout=0.5)
        except Exception:
            pass
        admin.poll(0)
        return any(e.code() == KafkaError._AUTHENTICATION for e in errors)

    assert wait_for(auth_error_seen, timeout=10), [str(e) for e in errors]
    texts = [str(e) for e in errors]
    assert any("authentication" in text.lower() for text in texts)

    started = time.monotonic()
    with pytest.raises(BrokerError) as raised:
        check_reachable(conf, timeout=10)
    assert time.monotonic() - started < 12
    message = str(raised.value)
    assert "authentication" in message.lower()
    for text in [*texts, message, repr(kafka_broker)]:
        assert right not in text and wrong not in text


def test_the_password_stays_out_of_repr_logs_and_world_readable_files(kafka_broker: BrokerInfo) -> None:
    secret = kafka_broker.sasl_password
    assert secret and secret not in repr(kafka_broker)
    assert secret not in kafka_broker.log_file.read_text(errors="replace")
    for name in ("sasl-password", "server.properties", "tls/broker.pem"):
        mode = stat.S_IMODE((kafka_broker.data_dir / name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))


# --------------------------------------------------------------------------- outage proxy


def test_cutting_the_proxy_stops_delivery_and_restoring_resumes_it(
    kafka_broker: BrokerInfo, kafka_outage: TcpProxy, unique_topic: Callable[[str], str]
) -> None:
    topic = unique_topic("outage")
    create_topic(kafka_broker.bootstrap, topic, partitions=1)
    delivered: list[KafkaError | None] = []
    producer = Producer(
        {
            "bootstrap.servers": kafka_outage.bootstrap,
            "message.timeout.ms": 120_000,
            # Reconnect quickly once the network is back.
            "reconnect.backoff.max.ms": 500,
        }
    )

    def produce(value: bytes) -> None:
        producer.produce(topic, value, on_delivery=lambda err, msg: delivered.append(err))

    def delivered_count(n: int) -> Callable[[], bool]:
        return lambda: producer.poll(0.1) >= 0 and len(delivered) >= n

    produce(b"before")
    assert wait_for(delivered_count(1), timeout=30), "no delivery through the proxy before the cut"
    assert delivered == [None]
    assert kafka_outage.live_connections > 0

    kafka_outage.cut()
    assert kafka_outage.live_connections == 0
    produce(b"during")
    assert not wait_for(delivered_count(2), timeout=3), "delivered although the network was cut"

    kafka_outage.restore()
    assert wait_for(delivered_count(2), timeout=30), "no delivery after the network came back"
    assert delivered == [None, None]
    assert producer.flush(10) == 0
    values = [value for _, value in consume_all(kafka_broker.bootstrap, topic, expected=2)]
    assert values == [b"before", b"during"]


# --------------------------------------------------------------------------- start-up errors


def test_a_taken_port_is_reported_before_launching(tmp_path: Path) -> None:
    install()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        broker = LocalBroker(BrokerConfig(data_dir=tmp_path / "kafka", port=taken))
        with pytest.raises(BrokerError, match=f"127.0.0.1:{taken} .* already in use"):
            broker.start(timeout=60)
    assert broker.pid is None


@pytest.mark.slow
def test_a_broker_that_exits_during_start_up_reports_the_cause_from_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install()
    # Skip the early port check so that Kafka itself meets the taken port and exits.
    monkeypatch.setattr(broker_module, "_require_free_ports", lambda cfg: None)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        broker = LocalBroker(BrokerConfig(data_dir=tmp_path / "kafka", port=taken))
        with pytest.raises(BrokerError) as raised:
            broker.start(timeout=60)
    message = str(raised.value)
    assert "exited with code" in message
    # Quoted from the broker's log, although its last lines are shutdown chatter.
    assert f"Socket server failed to bind to 127.0.0.1:{taken}" in message
    assert broker.pid is None


def test_a_jvm_that_cannot_start_reports_its_console_output(tmp_path: Path) -> None:
    install()
    broker = LocalBroker(BrokerConfig(data_dir=tmp_path / "kafka", heap_mb=0))
    with pytest.raises(BrokerError) as raised:
        broker.start(timeout=60)
    message = str(raised.value)
    assert "exited with code" in message
    assert "heap" in message.lower()  # the JVM's own complaint, from broker.out


# --------------------------------------------------------------------------- detached


@pytest.mark.slow
def test_detached_broker_outlives_its_starter_and_keeps_data(tmp_path: Path) -> None:
    home = tmp_path / "broker"
    script = (
        "import sys; from pathlib import Path; from chorus_lab.broker import start_detached; "
        "start_detached(Path(sys.argv[1]), sasl=True, port=0)"
    )
    subprocess.run([sys.executable, "-c", script, str(home)], check=True, timeout=120)
    try:
        info = status(home)
        assert info is not None and info.pid
        recorded = json.loads((home / "broker.json").read_text())
        assert "sasl_password" not in recorded
        assert info.sasl_password and info.sasl_password not in (home / "broker.json").read_text()
        assert stat.S_IMODE((home / "sasl-password").stat().st_mode) == 0o600
        check_reachable(info.sasl_client_config(), timeout=20)

        again = start_detached(home, sasl=True, port=0)
        assert again.pid == info.pid

        create_topic(info.bootstrap, "kept", partitions=1)
        producer = Producer({"bootstrap.servers": info.bootstrap})
        producer.produce("kept", b"survives a restart")
        assert producer.flush(30) == 0

        assert stop_detached(home) is True
        assert status(home) is None
        assert not _alive(info.pid)
        assert stop_detached(home) is False

        restarted = start_detached(home, sasl=True, port=0)
        assert restarted.pid != info.pid
        assert (restarted.bootstrap, restarted.sasl_bootstrap) == (info.bootstrap, info.sasl_bootstrap)
        assert restarted.sasl_password == info.sasl_password
        assert [v for _, v in consume_all(restarted.bootstrap, "kept", expected=1)] == [b"survives a restart"]

        # A starter killed before it wrote broker.json leaves a broker only /proc knows.
        (home / "broker.json").unlink()
        assert status(home) is None
        assert stop_detached(home) is True
        assert restarted.pid and not _alive(restarted.pid)
    finally:
        stop_detached(home)
    assert status(home) is None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
