"""Debian's Chromium driven by Playwright, allowed to talk to this machine only.

Shared by the browser tests (tests/e2e), ``scripts/screenshot_dashboard.py`` and
``bench/dashboard_load.py``. Playwright is a development dependency and is imported only
when a browser is launched; its own browser downloads are never used (``playwright install``
fails on these machines): ``scripts/setup.sh --with-browser`` installs ``/usr/bin/chromium``.

>>> is_loopback("http://127.0.0.1:8866/voila/static/x.js"), is_loopback("https://cdn.jsdelivr.net/x.css")
(True, False)
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path
from typing import Any

CHROMIUM = Path(os.environ.get("CHORUS_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
)
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def is_loopback(url: str) -> bool:
    """Whether a page request stays on this machine (``data:`` and ``blob:`` URLs do).

    >>> is_loopback("data:image/png;base64,AAAA"), is_loopback("http://localhost:1/")
    (True, True)
    """
    if url.startswith(("data:", "blob:")):
        return True
    return urllib.parse.urlsplit(url).hostname in LOOPBACK_HOSTS


def require_chromium() -> Path:
    """The Chromium executable, or ``FileNotFoundError`` saying how to install it."""
    if not CHROMIUM.exists():
        raise FileNotFoundError(f"{CHROMIUM} is missing: run `bash scripts/setup.sh --with-browser` (installs Debian's chromium)")
    return CHROMIUM


def launch(playwright: Any) -> Any:
    """Launch headless Chromium from a running ``sync_playwright()``."""
    return playwright.chromium.launch(executable_path=str(require_chromium()), args=list(CHROMIUM_ARGS))


def loopback_only(context: Any, outside: list[str]) -> None:
    """Abort every request of ``context`` that leaves this machine, appending its URL to ``outside``."""

    def route(request_route: Any) -> None:
        url = request_route.request.url
        if is_loopback(url):
            request_route.continue_()
        else:
            outside.append(url)
            request_route.abort()

    context.route("**/*", route)
