"""Properties 13, 14 and 15 (event sourcing) on both bus backends.

Each test creates one sandbox topic set; its Hypothesis examples append their own data,
each in its own stretch of time, so examples never see each other's events.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chorus_lab.bus import Bus
from chorus_lab.history import query_all
from chorus_lab.history.eventtime import to_ms
from chorus_lab.pipeline import RecordMeta, Stage1, encode_decision
from chorus_lab.processor import Topics
from chorus_lab.schema import AgentMessage, Alert, encode

AGENTS = ["alpha-1", "beta-2", "gamma-3", "delta-4", "eps-5"]
KINDS = ["request", "response", "broadcast", "alert"]
EXAMPLES = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
# Every example gets its own two hours, one day back, so record timestamps stay within retention.
_SLOTS = itertools.count()
_ORIGIN = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)


@pytest.fixture
def history_topics(any_bus: Bus) -> Topics:
    topics = Topics(f"h{uuid.uuid4().hex[:10]}-")
    any_bus.admin().create_topics(topics.specs(3))
    return topics


def _event_value(kind: str, agent: str, when: datetime, ident: str) -> bytes:
    if kind == "alert":
        return encode(Alert(ident, "quarantine", "high", 0.9, "test alert", [agent], [], when))
    message = AgentMessage(agent, when, kind, {"action": "status"}, [], "c", {}, message_id=ident)  # type: ignore[arg-type]
    out = Stage1(instance_id="gen").decide(RecordMeta("raw", 0, 0, to_ms(when), agent.encode()), message)
    assert out.decision is not None
    return encode_decision(out.decision)


events_strategy = st.lists(
    st.tuples(st.sampled_from(AGENTS), st.sampled_from(KINDS), st.integers(0, 59 * 60), st.integers(0, 120)),
    min_size=0, max_size=14,
)


# Feature: real-time-data-flow, Property 15: For any query criteria (agent, time range, event type), the system should return matching historical events
@EXAMPLES
@given(
    events=events_strategy,
    agent=st.none() | st.sampled_from(AGENTS),
    window=st.tuples(st.integers(0, 70), st.integers(0, 70)).map(sorted),
    types=st.none() | st.sets(st.sampled_from(KINDS), min_size=1),
    limit=st.none() | st.integers(1, 6),
)
def test_queries_return_exactly_the_matching_events(
    any_bus: Bus, history_topics: Topics, events: list[tuple[str, str, int, int]], agent: str | None,
    window: list[int], types: set[str] | None, limit: int | None,
) -> None:
    """Whatever the agent, time range, event types and page size, the pages together hold
    exactly the stored events that match, each once."""
    base = _ORIGIN + timedelta(hours=2 * next(_SLOTS))
    producer = any_bus.producer()
    stored = []
    # Appended in time order with up to 2 minutes of disorder (under the query's lateness).
    for i, (who, kind, second, jitter) in enumerate(sorted(events, key=lambda e: e[2])):
        when = base + timedelta(seconds=second - jitter)
        ident = f"{uuid.uuid4().hex[:8]}-{i}"
        topic = history_topics.alerts if kind == "alert" else history_topics.decisions
        producer.produce(topic, _event_value(kind, who, when, ident), who.encode(), timestamp_ms=to_ms(when))
        stored.append((who, kind, to_ms(when), ident))
    assert producer.flush(30) == 0
    producer.close()
    since, until = base + timedelta(minutes=window[0]), base + timedelta(minutes=window[1])

    frame = query_all(any_bus, agent=agent, since=since, until=until, event_types=types, limit=limit, topic_prefix=history_topics.prefix)

    expected = sorted(
        (who, kind, ms, ident) for who, kind, ms, ident in stored
        if to_ms(since) <= ms < to_ms(until) and (agent is None or who == agent) and (types is None or kind in types)
    )
    ids = frame["message_id"].where(frame["event_type"] != "alert", frame["alert_id"])
    got = sorted(zip(frame["agent_id"], frame["event_type"], (t.value // 1_000_000 for t in frame["time"]), ids, strict=True))
    assert got == expected
