"""Temporal queries (R6.5): how an agent's trust, the alerts and the conflict rate evolved.

Pure functions over a :func:`chorus_lab.history.queries.query` frame, so a notebook can
query once and look at the same rows several ways; each takes the frame and returns a
new one indexed by time.

>>> import pandas as pd
>>> frame = pd.DataFrame({"time": pd.to_datetime([0, 60_000, 4_000_000], unit="ms", utc=True),
...                       "event_type": ["request", "request", "alert"], "agent_id": ["a", "a", "a"],
...                       "trust_after": [90.0, 80.0, None], "conflict_type": ["none", "denial", None],
...                       "pattern": [None, None, "quarantine"]})
>>> conflict_rate(frame, "1h")["rate"].tolist()
[0.5]
>>> alert_counts(frame, "1h").to_dict("records")
[{'quarantine': 1}]
>>> trust_over_time(frame, "a")["trust"].tolist()
[90.0, 80.0]
"""

from __future__ import annotations

import pandas as pd

from chorus_lab.history.queries import ALERT


def trust_over_time(frame: pd.DataFrame, agent: str) -> pd.DataFrame:
    """The agent's trust after each of its decisions: columns ``time``, ``trust``."""
    decisions = frame[(frame["event_type"] != ALERT) & (frame["agent_id"] == agent)]
    return pd.DataFrame({"time": decisions["time"].to_numpy(), "trust": decisions["trust_after"].astype(float).to_numpy()})


def alert_counts(frame: pd.DataFrame, window: str = "1h") -> pd.DataFrame:
    """Alerts per time window (rows) and pattern (columns); windows without alerts are left out."""
    alerts = frame[frame["event_type"] == ALERT]
    if alerts.empty:
        return pd.DataFrame()
    counts = alerts.groupby([pd.Grouper(key="time", freq=window), "pattern"]).size().unstack(fill_value=0)
    counts.columns.name = None
    return counts[counts.sum(axis=1) > 0]


def conflict_rate(frame: pd.DataFrame, window: str = "1h") -> pd.DataFrame:
    """Per window: ``decisions``, ``conflicts`` (a conflict type other than ``none``) and their ``rate``."""
    decisions = frame[frame["event_type"] != ALERT].assign(conflict=lambda f: f["conflict_type"].fillna("none") != "none")
    if decisions.empty:
        return pd.DataFrame(columns=["decisions", "conflicts", "rate"])
    grouped = decisions.groupby(pd.Grouper(key="time", freq=window))["conflict"].agg(["size", "sum"])
    grouped = grouped[grouped["size"] > 0]
    result = pd.DataFrame({"decisions": grouped["size"].astype(int), "conflicts": grouped["sum"].astype(int)})
    result["rate"] = result["conflicts"] / result["decisions"]
    return result


__all__ = ["alert_counts", "conflict_rate", "trust_over_time"]
