"""Bounded pandas DataFrames built from a :class:`~chorus_lab.live.state.LiveState`.

Each call builds a fresh frame (a copy: the caller may change it freely while the session
keeps consuming). Sizes are bounded by the state's :class:`~chorus_lab.live.state.Limits`.

>>> from chorus_lab.live.state import LiveState
>>> list(trust_frame(LiveState()).columns)
['agent_id', 'trust', 'quarantined', 'messages', 'alerts', 'last_seen']
>>> len(decisions_frame(LiveState()))
0
"""

from __future__ import annotations

import pandas as pd

from chorus_lab.live.state import LiveState

DECISION_COLUMNS = [
    "timestamp", "agent_id", "message_id", "message_type", "action", "targets", "risk", "conflict_type",
    "trust_before", "trust_after", "trust_delta", "intervention", "flags", "latency_ms",
]
ALERT_COLUMNS = ["detected_at", "alert_id", "pattern", "severity", "confidence", "description", "affected_agents", "evidence"]
TRUST_COLUMNS = ["agent_id", "trust", "quarantined", "messages", "alerts", "last_seen"]
METRIC_COLUMNS = [
    "window_start", "window_end", "messages", "throughput_per_s", "latency_p50_ms", "latency_p95_ms", "errors",
    "error_rate", "consumer_lag", "conflict_rate", "alerts_new", "trust_mean", "quarantined",
]


def _timestamps(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    for column in columns:
        frame[column] = pd.to_datetime(frame[column], utc=True, errors="coerce", format="ISO8601")
    return frame


def decisions_frame(state: LiveState) -> pd.DataFrame:
    """Recent processed decisions, oldest first."""
    rows = state.decisions.values()[::-1]
    return _timestamps(pd.DataFrame(rows, columns=DECISION_COLUMNS), "timestamp")


def alerts_frame(state: LiveState) -> pd.DataFrame:
    """Recent alerts (latest version of each), newest first."""
    rows = [{k: v for k, v in row.items() if k != "_rank"} for row in state.alerts.values()]
    return _timestamps(pd.DataFrame(rows, columns=ALERT_COLUMNS), "detected_at")


def trust_frame(state: LiveState) -> pd.DataFrame:
    """One row per known agent: trust, quarantine, activity; lowest trust first."""
    alerting = state.alerting_agents()
    rows = [
        (a, i.trust, i.quarantined, i.messages, alerting.get(a, 0), i.last_seen or None)
        for a, i in state.agents.items()
    ]
    frame = pd.DataFrame(rows, columns=TRUST_COLUMNS)
    frame = _timestamps(frame, "last_seen")
    return frame.sort_values(["trust", "agent_id"], kind="stable").reset_index(drop=True)


def metrics_frame(state: LiveState) -> pd.DataFrame:
    """Metric snapshots, oldest window first."""
    rows = state.metrics.values()[::-1]
    return _timestamps(pd.DataFrame(rows, columns=METRIC_COLUMNS), "window_start", "window_end")
