"""A live operator dashboard in real Chromium: embedded bus → pipeline → Voila → page.

``live_stack`` (one per module) creates an embedded bus in a temporary directory, runs the
whole pipeline (stages 1 and 2) in a thread, and serves ``dashboards/operator.ipynb`` with
:class:`~chorus_lab.dashboard_server.DashboardServer` exactly as ``chorus-lab dashboard``
does (loopback, token, the CDN-free template). ``live_stack.feed(...)`` sends a simulated
fleet's messages through an ``AgentClient``, the way agents do.

``open_page(url)`` opens a page in Debian's Chromium (driven by Playwright, never
downloaded) in a fresh browser context. Every request to a host other than 127.0.0.1 is
blocked and recorded; a test fails at teardown if its pages tried to reach one.
A missing Chromium is an error naming the fix, never a skip (CI fails on skips).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from chorus_lab import config, simulate
from chorus_lab.broker import free_loopback_port
from chorus_lab.bus import TopicPartition, open_bus
from chorus_lab.client import AgentClient
from chorus_lab.browser import launch, loopback_only, require_chromium
from chorus_lab.dashboard_server import DashboardServer, DashboardSettings

FIRST_RENDER_MS = 120_000
"""Deadline for a page's first full render: a cold kernel replays the bus on 2 shared cores."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in item.nodeid:
            item.add_marker(pytest.mark.slow)


@dataclass
class LiveStack:
    """The running pieces of one end-to-end module."""

    bus_url: str
    server: DashboardServer
    spool: Path
    failures: list[BaseException]
    sent: int = 0
    _fleets: int = field(default=0, repr=False)

    @property
    def url(self) -> str:
        return self.server.url

    def feed(self, messages: int, *, agents: int = 24, scenarios: dict[str, int] | None = None) -> int:
        """Send a fresh simulated fleet (same agent ids, new seed, event time now); return how many."""
        assert not self.failures, f"the pipeline failed: {self.failures[0]!r}"
        self._fleets += 1
        fleet = simulate.SimulationConfig(
            agents=agents, messages=messages, seed=1000 + self._fleets,
            scenarios={"byzantine": 1, "routing_loop": 1} if scenarios is None else scenarios,
            start=datetime.now(UTC) + timedelta(seconds=self._fleets),
        )
        batch = list(simulate.iter_messages(fleet))
        with AgentClient(self.bus_url, spool_dir=self.spool) as client:
            for start in range(0, len(batch), 500):
                client.send_many(batch[start:start + 500])
            left = client.flush(60)
        assert left == 0, f"{left} message(s) were not delivered to {config.RAW}"
        self.sent += len(batch)
        return len(batch)

    def wait_pipeline_idle(self, timeout_s: float = 120.0) -> dict[str, int]:
        """Until stage 1 decided every raw message and no output topic grew for 3 polls 1 s apart.

        That is when "the stream pauses": whatever the pages show then is final.
        """
        topics = (config.RAW, config.DECISIONS, config.ALERTS, config.GRAPH_UPDATES)
        deadline = time.monotonic() + timeout_s
        history: list[dict[str, int]] = []
        bus = open_bus(self.bus_url)
        try:
            reader = bus.consumer(None)
            try:
                while time.monotonic() < deadline:
                    assert not self.failures, f"the pipeline failed: {self.failures[0]!r}"
                    ends = {topic: _topic_end(bus, reader, topic) for topic in topics}
                    history = [*history[-2:], ends]
                    if len(history) == 3 and all(h == ends for h in history) and ends[config.DECISIONS] >= ends[config.RAW]:
                        return ends
                    time.sleep(1.0)  # the polling interval of a condition with a deadline
            finally:
                reader.close()
        finally:
            bus.close()
        raise AssertionError(f"the pipeline did not go idle within {timeout_s:.0f} s: {history[-1:]}")


def _topic_end(bus: Any, reader: Any, topic: str) -> int:
    description = bus.admin().describe(topic)
    return sum(reader.watermarks(TopicPartition(topic, p))[1] for p in range(description.partitions)) if description else 0


@pytest.fixture(scope="module")
def live_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    from chorus_lab.processor import run_pipeline

    root = tmp_path_factory.mktemp("e2e")
    bus_url = f"embedded://{root / 'bus'}"
    bus = open_bus(bus_url)
    bus.admin().create_topics(config.topic_specs())
    stop = threading.Event()
    failures: list[BaseException] = []

    def pipeline() -> None:
        try:
            run_pipeline(open_bus(bus_url), stop=stop, instance_id="e2e")
        except BaseException as exc:  # reported at teardown
            failures.append(exc)

    thread = threading.Thread(target=pipeline, name="e2e-pipeline", daemon=True)
    thread.start()
    log = (root / "voila.log").open("wb")
    server = DashboardServer(DashboardSettings(bus_url, port=free_loopback_port()), log=log)
    server.start()
    stack = LiveStack(bus_url, server, root / "spool", failures)
    try:
        yield stack
    finally:
        server.stop()
        stop.set()
        thread.join(60)
        log.close()
        bus.close()
    assert not failures, f"the pipeline failed: {failures[0]!r}"


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    try:
        require_chromium()
    except FileNotFoundError as exc:
        pytest.fail(str(exc))  # never a skip: CI must not pass without the browser tests
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch(playwright)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def open_page(browser: object) -> Iterator[Callable[..., object]]:
    """Open ``url`` in a fresh context (its own cookies); outside requests are blocked and counted."""
    outside: list[str] = []
    contexts: list[object] = []

    def open_(url: str, *, wait_for_state: bool = True) -> object:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})  # type: ignore[attr-defined]
        contexts.append(context)
        loopback_only(context, outside)
        page = context.new_page()
        page.goto(url)
        if wait_for_state:
            wait_rendered(page)
        return page

    yield open_
    for context in contexts:
        context.close()
    assert not outside, f"the dashboard tried to reach the internet: {sorted(set(outside))[:5]}"


# --------------------------------------------------------------------------- reading the page

COUNTS_JS = "() => { const e = document.querySelector('.chorus-state .chorus-counts'); return e ? Object.fromEntries(Object.entries(e.dataset).map(([k, v]) => [k, Number(v)])) : null }"
TRUST_JS = "() => Object.fromEntries([...document.querySelectorAll('.chorus-trust tr[data-agent]')].map(r => [r.dataset.agent, [r.dataset.trust, r.dataset.quarantined]]))"


def wait_rendered(page: object, timeout_ms: int = FIRST_RENDER_MS) -> None:
    """Until the counts show nodes, the trust list has rows and the graph has drawn them."""
    page.wait_for_function(  # type: ignore[attr-defined]
        """() => {
            const c = document.querySelector('.chorus-state .chorus-counts');
            const rows = document.querySelectorAll('.chorus-trust tr[data-agent]').length;
            const cy = cytoscape_instance();
            return c && Number(c.dataset.nodes) > 0 && rows > 0 && cy && cy.nodes().length > 0;
            function cytoscape_instance() {
                const box = [...document.querySelectorAll('.custom-widget')].find(e => e._cyreg && e._cyreg.cy);
                return box ? box._cyreg.cy : null;
            }
        }""",
        timeout=timeout_ms,
    )


def counts(page: object) -> dict[str, int]:
    return page.evaluate(COUNTS_JS)  # type: ignore[attr-defined,no-any-return]


def trust_rows(page: object) -> dict[str, list[str]]:
    return page.evaluate(TRUST_JS)  # type: ignore[attr-defined,no-any-return]
