"""The causal-graph widget: ipycytoscape with filters, a time slider and a text fallback.

:class:`GraphView` applies a :class:`~chorus_lab.live.graph_model.GraphModel` by
difference: node and edge widgets are kept per id; a changed class, strength or position
is a data change (no relayout), and only a changed set of visible elements assigns new
node/edge lists (one structural change per refresh). Layout is ``preset``: positions come
from :mod:`chorus_lab.live.layout`, so a structural change costs the browser no layout run.
Strength changes animate through the style's transitions (edges strengthen and fade).
"""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from typing import Any

import ipycytoscape
import ipywidgets as w

from chorus_lab.live.graph_model import RELATIONSHIP_TYPES, GraphFilters, GraphModel
from chorus_lab.schema import format_timestamp, parse_timestamp

STYLE: list[dict[str, Any]] = [
    {"selector": "node", "style": {
        "label": "data(label)", "font-size": 9, "width": 14, "height": 14,
        "background-color": "mapData(trust, 0, 100, #e53e3e, #2b6cb0)",
        "text-valign": "bottom", "color": "#333", "transition-property": "background-color, border-width",
        "transition-duration": "0.4s"}},
    {"selector": "node.alerting", "style": {"background-color": "#dd6b20"}},
    {"selector": "node.loop", "style": {"background-color": "#805ad5", "border-width": 2, "border-color": "#553c9a"}},
    {"selector": "node.quarantined", "style": {
        "background-color": "#c53030", "shape": "octagon", "border-width": 3, "border-color": "#742a2a"}},
    {"selector": "node.selected", "style": {"border-width": 4, "border-color": "#f6e05e", "width": 20, "height": 20}},
    {"selector": "edge", "style": {
        "width": "mapData(strength, 0, 1, 0.5, 6)", "opacity": "mapData(strength, 0, 1, 0.25, 1)",
        "line-color": "#a0aec0", "curve-style": "bezier", "target-arrow-shape": "triangle",
        "target-arrow-color": "#a0aec0", "arrow-scale": 0.7,
        "transition-property": "width, opacity, line-color", "transition-duration": "0.6s"}},
    {"selector": "edge.dependency", "style": {"line-style": "dashed"}},
    {"selector": "edge.conflict", "style": {"line-color": "#d69e2e", "target-arrow-color": "#d69e2e"}},
    {"selector": "edge.loop", "style": {"line-color": "#805ad5", "target-arrow-color": "#805ad5", "width": 5}},
    {"selector": "edge.affected", "style": {"line-color": "#c53030", "target-arrow-color": "#c53030", "line-style": "dotted"}},
]

PRESET = {"name": "preset", "fit": False, "padding": 20, "animate": False}
"""Cytoscape layout: positions come from Python (``layout.py``)."""

WINDOWS = (("all time", None), ("last 1 min", 60.0), ("last 5 min", 300.0), ("last 15 min", 900.0), ("last hour", 3600.0))


class GraphView(w.VBox):
    """Graph, filters and scrubbing. ``on_change()`` runs when the viewer changes a control,
    ``on_select(agent)`` when a node is clicked."""

    def __init__(self, on_change: Callable[[], None], on_select: Callable[[str | None], None], *, height: str = "520px") -> None:
        self._on_change = on_change
        self._on_select = on_select
        self.search = w.Text(placeholder="agent id (Enter selects an exact match)", description="search", continuous_update=False)
        self.trust = w.FloatRangeSlider(value=(0.0, 100.0), min=0.0, max=100.0, step=1.0, description="trust", continuous_update=False)
        self.kinds = {kind: w.Checkbox(value=True, description=kind, indent=False, layout=w.Layout(width="110px")) for kind in RELATIONSHIP_TYPES}
        self.window = w.Dropdown(options=WINDOWS, value=None, description="window", layout=w.Layout(width="220px"))
        self.scrub = w.IntSlider(value=100, min=0, max=100, description="history %", continuous_update=False,
                                 tooltip="100 = live; lower values show the graph as it was earlier")
        self.scrub_label = w.HTML("live")
        self.cyto = ipycytoscape.CytoscapeWidget()
        self.cyto.set_style(STYLE)
        # No fit on every structural change: that would undo the viewer's zoom and pan.
        self.cyto.cytoscape_layout = dict(PRESET)
        self.fit_button = w.Button(description="fit", tooltip="zoom to show the whole graph", layout=w.Layout(width="60px"))
        self.fit_button.on_click(lambda _b: self.fit())
        self.cyto.layout.height, self.cyto.layout.width, self.cyto.layout.border = height, "100%", "1px solid #ddd"
        self.cyto.on("node", "click", self._clicked)
        self.summary = w.HTML("")
        self.summary.add_class("chorus-graph-summary")
        self.text = w.HTML("")
        self.text.add_class("chorus-graph-text")
        fallback = w.Accordion(children=[self.text], titles=("graph as text",))
        fallback.selected_index = None
        for control in (self.search, self.trust, self.window, self.scrub, *self.kinds.values()):
            control.observe(lambda _change: self._on_change(), names="value")
        self._nodes: dict[str, ipycytoscape.Node] = {}
        self._edges: dict[str, ipycytoscape.Edge] = {}
        self.positions: dict[str, tuple[float, float]] = {}
        controls = w.VBox([
            w.HBox([self.search, self.trust]),
            w.HBox([*self.kinds.values(), self.window]),
            w.HBox([self.scrub, self.scrub_label, self.fit_button]),
        ])
        super().__init__([controls, self.cyto, self.summary, fallback])
        self.add_class("chorus-graph")

    # ------------------------------------------------------------------ viewer input

    def _clicked(self, node: dict[str, Any]) -> None:
        agent = node.get("data", {}).get("id")
        if isinstance(agent, str):
            self._on_select(agent)

    def filters(self, *, selected: str | None, max_visible: int, max_visible_edges: int, history: tuple[str, str]) -> GraphFilters:
        """The filters the controls currently describe."""
        at = scrub_time(history, self.scrub.value)
        return GraphFilters(
            search=self.search.value,
            trust_min=float(self.trust.value[0]),
            trust_max=float(self.trust.value[1]),
            relationships=frozenset(k for k, box in self.kinds.items() if box.value),
            window_s=self.window.value,
            at=at,
            selected=selected,
            max_visible=max_visible,
            max_visible_edges=max_visible_edges,
        )

    # ------------------------------------------------------------------ applying a model

    def apply(self, model: GraphModel, at: str | None) -> None:
        """Show ``model``: data changes in place, one list assignment if the visible set changed."""
        structural = False
        gone_widgets: list[Any] = []
        seen_nodes = set()
        for node in model.nodes:
            seen_nodes.add(node.id)
            position = {"x": node.position[0], "y": node.position[1]}
            data = {"id": node.id, "label": node.label, "trust": round(node.trust, 1)}
            widget = self._nodes.get(node.id)
            if widget is None:
                widget = ipycytoscape.Node(data=data, position=position, classes=node.classes)
                self._nodes[node.id] = widget
                structural = True
                continue
            if widget.classes != node.classes:
                widget.classes = node.classes
            if dict(widget.data) != data:
                widget.data = data
            if dict(widget.position) != position:
                widget.position = position
        for gone in set(self._nodes) - seen_nodes:
            gone_widgets.append(self._nodes.pop(gone))
            structural = True
        seen_edges = set()
        for edge in model.edges:
            seen_edges.add(edge.id)
            data = {"id": edge.id, "source": edge.source, "target": edge.target, "strength": edge.strength, "kind": edge.relationship}
            widget = self._edges.get(edge.id)
            if widget is None:
                self._edges[edge.id] = ipycytoscape.Edge(data=data, classes=edge.classes)
                structural = True
                continue
            if widget.classes != edge.classes:
                widget.classes = edge.classes
            if dict(widget.data) != data:
                widget.data = data
        for gone in set(self._edges) - seen_edges:
            gone_widgets.append(self._edges.pop(gone))
            structural = True
        if structural:
            graph = self.cyto.graph
            was_empty = not graph.nodes
            with graph.hold_sync():
                graph.nodes = [self._nodes[n.id] for n in model.nodes]
                graph.edges = [self._edges[e.id] for e in model.edges]
            if was_empty:
                self.fit()
        for widget in gone_widgets:  # after the lists stop naming them: no dangling model on the page
            widget.close()
        self.positions = {n.id: n.position for n in model.nodes}
        self.summary.value = f'<span style="font-size:12px;color:#444">{escape(model.summary)}</span>'
        self.text.value = "<pre style='font-size:11px;max-height:240px;overflow:auto'>" + escape(model.text()) + "</pre>"
        self.scrub_label.value = "live" if at is None else f"as of {escape(at)}"

    def fit(self) -> None:
        """Zoom the page's graph to show every node (once; later changes keep the viewport)."""
        # Two messages: the front end runs the layout on each change of the trait, so the
        # first fits the viewport and the second leaves the layout without fit again.
        self.cyto.cytoscape_layout = dict(PRESET, fit=True)
        self.cyto.cytoscape_layout = dict(PRESET)

    @property
    def node_ids(self) -> list[str]:
        return [n.data["id"] for n in self.cyto.graph.nodes]


def scrub_time(history: tuple[str, str], percent: int) -> str | None:
    """The event time ``percent`` of the way from the first to the last edge; None at 100 (live).

    >>> scrub_time(("2026-01-01T00:00:00.000000Z", "2026-01-01T00:01:40.000000Z"), 50)
    '2026-01-01T00:00:50.000000Z'
    >>> scrub_time(("", ""), 10) is None
    True
    """
    first, last = history
    if percent >= 100 or not first or not last:
        return None
    start, end = parse_timestamp(first), parse_timestamp(last)
    return format_timestamp(start + (end - start) * (max(0, percent) / 100))

