"""Stream analytics: fixed-interval metrics snapshots, a forecast, and queries over history.

:class:`MetricsAggregator` is fed processed decisions (and the alerts and errors the
shell saw) and, each time event time passes the end of an interval of ``interval_s``
seconds (aligned to multiples of it), emits one **metrics snapshot**: a JSON-able dict
for the ``analytics-metrics`` topic (key: ``"snapshot"``). No wall clock is read: the
intervals are in event time, so a replay yields the same snapshots. Snapshots are kept
in a bounded history for temporal queries (:meth:`~MetricsAggregator.history`,
:meth:`~MetricsAggregator.series`, :meth:`~MetricsAggregator.at`,
:meth:`~MetricsAggregator.evolution`).

Fields of a snapshot (``docs/detection.md`` has the full table):

- ``window_start``, ``window_end`` (ISO-8601), ``interval_s``
- ``messages``, ``throughput_per_s``, ``late`` (messages older than the window)
- ``latency_ms``: ``count, mean, p50, p95, p99, max`` of stage 1's ``latency_ms``
- ``errors``: ``count, rate`` (errors / (messages + errors)), ``by_kind``;
  ``warnings``: ``count, rate`` (decisions flagged ``content_warning``/``ledger_warning``)
- ``consumer_lag``: as last passed in (``{"total": n, ...}``), or null
- ``stages``: mean ms per message per stage (``stage1`` from the decisions' processing
  metadata; ``bus``, ``stage2`` … as the shell passes them); ``bottleneck``: the slowest
  processing stage (waiting stages such as ``bus`` are shown but never named)
- ``trust``: ``agents, mean, median, p10, min, histogram`` (ten buckets of width 10),
  ``below_quarantine``, ``quarantined``
- ``conflicts``: ``requests, predicted, predicted_rate, mean_risk, denials, refused,
  conflict_rate`` ((denials + refused) / requests)
- ``alerts``: ``new, updates, by_pattern``
- ``interventions``: ``quarantines, releases, throttles, effectiveness`` (incidents
  involving an agent in ``effectiveness_window_s`` before vs after its quarantine)
- ``forecast``: ``horizon_s`` and, for ``throughput_per_s`` and ``conflict_rate``, Holt's
  linear-trend ``value, low, high`` (a ``confidence`` prediction interval)
- ``graph``: the latest graph snapshot, when the caller passes one

>>> from datetime import datetime, timedelta, UTC
>>> agg = MetricsAggregator(MetricsConfig(interval_s=10))
>>> t0 = datetime(2026, 1, 1, tzinfo=UTC)
>>> agg.observe_error(t0, "decode")
[]
>>> [s["errors"]["count"] for s in agg.advance(t0 + timedelta(seconds=25))]
[1, 0]
>>> [s["window_start"] for s in agg.history()]
['2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:10.000000Z']
"""

from __future__ import annotations

import bisect
import math
import random
import statistics
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from chorus_lab.patterns.common import BoundedDict
from chorus_lab.schema import Alert, ProcessedDecision, format_timestamp

SNAPSHOT_VERSION = 1

PROCESSING_FIELDS = ("latency_ms", "consumer_lag", "stages", "bottleneck")
"""Snapshot fields built from wall-clock observations of the shell (like a decision's
``processing_metadata``): a replay of the same input may differ in these and only these."""

WAITING_STAGES = frozenset({"bus"})
"""Stages in ``stages`` that measure waiting (a decision sitting in a topic), not work: they
grow *because* a stage downstream is slow, so they are never named the ``bottleneck``."""


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Interval, history and forecast settings."""

    interval_s: float = 10.0
    """Length of one metrics window in event time."""
    max_history: int = 8_640
    """Snapshots kept for temporal queries (a day at 10 s)."""
    latency_samples: int = 4_096
    """Latencies kept per window (a deterministic reservoir beyond this)."""
    max_agents: int = 100_000
    """Agents whose latest trust and incidents are remembered."""
    max_catchup: int = 60
    """Empty windows emitted at most when event time jumps; the rest are skipped (counted)."""
    quarantine_threshold: float = 30.0
    """Trust below which ``trust.below_quarantine`` counts an agent (the engine's default)."""
    effectiveness_window_s: float = 600.0
    """Incidents counted this long before and after a quarantine."""
    forecast_horizon: int = 6
    """Windows ahead the forecast looks (60 s at the default interval)."""
    holt_alpha: float = 0.5
    holt_beta: float = 0.2
    forecast_confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {self.interval_s!r}")
        for name in ("max_history", "latency_samples", "max_agents", "max_catchup", "forecast_horizon"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if not (0 < self.holt_alpha <= 1 and 0 <= self.holt_beta <= 1):
            raise ValueError("holt_alpha must be within (0, 1] and holt_beta within [0, 1]")
        if not 0 < self.forecast_confidence < 1:
            raise ValueError("forecast_confidence must be within (0, 1)")


@dataclass(slots=True)
class Holt:
    """Holt's linear trend (double exponential smoothing) with a prediction interval.

    >>> h = Holt(0.5, 0.2)
    >>> for y in (10, 12, 14, 16):
    ...     h.update(y)
    >>> value, low, high = h.forecast(1, 1.96)
    >>> value, low, high
    (18.0, 18.0, 18.0)
    >>> h.update(20)
    >>> [round(x, 2) for x in h.forecast(1, 1.96)]
    [21.2, 18.43, 23.97]
    """

    alpha: float
    beta: float
    level: float | None = None
    trend: float = 0.0
    variance: float = 0.0
    count: int = 0

    def update(self, y: float) -> None:
        """Take one observation. O(1)."""
        self.count += 1
        if self.level is None:
            self.level = y
            return
        if self.count == 2:  # the usual start: level and slope from the first two points
            self.trend = y - self.level
            self.level = y
            return
        error = y - (self.level + self.trend)
        # The residual variance the interval is built on: a plain mean of squared one-step
        # errors at first, then an EWMA so it follows changes of regime.
        weight = max(self.alpha, 1.0 / (self.count - 2))
        self.variance = (1 - weight) * self.variance + weight * error * error
        self.level = self.level + self.trend + self.alpha * error
        self.trend = self.trend + self.alpha * self.beta * error

    def forecast(self, horizon: int, z: float) -> tuple[float, float, float]:
        """(value, low, high) ``horizon`` steps ahead; the spread grows with the horizon."""
        if self.level is None:
            return 0.0, 0.0, 0.0
        value = self.level + horizon * self.trend
        spread = 1.0 + sum((self.alpha * (1 + j * self.beta)) ** 2 for j in range(1, horizon))
        sd = math.sqrt(self.variance * spread)
        return value, value - z * sd, value + z * sd


@dataclass(slots=True)
class _Window:
    start: float
    messages: int = 0
    late: int = 0
    latencies: list[float] = field(default_factory=list)
    latency_count: int = 0
    latency_sum: float = 0.0
    latency_max: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    warnings: int = 0
    stages: dict[str, list[float]] = field(default_factory=dict)
    """stage -> [total ms, messages]"""
    requests: int = 0
    predicted: int = 0
    risk_sum: float = 0.0
    denials: int = 0
    refused: int = 0
    alerts_new: dict[str, int] = field(default_factory=dict)
    alert_updates: int = 0
    quarantines: int = 0
    releases: int = 0
    throttles: int = 0
    rng: random.Random | None = None
    """Reservoir sampling of latencies, seeded by the window: deterministic on replay."""


@dataclass(slots=True)
class _Effect:
    """Totals of incidents before/after evaluated quarantines."""

    before: int = 0
    after: int = 0
    evaluated: int = 0
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=20))


class MetricsAggregator:
    """Event-time windows of fleet and pipeline metrics; bounded history; forecasts."""

    def __init__(self, config: MetricsConfig | None = None) -> None:
        self.config = config or MetricsConfig()
        self._window: _Window | None = None
        self._history: deque[dict[str, Any]] = deque(maxlen=self.config.max_history)
        self._starts: deque[float] = deque(maxlen=self.config.max_history)
        self._ends: deque[float] = deque(maxlen=self.config.max_history)
        self._graph: dict[str, Any] | None = None
        self._trust: BoundedDict[str, float] = BoundedDict(self.config.max_agents)
        self._quarantined: set[str] = set()
        self._incidents: BoundedDict[str, deque[float]] = BoundedDict(self.config.max_agents)
        self._pending_quarantines: deque[tuple[str, float]] = deque(maxlen=10_000)
        self._effect = _Effect()
        self._throughput = Holt(self.config.holt_alpha, self.config.holt_beta)
        self._conflict_rate = Holt(self.config.holt_alpha, self.config.holt_beta)
        self._lag: Any = None
        self.skipped_windows = 0
        self.watermark: float | None = None

    # ------------------------------------------------------------------ inputs

    def observe(self, decision: ProcessedDecision, stage_ms: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
        """Count one processed decision; returns the snapshots of windows it closed. O(1)."""
        message = decision.original_message
        now = message.timestamp.timestamp()
        closed = self._advance(now)
        window = self._current(now)
        window.messages += 1
        if now < window.start:
            window.late += 1
        meta = decision.processing_metadata
        self._latency(window, meta.latency_ms)
        self._stage(window, "stage1", stage1_ms(decision))
        for stage, ms in (stage_ms or {}).items():
            self._stage(window, stage, ms)
        if "content_warning" in meta.flags or "ledger_warning" in meta.flags:
            window.warnings += 1
        trust = decision.trust_impact
        self._trust[trust.agent_id] = trust.after
        action = message.content.get("action") if isinstance(message.content, dict) else None
        if action == "request_resource":
            window.requests += 1
            window.risk_sum += decision.conflict_analysis.risk
            if decision.conflict_analysis.conflict_type != "none":
                window.predicted += 1
            if "refused" in meta.flags:
                window.refused += 1
        elif action == "deny":
            window.denials += len(set(message.target_agents))
        intervention = decision.intervention_action
        if intervention is not None:
            self._intervention(window, intervention.action, intervention.agent_id, now)
        return closed

    def observe_alert(self, alert: Alert) -> None:
        """Count an alert; a new one (not an update) is an incident for each affected agent."""
        now = alert.detected_at.timestamp()
        window = self._current(now)
        if alert.details.get("update", 0):
            window.alert_updates += 1
            return
        window.alerts_new[alert.pattern] = window.alerts_new.get(alert.pattern, 0) + 1
        if alert.pattern == "quarantine":
            return  # the intervention itself, not an incident it should prevent
        for agent in alert.affected_agents:
            times = self._incidents.get(agent)
            if times is None:
                times = self._incidents[agent] = deque(maxlen=256)
            times.append(now)

    def observe_error(self, when: datetime, kind: str) -> list[dict[str, Any]]:
        """Count a message that failed (``kind``: decode, validation, processing …)."""
        now = when.timestamp()
        closed = self._advance(now)
        window = self._current(now)
        window.errors[kind] = window.errors.get(kind, 0) + 1
        return closed

    def observe_stages(self, stage_ms: Mapping[str, float]) -> None:
        """Add per-stage times the shell measured after the decision was observed (e.g. its
        own time, ``{"stage2": 0.4}``) to the current window. Closes no window. O(stages)."""
        if self._window is None:
            return  # nothing observed yet: there is no decision these times belong to
        for stage, ms in stage_ms.items():
            self._stage(self._window, stage, ms)

    def set_consumer_lag(self, lag: Any) -> None:
        """Record the consumer lag the shell measured (shown by the current window's snapshot)."""
        self._lag = lag

    def advance(
        self,
        when: datetime,
        *,
        consumer_lag: Any = None,
        graph: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Close every window that ends at or before ``when``; return their snapshots.

        ``consumer_lag`` (e.g. ``{"total": 1200, "by_partition": {...}}``) is recorded for
        the current window; ``graph`` (a ``GraphSnapshot.to_dict()``) goes into the
        snapshots closed now.
        """
        if consumer_lag is not None:
            self._lag = consumer_lag
        if graph is not None:
            self._graph = dict(graph)
        return self._advance(when.timestamp())

    # ------------------------------------------------------------------ queries

    def history(self, start: datetime | None = None, end: datetime | None = None) -> list[dict[str, Any]]:
        """Snapshots whose window ends within [start, end], oldest first. O(log n + k)."""
        lo, hi = self._range(start, end)
        return [self._history[i] for i in range(lo, hi)]

    def series(self, path: str, start: datetime | None = None, end: datetime | None = None) -> list[tuple[str, Any]]:
        """(window_end, value) for a dotted field path, e.g. ``"latency_ms.p95"``."""
        return [(s["window_end"], _get(s, path)) for s in self.history(start, end)]

    def at(self, when: datetime) -> dict[str, Any] | None:
        """The snapshot of the window containing ``when``, if it is still in the history."""
        now = when.timestamp()
        i = bisect.bisect_right(list(self._ends), now)
        if i < len(self._history) and self._starts[i] <= now:
            return self._history[i]
        return None

    def evolution(self, path: str, start: datetime | None = None, end: datetime | None = None) -> dict[str, Any]:
        """How a metric evolved over a time range: first, last, min, max, mean, change, slope per window."""
        values = [v for _, v in self.series(path, start, end) if isinstance(v, int | float) and not isinstance(v, bool)]
        if not values:
            return {"path": path, "points": 0}
        n = len(values)
        slope = 0.0
        if n > 1:
            mean_x, mean_y = (n - 1) / 2, sum(values) / n
            slope = sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values)) / sum((i - mean_x) ** 2 for i in range(n))
        return {
            "path": path,
            "points": n,
            "first": values[0],
            "last": values[-1],
            "min": min(values),
            "max": max(values),
            "mean": sum(values) / n,
            "change": values[-1] - values[0],
            "slope_per_window": slope,
        }

    def trust_scores(self) -> dict[str, float]:
        """The latest trust score of every remembered agent."""
        return dict(self._trust)

    # ------------------------------------------------------------------ windows

    def _current(self, now: float) -> _Window:
        if self._window is None:
            self._window = _Window(self._align(now))
        return self._window

    def _align(self, now: float) -> float:
        return math.floor(now / self.config.interval_s) * self.config.interval_s

    def _advance(self, now: float) -> list[dict[str, Any]]:
        self.watermark = now if self.watermark is None else max(self.watermark, now)
        interval = self.config.interval_s
        closed: list[dict[str, Any]] = []
        window = self._window
        if window is None:
            return closed
        emitted = 0
        while now >= window.start + interval:
            if emitted < self.config.max_catchup or window.messages or window.errors:
                closed.append(self._close(window))
                emitted += 1
                start = window.start + interval
            else:  # a long silence: skip ahead instead of emitting empty windows one by one
                start = self._align(now)
                self.skipped_windows += int((start - window.start) / interval)
            window = _Window(start)
        self._window = window
        return closed

    def _latency(self, window: _Window, ms: float) -> None:
        window.latency_count += 1
        window.latency_sum += ms
        window.latency_max = max(window.latency_max, ms)
        limit = self.config.latency_samples
        if len(window.latencies) < limit:
            window.latencies.append(ms)
            return
        if window.rng is None:
            window.rng = random.Random(f"{self.config.seed}:{window.start}")
        slot = window.rng.randrange(window.latency_count)
        if slot < limit:
            window.latencies[slot] = ms

    def _stage(self, window: _Window, stage: str, ms: float) -> None:
        total = window.stages.get(stage)
        if total is None:
            window.stages[stage] = [ms, 1]
        else:
            total[0] += ms
            total[1] += 1

    def _intervention(self, window: _Window, action: str, agent: str, now: float) -> None:
        if action == "quarantine":
            window.quarantines += 1
            self._quarantined.add(agent)
            self._pending_quarantines.append((agent, now))
        elif action == "release":
            window.releases += 1
            self._quarantined.discard(agent)
        elif action == "throttle":
            window.throttles += 1

    # ------------------------------------------------------------------ snapshot

    def _close(self, window: _Window) -> dict[str, Any]:
        config = self.config
        end = window.start + config.interval_s
        errors = sum(window.errors.values())
        throughput = window.messages / config.interval_s
        conflicts = window.denials + window.refused
        conflict_rate = conflicts / window.requests if window.requests else 0.0
        self._throughput.update(throughput)
        self._conflict_rate.update(conflict_rate)
        stages = {name: total / count for name, (total, count) in sorted(window.stages.items()) if count}
        snapshot: dict[str, Any] = {
            "kind": "metrics_snapshot",
            "version": SNAPSHOT_VERSION,
            "window_start": _iso(window.start),
            "window_end": _iso(end),
            "interval_s": config.interval_s,
            "messages": window.messages,
            "throughput_per_s": throughput,
            "late": window.late,
            "latency_ms": latency_summary(window.latencies, window.latency_count, window.latency_sum, window.latency_max),
            "errors": {
                "count": errors,
                "rate": errors / (window.messages + errors) if window.messages + errors else 0.0,
                "by_kind": dict(sorted(window.errors.items())),
            },
            "warnings": {"count": window.warnings, "rate": window.warnings / window.messages if window.messages else 0.0},
            "consumer_lag": self._lag,
            "stages": stages,
            "bottleneck": bottleneck(stages),
            "trust": self._trust_distribution(),
            "conflicts": {
                "requests": window.requests,
                "predicted": window.predicted,
                "predicted_rate": window.predicted / window.requests if window.requests else 0.0,
                "mean_risk": window.risk_sum / window.requests if window.requests else 0.0,
                "denials": window.denials,
                "refused": window.refused,
                "conflict_rate": conflict_rate,
            },
            "alerts": {
                "new": sum(window.alerts_new.values()),
                "updates": window.alert_updates,
                "by_pattern": dict(sorted(window.alerts_new.items())),
            },
            "interventions": {
                "quarantines": window.quarantines,
                "releases": window.releases,
                "throttles": window.throttles,
                "effectiveness": self._effectiveness(end),
            },
            "forecast": self._forecast(),
            "graph": self._graph,
        }
        self._history.append(snapshot)
        self._starts.append(window.start)
        self._ends.append(end)
        return snapshot

    def _trust_distribution(self) -> dict[str, Any]:
        scores = sorted(self._trust.values())
        histogram = [0] * 10
        for score in scores:
            histogram[min(9, int(score // 10))] += 1
        if not scores:
            return {"agents": 0, "mean": None, "median": None, "p10": None, "min": None, "histogram": histogram, "below_quarantine": 0, "quarantined": len(self._quarantined)}
        return {
            "agents": len(scores),
            "mean": statistics.fmean(scores),
            "median": statistics.median(scores),
            "p10": scores[min(len(scores) - 1, int(0.1 * len(scores)))],
            "min": scores[0],
            "histogram": histogram,
            "below_quarantine": bisect.bisect_left(scores, self.config.quarantine_threshold),
            "quarantined": len(self._quarantined),
        }

    def _effectiveness(self, now: float) -> dict[str, Any]:
        window = self.config.effectiveness_window_s
        effect = self._effect
        while self._pending_quarantines and self._pending_quarantines[0][1] + window <= now:
            agent, at = self._pending_quarantines.popleft()
            times = self._incidents.get(agent, deque())
            before = sum(1 for t in times if at - window <= t < at)
            after = sum(1 for t in times if at < t <= at + window)
            effect.before += before
            effect.after += after
            effect.evaluated += 1
            effect.recent.append({"agent": agent, "quarantined_at": _iso(at), "before": before, "after": after})
        return {
            "evaluated": effect.evaluated,
            "pending": len(self._pending_quarantines),
            "incidents_before": effect.before,
            "incidents_after": effect.after,
            "reduction": 1.0 - effect.after / effect.before if effect.before else None,
            "recent": list(effect.recent),
            "window_s": window,
        }

    def _forecast(self) -> dict[str, Any]:
        config = self.config
        z = statistics.NormalDist().inv_cdf(0.5 + config.forecast_confidence / 2)
        out: dict[str, Any] = {"horizon_s": config.forecast_horizon * config.interval_s, "confidence": config.forecast_confidence}
        for name, model, cap in (("throughput_per_s", self._throughput, math.inf), ("conflict_rate", self._conflict_rate, 1.0)):
            value, low, high = model.forecast(config.forecast_horizon, z)
            out[name] = {
                "value": min(cap, max(0.0, value)),
                "low": min(cap, max(0.0, low)),
                "high": min(cap, max(0.0, high)),
                "points": model.count,
            }
        return out

    def _range(self, start: datetime | None, end: datetime | None) -> tuple[int, int]:
        ends = list(self._ends)
        lo = 0 if start is None else bisect.bisect_left(ends, start.timestamp())
        hi = len(ends) if end is None else bisect.bisect_right(ends, end.timestamp())
        return lo, hi


def stage1_ms(decision: ProcessedDecision) -> float:
    """Stage 1's time for one message: from reading it (``received_at``, the start of its
    batch) to its decision (``processed_at``), in ms; never negative.

    Not ``latency_ms``, which also counts the time the message waited in the raw topic.
    """
    meta = decision.processing_metadata
    return max(0.0, (meta.processed_at - meta.received_at).total_seconds() * 1000)


def bottleneck(stages: Mapping[str, float]) -> str | None:
    """The slowest processing stage by mean ms per message (ties: the later name), or None.

    Waiting stages (:data:`WAITING_STAGES`) are left out: a decision waits in the bus
    because the stage reading it is slow, not the other way round.

    >>> bottleneck({"bus": 40.0, "stage1": 2.0, "stage2": 5.0})
    'stage2'
    >>> bottleneck({"bus": 3.0}) is None
    True
    """
    working = {name: ms for name, ms in stages.items() if name not in WAITING_STAGES}
    return max(working, key=lambda name: (working[name], name)) if working else None


def latency_summary(samples: list[float], count: int, total: float, largest: float) -> dict[str, Any]:
    """Count, mean, nearest-rank p50/p95/p99 and max of a window's latencies.

    >>> latency_summary([5.0, 1.0, 3.0, 2.0, 4.0], 5, 15.0, 5.0)["p50"]
    3.0
    """
    if not count:
        return {"count": 0, "mean": None, "p50": None, "p95": None, "p99": None, "max": None}
    ordered = sorted(samples)
    return {
        "count": count,
        "mean": total / count,
        "p50": percentile(ordered, 50),
        "p95": percentile(ordered, 95),
        "p99": percentile(ordered, 99),
        "max": largest,
    }


def percentile(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of sorted values: the smallest value with at least p % at or below it.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50), percentile([1.0, 2.0, 3.0, 4.0], 100)
    (2.0, 4.0)
    """
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _iso(seconds: float) -> str:
    return format_timestamp(datetime.fromtimestamp(seconds, UTC))


def _get(snapshot: Mapping[str, Any], path: str) -> Any:
    value: Any = snapshot
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


__all__ = [
    "PROCESSING_FIELDS",
    "WAITING_STAGES",
    "Holt",
    "MetricsAggregator",
    "MetricsConfig",
    "bottleneck",
    "latency_summary",
    "percentile",
    "stage1_ms",
]
