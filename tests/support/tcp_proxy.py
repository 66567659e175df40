"""A loopback TCP proxy that can simulate a network outage.

Clients connect to ``TcpProxy.bootstrap``; bytes are forwarded to the upstream
address unchanged. ``cut()`` drops every live connection and closes new ones at
once, as a client sees a broken network; ``restore()`` lets traffic through again.
Used with the broker's PROXIED listener, whose advertised address is the proxy's,
so a Kafka client bootstrapped through the proxy reaches the broker only through it.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable
from types import TracebackType

_CHUNK = 64 * 1024


class TcpProxy:
    """A threaded TCP forwarder from ``host:listen_port`` to ``upstream``.

    Example::

        with TcpProxy(19092, ("127.0.0.1", 9092)) as proxy:
            proxy.cut()      # clients lose their connections
            proxy.restore()  # and can reconnect
    """

    def __init__(self, listen_port: int, upstream: tuple[str, int], host: str = "127.0.0.1") -> None:
        self.host = host
        self.listen_port = listen_port
        self.upstream = upstream
        self._server: socket.socket | None = None
        self._accepter: threading.Thread | None = None
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self._cut = False
        self._closed = threading.Event()

    @property
    def bootstrap(self) -> str:
        """The ``host:port`` clients connect to."""
        return f"{self.host}:{self.listen_port}"

    @property
    def is_cut(self) -> bool:
        """True between ``cut()`` and ``restore()``."""
        return self._cut

    @property
    def live_connections(self) -> int:
        """How many client connections are being forwarded right now."""
        with self._lock:
            return len(self._links)

    def start(self) -> TcpProxy:
        """Listen and start forwarding; returns self."""
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # The port may still hold TIME_WAIT entries from an earlier user.
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((self.host, self.listen_port))
        server.listen(64)
        # A short timeout lets the accept loop notice close() without platform tricks.
        server.settimeout(0.2)
        self._server = server
        self._accepter = threading.Thread(target=self._accept_loop, name=f"tcp-proxy-{self.listen_port}", daemon=True)
        self._accepter.start()
        return self

    def cut(self) -> None:
        """Drop all live connections and close any new one immediately."""
        with self._lock:
            self._cut = True
            links = list(self._links)
        for link in links:
            link.close()

    def restore(self) -> None:
        """Forward new connections again (clients reconnect on their own)."""
        with self._lock:
            self._cut = False

    def close(self) -> None:
        """Stop listening and drop every connection."""
        self._closed.set()
        self.cut()
        if self._accepter is not None:
            self._accepter.join(timeout=5)
        if self._server is not None:
            self._server.close()

    def __enter__(self) -> TcpProxy:
        return self.start() if self._server is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _accept_loop(self) -> None:
        assert self._server is not None
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            if self._cut:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            link = _Link(client, upstream, self._forget)
            with self._lock:
                cut_meanwhile = self._cut  # cut() ran while we were connecting upstream
                if not cut_meanwhile:
                    self._links.add(link)
            if cut_meanwhile:
                link.close()  # outside the lock: close() calls back into _forget()
                continue
            link.start()

    def _forget(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)


class _Link:
    """One proxied connection: a pump thread per direction."""

    def __init__(self, client: socket.socket, upstream: socket.socket, on_close: Callable[[_Link], None]) -> None:
        self._client = client
        self._upstream = upstream
        self._on_close = on_close
        self._closed = False
        self._lock = threading.Lock()

    def start(self) -> None:
        for source, sink in ((self._client, self._upstream), (self._upstream, self._client)):
            threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(_CHUNK):
                sink.sendall(data)
        except OSError:
            pass
        # Kafka never half-closes, so one side ending ends the connection.
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for sock in (self._client, self._upstream):
            _reset(sock)
        self._on_close(self)


def _reset(sock: socket.socket) -> None:
    """Abort a connection with a RST, waking any thread blocked on it."""
    try:
        # Linger 0 makes close() send RST: the client sees the link break at once.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
