"""``chorus-lab dashboard`` and ``chorus-lab demo`` as a user runs them: real processes, a real browser."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from chorus_lab.broker import free_loopback_port
from chorus_lab.dashboard_server import descendants
from tests.e2e.conftest import counts

CLI = [sys.executable, "-m", "chorus_lab.cli"]


class Lines:
    """The lines a process prints, readable with a deadline."""

    def __init__(self, stream: Any) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: Any) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no line matching {pattern!r} within {timeout:.0f} s; output so far: {self.seen[-10:]}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead but not yet reaped by its parent.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z")


def test_dashboard_names_a_port_that_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*CLI, "dashboard", "--bus", f"embedded://{tmp_path / 'bus'}", "--port", str(port)],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )
    assert result.returncode == 1
    assert f"127.0.0.1:{port} is already in use" in result.stderr
    assert "--port" in result.stderr, "the error says how to fix it"


def test_demo_serves_a_live_dashboard_and_ctrl_c_stops_everything(tmp_path: Path, open_page: Any) -> None:
    port = free_loopback_port()
    demo = subprocess.Popen(
        [*CLI, "demo", "--bus", f"embedded://{tmp_path / 'bus'}", "--port", str(port), "--agents", "20", "--rate", "300", "--messages", "3000"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
    )
    try:
        lines = Lines(demo.stdout)
        url = lines.wait_for(r"dashboard: (http://127\.0\.0\.1:\d+/\?token=\S+)", timeout=120).group(1)
        page = open_page(url)  # waits until graph and trust list show what the pipeline decided
        assert counts(page)["decisions"] > 0
        tree = descendants(demo.pid)
        assert any("voila" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace") for pid in tree if _alive(pid))

        demo.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert demo.wait(90) == 0
        lines.wait_for(r"^stopped: ", timeout=10)
        left = [pid for pid in tree if _alive(pid)]
        assert not left, f"processes left behind by the demo: {left}"
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(10)


def _kernels(pid: int) -> list[int]:
    """The ipykernel processes below ``pid`` (Voila starts one per page view)."""
    found = []
    for child in descendants(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"ipykernel" in command and _alive(child):
            found.append(child)
    return found


def test_a_closed_pages_kernel_is_culled(tmp_path: Path, open_page: Any) -> None:
    """Closing the tab must not leave a kernel consuming the bus until the server stops."""
    from chorus_lab import config
    from chorus_lab.bus import open_bus
    from chorus_lab.dashboard_server import DashboardServer, DashboardSettings

    bus_url = f"embedded://{tmp_path / 'bus'}"
    bus = open_bus(bus_url)
    bus.admin().create_topics(config.topic_specs())
    bus.close()
    settings = DashboardSettings(bus_url, port=free_loopback_port(), cull_idle_timeout_s=10, cull_interval_s=2, orphan_after_s=8)
    with (tmp_path / "voila.log").open("wb") as log, DashboardServer(settings, log=log) as server:
        assert server.pid is not None
        page = open_page(server.url, wait_for_state=False)
        page.wait_for_selector(".chorus-state .chorus-counts", state="attached", timeout=120_000)
        assert _kernels(server.pid), "the page's kernel is running while the page is open"
        page.context.close()
        deadline = time.monotonic() + 120
        while _kernels(server.pid) and time.monotonic() < deadline:
            time.sleep(1.0)  # the polling interval of a condition with a deadline
        assert not _kernels(server.pid), "the closed page's kernel was still running 120 s later"
