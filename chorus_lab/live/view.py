"""Everything one dashboard shows, computed from the live state in one pass (pure).

:func:`dashboard_view` is called under the session's lock and returns plain data
(:class:`DashboardView`); the widgets then apply it outside the lock. Two dashboards with
the same state and the same viewer options get equal views — the basis of R4.5.

>>> from chorus_lab.live.state import LiveState
>>> view = dashboard_view(LiveState(), ViewOptions())
>>> view.counts.agents, view.panel_html.startswith('<div class="chorus-agent-detail"')
(0, True)
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

from chorus_lab.live.graph_model import GraphFilters, GraphModel, graph_model
from chorus_lab.live.plots import sparkline_svg
from chorus_lab.live.render import SORT_KEYS, Counts, TrustRow, agent_panel_html, alerts_html, counts_html, trust_table_html
from chorus_lab.live.state import AgentInfo, LiveState, earliest_edge

METRIC_SERIES = (
    ("throughput_per_s", "throughput", " msg/s"),
    ("latency_p95_ms", "latency p95", " ms"),
    ("errors", "errors", ""),
    ("consumer_lag", "consumer lag", ""),
    ("conflict_rate", "conflict rate", ""),
)
"""(column, title, unit) of each metric plot."""


@dataclass(frozen=True, slots=True)
class ViewOptions:
    """The viewer's choices: graph filters, trust-list order, how much to list."""

    filters: GraphFilters = field(default_factory=GraphFilters)
    trust_sort: str = "trust"
    trust_descending: bool = False
    trust_rows: int = 200
    alert_rows: int = 50
    acknowledged: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class DashboardView:
    counts: Counts
    counts_html: str
    graph: GraphModel
    trust_html: str
    alerts_html: str
    alert_ids: list[str]
    metrics_html: str
    panel_html: str
    history: tuple[str, str]
    """(earliest, latest) event time of the graph's edges, for the time slider."""


def trust_rows(state: LiveState) -> list[TrustRow]:
    alerting = state.alerting_agents()
    return [TrustRow(a, i.trust, i.quarantined, i.messages, alerting.get(a, 0)) for a, i in state.agents.items()]


def top_trust_rows(state: LiveState, by: str = "trust", *, descending: bool = False, limit: int = 200) -> list[TrustRow]:
    """``sort_trust_rows(trust_rows(state), by, descending=descending)[:limit]``, without
    building and sorting a row for every agent (a refresh of a 10,000-agent fleet lists 200).

    >>> from chorus_lab.live.state import LiveState
    >>> state = LiveState()
    >>> for name, trust in [("b", 90.0), ("a", 20.0), ("c", 50.0)]:
    ...     state.agent(name).trust = trust
    >>> [r.agent_id for r in top_trust_rows(state, limit=2)], [r.agent_id for r in top_trust_rows(state, "agent", descending=True)]
    (['a', 'c'], ['c', 'b', 'a'])
    """
    if by not in SORT_KEYS:
        raise ValueError(f"cannot sort the trust list by {by!r}; use one of {', '.join(SORT_KEYS)}")
    alerting = state.alerting_agents()

    def key(agent: str, info: AgentInfo) -> tuple[Any, ...]:
        if by == "trust":
            return (info.trust, agent)
        if by == "messages":
            return (info.messages, agent)
        if by == "alerts":
            return (alerting.get(agent, 0), agent)
        return (agent,)

    # Keys end with the agent id, so they are unique: the n smallest are the sort's first n.
    pick = heapq.nlargest if descending else heapq.nsmallest
    agents = state.agents.items()
    first = pick(limit, (key(a, i) for a, i in agents if i.quarantined))
    rest = pick(max(0, limit - len(first)), (key(a, i) for a, i in agents if not i.quarantined))
    rows = []
    for k in first + rest:
        agent = k[-1]
        info = state.agents[agent]
        rows.append(TrustRow(agent, info.trust, info.quarantined, info.messages, alerting.get(agent, 0)))
    return rows


def metrics_html(state: LiveState) -> str:
    rows = state.metrics.values()[::-1]
    plots = [sparkline_svg([row[column] for row in rows], title=title, unit=unit) for column, title, unit in METRIC_SERIES]
    return '<div style="display:flex;flex-wrap:wrap;gap:6px">' + "".join(plots) + "</div>"


def panel_html(state: LiveState, agent: str | None) -> str:
    if agent is None:
        return agent_panel_html(None)
    info = state.agents.get(agent)
    if info is None:
        return agent_panel_html(agent, known=False)
    history = [trust for _, trust in info.trust_history]
    decisions = state.decisions.greatest(10, lambda d: d["agent_id"] == agent)
    alerts = state.alerts.greatest(10, lambda a: agent in a["affected_agents"])
    return agent_panel_html(
        agent,
        trust=info.trust,
        quarantined=info.quarantined,
        messages=info.messages,
        trust_sparkline=sparkline_svg(history, title="trust history", width=260, height=54),
        decisions=decisions,
        alerts=alerts,
        affected_paths=info.affected_paths,
    )


@dataclass(frozen=True, slots=True)
class QuickView:
    """The cheap part of a dashboard (no pass over the fleet): what the operator watches
    event by event, refreshed more often than the whole :class:`DashboardView`."""

    alerts_html: str
    alert_ids: list[str]
    panel_html: str


def quick_view(state: LiveState, options: ViewOptions) -> QuickView:
    """Alert feed and agent panel for ``options``: O(kept alerts + kept decisions), not O(agents).

    >>> from chorus_lab.live.state import LiveState
    >>> quick_view(LiveState(), ViewOptions()).alert_ids
    []
    """
    alerts = state.alerts.values()
    return QuickView(
        alerts_html=alerts_html(alerts, acknowledged=options.acknowledged, limit=options.alert_rows),
        alert_ids=[a["alert_id"] for a in alerts[: options.alert_rows] if a["alert_id"] not in options.acknowledged],
        panel_html=panel_html(state, options.filters.selected),
    )


def dashboard_view(state: LiveState, options: ViewOptions, positions: dict[str, tuple[float, float]] | None = None) -> DashboardView:
    """The whole dashboard for ``options`` (O(agents log agents + edges))."""
    graph = graph_model(state, options.filters, positions)
    alerts = state.alerts.values()
    counts = Counts(
        nodes=len(graph.nodes),
        edges=len(graph.edges),
        alerts=len(alerts),
        decisions=len(state.decisions),
        agents=len(state.agents),
        quarantined=sum(1 for i in state.agents.values() if i.quarantined),
        version=state.version,
    )
    rows = top_trust_rows(state, options.trust_sort, descending=options.trust_descending, limit=options.trust_rows)
    history = (earliest_edge(state), state.watermark)
    return DashboardView(
        counts=counts,
        counts_html=counts_html(counts),
        graph=graph,
        trust_html=trust_table_html(rows, total=len(state.agents), selected=options.filters.selected),
        alerts_html=alerts_html(alerts, acknowledged=options.acknowledged, limit=options.alert_rows),
        alert_ids=[a["alert_id"] for a in alerts[: options.alert_rows] if a["alert_id"] not in options.acknowledged],
        metrics_html=metrics_html(state),
        panel_html=panel_html(state, options.filters.selected),
        history=history,
    )
