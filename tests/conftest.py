"""Shared fixtures: one real Apache Kafka broker per test session, started on demand.

Tests that need Kafka ask for ``kafka_broker`` (a ``BrokerInfo``). The broker is
never skipped: if it cannot be installed or started, those tests error with the
reason, also under CI.
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from collections.abc import Callable, Iterator

import pytest

from chorus_lab.broker import BrokerConfig, BrokerInfo, LocalBroker, free_loopback_port, install
from tests.support.tcp_proxy import TcpProxy


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the broker, so ``-m "not kafka"`` can leave them out."""
    for item in items:
        if "kafka_broker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.kafka)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI nothing may be skipped: a skipped Kafka or browser test hides a missing install."""
    if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        names = ", ".join(report.nodeid for report in skipped[:5])
        print(f"\nCI=true: {len(skipped)} test(s) were skipped ({names}); failing the run", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _progress(message: str) -> None:
    print(f"[kafka] {message}", file=sys.stderr)


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerInfo]:
    """A running single-node Kafka with PLAINTEXT, SASL_SSL/PLAIN and PROXIED listeners."""
    install(progress=_progress)
    config = BrokerConfig(
        data_dir=tmp_path_factory.mktemp("kafka"),
        sasl=True,
        proxy_port=free_loopback_port(),
    )
    broker = LocalBroker(config)
    broker.start(progress=_progress)
    try:
        yield broker.info
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_proxy(kafka_broker: BrokerInfo) -> Iterator[TcpProxy]:
    """The TCP proxy in front of the broker's PROXIED listener (bootstrap: ``.bootstrap``)."""
    assert kafka_broker.proxied_bootstrap and kafka_broker.proxy_upstream
    listen_port = int(kafka_broker.proxied_bootstrap.rsplit(":", 1)[1])
    host, port = kafka_broker.proxy_upstream.rsplit(":", 1)
    with TcpProxy(listen_port, (host, int(port))) as proxy:
        yield proxy


@pytest.fixture
def kafka_outage(kafka_proxy: TcpProxy) -> Iterator[TcpProxy]:
    """The session's proxy for one test that may ``cut()`` it; always restored afterwards."""
    kafka_proxy.restore()
    try:
        yield kafka_proxy
    finally:
        kafka_proxy.restore()


@pytest.fixture
def unique_topic(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Return ``make(prefix)`` giving topic names no other test uses (one broker is shared)."""
    # No dots: Kafka refuses names that collide once '.' and '_' are treated alike.
    test = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)[:80]

    def make(prefix: str = "t") -> str:
        return f"{prefix}-{test}-{uuid.uuid4().hex[:10]}"

    return make
