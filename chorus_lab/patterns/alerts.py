"""The alert builder: detector findings in, one alert per incident (plus updates) out.

Detectors report :class:`Finding` s, as often as their evidence changes. A finding
names its *incident* with a key (``pattern`` + ``key``: the task that loops, the agent
that hoards a resource, the root of a cascade …). :class:`AlertBuilder` turns the first
finding of an incident into an :class:`~chorus_lab.schema.Alert` and later findings of
the same incident into *updates*: alerts with the same ``alert_id`` and
``details["update"]`` counting up, emitted only when something an operator cares about
changed (confidence rose by ``min_confidence_step``, severity rose, new agents) and not
more often than ``min_update_interval_s`` of event time. An incident quiet for
``incident_ttl_s`` is closed; the next finding with its key opens a new one.

So a routing loop that goes round ten times is one alert and a few updates, not ten
alerts (REQUIREMENTS.md: one incident, one alert).

>>> from datetime import datetime, UTC
>>> t = datetime(2026, 1, 1, tzinfo=UTC)
>>> builder = AlertBuilder()
>>> f = Finding("routing_loop", "task-1", ("a", "b", "c"), 0.9, "medium",
...             "Task task-1 loops through a → b → c → a.", ("m-1", "m-2"), t)
>>> first = builder.build(f)
>>> first.alert_id, first.details["update"]
('alert-routing_loop-0003d0c80170d311', 0)
>>> builder.build(f) is None                    # nothing new: no flood
True
>>> update = builder.build(f.with_(confidence=0.99, severity="high"))
>>> update.alert_id == first.alert_id, update.details["update"], update.severity
(True, 1, 'high')
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from chorus_lab.patterns.common import BoundedDict
from chorus_lab.schema import Alert, Pattern, Severity

SEVERITY_RANK: Mapping[str, int] = {"info": 0, "low": 1, "medium": 2, "high": 3, "critical": 4}


@dataclass(frozen=True, slots=True)
class Finding:
    """What a detector concluded from one message. Not yet an alert."""

    pattern: Pattern
    key: str
    """Names the incident: findings with the same pattern and key are one incident."""
    agents: tuple[str, ...]
    """Affected agents, the ones to act on first."""
    confidence: float
    severity: Severity
    description: str
    evidence: tuple[str, ...]
    """Message ids, oldest first."""
    detected_at: datetime
    """Event time of the message that triggered the finding."""
    details: Mapping[str, Any] = field(default_factory=dict)
    culprits: tuple[str, ...] | None = None
    """Agents whose trust should fall (None: all of ``agents``)."""

    def with_(self, **changes: Any) -> Finding:
        """A copy with some fields changed."""
        return replace(self, **changes)

    @property
    def blamed(self) -> tuple[str, ...]:
        return self.agents if self.culprits is None else self.culprits


@dataclass(frozen=True, slots=True)
class AlertConfig:
    """How findings become alerts."""

    min_confidence_step: float = 0.05
    """An update needs the confidence to rise at least this much (or severity/agents to change)."""
    min_update_interval_s: float = 30.0
    """At most one update per incident per this much event time, unless severity rises."""
    incident_ttl_s: float = 900.0
    """An incident with no finding for this long is closed."""
    max_incidents: int = 10_000
    """Open incidents remembered; the least recently active is closed first."""
    max_evidence: int = 50
    """Message ids carried by one alert (the first ones and the latest ones)."""
    max_agents: int = 100
    """Agents listed by one alert."""

    def __post_init__(self) -> None:
        for name in ("max_incidents", "max_evidence", "max_agents"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if not 0.0 <= self.min_confidence_step <= 1.0:
            raise ValueError(f"min_confidence_step must be within 0–1, got {self.min_confidence_step!r}")


@dataclass(slots=True)
class Incident:
    """What the builder remembers of one open incident."""

    alert_id: str
    pattern: str
    key: str
    first_at: datetime
    last_seen: float
    last_emitted: float
    confidence: float
    severity: str
    agents: list[str]
    evidence: list[str]
    updates: int = 0


class AlertBuilder:
    """Dedupes findings into incidents and builds the alerts (O(evidence) per finding)."""

    def __init__(self, config: AlertConfig | None = None) -> None:
        self.config = config or AlertConfig()
        self.incidents: BoundedDict[tuple[str, str], Incident] = BoundedDict(self.config.max_incidents)
        self.closed = 0
        """Incidents closed because they went quiet (not counting evictions)."""

    def build(self, finding: Finding) -> Alert | None:
        """The alert (new or update) for ``finding``, or None when nothing worth saying changed."""
        config = self.config
        now = finding.detected_at.timestamp()
        key = (finding.pattern, finding.key)
        incident = self.incidents.get(key)
        if incident is not None and now - incident.last_seen > config.incident_ttl_s:
            del self.incidents[key]
            self.closed += 1
            incident = None
        if incident is None:
            incident = Incident(
                alert_id=alert_id_for(finding.pattern, finding.key, finding.evidence),
                pattern=finding.pattern,
                key=finding.key,
                first_at=finding.detected_at,
                last_seen=now,
                last_emitted=now,
                confidence=finding.confidence,
                severity=finding.severity,
                agents=list(dict.fromkeys(finding.agents))[: config.max_agents],
                evidence=_merge_evidence([], finding.evidence, config.max_evidence),
            )
            self.incidents[key] = incident
            return self._alert(incident, finding)

        incident.last_seen = max(incident.last_seen, now)
        self.incidents.touch(key)
        new_agents = [a for a in finding.agents if a not in incident.agents]
        incident.evidence = _merge_evidence(incident.evidence, finding.evidence, config.max_evidence)
        severity_up = SEVERITY_RANK[finding.severity] > SEVERITY_RANK[incident.severity]
        confidence_up = finding.confidence >= incident.confidence + config.min_confidence_step
        if not (severity_up or confidence_up or new_agents):
            return None
        if not severity_up and now - incident.last_emitted < config.min_update_interval_s:
            return None
        incident.agents = (incident.agents + new_agents)[: config.max_agents]
        incident.confidence = max(incident.confidence, finding.confidence)
        if severity_up:
            incident.severity = finding.severity
        incident.updates += 1
        incident.last_emitted = now
        return self._alert(incident, finding)

    def build_all(self, findings: Iterable[Finding]) -> list[tuple[Alert, Finding]]:
        """:meth:`build` for each finding; the alerts that came out, with their findings."""
        out = []
        for finding in findings:
            alert = self.build(finding)
            if alert is not None:
                out.append((alert, finding))
        return out

    def open_incidents(self, now: float) -> list[Incident]:
        """Incidents seen within ``incident_ttl_s`` of ``now`` (POSIX seconds)."""
        return [i for i in self.incidents.values() if now - i.last_seen <= self.config.incident_ttl_s]

    def _alert(self, incident: Incident, finding: Finding) -> Alert:
        details = {
            **finding.details,
            "incident_key": incident.key,
            "update": incident.updates,
            "first_detected_at": incident.first_at.isoformat(),
        }
        return Alert(
            alert_id=incident.alert_id,
            pattern=finding.pattern,
            severity=incident.severity,  # type: ignore[arg-type]
            confidence=round(incident.confidence, 4),
            description=finding.description,
            affected_agents=list(incident.agents),
            evidence=list(incident.evidence),
            detected_at=finding.detected_at,
            details=details,
        )


def alert_id_for(pattern: str, key: str, evidence: Iterable[str]) -> str:
    """A deterministic id: a replay of the same input names its alerts the same way.

    The first evidence id is part of it, so an incident that closes and later reopens
    under the same key gets a new id.
    """
    first = next(iter(evidence), "")
    digest = hashlib.sha256(f"{pattern}\x1f{key}\x1f{first}".encode()).hexdigest()[:16]
    return f"alert-{pattern}-{digest}"


def _merge_evidence(old: list[str], new: Iterable[str], limit: int) -> list[str]:
    """Old ids then new ones, without repeats; beyond ``limit`` keep the first half and the latest."""
    merged = list(dict.fromkeys([*old, *new]))
    if len(merged) <= limit:
        return merged
    head = limit // 2
    return merged[:head] + merged[len(merged) - (limit - head) :]


def severity_for(confidence: float, *, base: Severity = "medium", high_at: float = 0.9) -> Severity:
    """``base`` below ``high_at`` confidence, one step up from it (capped at critical)."""
    if confidence < high_at:
        return base
    ranks = list(SEVERITY_RANK)
    return ranks[min(SEVERITY_RANK[base] + 1, len(ranks) - 1)]  # type: ignore[return-value]


__all__ = ["AlertBuilder", "AlertConfig", "Finding", "Incident", "SEVERITY_RANK", "alert_id_for", "severity_for"]
