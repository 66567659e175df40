"""The operator dashboard in real Chromium, fed live by the pipeline (see conftest.py).

Every page blocks and records requests to non-loopback hosts; ``open_page`` fails the test
if there was one. Waits are conditions with deadlines (``wait_for_function`` or a polled
comparison across pages), never fixed sleeps.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.conftest import LiveStack, counts, trust_rows, wait_rendered

LIVE_MS = 90_000
"""Deadline for fed messages to reach a page through both pipeline stages and a kernel."""
SAME_FIELDS = ("nodes", "edges", "alerts", "decisions", "agents", "quarantined")

CYTOSCAPE_JS = "[...document.querySelectorAll('.custom-widget')].find(e => e._cyreg && e._cyreg.cy)._cyreg.cy"


@pytest.fixture(scope="module")
def stack(live_stack: LiveStack) -> LiveStack:
    """The live stack with a first fleet already on the bus."""
    if live_stack.sent == 0:
        live_stack.feed(1500)
    return live_stack


def visible_state(page: Any) -> tuple[dict[str, int], dict[str, list[str]]]:
    shown = counts(page)
    return {k: shown[k] for k in SAME_FIELDS}, trust_rows(page)


def wait_same_state(pages: list[Any], timeout_s: float = LIVE_MS / 1000) -> tuple[dict[str, int], dict[str, list[str]]]:
    """Poll until every page shows the same counts and trust rows twice in a row; return that state."""
    deadline = time.monotonic() + timeout_s
    previous: Any = None
    states: list[Any] = []
    while time.monotonic() < deadline:
        states = [visible_state(page) for page in pages]
        if all(state == states[0] for state in states) and states[0] == previous:
            return states[0]
        previous = states[0] if all(state == states[0] for state in states) else None
        # Let the pages' event loops run between two reads (a bounded wait, not the condition).
        pages[0].wait_for_timeout(1000)
    raise AssertionError(f"pages did not converge within {timeout_s:.0f} s: {[s[0] for s in states]}")


def test_graph_and_trust_list_render(stack: LiveStack, open_page: Any) -> None:
    page = open_page(stack.url)
    shown = counts(page)
    rows = trust_rows(page)
    assert shown["nodes"] > 0 and shown["edges"] > 0 and shown["decisions"] > 0
    assert len(rows) == min(shown["agents"], 200), "one trust row per agent"
    assert all(0.0 <= float(trust) <= 100.0 for trust, _ in rows.values())
    graph = page.evaluate(f"() => {{ const cy = {CYTOSCAPE_JS}; const box = cy.container().getBoundingClientRect();"
                          " return {nodes: cy.nodes().map(n => n.id()), width: box.width, height: box.height}; }")
    assert graph["width"] > 100 and graph["height"] > 100, f"the graph has no room: {graph}"
    assert set(graph["nodes"]) & set(rows), "graph nodes are agents of the trust list"


def test_live_updates_arrive_without_a_reload(stack: LiveStack, open_page: Any) -> None:
    page = open_page(stack.url)
    before = counts(page)
    trust_before = trust_rows(page)
    page.evaluate("() => { window.chorusNoReload = 'still here'; }")

    stack.feed(1500)

    page.wait_for_function(
        """([before, trustBefore]) => {
            const c = document.querySelector('.chorus-state .chorus-counts');
            const rows = [...document.querySelectorAll('.chorus-trust tr[data-agent]')];
            const trustChanged = rows.some(r => !(r.dataset.agent in trustBefore) || trustBefore[r.dataset.agent][0] !== r.dataset.trust);
            return c && Number(c.dataset.version) > before.version && Number(c.dataset.edges) !== before.edges && trustChanged;
        }""",
        arg=[before, trust_before],
        timeout=LIVE_MS,
    )
    assert page.evaluate("() => window.chorusNoReload") == "still here", "the page was reloaded"


def kernel_message(frame: str | bytes) -> dict[str, Any]:
    """The kernel message in one WebSocket frame: JSON text, or Jupyter Server's binary v1
    protocol (a part count, the parts' offsets, then channel, header, parent header, metadata,
    content and buffers; all integers 8-byte little-endian)."""
    if isinstance(frame, str):
        return json.loads(frame)  # type: ignore[no-any-return]
    count = int.from_bytes(frame[:8], "little")
    offsets = [int.from_bytes(frame[8 * i:8 * (i + 1)], "little") for i in range(1, count + 1)]
    parts = [frame[offsets[i]:offsets[i + 1]] for i in range(count - 1)]
    return {"channel": parts[0].decode(), "header": json.loads(parts[1]), "content": json.loads(parts[4])}


def widget_data(message: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """(comm id, data) of a widget message; (None, {}) for any other kernel message."""
    if message.get("header", {}).get("msg_type") != "comm_msg":
        return None, {}
    content = message.get("content", {})
    return content.get("comm_id"), content.get("data", {})


class UpdatesLostWhileLoading:
    """A page's kernel WebSocket that loses the kernel's widget updates while the page loads.

    What Voila's loading race does to a page: the page asks the kernel for every widget's
    state, then registers the widgets' models one by one; an update the kernel sends in
    between finds no model and is dropped (voila-dashboards/voila#1101 describes the race).
    Here the page "loads" until :meth:`finish_loading`: meanwhile every widget update from
    the kernel is dropped, except the heartbeat's (the kernel must be able to start it) and
    the answers to the page's own requests, and the heartbeat's ticks are held back, so the
    kernel cannot tell the page is there yet.

    The page asks for the states with one ``request_states``; if the kernel does not answer
    within 4 s it asks widget by widget (``request_state``), and each answer is an ``update``
    carrying the widget's whole state. Both ways are handled, and :meth:`report` says which
    one the page took and what the kernel wrote to stderr, for a test that times out.
    """

    def __init__(self) -> None:
        self.heartbeat_id: str | None = None
        self.loading = True
        self.dropped = 0
        self.last_drop = 0.0
        self.answers = {"update_states": 0, "whole widget states": 0}
        """Answers to the page's requests while it loads: one update_states, or one whole state per widget."""
        self.kernel_stderr: list[str] = []

    def finish_loading(self) -> None:
        self.loading = False

    def report(self) -> str:
        return (f"answers to the page's requests: {self.answers}; updates dropped: {self.dropped}; "
                f"kernel stderr: {''.join(self.kernel_stderr)[-2000:] or '(none)'}")

    def __call__(self, page_side: Any) -> None:
        kernel_side = page_side.connect_to_server()

        def from_page(frame: str | bytes) -> None:
            comm_id, data = widget_data(kernel_message(frame))
            if self.loading and comm_id is not None and comm_id == self.heartbeat_id and data.get("method") == "update":
                return
            kernel_side.send(frame)

        def from_kernel(frame: str | bytes) -> None:
            message = kernel_message(frame)
            if message["header"].get("msg_type") == "stream" and message["content"].get("name") == "stderr":
                self.kernel_stderr.append(message["content"].get("text", ""))
            comm_id, data = widget_data(message)
            # Only a widget's whole state names its model: an answer to request_state (or the
            # dashboard's resend, which waits for the heartbeat's ticks held back here).
            whole_state = data.get("state", {}).get("_model_name")
            if data.get("method") == "update_states":
                self.answers["update_states"] += int(self.loading)
                self.heartbeat_id = next((i for i, s in data["states"].items() if s["model_name"] == "PlayModel"), None)
            elif data.get("method") == "update" and whole_state is not None:
                self.answers["whole widget states"] += int(self.loading)
                if whole_state == "PlayModel":
                    self.heartbeat_id = comm_id
            elif self.loading and data.get("method") in ("update", "echo_update") and comm_id != self.heartbeat_id:
                self.dropped += 1
                self.last_drop = time.monotonic()
                return
            page_side.send(frame)

        page_side.on_message(from_page)
        kernel_side.on_message(from_kernel)


def wait_until(page: Any, condition: Callable[[], bool], what: str, timeout_s: float = LIVE_MS / 1000,
               details: Callable[[], str] = lambda: "") -> None:
    """Poll ``condition()`` (state Playwright's handlers update: they run while the page waits);
    a timeout names ``what`` and adds ``details()``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}. {details()}")
        page.wait_for_timeout(100)


def test_a_page_that_lost_updates_while_loading_gets_the_whole_view(stack: LiveStack, open_page: Any) -> None:
    stack.wait_pipeline_idle()
    lossy = UpdatesLostWhileLoading()
    page = open_page(stack.url, kernel_route=lossy, wait_for_state=False)
    wait_until(page, lambda: lossy.heartbeat_id is not None, "the page to ask the kernel for its widgets", details=lossy.report)
    stack.feed(300)  # the kernel shows a new fleet while the page loads, and the page loses it
    stack.wait_pipeline_idle()
    # Then the stream is quiet: no later change would repair the page by chance.
    wait_until(page, lambda: lossy.dropped > 0 and time.monotonic() - lossy.last_drop > 3.0, "the kernel's updates to stop",
               details=lossy.report)
    lossy.finish_loading()
    wait_rendered(page)
    shown, rows = wait_same_state([page, open_page(stack.url)])  # what a fresh page shows
    assert shown["decisions"] > 0 and len(rows) == shown["agents"]


def test_clicking_a_node_shows_that_agents_details(stack: LiveStack, open_page: Any) -> None:
    page = open_page(stack.url)
    # A node well inside the canvas (not under another node's label): the one farthest from the rest.
    target = page.evaluate(
        f"""() => {{
            const cy = {CYTOSCAPE_JS};
            cy.userPanningEnabled(false);
            const box = cy.container().getBoundingClientRect();
            const nodes = cy.nodes().filter(n => !n.isParent());
            let best = null, bestDistance = -1;
            nodes.forEach(n => {{
                const p = n.renderedPosition();
                if (p.x < 20 || p.y < 20 || p.x > box.width - 20 || p.y > box.height - 20) return;
                let nearest = Infinity;
                nodes.forEach(m => {{ if (m !== n) {{ const q = m.renderedPosition(); nearest = Math.min(nearest, Math.hypot(p.x - q.x, p.y - q.y)); }} }});
                if (nearest > bestDistance) {{ bestDistance = nearest; best = {{id: n.id(), x: box.left + p.x, y: box.top + p.y}}; }}
            }});
            return best;
        }}"""
    )
    assert target is not None, "no node is drawn inside the graph's canvas"
    page.mouse.click(target["x"], target["y"])
    page.wait_for_selector(f'.chorus-agent-panel [data-agent="{target["id"]}"]', timeout=LIVE_MS)
    detail = page.inner_text(".chorus-agent-panel")
    assert target["id"] in detail and "trust" in detail


def test_two_pages_converge_and_a_late_or_reloaded_page_shows_the_full_state(stack: LiveStack, open_page: Any) -> None:
    first = open_page(stack.url)
    second = open_page(stack.url)
    version_before = max(counts(first)["version"], counts(second)["version"])

    stack.feed(1200)
    for page in (first, second):
        page.wait_for_function("(v) => Number(document.querySelector('.chorus-state .chorus-counts').dataset.version) > v", arg=version_before, timeout=LIVE_MS)
    stack.wait_pipeline_idle()  # the stream pauses
    together = wait_same_state([first, second])
    assert together[0]["agents"] > 0 and together[1]

    late = open_page(stack.url)
    assert wait_same_state([first, second, late]) == together, "a page opened late shows less (or more) than the others"

    first.reload()
    wait_rendered(first)
    assert wait_same_state([first, second, late]) == together, "a reloaded page does not show the full state"


def test_a_request_without_the_token_is_refused(stack: LiveStack, open_page: Any) -> None:
    settings = stack.server.settings
    assert settings.token, "the dashboard runs with token authentication"

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    for url in (settings.base_url, settings.base_url + "?token=wrong-" + settings.token[:8], settings.base_url + "api/kernels"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            opener.open(url, timeout=30)
        assert refused.value.code in (302, 401, 403), f"{url.replace(settings.token[:8], '…')} answered {refused.value.code}"
        if refused.value.code == 302:
            assert "/login" in refused.value.headers["Location"]

    page = open_page(settings.base_url, wait_for_state=False)
    assert page.locator(".chorus-state").count() == 0
    assert page.locator("input[type=password], input[name=password]").count() >= 1, "the login page asks for the token"
