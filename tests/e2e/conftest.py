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

A page that does not render in time fails with what it shows and its console; a failing
test that used ``live_stack`` also reports the end of Voila's log (tokens redacted).
"""

from __future__ import annotations

import re
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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    """A failing test that used ``live_stack`` reports the end of Voila's log with it."""
    report: pytest.TestReport = yield
    stack = getattr(item, "funcargs", {}).get("live_stack")
    if report.failed and isinstance(stack, LiveStack):
        report.sections.append(("voila log (last 60 lines)", stack.log_tail(60)))
    return report


def redacted(text: str) -> str:
    """``text`` without token values (``token=…`` in URLs, ``"token": "…"`` in JSON)."""
    return re.sub(r"(token[\"']?\s*[=:]\s*[\"']?)[\w.~-]+", r"\1<redacted>", text, flags=re.IGNORECASE)


@dataclass
class LiveStack:
    """The running pieces of one end-to-end module."""

    bus_url: str
    server: DashboardServer
    spool: Path
    failures: list[BaseException]
    log_path: Path
    processors: dict[str, Any] = field(default_factory=dict)
    """``stage1`` and ``stage2`` of the running pipeline (``run_pipeline``'s ``started``)."""
    sent: int = 0
    _fleets: int = field(default=0, repr=False)

    @property
    def url(self) -> str:
        return self.server.url

    def log_tail(self, lines: int) -> str:
        """The last ``lines`` of Voila's log, tokens redacted."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else "(no log)"
        return redacted("\n".join(text.splitlines()[-lines:]))

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
        """Until stage 1 decided every raw message, stage 2 read every decision and holds none
        back, and no topic grew for 3 polls 1 s apart.

        That is when "the stream pauses": whatever the pages show then is final. Quiet topics
        alone are not enough: stage 2 writes what it held back for event-time order only
        after a quiet second of its own, which a loaded machine can stretch past the polls.
        """
        topics = (config.RAW, config.DECISIONS, config.ALERTS, config.GRAPH_UPDATES, config.TRUST_SIGNALS)
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
                    quiet = len(history) == 3 and all(h == ends for h in history)
                    stage2 = self.processors["stage2"].stats  # ints, safe to read from this thread
                    if quiet and ends[config.DECISIONS] >= ends[config.RAW] and stage2.records >= ends[config.DECISIONS] and stage2.held == 0:
                        return ends
                    time.sleep(1.0)  # the polling interval of a condition with a deadline
            finally:
                reader.close()
        finally:
            bus.close()
        stage2 = self.processors["stage2"].stats
        raise AssertionError(
            f"the pipeline did not go idle within {timeout_s:.0f} s: {history[-1:]}; stage 2 read {stage2.records} decisions and holds {stage2.held}"
        )


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
    processors: dict[str, Any] = {}
    built = threading.Event()

    def watch(stage1: Any, stage2: Any) -> None:
        processors.update(stage1=stage1, stage2=stage2)
        built.set()

    def pipeline() -> None:
        try:
            run_pipeline(open_bus(bus_url), stop=stop, instance_id="e2e", started=watch)
        except BaseException as exc:  # reported at teardown
            failures.append(exc)
            built.set()

    thread = threading.Thread(target=pipeline, name="e2e-pipeline", daemon=True)
    thread.start()
    assert built.wait(60) and not failures, f"the pipeline did not start: {failures[:1]!r}"
    log_path = root / "voila.log"
    log = log_path.open("wb", buffering=0)  # unbuffered: a failing test reads it while Voila writes
    server = DashboardServer(DashboardSettings(bus_url, port=free_loopback_port()), log=log)
    server.start()
    stack = LiveStack(bus_url, server, root / "spool", failures, log_path, processors)
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
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    outside: list[str] = []
    contexts: list[object] = []

    def open_(url: str, *, wait_for_state: bool = True, kernel_route: Callable[[Any], None] | None = None) -> object:
        """``kernel_route(ws)``, if given, handles the page's kernel WebSocket (Playwright's ``WebSocketRoute``)."""
        __tracebackhide__ = True  # its locals hold the URL's token
        context = browser.new_context(viewport={"width": 1400, "height": 1000})  # type: ignore[attr-defined]
        contexts.append(context)
        loopback_only(context, outside)
        page = context.new_page()
        console: list[str] = []

        def note(message: Any) -> None:
            if not message.text.startswith(BENIGN_CONSOLE):
                console.append(f"{message.type}: {message.text}")

        page.on("console", note)
        page.on("pageerror", lambda error: console.append(f"page error: {error}"))
        if kernel_route is not None:
            page.route_web_socket(KERNEL_CHANNELS, kernel_route)
        page.goto(url)
        if wait_for_state:
            try:
                wait_rendered(page)
            except PlaywrightTimeoutError as exc:
                try:
                    shows = page.evaluate(SHOWS_JS)
                except Exception as unreadable:  # a crashed page: the timeout is still the failure
                    shows = f"(the page could not be read: {unreadable})"
                raise AssertionError(
                    redacted(f"the page did not render: {exc}\nit shows: {shows}\nits console (last 30):\n" + "\n".join(console[-30:]))
                ) from None
        return page

    yield open_
    for context in contexts:
        context.close()
    assert not outside, f"the dashboard tried to reach the internet: {sorted(set(outside))[:5]}"


KERNEL_CHANNELS = re.compile(r"/api/kernels/[^/?]+/channels")
"""The URL of a page's WebSocket to its kernel (Jupyter Server)."""


# --------------------------------------------------------------------------- reading the page

COUNTS_JS = "() => { const e = document.querySelector('.chorus-state .chorus-counts'); return e ? Object.fromEntries(Object.entries(e.dataset).map(([k, v]) => [k, Number(v)])) : null }"
TRUST_JS = "() => Object.fromEntries([...document.querySelectorAll('.chorus-trust tr[data-agent]')].map(r => [r.dataset.agent, [r.dataset.trust, r.dataset.quarantined]]))"


BENIGN_CONSOLE = ("Unsatisfied version", "No satisfying version", "Available versions")
"""Console lines every Voila page logs (JupyterLab's shared-module version checks), left out of failures."""

SHOWS_JS = """() => ({
    title: document.title,
    counts: !!document.querySelector('.chorus-state .chorus-counts'),
    trust_rows: document.querySelectorAll('.chorus-trust tr[data-agent]').length,
    widgets: document.querySelectorAll('.custom-widget').length,
    errors: [...document.querySelectorAll('[data-mime-type="application/vnd.jupyter.stderr"], .jp-OutputArea-output pre')].map(e => e.innerText.slice(0, 500)).slice(0, 5),
    text: document.body ? document.body.innerText.slice(0, 500) : null,
})"""
"""What a page that did not render shows instead, for the failure message."""


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
