#!/usr/bin/env python3
"""Render the operator dashboard in headless Chromium and save docs/img/dashboard.png.

A simulated fleet with every incident scenario goes through a fresh embedded bus and the
whole pipeline; the dashboard is served as ``chorus-lab dashboard`` serves it, opened in
Chromium (loopback only), the lowest-trust agent is selected, and the page is captured
once the stream is processed.

    .venv/bin/python scripts/screenshot_dashboard.py [--out docs/img/dashboard.png] [--agents 40] [--messages 4000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chorus_lab import config, simulate  # noqa: E402
from chorus_lab.broker import free_loopback_port  # noqa: E402
from chorus_lab.browser import launch, loopback_only  # noqa: E402
from chorus_lab.bus import open_bus  # noqa: E402
from chorus_lab.client import AgentClient  # noqa: E402
from chorus_lab.dashboard_server import DashboardServer, DashboardSettings  # noqa: E402
from chorus_lab.processor import run_pipeline  # noqa: E402

RENDERED_JS = """(expected) => {
    const c = document.querySelector('.chorus-state .chorus-counts');
    const box = [...document.querySelectorAll('.custom-widget')].find(e => e._cyreg && e._cyreg.cy);
    return c && box && box._cyreg.cy.nodes().length > 0 && Number(c.dataset.decisions) >= expected
        && document.querySelectorAll('.chorus-trust tr[data-agent]').length > 0;
}"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "dashboard.png")
    parser.add_argument("--agents", type=int, default=40)
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the page (default %(default)s)")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="chorus-screenshot-") as scratch:
        bus_url = f"embedded://{scratch}/bus"
        bus = open_bus(bus_url)
        bus.admin().create_topics(config.topic_specs())
        fleet = simulate.SimulationConfig(agents=args.agents, messages=args.messages, seed=7, start=datetime.now(UTC))
        messages = list(simulate.iter_messages(fleet))
        with AgentClient(bus, spool_dir=Path(scratch) / "spool") as client:
            for start in range(0, len(messages), 500):
                client.send_many(messages[start:start + 500])
            if client.flush(60):
                raise RuntimeError("the embedded bus did not take every simulated message")
        print(f"{len(messages)} simulated messages on {bus_url}", flush=True)

        stop = threading.Event()
        pipeline = threading.Thread(target=run_pipeline, args=(open_bus(bus_url),), kwargs={"stop": stop, "instance_id": "screenshot"}, daemon=True)
        pipeline.start()
        server = DashboardServer(DashboardSettings(bus_url, port=free_loopback_port()))
        try:
            server.start()
            with sync_playwright() as playwright:
                browser = launch(playwright)
                context = browser.new_context(viewport={"width": 1400, "height": 1700}, device_scale_factor=1)
                outside: list[str] = []
                loopback_only(context, outside)
                page = context.new_page()
                page.goto(server.url)
                # Most decisions processed: the trust list and the alerts have something to say.
                page.wait_for_function(RENDERED_JS, arg=int(len(messages) * 0.9), timeout=args.timeout * 1000)
                lowest = page.eval_on_selector_all(
                    ".chorus-trust tr[data-agent]", "rows => rows.map(r => [Number(r.dataset.trust), r.dataset.agent]).sort((a, b) => a[0] - b[0])[0][1]"
                )
                search = page.get_by_placeholder("agent id (Enter selects an exact match)")
                search.fill(lowest)
                search.press("Enter")
                page.wait_for_selector(f'.chorus-agent-panel [data-agent="{lowest}"]', timeout=args.timeout * 1000)
                # The graph draws on a canvas after the trait update; give it two animation frames.
                page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
                args.out.parent.mkdir(parents=True, exist_ok=True)
                # Voila scrolls an inner element, so full_page would not help: the viewport is tall instead.
                page.screenshot(path=str(args.out))
                browser.close()
            if outside:
                raise RuntimeError(f"the dashboard tried to reach the internet: {outside[:3]}")
        finally:
            server.stop()
            stop.set()
            pipeline.join(60)
            bus.close()
    print(f"saved {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out} (agent {lowest} selected)")
    return 0


if __name__ == "__main__":
    started = time.monotonic()
    status = main()
    print(f"took {time.monotonic() - started:.0f} s")
    sys.exit(status)
