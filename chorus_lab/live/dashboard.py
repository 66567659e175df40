"""OperatorDashboard: trust list and causal graph together, alert feed, metric plots, agent panel.

One ipywidgets ``VBox`` fed by a :class:`~chorus_lab.live.session.LiveSession`. The session
calls the dashboard from its consumer thread at most a few times a second; each call
brings the alert feed and the agent panel up to date (:meth:`OperatorDashboard.refresh_quick`),
and the whole view (:meth:`OperatorDashboard.refresh`: trust list, graph, metrics, counts)
follows at most every ``full_refresh_s``. A refresh computes its view under the session's
lock (:mod:`~chorus_lab.live.view`, pure) and then sets the widgets' traits inside
``hold_sync()``, so each widget sends at most one message per refresh. All state is in
synced traits: a page that connects late or reconnects gets the full current state, and
the dashboard resends all of it when a page's heartbeat starts (:meth:`OperatorDashboard.resend`).

DOM hooks for browser tests (the graph is a canvas): ``chorus-state`` holds the
``chorus-counts`` element with ``data-nodes/edges/alerts/decisions/agents/quarantined/version``;
``chorus-trust`` holds one ``<tr data-agent data-trust data-quarantined>`` per listed agent;
``chorus-agent-panel`` holds an element with ``data-agent`` once an agent is selected.

>>> import tempfile
>>> from chorus_lab.live.session import LiveSession
>>> session = LiveSession(f"embedded://{tempfile.mkdtemp()}/bus")
>>> dash = OperatorDashboard(session)
>>> 'class="chorus-counts"' in dash.state_html.value, session.running
(True, True)
>>> dash.close(); session.running
False
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import ipycytoscape
import ipywidgets as w

from chorus_lab.live.graph_model import DEFAULT_MAX_VISIBLE_EDGES
from chorus_lab.live.graph_view import GraphView
from chorus_lab.live.lod import DEFAULT_MAX_VISIBLE
from chorus_lab.live.render import SORT_KEYS
from chorus_lab.live.session import LiveSession
from chorus_lab.live.state_requests import WIDGETS_LOCK, answer_state_requests_under_lock
from chorus_lab.live.view import DashboardView, ViewOptions, dashboard_view, quick_view


class OperatorDashboard(w.VBox):
    """The operator's live view of the fleet (see the module docstring)."""

    def __init__(
        self,
        session: LiveSession,
        *,
        max_visible_nodes: int = DEFAULT_MAX_VISIBLE,
        max_visible_edges: int = DEFAULT_MAX_VISIBLE_EDGES,
        trust_rows: int = 200,
        graph_height: str = "520px",
        start: bool = True,
        heartbeat_s: float = 2.0,
        orphan_after_s: float = 300.0,
        full_refresh_s: float | None = None,
    ) -> None:
        if max_visible_nodes < 1:
            raise ValueError(f"max_visible_nodes must be at least 1, got {max_visible_nodes}")
        if full_refresh_s is not None and full_refresh_s < 0:
            raise ValueError(f"full_refresh_s must be 0 or more, got {full_refresh_s}")
        self.full_refresh_s = 4 * session.refresh_s if full_refresh_s is None else full_refresh_s
        """Shortest interval between two whole-view refreshes while following the stream
        (default: four of the session's ``refresh_s``, 1 s with its default)."""
        self._last_full = 0.0
        self.session = session
        self.max_visible_nodes = max_visible_nodes
        self.max_visible_edges = max_visible_edges
        self.trust_rows = trust_rows
        self.selected: str | None = None
        self.last_view: DashboardView | None = None
        self._history: tuple[str, str] = ("", "")
        self._refresh_lock = threading.RLock()
        self._closed = False
        self.heartbeat_s = heartbeat_s
        self.orphan_after_s = orphan_after_s
        self.last_beat: float | None = None
        """When a page last showed it was open (None: no page seen yet, e.g. papermill)."""
        self._last_kick = 0.0
        self._created = time.monotonic()
        # A page that is open ticks this hidden Play widget every heartbeat_s; when the ticks
        # stop for orphan_after_s (tab closed), the dashboard detaches and the session stops.
        # Without that the widget traffic would keep the kernel "active" and never culled.
        self.heartbeat = w.Play(value=0, min=0, max=2**31 - 1, step=1, interval=max(100, int(heartbeat_s * 1000)),
                                repeat=True, playing=False, layout=w.Layout(display="none"))
        self.heartbeat.observe(self._beat, names="value")

        self.state_html = _html("chorus-state")
        self.trust_html = _html("chorus-trust")
        self.alerts_html = _html("chorus-alerts")
        self.metrics_html = _html("chorus-metrics")
        self.panel_html = _html("chorus-agent-panel")
        self.trust_sort = w.Dropdown(options=SORT_KEYS, value="trust", description="sort by", layout=w.Layout(width="180px"))
        self.trust_descending = w.Checkbox(value=False, description="descending", indent=False, layout=w.Layout(width="110px"))
        self.ack_choice = w.Dropdown(options=[], description="alert", layout=w.Layout(width="260px"))
        self.ack_button = w.Button(description="acknowledge", button_style="warning")
        self.ack_all = w.Button(description="acknowledge all")
        self.clear_selection = w.Button(description="clear selection")
        self.graph = GraphView(self.refresh, self.select, height=graph_height)

        for control in (self.trust_sort, self.trust_descending):
            control.observe(lambda _change: self.refresh(), names="value")
        self.graph.search.observe(self._searched, names="value")
        self.ack_button.on_click(lambda _b: self._acknowledge([self.ack_choice.value] if self.ack_choice.value else []))
        self.ack_all.on_click(lambda _b: self._acknowledge(self.session.read(lambda state: [key[1] for key in state.alerts.keys()])))
        self.clear_selection.on_click(lambda _b: self.select(None))

        trust_box = w.VBox(
            [w.HTML("<b>Trust</b>"), w.HBox([self.trust_sort, self.trust_descending]),
             w.Box([self.trust_html], layout=w.Layout(max_height=graph_height, overflow="auto"))],
            layout=w.Layout(width="32%", min_width="280px"),
        )
        graph_box = w.VBox([w.HTML("<b>Causal graph</b>"), self.graph], layout=w.Layout(width="68%"))
        alerts_box = w.VBox(
            [w.HTML("<b>Alerts</b> (newest first)"), w.HBox([self.ack_choice, self.ack_button, self.ack_all]),
             w.Box([self.alerts_html], layout=w.Layout(max_height="360px", overflow="auto"))],
            layout=w.Layout(width="50%"),
        )
        panel_box = w.VBox([w.HTML("<b>Agent</b>"), self.clear_selection, self.panel_html], layout=w.Layout(width="50%"))
        super().__init__([
            self.state_html,
            w.HBox([trust_box, graph_box]),
            w.HBox([alerts_box, panel_box]),
            w.HTML("<b>Metrics</b>"),
            self.metrics_html,
            self.heartbeat,
        ])
        self.add_class("chorus-dashboard")
        answer_state_requests_under_lock()  # before the session's thread starts changing widgets
        self._unwatch = session.watch(lambda _session: self._follow())
        self.refresh()
        if start:
            session.start()

    # ------------------------------------------------------------------ viewer actions

    def select(self, agent: str | None) -> None:
        """Show ``agent`` in the agent panel and centre the graph's detail on it (None clears)."""
        self.selected = agent or None
        self.refresh()

    def _searched(self, change: dict[str, Any]) -> None:
        text = str(change["new"]).strip()
        if text and self.session.read(lambda state: text in state.agents):
            self.select(text)

    def _acknowledge(self, alert_ids: list[str]) -> None:
        if alert_ids:
            self.session.acknowledge(*alert_ids)
        self.refresh()

    # ------------------------------------------------------------------ refreshing

    def options(self) -> ViewOptions:
        filters = self.graph.filters(selected=self.selected, max_visible=self.max_visible_nodes,
                                     max_visible_edges=self.max_visible_edges, history=self._history)
        return ViewOptions(
            filters=filters,
            trust_sort=self.trust_sort.value,
            trust_descending=self.trust_descending.value,
            trust_rows=self.trust_rows,
            acknowledged=frozenset(self.session.acknowledged),
        )

    def _beat(self, _change: dict[str, Any]) -> None:
        now = time.monotonic()
        if self.last_beat is None or now - self.last_beat > 3 * self.heartbeat_s:
            # A page (re)connected: it may have missed updates while loading; show it the
            # whole view, and the whole graph once.
            self.resend()
            self.graph.fit()
        self.last_beat = now

    def resend(self) -> None:
        """Send the page the whole current state of every widget, changed or not.

        Widget updates reach a page only as changes, and a page can lose some while it
        loads: it asks the kernel for every widget's state, then registers the widgets one
        by one, and an update sent in between finds no widget (the race of
        voila-dashboards/voila#1101). On a quiet stream no later change would repair that
        page, so the dashboard resends everything when a page's heartbeat starts ticking.
        """
        with self._refresh_lock:
            if self._closed:
                return
            widgets = [widget for widget in _descendants(self) if widget is not self.heartbeat]
            # The graph's elements before the lists that name them; the counts last, as in refresh.
            widgets.sort(key=lambda widget: (not isinstance(widget, (ipycytoscape.Node, ipycytoscape.Edge)), widget is self.state_html))
            for widget in widgets:
                widget.send_state()

    def check_viewers(self) -> bool:
        """Keep the page's heartbeat going; detach when it stopped. Return whether still attached."""
        now = time.monotonic()
        # A page closed before its first tick counts from the dashboard's creation, or its
        # re-arming traffic would keep the kernel "active" for ever.
        if now - (self.last_beat if self.last_beat is not None else self._created) > self.orphan_after_s:
            self.close()
            return False
        stale = self.last_beat is None or now - self.last_beat > 3 * self.heartbeat_s
        # The front end starts ticking on a change of `playing`, not on first render. So a
        # stale heartbeat is re-armed in two steps, at least heartbeat_s apart: `playing`
        # off, then on. (Both at once race with the echo of the page's own pause.)
        if not self.heartbeat.playing and now - self._last_kick >= self.heartbeat_s:
            self._last_kick = now
            self.heartbeat.playing = True
        elif stale and self.heartbeat.playing and now - self._last_kick >= 5 * self.heartbeat_s:
            self._last_kick = now
            self.heartbeat.playing = False
        return True

    def _follow(self) -> None:
        """The session's call after changes: the quick part each time, the whole view at most
        every ``full_refresh_s``.

        The whole view passes over the fleet (trust list, level of detail) and rewrites the
        graph and the trust table on the page; with five pages on a 10,000-agent fleet at
        1,000 messages/s that, four times a second, was more than two cores could do
        (docs/benchmarks.md). The alert feed and the agent panel cost little and are what
        an operator follows event by event, so they keep the session's pace.
        """
        if time.monotonic() - self._last_full >= self.full_refresh_s:
            self.refresh()
            return
        self.refresh_quick()
        # The rest is due within full_refresh_s: be called again even if the stream goes quiet.
        self.session.request_refresh()

    def refresh_quick(self) -> None:
        """Bring the alert feed and the agent panel up to date (no pass over the fleet).

        The counts element is not touched: it vouches for the whole view (see :meth:`refresh`).
        """
        if not self.check_viewers():
            return
        with self._refresh_lock:
            if self._closed:
                return
            options = self.options()
            view = self.session.read(lambda state: quick_view(state, options))
            with contextlib.ExitStack() as stack:
                for widget in (self.alerts_html, self.panel_html, self.ack_choice):
                    stack.enter_context(widget.hold_sync())
                self._apply_quick(view.alerts_html, view.alert_ids, view.panel_html)

    def _apply_quick(self, alerts: str, alert_ids: list[str], panel: str) -> None:
        _set(self.alerts_html, alerts)
        _set(self.panel_html, panel)
        if tuple(self.ack_choice.options) != tuple(alert_ids):
            self.ack_choice.options = alert_ids

    def refresh(self) -> None:
        """Recompute the whole view from the session and push what changed to the page."""
        if not self.check_viewers():
            return
        with self._refresh_lock:
            if self._closed:
                return
            self._last_full = time.monotonic()
            options = self.options()
            positions = dict(self.graph.positions)
            view = self.session.read(lambda state: dashboard_view(state, options, positions))
            self._history = view.history
            self.last_view = view
            widgets = (self.state_html, self.trust_html, self.alerts_html, self.metrics_html, self.panel_html, self.ack_choice)
            # Under WIDGETS_LOCK: a page asking for every widget's state gets all of this refresh or none.
            with WIDGETS_LOCK, contextlib.ExitStack() as stack:
                for widget in widgets:
                    stack.enter_context(widget.hold_sync())
                self.graph.apply(view.graph, options.filters.at)
                _set(self.trust_html, view.trust_html)
                _set(self.metrics_html, view.metrics_html)
                self._apply_quick(view.alerts_html, view.alert_ids, view.panel_html)
                # Last: whoever sees this version (a test, a page) sees everything it counts.
                _set(self.state_html, view.counts_html)

    def close(self) -> None:
        """Stop following the session (which stops when nothing else watches it) and close the widgets."""
        with self._refresh_lock:
            if self._closed:
                return
            self._closed = True
        self._unwatch()
        with WIDGETS_LOCK:  # maybe on the consumer thread (an orphaned page): see refresh
            for widget in _descendants(self):
                widget.close()
            self.layout.close()
            super().close()


def _descendants(root: w.Widget) -> list[w.Widget]:
    """Every widget below ``root`` (boxes' children, the graph's node and edge widgets).

    ``Box.close()`` closes only the box; a kernel that lives on must not keep the rest.
    """
    found: list[w.Widget] = []
    stack = list(getattr(root, "children", ()))
    while stack:
        widget = stack.pop()
        found.append(widget)
        stack.extend(getattr(widget, "children", ()))
        stack.extend(part for part in (getattr(widget, "layout", None), getattr(widget, "style", None)) if isinstance(part, w.Widget))
        graph = getattr(widget, "graph", None)
        if isinstance(graph, w.Widget):  # ipycytoscape: the graph model and its elements
            stack.extend([graph, *graph.nodes, *graph.edges])
    return found


def _html(dom_class: str) -> w.HTML:
    widget = w.HTML("")
    widget.add_class(dom_class)
    return widget


def _set(widget: w.HTML, value: str) -> None:
    if widget.value != value:  # an unchanged trait must not cost a message
        widget.value = value
