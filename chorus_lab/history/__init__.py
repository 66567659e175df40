"""Event sourcing over the bus: history queries, temporal views and state replay (docs/history.md).

- :mod:`chorus_lab.history.queries` — ``query(bus, agent=…, since=…, until=…, event_types=…,
  limit=…, cursor=…) -> (DataFrame, cursor)``, reading only the partitions and offsets asked for;
- :mod:`chorus_lab.history.temporal` — trust over time, alert counts and conflict rate per window;
- :mod:`chorus_lab.history.replay` — the pipeline's state as of any time, and re-runs into
  sandbox topics;
- :mod:`chorus_lab.history.eventtime` — which timestamp a record carries.

The names below are loaded on first use, so that the processor can import
:mod:`~chorus_lab.history.eventtime` without the rest (which imports the processor).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "query": "queries", "query_all": "queries", "Cursor": "queries", "parse_time": "queries", "EVENT_TYPES": "queries",
    "trust_over_time": "temporal", "alert_counts": "temporal", "conflict_rate": "temporal",
    "state_at": "replay", "SystemState": "replay", "replay_into": "replay", "replay_outputs": "replay",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'chorus_lab.history' has no attribute {name!r}")
    return getattr(import_module(f"chorus_lab.history.{module}"), name)


__all__ = sorted(_EXPORTS)
