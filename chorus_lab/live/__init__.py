"""Live views of the fleet for notebooks and the operator dashboard.

- :class:`LiveSession` (``session.py``): a background consumer per kernel feeding bounded
  pandas DataFrames and the widgets;
- :class:`OperatorDashboard` (``dashboard.py``): trust list and causal graph together,
  alert feed, metric plots and an agent panel, as one ipywidgets widget.
- ``state_requests.py``: the lock under which the dashboard changes its widgets and the
  kernel answers a page's request for every widget's state.

The pure parts live in their own modules: ``state.py`` (folding records into the live
state), ``lod.py`` (which nodes the graph shows), ``layout.py`` (preset positions),
``graph_model.py`` (filters and what the graph draws), ``render.py`` and ``plots.py``
(HTML and SVG), ``frames.py`` (DataFrames). See docs/live.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chorus_lab.live.session import LiveSession
from chorus_lab.live.state import Limits, LiveState

if TYPE_CHECKING:
    from chorus_lab.live.dashboard import OperatorDashboard

__all__ = ["Limits", "LiveSession", "LiveState", "OperatorDashboard"]


def __getattr__(name: str) -> Any:
    # The widgets import ipywidgets and ipycytoscape: only load them when asked for, so a
    # papermill report that only wants DataFrames stays light.
    if name == "OperatorDashboard":
        from chorus_lab.live.dashboard import OperatorDashboard

        return OperatorDashboard
    raise AttributeError(f"module 'chorus_lab.live' has no attribute {name!r}")
