"""Quarantine and the other interventions: release, throttle, alert.

Rules (all thresholds in :class:`~chorus_lab.engine.config.EngineConfig`):

- **quarantine** when trust falls below ``quarantine_threshold`` (30), or at once on a
  Byzantine finding with confidence ≥ ``byzantine_quarantine_confidence`` (0.9). An agent
  already in quarantine is not quarantined again: the call is a no-op returning None.
- **release** once the probation (``probation_s``, 10 minutes of event time, from the
  quarantine) is over *and* trust is above ``release_threshold`` (50). Release is decided
  when the agent's next message or signal is processed: the core has no clock of its own.
- **throttle** when an agent sends more than ``throttle_max_messages`` within
  ``throttle_window_s``; it lasts ``throttle_duration_s`` and is not repeated meanwhile.
- **alert** when trust falls through ``alert_threshold`` (60) without reaching quarantine:
  an early warning for the operator.

>>> from datetime import datetime, timedelta, UTC
>>> policy = QuarantinePolicy()
>>> t = datetime(2026, 1, 1, tzinfo=UTC)
>>> policy.quarantine("a", "trust 20 below 30", 20.0, t).action
'quarantine'
>>> policy.quarantine("a", "again", 10.0, t + timedelta(seconds=1)) is None
True
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from chorus_lab.engine.config import EngineConfig
from chorus_lab.schema import InterventionAction, TrustScoreUpdate, format_timestamp, parse_timestamp


@dataclass(frozen=True, slots=True)
class QuarantineRecord:
    """Why and since when an agent is quarantined, and when probation ends."""

    since: datetime
    probation_until: datetime
    reason: str


class QuarantinePolicy:
    """Who is quarantined or throttled, and the rules that change it."""

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.quarantined: dict[str, QuarantineRecord] = {}
        self.throttled_until: dict[str, datetime] = {}
        self.recent: dict[str, deque[datetime]] = {}
        # Built once: observe_message runs for every message.
        self._window = timedelta(seconds=self.config.throttle_window_s)

    # ------------------------------------------------------------------ queries

    def is_quarantined(self, agent_id: str) -> bool:
        return agent_id in self.quarantined

    def is_throttled(self, agent_id: str, at: datetime) -> bool:
        until = self.throttled_until.get(agent_id)
        return until is not None and at.astimezone(UTC) < until

    # ------------------------------------------------------------------ actions

    def quarantine(
        self,
        agent_id: str,
        reason: str,
        trust_score: float,
        timestamp: datetime,
        evidence: Sequence[str] = (),
    ) -> InterventionAction | None:
        """Quarantine ``agent_id``; None (and nothing changes) if it already is."""
        if agent_id in self.quarantined:
            return None
        now = timestamp.astimezone(UTC)
        until = now + timedelta(seconds=self.config.probation_s)
        self.quarantined[agent_id] = QuarantineRecord(now, until, reason)
        return InterventionAction("quarantine", agent_id, reason, timestamp, trust_score, until, list(evidence))

    def release(
        self,
        agent_id: str,
        reason: str,
        trust_score: float,
        timestamp: datetime,
        evidence: Sequence[str] = (),
    ) -> InterventionAction | None:
        """Lift the quarantine of ``agent_id`` unconditionally; None if it is not quarantined."""
        if self.quarantined.pop(agent_id, None) is None:
            return None
        return InterventionAction("release", agent_id, reason, timestamp, trust_score, None, list(evidence))

    def evaluate(self, update: TrustScoreUpdate, *, byzantine_confidence: float | None = None) -> InterventionAction | None:
        """Apply the quarantine, release and alert rules after a trust update."""
        config = self.config
        agent, score, now = update.agent_id, update.after, update.timestamp
        record = self.quarantined.get(agent)
        if record is not None:
            if now.astimezone(UTC) >= record.probation_until and score > config.release_threshold:
                reason = (
                    f"probation over and trust recovered to {score:.1f} "
                    f"(above {config.release_threshold:g})"
                )
                return self.release(agent, reason, score, now, update.evidence)
            return None
        if byzantine_confidence is not None and byzantine_confidence >= config.byzantine_quarantine_confidence:
            reason = f"Byzantine behaviour detected with confidence {byzantine_confidence:.2f}"
            return self.quarantine(agent, reason, score, now, update.evidence)
        if score < config.quarantine_threshold:
            reason = f"trust {score:.1f} fell below the quarantine threshold {config.quarantine_threshold:g}"
            return self.quarantine(agent, reason, score, now, update.evidence)
        if update.before >= config.alert_threshold > score:
            reason = f"trust fell from {update.before:.1f} to {score:.1f}, below {config.alert_threshold:g}"
            return InterventionAction("alert", agent, reason, now, score, None, list(update.evidence))
        return None

    def observe_message(
        self, agent_id: str, timestamp: datetime, trust_score: float, evidence: Sequence[str] = ()
    ) -> InterventionAction | None:
        """Count one message from ``agent_id``; throttle it if its rate is over the limit."""
        config = self.config
        now = timestamp.astimezone(UTC)
        window = self._window
        times = self.recent.get(agent_id)
        if times is None:  # not setdefault: that would build a deque per message
            times = self.recent[agent_id] = deque(maxlen=config.throttle_max_messages + 1)
        times.append(now)
        while times and now - times[0] >= window:
            times.popleft()
        if len(times) <= config.throttle_max_messages or self.is_throttled(agent_id, now):
            return None
        until = now + timedelta(seconds=config.throttle_duration_s)
        self.throttled_until[agent_id] = until
        reason = (
            f"more than {config.throttle_max_messages} messages within {config.throttle_window_s:g}s; "
            f"throttled for {config.throttle_duration_s:g}s"
        )
        return InterventionAction("throttle", agent_id, reason, timestamp, trust_score, until, list(evidence))

    # ------------------------------------------------------------------ snapshot

    def to_dict(self) -> dict[str, Any]:
        return {
            "quarantined": {
                agent: {
                    "since": format_timestamp(r.since),
                    "probation_until": format_timestamp(r.probation_until),
                    "reason": r.reason,
                }
                for agent, r in self.quarantined.items()
            },
            "throttled_until": {agent: format_timestamp(t) for agent, t in self.throttled_until.items()},
            "recent": {agent: [format_timestamp(t) for t in times] for agent, times in self.recent.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], config: EngineConfig | None = None) -> QuarantinePolicy:
        policy = cls(config)
        for agent, raw in data["quarantined"].items():
            policy.quarantined[agent] = QuarantineRecord(
                parse_timestamp(raw["since"]), parse_timestamp(raw["probation_until"]), raw["reason"]
            )
        policy.throttled_until = {agent: parse_timestamp(t) for agent, t in data["throttled_until"].items()}
        for agent, times in data["recent"].items():
            policy.recent[agent] = deque(
                (parse_timestamp(t) for t in times), maxlen=policy.config.throttle_max_messages + 1
            )
        return policy
