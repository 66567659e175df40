"""HTML for the dashboard's text parts: the state counts, trust list, alert feed, agent panel.

Pure functions from plain data to HTML strings (values escaped). The ``data-*`` attributes
are the hooks the browser tests read, since the graph itself is a canvas (STACK-NOTES.md).

>>> counts_html(Counts(nodes=3, edges=2, alerts=1, decisions=9, agents=3, quarantined=0, version=12))
'<span class="chorus-counts" data-nodes="3" data-edges="2" data-alerts="1" data-decisions="9" data-agents="3" data-quarantined="0" data-version="12">3 agents shown · 2 edges · 1 alerts · 9 decisions · 0 quarantined</span>'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

SEVERITY_COLOURS = {"critical": "#9b1c1c", "high": "#c53030", "medium": "#c05621", "low": "#b7791f", "info": "#4a5568"}


@dataclass(frozen=True, slots=True)
class Counts:
    """What the ``chorus-counts`` element reports."""

    nodes: int
    edges: int
    alerts: int
    decisions: int
    agents: int
    quarantined: int
    version: int


def counts_html(c: Counts) -> str:
    """The hidden-in-plain-sight counts element the browser tests read."""
    return (
        f'<span class="chorus-counts" data-nodes="{c.nodes}" data-edges="{c.edges}" data-alerts="{c.alerts}"'
        f' data-decisions="{c.decisions}" data-agents="{c.agents}" data-quarantined="{c.quarantined}"'
        f' data-version="{c.version}">{c.nodes} agents shown · {c.edges} edges · {c.alerts} alerts · '
        f"{c.decisions} decisions · {c.quarantined} quarantined</span>"
    )


def trust_text(trust: float) -> str:
    """Trust as shown and as ``data-trust`` (one decimal).

    >>> trust_text(87.54)
    '87.5'
    """
    return f"{trust:.1f}"


@dataclass(frozen=True, slots=True)
class TrustRow:
    agent_id: str
    trust: float
    quarantined: bool
    messages: int
    alerts: int


SORT_KEYS = ("trust", "agent", "messages", "alerts")


def sort_trust_rows(rows: Sequence[TrustRow], by: str = "trust", *, descending: bool = False) -> list[TrustRow]:
    """Rows sorted by ``by`` (one of :data:`SORT_KEYS`); quarantined agents always first.

    >>> rows = [TrustRow("b", 90, False, 1, 0), TrustRow("a", 20, True, 1, 0), TrustRow("c", 50, False, 1, 0)]
    >>> [r.agent_id for r in sort_trust_rows(rows)]
    ['a', 'c', 'b']
    >>> [r.agent_id for r in sort_trust_rows(rows, "agent", descending=True)]
    ['a', 'c', 'b']
    """
    if by not in SORT_KEYS:
        raise ValueError(f"cannot sort the trust list by {by!r}; use one of {', '.join(SORT_KEYS)}")
    keys = {
        "trust": lambda r: (r.trust, r.agent_id),
        "agent": lambda r: (r.agent_id,),
        "messages": lambda r: (r.messages, r.agent_id),
        "alerts": lambda r: (r.alerts, r.agent_id),
    }
    ordered = sorted(rows, key=keys[by], reverse=descending)
    return [r for r in ordered if r.quarantined] + [r for r in ordered if not r.quarantined]


def trust_table_html(rows: Sequence[TrustRow], *, total: int, selected: str | None = None) -> str:
    """The trust list: one ``<tr data-agent data-trust data-quarantined>`` per shown agent."""
    lines = [
        '<table class="chorus-trust-table" style="border-collapse:collapse;width:100%;font-size:12px">',
        "<thead><tr><th align=left>agent</th><th align=right>trust</th><th align=left>status</th>"
        "<th align=right>msgs</th><th align=right>alerts</th></tr></thead><tbody>",
    ]
    for r in rows:
        style = "background:#fde8e8;" if r.quarantined else ""
        if r.agent_id == selected:
            style += "font-weight:bold;"
        status = "<b style='color:#c53030'>QUARANTINED</b>" if r.quarantined else "active"
        lines.append(
            f'<tr data-agent="{escape(r.agent_id)}" data-trust="{trust_text(r.trust)}" data-quarantined="{int(r.quarantined)}"'
            f' style="{style}"><td>{escape(r.agent_id)}</td><td align=right>{trust_text(r.trust)}</td><td>{status}</td>'
            f"<td align=right>{r.messages}</td><td align=right>{r.alerts}</td></tr>"
        )
    lines.append("</tbody></table>")
    if total > len(rows):
        lines.append(f'<div style="font-size:11px;color:#666">{len(rows)} of {total} agents listed</div>')
    return "".join(lines)


def alerts_html(rows: Sequence[Mapping[str, Any]], *, acknowledged: set[str] | frozenset[str] = frozenset(), limit: int = 50) -> str:
    """The alert feed, newest first (``rows`` already in that order)."""
    if not rows:
        return '<div class="chorus-alert-empty" style="color:#666">no alerts</div>'
    items = []
    for row in list(rows)[:limit]:
        colour = SEVERITY_COLOURS.get(str(row["severity"]), "#4a5568")
        acked = row["alert_id"] in acknowledged
        agents = ", ".join(escape(a) for a in row["affected_agents"][:8])
        if len(row["affected_agents"]) > 8:
            agents += f" … (+{len(row['affected_agents']) - 8})"
        items.append(
            f'<div class="chorus-alert" data-alert="{escape(str(row["alert_id"]))}" data-acknowledged="{int(acked)}"'
            f' style="border-left:4px solid {colour};padding:2px 6px;margin:2px 0;{"opacity:0.5;" if acked else ""}">'
            f'<b style="color:{colour}">{escape(str(row["severity"]))}</b> {escape(str(row["pattern"]))}'
            f' <span style="color:#666">{escape(str(row["detected_at"]))} · conf {float(row["confidence"]):.2f}</span><br>'
            f'{escape(str(row["description"]))}<br><span style="color:#444">agents: {agents}</span></div>'
        )
    return "".join(items)


def agent_panel_html(
    agent_id: str | None,
    *,
    trust: float = 100.0,
    quarantined: bool = False,
    messages: int = 0,
    trust_sparkline: str = "",
    decisions: Sequence[Mapping[str, Any]] = (),
    alerts: Sequence[Mapping[str, Any]] = (),
    affected_paths: Sequence[Sequence[str]] = (),
    known: bool = True,
) -> str:
    """The selected agent's details, with ``data-agent`` on the root element.

    >>> agent_panel_html(None)
    '<div class="chorus-agent-detail" style="color:#666">select an agent (click a node, or search)</div>'
    >>> agent_panel_html("a-1", trust=42.0).startswith('<div class="chorus-agent-detail" data-agent="a-1"')
    True
    """
    if agent_id is None:
        return '<div class="chorus-agent-detail" style="color:#666">select an agent (click a node, or search)</div>'
    parts = [
        f'<div class="chorus-agent-detail" data-agent="{escape(agent_id)}" data-trust="{trust_text(trust)}"'
        f' data-quarantined="{int(quarantined)}">',
        f"<h4 style='margin:2px 0'>{escape(agent_id)}</h4>",
    ]
    if not known:
        parts.append("<div>not seen on the stream (yet)</div></div>")
        return "".join(parts)
    state = "<b style='color:#c53030'>quarantined</b>" if quarantined else "active"
    parts.append(f"<div>trust <b>{trust_text(trust)}</b> · {state} · {messages} messages</div>")
    parts.append(trust_sparkline)
    if quarantined and affected_paths:
        paths = ", ".join(f"{escape(s)}→{escape(t)} ({escape(k)})" for s, t, k in affected_paths[:20])
        parts.append(f"<div><b>affected paths</b>: {paths}</div>")
    parts.append("<div><b>recent decisions</b></div><table style='font-size:11px'>")
    for d in list(decisions)[:10]:
        parts.append(
            f"<tr><td>{escape(str(d['timestamp']))}</td><td>{escape(str(d['message_type']))}</td>"
            f"<td>{escape(str(d['action']))}</td><td>→ {escape(str(d['targets']))[:60]}</td>"
            f"<td>risk {float(d['risk']):.2f}</td><td>trust {trust_text(float(d['trust_after']))}</td>"
            f"<td>{escape(str(d['intervention']))}</td></tr>"
        )
    parts.append("</table><div><b>alerts</b></div>")
    parts.append(alerts_html(alerts, limit=10) if alerts else "<div style='color:#666'>none</div>")
    parts.append("</div>")
    return "".join(parts)
