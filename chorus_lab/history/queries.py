"""History queries: an agent's (or the fleet's) decisions and alerts in a time range, page by page.

``query(bus, agent=…, since=…, until=…, event_types=…, limit=…, cursor=…)`` returns a
pandas DataFrame, one row per event, and a cursor for the next page (None on the last).

How it reads (never a whole topic):

- ``agent``: only the partition the agent's key hashes to (murmur2, as every producer
  places it) of ``agent-decisions-processed`` and ``system-alerts``;
- ``since``: each partition is read from ``offsets_for_time(since)`` — the first record at
  or after that time, so nothing earlier is read;
- ``until``: each partition is read up to ``offsets_for_time(until + lateness)``, capped at
  the end offset taken when the first page was asked for (kept in the cursor, so paging
  through a live topic ends). ``lateness_ms`` (default 5 minutes) is how far record
  timestamps may run backwards within a partition; records beyond it are missed at the
  ``until`` edge, never at ``since``;
- rows are filtered exactly: ``since <= time < until``, the agent (the record key, or for
  alerts also ``affected_agents``), the event type.

``time`` is the record timestamp: the event time of the message or signal a decision or
alert comes from (see :mod:`chorus_lab.history.eventtime`). Event types are the agent
message types (``request``, ``response``, ``broadcast``) for decisions and ``alert`` for
alerts.

Pages merge the partitions by ``(time, topic, partition, offset)`` heads; the cursor holds
every partition's next offset, so the next page continues exactly where this one stopped.
"""

from __future__ import annotations

import base64
import heapq
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from chorus_lab import config
from chorus_lab.bus import Bus, Consumer, Record, TopicError, TopicPartition
from chorus_lab.bus.partitioner import partition_for_key
from chorus_lab.history.eventtime import to_ms

DEFAULT_LATENESS_MS = 5 * 60 * 1000
ALERT = "alert"
EVENT_TYPES = ("request", "response", "broadcast", ALERT)

COLUMNS = [
    "time", "topic", "partition", "offset", "agent_id", "event_type", "message_id", "event_time",
    "trust_before", "trust_after", "risk", "conflict_type", "intervention",
    "alert_id", "pattern", "severity", "confidence", "affected_agents",
]


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where the next page starts (``positions``) and where reading stops (``ends``), per partition."""

    positions: dict[tuple[str, int], int]
    ends: dict[tuple[str, int], int]

    def encode(self) -> str:
        """An opaque URL-safe text.

        >>> c = Cursor({("t", 0): 5}, {("t", 0): 9})
        >>> Cursor.decode(c.encode()) == c
        True
        """
        data = {"v": 1, "p": [[t, p, o] for (t, p), o in sorted(self.positions.items())], "e": [[t, p, o] for (t, p), o in sorted(self.ends.items())]}
        return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode()

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            data = json.loads(base64.urlsafe_b64decode(text.encode()))
            if data.get("v") != 1:
                raise ValueError("unknown version")
            return cls({(t, int(p)): int(o) for t, p, o in data["p"]}, {(t, int(p)): int(o) for t, p, o in data["e"]})
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"not a history cursor: {text[:40]!r} ({exc})") from None


def _ms(value: datetime | int | None) -> int | None:
    if value is None or isinstance(value, int):
        return value
    return to_ms(value)


def parse_time(text: str) -> datetime:
    """An ISO-8601 time (``Z`` or an offset; a naive one is taken as UTC).

    >>> parse_time("2026-01-01T00:00:00Z").isoformat()
    '2026-01-01T00:00:00+00:00'
    """
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use ISO 8601, e.g. 2026-01-01T12:00:00Z)") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def row_of(record: Record) -> dict[str, Any] | None:
    """One DataFrame row for a decision or alert record (None for what is neither).

    Reads the JSON directly (no schema object), which is what makes a page cheap.
    """
    if record.value is None:
        return None
    try:
        data = json.loads(record.value)
    except ValueError:
        return None
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(time=record.timestamp_ms, topic=record.topic, partition=record.partition, offset=record.offset)
    if "original_message" in data:
        message = data["original_message"]
        trust = data.get("trust_impact") or {}
        conflict = data.get("conflict_analysis") or {}
        intervention = data.get("intervention_action") or {}
        row.update(
            agent_id=message.get("agent_id"), event_type=message.get("message_type"), message_id=message.get("message_id"),
            event_time=message.get("timestamp"), trust_before=trust.get("before"), trust_after=trust.get("after"),
            risk=conflict.get("risk"), conflict_type=conflict.get("conflict_type"), intervention=intervention.get("action"),
        )
    elif "alert_id" in data:
        agents = data.get("affected_agents") or []
        row.update(
            agent_id=(record.key or b"").decode("utf-8", "replace") or (agents[0] if agents else None), event_type=ALERT,
            event_time=data.get("detected_at"), alert_id=data.get("alert_id"), pattern=data.get("pattern"), severity=data.get("severity"),
            confidence=data.get("confidence"), affected_agents=agents, intervention=(data.get("details") or {}).get("action"),
        )
    else:
        return None
    return row


def _matches(row: dict[str, Any], agent: str | None, types: frozenset[str] | None) -> bool:
    if types is not None and row["event_type"] not in types:
        return False
    if agent is None:
        return True
    return row["agent_id"] == agent or agent in (row["affected_agents"] or ())


def plan(bus: Bus, consumer: Consumer, topics: Sequence[str], agent: str | None, since_ms: int | None, until_ms: int | None, lateness_ms: int) -> Cursor:
    """The partitions a query reads and their offset bounds (the first page's cursor)."""
    admin = bus.admin()
    positions: dict[tuple[str, int], int] = {}
    ends: dict[tuple[str, int], int] = {}
    for topic in topics:
        description = admin.describe(topic)
        if description is None:
            raise TopicError(f"topic {topic} does not exist on {bus.url}")
        wanted = [partition_for_key(agent.encode(), description.partitions)] if agent else list(range(description.partitions))
        starts = consumer.offsets_for_time(topic, since_ms) if since_ms is not None else None
        stops = consumer.offsets_for_time(topic, until_ms + lateness_ms) if until_ms is not None else None
        for p in wanted:
            low, high = consumer.watermarks(TopicPartition(topic, p))
            positions[(topic, p)] = max(low, starts[p]) if starts is not None else low
            ends[(topic, p)] = min(high, stops[p]) if stops is not None else high
    return Cursor(positions, ends)


def _partition_rows(consumer: Consumer, tp: TopicPartition, start: int, end: int, keep: Any, limit: int | None) -> Iterator[dict[str, Any]]:
    from chorus_lab.processor import read_range

    found = 0
    for record in read_range(consumer, tp, start, end):
        row = row_of(record)
        if row is not None and keep(row):
            yield row
            found += 1
            if limit is not None and found >= limit:
                return


def query(
    bus: Bus,
    *,
    agent: str | None = None,
    since: datetime | int | None = None,
    until: datetime | int | None = None,
    event_types: Iterable[str] | None = None,
    limit: int | None = 1000,
    cursor: str | None = None,
    topic_prefix: str = "",
    lateness_ms: int = DEFAULT_LATENESS_MS,
) -> tuple[pd.DataFrame, str | None]:
    """Decisions and alerts matching the criteria, oldest first, and the next page's cursor.

    ``since`` (inclusive) and ``until`` (exclusive) are aware datetimes or epoch
    milliseconds; ``limit=None`` returns every match in one frame. Pass the returned
    cursor (with the same criteria) for the next page; it is None after the last page.
    Raises ``ValueError`` for an unknown event type or a cursor that is not one.
    """
    types = None if event_types is None else frozenset(event_types)
    if types is not None and not types <= set(EVENT_TYPES):
        raise ValueError(f"unknown event type(s) {sorted(types - set(EVENT_TYPES))}; known: {', '.join(EVENT_TYPES)}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    since_ms, until_ms = _ms(since), _ms(until)
    topics = [topic_prefix + config.DECISIONS, topic_prefix + config.ALERTS]
    if types is not None:
        topics = [t for t in topics if (t.endswith(config.ALERTS) and ALERT in types) or (t.endswith(config.DECISIONS) and types - {ALERT})]
    consumer = bus.consumer(None)
    try:
        state = Cursor.decode(cursor) if cursor else plan(bus, consumer, topics, agent, since_ms, until_ms, lateness_ms)

        def keep(row: dict[str, Any]) -> bool:
            t = row["time"]
            return (since_ms is None or t >= since_ms) and (until_ms is None or t < until_ms) and _matches(row, agent, types)

        heads: list[tuple[int, str, int, int, dict[str, Any]]] = []
        for (topic, p), start in sorted(state.positions.items()):
            for row in _partition_rows(consumer, TopicPartition(topic, p), start, state.ends[(topic, p)], keep, limit):
                heads.append((row["time"], topic, p, row["offset"], row))
    finally:
        consumer.close()
    # Each partition's rows are in offset order; merging them keeps that order per partition.
    per_partition: dict[tuple[str, int], list[tuple[int, str, int, int, dict[str, Any]]]] = {}
    for item in heads:
        per_partition.setdefault((item[1], item[2]), []).append(item)
    merged = heapq.merge(*per_partition.values(), key=lambda item: item[:4])
    rows: list[dict[str, Any]] = []
    positions = dict(state.positions)
    for item in merged:
        if limit is not None and len(rows) >= limit:
            break
        rows.append(item[4])
        positions[(item[1], item[2])] = item[3] + 1
    more = limit is not None and len(rows) >= limit and any(positions[tp] < state.ends[tp] for tp in positions)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["time"] = pd.to_datetime(frame["time"], unit="ms", utc=True)
    return frame, Cursor(positions, state.ends).encode() if more else None


def query_all(bus: Bus, **criteria: Any) -> pd.DataFrame:
    """Every page of :func:`query` in one frame (for notebooks and temporal queries)."""
    frames = []
    cursor: str | None = None
    while True:
        frame, cursor = query(bus, cursor=cursor, **criteria)
        frames.append(frame)
        if cursor is None:
            return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


__all__ = ["ALERT", "COLUMNS", "DEFAULT_LATENESS_MS", "EVENT_TYPES", "Cursor", "parse_time", "plan", "query", "query_all", "row_of"]
