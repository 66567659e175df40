"""Record timestamps: the event time of what a record is about, kept inside what a broker accepts.

Stage 1 stamps each decision and alert with the event time of the message (or detection
signal) it comes from, so that ``offsets_for_time`` and the history queries' ``since`` /
``until`` speak about when things happened, not about when the processor got to them.

Two limits bend that rule, each for a reason a broker imposes:

- **ahead of the clock**: Kafka (3.6+, so 4.x) rejects a record whose timestamp is more
  than ``log.message.timestamp.after.max.ms`` (1 hour by default) in the future with
  ``INVALID_TIMESTAMP``, which would fail the whole transaction again and again. A
  timestamp more than :data:`MAX_AHEAD_MS` (50 minutes, under the default with room for
  broker clock skew) ahead of the processor's clock is set to that bound;
- **behind the clock**: retention deletes by record timestamp, so a record stamped with an
  event time older than its topic's retention (a replayed old fleet, say) would be deleted
  by the next retention pass and vanish from the audit trail. A timestamp more than
  :data:`MAX_BEHIND_MS` (7 days, below every default retention of the audited topics) in
  the past is set to that bound.

The decision itself always keeps the exact event time (``original_message.timestamp``).

>>> now = 1_800_000_000_000
>>> record_timestamp_ms(now - 5_000, now) == now - 5_000
True
>>> record_timestamp_ms(now + 2 * 3600_000, now) == now + MAX_AHEAD_MS
True
"""

from __future__ import annotations

from datetime import datetime

MAX_AHEAD_MS = 50 * 60 * 1000
MAX_BEHIND_MS = 7 * 24 * 3600 * 1000


def to_ms(when: datetime) -> int:
    """Milliseconds since the epoch of an aware datetime.

    >>> from datetime import UTC
    >>> to_ms(datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC))
    1000
    """
    if when.tzinfo is None:
        raise ValueError(f"{when.isoformat()} has no time zone; use UTC")
    return int(when.timestamp() * 1000)


def record_timestamp_ms(event_ms: int, now_ms: int, *, max_ahead_ms: int = MAX_AHEAD_MS, max_behind_ms: int = MAX_BEHIND_MS) -> int:
    """The timestamp for a record about an event at ``event_ms``, written at ``now_ms``."""
    return min(max(event_ms, now_ms - max_behind_ms), now_ms + max_ahead_ms)
