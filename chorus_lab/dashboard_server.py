"""Serve the operator dashboard (``dashboards/operator.ipynb``) with Voila, safely by default.

What ``chorus-lab dashboard`` and ``chorus-lab demo`` start:

- bound to 127.0.0.1 only; token authentication on, with a fresh random token (handed to
  Voila through ``JUPYTER_TOKEN`` so it never appears on a command line or in Voila's log);
- the ``chorus`` Voila template (``dashboards/jupyter/voila/templates/chorus``): Voila's
  ``lab`` template without its links to public CDNs, so the page never reaches the internet;
- idle kernels culled (a closed tab must not leave a kernel consuming the bus forever);
- the bus URL handed to every kernel in ``CHORUS_BUS``, made absolute because kernels run
  in the notebook's directory, not the caller's.

The server is a child process in its own session: Ctrl-C in the terminal reaches the
caller, which stops Voila (SIGTERM: Voila shuts its kernels down) and then kills whatever
of its process tree is still alive, so no kernel is left behind.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from chorus_lab.bus import BUS_ENV, resolve_bus_url

DASHBOARDS_DIR = Path(__file__).resolve().parent.parent / "dashboards"
DEFAULT_NOTEBOOK = DASHBOARDS_DIR / "operator.ipynb"
TEMPLATE_ROOT = DASHBOARDS_DIR / "jupyter"
"""A Jupyter data directory holding only ``voila/templates/chorus``; added to ``JUPYTER_PATH``."""
TEMPLATE = "chorus"
LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 8866
ORPHAN_ENV = "CHORUS_DASHBOARD_ORPHAN_S"
"""How the server tells the dashboard notebook its ``orphan_after_s`` (seconds)."""


class DashboardError(RuntimeError):
    """The dashboard server could not start (port taken, Voila exited, not ready in time)."""


def new_token() -> str:
    """A fresh random token for the dashboard URL (32 URL-safe characters).

    >>> len(new_token()), new_token() != new_token()
    (32, True)
    """
    return secrets.token_urlsafe(24)


def absolute_bus_url(url: str | None, cwd: Path | None = None) -> str:
    """The bus URL with an embedded bus's relative directory made absolute (against ``cwd``).

    >>> absolute_bus_url("embedded://.chorus/bus", Path("/srv/fleet"))
    'embedded:///srv/fleet/.chorus/bus'
    >>> absolute_bus_url("embedded:///data/bus", Path("/srv"))
    'embedded:///data/bus'
    >>> absolute_bus_url("kafka://127.0.0.1:9092", Path("/srv"))
    'kafka://127.0.0.1:9092'
    """
    resolved = resolve_bus_url(url)
    scheme, sep, rest = resolved.partition("://")
    if scheme != "embedded" or not sep or rest.startswith("/"):
        return resolved
    base = cwd if cwd is not None else Path.cwd()
    return "embedded://" + str((base / (rest or ".chorus/bus")).resolve())


@dataclass(frozen=True, slots=True)
class DashboardSettings:
    """How to serve the dashboard. ``token=None`` turns authentication off (``--no-token``).

    >>> DashboardSettings("kafka://127.0.0.1:9092", port=9000, token="t0k").url
    'http://127.0.0.1:9000/?token=t0k'
    >>> DashboardSettings("kafka://127.0.0.1:9092", port=0)
    Traceback (most recent call last):
    ...
    ValueError: port: must be between 1 and 65535, got 0
    """

    bus_url: str
    port: int = DEFAULT_PORT
    token: str | None = field(default_factory=new_token)
    notebook: Path = DEFAULT_NOTEBOOK
    cull_idle_timeout_s: int = 600
    cull_interval_s: int = 60
    orphan_after_s: float = 300.0
    """A dashboard whose page stopped ticking for this long detaches and stops its consumer
    (``OperatorDashboard(orphan_after_s=...)``), so its kernel falls silent and is culled
    ``cull_idle_timeout_s`` later."""

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port: must be between 1 and 65535, got {self.port}")
        if self.token == "":
            raise ValueError("token: must not be empty (use None to turn authentication off)")
        if self.cull_idle_timeout_s <= 0 or self.cull_interval_s <= 0:
            raise ValueError("cull_idle_timeout_s and cull_interval_s: must be positive")
        if self.orphan_after_s <= 0:
            raise ValueError(f"orphan_after_s: must be positive, got {self.orphan_after_s}")

    @property
    def base_url(self) -> str:
        """The server's address without the token."""
        return f"http://{LOOPBACK}:{self.port}/"

    @property
    def url(self) -> str:
        """The address to open: with ``?token=…`` when authentication is on."""
        if self.token is None:
            return self.base_url
        return self.base_url + "?" + urllib.parse.urlencode({"token": self.token})


def voila_command(settings: DashboardSettings, python: str = sys.executable) -> list[str]:
    """The Voila command line for ``settings`` (the token is not in it: see :func:`voila_environment`).

    >>> command = voila_command(DashboardSettings("kafka://h:1", port=9000, token="secret"), python="py")
    >>> command[:3], "--Voila.ip=127.0.0.1" in command, "--token" in command, any("secret" in part for part in command)
    (['py', '-m', 'voila'], True, True, False)
    >>> "--token" in voila_command(DashboardSettings("kafka://h:1", token=None), python="py")
    False
    """
    command = [
        python, "-m", "voila", str(settings.notebook),
        "--no-browser",
        f"--Voila.ip={LOOPBACK}",
        f"--port={settings.port}",
        # Voila would quietly move to the next free port; a taken port must be an error.
        "--Voila.port_retries=0",
        f"--template={TEMPLATE}",
        "--strip_sources=True",
        f"--MappingKernelManager.cull_idle_timeout={settings.cull_idle_timeout_s}",
        f"--MappingKernelManager.cull_interval={settings.cull_interval_s}",
    ]
    if settings.token is not None:
        # The flag turns authentication on; the token itself comes from JUPYTER_TOKEN.
        command.append("--token")
    return command


def voila_environment(settings: DashboardSettings, base: Mapping[str, str]) -> dict[str, str]:
    """The environment of the Voila process (inherited by its kernels).

    >>> env = voila_environment(DashboardSettings("kafka://h:1", token="t"), {"JUPYTER_PATH": "/x", "JUPYTER_TOKEN": "old"})
    >>> env["CHORUS_BUS"], env["JUPYTER_TOKEN"], env["JUPYTER_PATH"].endswith(os.pathsep + "/x")
    ('kafka://h:1', 't', True)
    >>> "JUPYTER_TOKEN" in voila_environment(DashboardSettings("kafka://h:1", token=None), {"JUPYTER_TOKEN": "old"})
    False
    """
    env = dict(base)
    env[BUS_ENV] = settings.bus_url
    env[ORPHAN_ENV] = f"{settings.orphan_after_s:g}"
    env["JUPYTER_PATH"] = os.pathsep.join(p for p in (str(TEMPLATE_ROOT), base.get("JUPYTER_PATH", "")) if p)
    env.pop("JUPYTER_TOKEN", None)
    env.pop("JUPYTER_TOKEN_FILE", None)
    if settings.token is not None:
        env["JUPYTER_TOKEN"] = settings.token
    # Kernels of a served dashboard must not write .pyc files next to the project's modules.
    env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    return env


def require_free_port(port: int, host: str = LOOPBACK) -> None:
    """Raise :class:`DashboardError` naming the port if something already listens on it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Ports in TIME_WAIT are fine for Voila (tornado sets SO_REUSEADDR); only a listener conflicts.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise DashboardError(
                f"{host}:{port} is already in use ({exc.strerror}); stop what listens there or pass another --port"
            ) from exc


def _port_answers(port: int, host: str = LOOPBACK) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``, children first (Linux /proc; empty elsewhere).

    >>> descendants(os.getpid()) == [] or all(isinstance(p, int) for p in descendants(os.getpid()))
    True
    """
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = entry.read_text()
        except OSError:
            continue
        # Field 4 is the parent pid; the command name (field 2) may contain spaces, so split after ')'.
        fields = text.rsplit(")", 1)[-1].split()
        if len(fields) >= 2:
            children.setdefault(int(fields[1]), []).append(int(entry.parent.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class DashboardServer:
    """A Voila process serving the dashboard; a context manager that stops it on exit.

    ``start()`` returns once the server accepts connections (raising :class:`DashboardError`
    with the end of Voila's log if it exits or does not answer in time); ``stop()`` ends it
    and every kernel it started.
    """

    def __init__(self, settings: DashboardSettings, *, log: IO[bytes] | None = None) -> None:
        self.settings = settings
        self._log = log
        self._process: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None

    @property
    def url(self) -> str:
        return self.settings.url

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def alive(self) -> bool:
        """Whether the Voila process is running."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 60.0) -> str:
        if not self.settings.notebook.is_file():
            raise DashboardError(f"dashboard notebook {self.settings.notebook} does not exist")
        require_free_port(self.settings.port)
        output: IO[bytes] | int
        if self._log is not None:
            output = self._log
        else:
            import tempfile

            handle, name = tempfile.mkstemp(prefix="chorus-voila-", suffix=".log")
            self._log_path = Path(name)
            output = handle
        self._process = subprocess.Popen(
            voila_command(self.settings),
            env=voila_environment(self.settings, os.environ),
            cwd=self.settings.notebook.parent,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            # Its own session: the terminal's Ctrl-C goes to us, and we stop Voila in order.
            start_new_session=True,
        )
        if isinstance(output, int):
            os.close(output)
        deadline = time.monotonic() + timeout
        while not _port_answers(self.settings.port):
            status = self._process.poll()
            if status is not None:
                tail = self._log_tail()
                self._process = None
                if self._log_path is not None:
                    self._log_path.unlink(missing_ok=True)
                raise DashboardError(f"Voila exited with status {status}" + (f"; its log ends with:\n{tail}" if tail else ""))
            if time.monotonic() > deadline:
                self.stop()
                raise DashboardError(f"Voila did not answer on {self.settings.base_url} within {timeout:.0f} s")
            time.sleep(0.1)
        return self.url

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM Voila (it shuts its kernels down), then SIGKILL whatever of its tree is left."""
        process, self._process = self._process, None
        if process is None:
            return
        tree = descendants(process.pid)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        for pid in tree:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)

    def __enter__(self) -> DashboardServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _log_tail(self, lines: int = 20) -> str:
        if self._log_path is None or not self._log_path.exists():
            return ""
        text = self._log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])
