"""A page's request for every widget's state never meets a refresh half done.

When a page loads, its widget manager asks the kernel for the state of every widget at
once (``request_states`` on the ``jupyter.widget.control`` comm). ipywidgets answers on
the kernel's main thread by iterating over all live widgets. The dashboard changes its
widgets from the session's consumer thread, and a refresh that adds or closes graph
elements changes that collection mid-iteration: the answer fails with "dictionary
changed size during iteration", the page waits 4 s, then falls back to asking widget by
widget. Even when the answer does not fail, it can describe half a refresh (a graph
list naming an element closed a moment later).

So the dashboard applies its refreshes while holding :data:`WIDGETS_LOCK`, and
:func:`answer_state_requests_under_lock` makes the kernel answer under the same lock.
It wraps ipywidgets 8's own handler (``Widget._handle_control_comm_msg``, a private name;
ipywidgets is pinned below 9, and ``tests/unit/test_live_widgets.py`` fails if it moves).

>>> answer_state_requests_under_lock()
>>> import comm
>>> comm.get_comm_manager().targets[CONTROL_TARGET].__name__
'_open_control_comm'
"""

from __future__ import annotations

import threading
from typing import Any

import comm
from ipywidgets import Widget

CONTROL_TARGET = "jupyter.widget.control"
"""The comm target of a page's requests for every widget's state (ipywidgets 8)."""

WIDGETS_LOCK = threading.RLock()
"""Held while the dashboard applies a whole refresh (which creates and closes graph
elements) or closes its widgets, and while the kernel answers a page's request for every
widget's state. Updates that only set traits of existing widgets (the alert feed, the
resend) do not need it: they do not change the collection the answer iterates over."""


def answer_state_requests_under_lock() -> None:
    """Make this kernel answer ``request_states`` while holding :data:`WIDGETS_LOCK`.

    Idempotent. Covers the control comms pages open from now on and the one already open
    (JupyterLab opens it when it connects, possibly before the dashboard's cell ran).
    Outside a kernel it registers with ``comm``'s stand-in manager, which nothing calls.
    """
    comm.get_comm_manager().register_target(CONTROL_TARGET, _open_control_comm)
    if Widget._control_comm is not None:
        Widget._control_comm.on_msg(_answer_under_lock)


def _open_control_comm(control: Any, message: dict[str, Any]) -> None:
    Widget.handle_control_comm_opened(control, message)  # checks the protocol version
    control.on_msg(_answer_under_lock)


def _answer_under_lock(message: dict[str, Any]) -> None:
    with WIDGETS_LOCK:
        Widget._handle_control_comm_msg(message)
