"""History: cursors, times, rows, event-time stamps and temporal views (no bus needed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from chorus_lab.bus import Record
from chorus_lab.history.eventtime import MAX_AHEAD_MS, MAX_BEHIND_MS, record_timestamp_ms, to_ms
from chorus_lab.history.queries import Cursor, parse_time, query, row_of
from chorus_lab.history.temporal import alert_counts, conflict_rate, trust_over_time
from chorus_lab.pipeline import RecordMeta, Stage1, encode_decision
from chorus_lab.schema import AgentMessage, Alert, encode

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def test_record_timestamps_keep_event_time_within_the_brokers_limits() -> None:
    now = to_ms(T0)
    assert record_timestamp_ms(now - 3_600_000, now) == now - 3_600_000
    assert record_timestamp_ms(now + MAX_AHEAD_MS + 1, now) == now + MAX_AHEAD_MS
    assert record_timestamp_ms(now - MAX_BEHIND_MS - 1, now) == now - MAX_BEHIND_MS
    assert MAX_AHEAD_MS < 3_600_000  # under Kafka's default log.message.timestamp.after.max.ms
    with pytest.raises(ValueError, match="no time zone"):
        to_ms(datetime(2026, 1, 1))


def test_a_cursor_that_is_not_one_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="not a history cursor"):
        Cursor.decode("garbage")


def test_times_are_parsed_as_utc_or_refused() -> None:
    assert parse_time("2026-03-01T00:00:00") == T0
    assert parse_time("2026-03-01T01:00:00+01:00") == T0
    with pytest.raises(ValueError, match="not a time"):
        parse_time("yesterday")


def test_rows_come_from_decisions_and_alerts_and_nothing_else() -> None:
    message = AgentMessage("a-1", T0, "request", {"action": "request_resource", "resource": "gpu"}, ["s"], "c", {}, message_id="m-1")
    decision = Stage1(instance_id="t").decide(RecordMeta("raw", 0, 0, to_ms(T0), b"a-1"), message).decision
    assert decision is not None
    row = row_of(Record("d", 1, 7, b"a-1", encode_decision(decision), to_ms(T0)))
    assert row is not None and (row["agent_id"], row["event_type"], row["message_id"], row["offset"]) == ("a-1", "request", "m-1", 7)
    alert = Alert("al-1", "quarantine", "high", 0.9, "x", ["a-1", "b-2"], [], T0, {"action": "quarantine"})
    row = row_of(Record("s", 0, 3, b"a-1", encode(alert), to_ms(T0)))
    assert row is not None and (row["event_type"], row["pattern"], row["intervention"], row["affected_agents"]) == ("alert", "quarantine", "quarantine", ["a-1", "b-2"])
    assert row_of(Record("x", 0, 0, None, b"not json", 0)) is None
    assert row_of(Record("x", 0, 0, None, b'{"other": 1}', 0)) is None


def test_unknown_event_types_and_bad_limits_are_refused_before_reading() -> None:
    with pytest.raises(ValueError, match="unknown event type"):
        query(None, event_types=["decision"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit must be at least 1"):
        query(None, limit=0)  # type: ignore[arg-type]


def test_temporal_views() -> None:
    times = pd.to_datetime([to_ms(T0 + timedelta(minutes=m)) for m in (0, 10, 70, 75, 80)], unit="ms", utc=True)
    frame = pd.DataFrame({
        "time": times, "agent_id": ["a", "a", "b", "a", "b"], "event_type": ["request", "request", "response", "alert", "alert"],
        "trust_after": [90.0, 70.0, 100.0, None, None], "conflict_type": ["none", "denial", "deadlock", None, None],
        "pattern": [None, None, None, "quarantine", "routing_loop"],
    })
    assert trust_over_time(frame, "a")["trust"].tolist() == [90.0, 70.0]
    rates = conflict_rate(frame, "1h")
    assert rates["decisions"].tolist() == [2, 1] and rates["rate"].tolist() == [0.5, 1.0]
    counts = alert_counts(frame, "1h")
    assert counts.to_dict("records") == [{"quarantine": 1, "routing_loop": 1}]
    assert alert_counts(frame[frame["event_type"] != "alert"]).empty
