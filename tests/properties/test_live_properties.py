"""Properties 10 and 11 at the level of LiveSession and the dashboard widget's synced state.

Every example runs the pure pipeline over generated agent messages, produces its outputs
onto a real (embedded) bus under a fresh topic prefix, and watches what running sessions
and dashboards show. The test never calls into a session or a widget to make it update:
it only reads widget traits, waiting (with a deadline) for the stream to arrive.
"""

from __future__ import annotations

import re
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chorus_lab import config
from chorus_lab.bus import Bus, open_bus
from chorus_lab.live import LiveSession, OperatorDashboard
from chorus_lab.live.feed import OutRecord, create_live_topics, pipeline_records, produce_records
from chorus_lab.schema import AgentMessage, ProcessedDecision, decode
from tests.properties.fleet import msg

AGENTS = [f"ag-{i}" for i in range(8)]
ACTIONS = [None, "delegate", "forward", "request_resource", "grant", "deny", "release", "claim", "status"]
PARTITIONS = 3
WAIT_S = 20.0

COUNTS = re.compile(r'data-(\w+)="(\d+)"')
TRUST_ROW = re.compile(r'<tr data-agent="([^"]+)" data-trust="([^"]+)" data-quarantined="([01])"')


@pytest.fixture(scope="module")
def shared_bus() -> Iterator[Bus]:
    """One embedded bus for every example of the module; each example uses its own topics."""
    with tempfile.TemporaryDirectory(prefix="chorus-live-props-") as directory:
        bus = open_bus(f"embedded://{directory}/bus")
        yield bus
        bus.close()


@st.composite
def event_streams(draw: st.DrawFn) -> list[AgentMessage]:
    """A few dozen messages between eight agents, in event-time order."""
    out, t = [], 0.0
    for i in range(draw(st.integers(1, 25))):
        t += draw(st.floats(0.0, 30.0))
        sender = draw(st.sampled_from(AGENTS))
        targets = draw(st.lists(st.sampled_from([a for a in AGENTS if a != sender]), min_size=1, max_size=3, unique=True))
        action = draw(st.sampled_from(ACTIONS))
        content = {"action": action, "resource": "gpu", "task_id": "t1"} if action else {"text": "hi"}
        kind = draw(st.sampled_from(["request", "response", "broadcast"]))
        out.append(msg(sender, targets, f"m{i}", t, kind, "c1", f"m{i - 1}" if i and action in ("delegate", "forward") else None, **content))
    return out


def counts(dash: OperatorDashboard) -> dict[str, int]:
    return {name: int(value) for name, value in COUNTS.findall(dash.state_html.value)}


def trust_rows(dash: OperatorDashboard) -> dict[str, tuple[str, str]]:
    return {agent: (trust, quarantined) for agent, trust, quarantined in TRUST_ROW.findall(dash.trust_html.value)}


def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.02)


def expected_trust(records: list[OutRecord]) -> dict[str, str]:
    """Each agent's trust after its last decision, as the pipeline computed it."""
    trust: dict[str, str] = {}
    for record in records:
        if record.topic.endswith(config.DECISIONS):
            decision = decode(ProcessedDecision, record.value)
            trust[decision.original_message.agent_id] = f"{decision.trust_impact.after:.1f}"
    return trust


def fresh(bus: Bus) -> str:
    prefix = f"p{uuid.uuid4().hex[:10]}-"
    create_live_topics(bus, topic_prefix=prefix, partitions=PARTITIONS)
    return prefix


def open_dashboard(bus: Bus, prefix: str) -> OperatorDashboard:
    return OperatorDashboard(LiveSession(bus=bus, topic_prefix=prefix, refresh_s=0.05, replay_records=100_000))


# Feature: real-time-data-flow, Property 10: For any event streaming through Kafka, dashboard metrics should update in real-time without requiring polling
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(messages=event_streams())
def test_dashboard_state_follows_the_stream_by_itself(shared_bus: Bus, messages: list[AgentMessage]) -> None:
    prefix = fresh(shared_bus)
    dash = open_dashboard(shared_bus, prefix)
    try:
        assert dash.session.wait_until_caught_up(WAIT_S)
        before = counts(dash)
        assert before["version"] == 0 and before["agents"] == 0
        empty_plots = dash.metrics_html.value
        records = list(pipeline_records(messages, topic_prefix=prefix, partitions=PARTITIONS))
        produce_records(shared_bus, records)
        # Only the widget's synced traits are read from here on: the session pushes.
        wait_for(lambda: counts(dash)["version"] == len(records), f"version {len(records)} on the page")
        shown = counts(dash)
        wanted = expected_trust(records)
        assert shown["decisions"] == sum(1 for r in records if r.topic.endswith(config.DECISIONS))
        assert shown["agents"] >= len(wanted)
        rows = trust_rows(dash)
        assert {agent: rows[agent][0] for agent in wanted} == wanted
        assert dash.graph.node_ids, "a stream with decisions draws agents in the graph"
        snapshots = sum(1 for r in records if r.topic.endswith(config.METRICS))
        assert (dash.metrics_html.value != empty_plots) == (snapshots > 0), "metric plots follow the metrics topic"
    finally:
        dash.close()
    assert not dash.session.running, "closing the only dashboard stops its consumer"


# Feature: real-time-data-flow, Property 11: For any dashboard update, all connected users should receive synchronized real-time updates
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(messages=event_streams(), split=st.floats(0.0, 1.0))
def test_every_viewer_converges_to_the_same_state(shared_bus: Bus, messages: list[AgentMessage], split: float) -> None:
    prefix = fresh(shared_bus)
    records = list(pipeline_records(messages, topic_prefix=prefix, partitions=PARTITIONS))
    cut = int(len(records) * split)
    early = [open_dashboard(shared_bus, prefix), open_dashboard(shared_bus, prefix)]
    dashboards = list(early)
    try:
        produce_records(shared_bus, records[:cut])
        dashboards.append(open_dashboard(shared_bus, prefix))  # a viewer who connects late
        produce_records(shared_bus, records[cut:])
        for dash in dashboards:
            wait_for(lambda dash=dash: counts(dash)["version"] == len(records), f"all {len(records)} records on every page")
        first, *others = dashboards
        for other in others:
            assert other.session.fingerprint() == first.session.fingerprint()
            assert other.state_html.value == first.state_html.value
            assert other.trust_html.value == first.trust_html.value
            assert other.alerts_html.value == first.alerts_html.value
            assert other.metrics_html.value == first.metrics_html.value
            assert [(n.data["id"], n.classes) for n in other.graph.cyto.graph.nodes] == [
                (n.data["id"], n.classes) for n in first.graph.cyto.graph.nodes
            ]
    finally:
        for dash in dashboards:
            dash.close()
