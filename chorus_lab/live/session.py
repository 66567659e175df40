"""LiveSession: a background consumer per kernel that keeps a live view of the fleet.

A session reads ``agent-decisions-processed``, ``system-alerts``, ``causal-graph-updates``
and ``analytics-metrics`` with its **own** consumer: plain partition assignment, no consumer
group, so any number of viewers (notebooks, dashboard pages) read the same stream without
ever taking partitions from each other. It bootstraps from a bounded replay of recent
history (the last ``replay_records`` records of each partition, as they were when
:meth:`LiveSession.start` ran), then follows the topics as they grow.

Everything read is folded into a :class:`~chorus_lab.live.state.LiveState` under a lock;
``decisions``, ``alerts``, ``trust`` and ``metrics`` are bounded pandas DataFrames built from
it on demand. Watchers (the dashboard widgets) are called from the consumer thread at most
every ``refresh_s`` seconds while something changed, so a burst of records costs one widget
update. When the last watcher leaves, the session stops (``stop_when_unwatched``).

>>> import tempfile
>>> session = LiveSession(f"embedded://{tempfile.mkdtemp()}/bus").start()
>>> session.wait_until_caught_up(timeout=30)
True
>>> len(session.trust), session.running
(0, True)
>>> session.stop(); session.running
False
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import pandas as pd

from chorus_lab import config
from chorus_lab.bus import Bus, BusError, TopicPartition, open_bus, resolve_bus_url
from chorus_lab.live import frames
from chorus_lab.live.state import Kind, LiveState, Limits, apply_record

log = logging.getLogger(__name__)
T = TypeVar("T")

TOPICS: dict[str, Kind] = {
    config.DECISIONS: "decisions",
    config.ALERTS: "alerts",
    config.GRAPH_UPDATES: "graph",
    config.METRICS: "metrics",
}
"""The topics a session follows (without prefix), and the kind of record each carries."""

Watcher = Callable[["LiveSession"], None]

_BATCH = 1000
"""Records fetched at most at once."""

_SESSIONS: weakref.WeakSet[LiveSession] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:  # a kernel shutting down must not wait on a consumer thread
    for session in list(_SESSIONS):
        session.stop(timeout=2.0)


class LiveSession:
    """A live, bounded view of the fleet fed by a background consumer.

    ``bus_url`` as the CLI takes it (None: ``$CHORUS_BUS``, else the embedded default);
    ``topic_prefix`` reads a sandbox copy of the topics (e.g. a replay's).
    """

    def __init__(
        self,
        bus_url: str | None = None,
        *,
        topic_prefix: str = "",
        limits: Limits | None = None,
        replay_records: int = 20_000,
        refresh_s: float = 0.25,
        stop_when_unwatched: bool = True,
        bus: Bus | None = None,
    ) -> None:
        if replay_records < 0:
            raise ValueError(f"replay_records must be 0 or more, got {replay_records}")
        if refresh_s <= 0:
            raise ValueError(f"refresh_s must be positive, got {refresh_s}")
        self.bus_url = bus.url if bus is not None else resolve_bus_url(bus_url)
        self.topic_prefix = topic_prefix
        self.replay_records = replay_records
        self.refresh_s = refresh_s
        self.stop_when_unwatched = stop_when_unwatched
        self.tick_s = 5.0
        """Watchers are called at least this often, even when nothing changed."""
        self.gather_s = min(0.05, refresh_s)
        """While following, records gather this long between two fetches (see _consume_until_stopped)."""
        self.topics: dict[str, Kind] = {topic_prefix + name: kind for name, kind in TOPICS.items()}
        self.acknowledged: set[str] = set()
        self.error: str | None = None
        """The last problem reading the bus (the session keeps retrying), or None."""
        self._given_bus = bus
        self._limits = limits or Limits()
        self._state = LiveState(self._limits)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._caught_up = threading.Event()
        self._thread: threading.Thread | None = None
        self._watchers: list[Watcher] = []
        self._watched = False
        self._notified_version = -1
        self._positions: dict[TopicPartition, int] = {}
        self._targets: dict[TopicPartition, int] = {}
        self._bootstrapped = False
        _SESSIONS.add(self)

    def __repr__(self) -> str:
        return f"LiveSession({self.bus_url!r}, topic_prefix={self.topic_prefix!r}, running={self.running})"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> LiveSession:
        """Start the background consumer (no-op when running); return the session."""
        with self._lock:
            if self.running:
                return self
            self._stop.clear()
            self._caught_up.clear()
            self._thread = threading.Thread(target=self._run, name=f"chorus-live-{id(self):x}", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the consumer and wait for it (idempotent). The state stays readable."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def wait_until_caught_up(self, timeout: float = 30.0) -> bool:
        """Wait until the session has read up to the end offsets seen when it started.

        True once caught up; False after ``timeout`` seconds (or if the session is not running).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._caught_up.wait(0.05):
                return True
            if self._thread is None or not self._thread.is_alive():
                return self._caught_up.is_set()
        return self._caught_up.is_set()

    @property
    def caught_up(self) -> bool:
        return self._caught_up.is_set()

    # ------------------------------------------------------------------ watching

    def watch(self, callback: Watcher) -> Callable[[], None]:
        """Call ``callback(session)`` after changes (coalesced); return a function that stops it.

        Callbacks run on the consumer thread; they should read the state with :meth:`read`.
        """
        with self._lock:
            self._watchers.append(callback)
            self._watched = True

        def unwatch() -> None:
            with self._lock:
                if callback in self._watchers:
                    self._watchers.remove(callback)
                empty = not self._watchers
            if empty and self.stop_when_unwatched:
                self.stop()

        return unwatch

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    # ------------------------------------------------------------------ reading

    def read(self, function: Callable[[LiveState], T]) -> T:
        """Run ``function(state)`` under the session's lock and return its result.

        The function must not keep references to the state's mutable parts.
        """
        with self._lock:
            return function(self._state)

    @property
    def decisions(self) -> pd.DataFrame:
        """Recent processed decisions (bounded), oldest first."""
        return self.read(frames.decisions_frame)

    @property
    def alerts(self) -> pd.DataFrame:
        """Recent alerts (bounded), newest first."""
        return self.read(frames.alerts_frame)

    @property
    def trust(self) -> pd.DataFrame:
        """The trust table: one row per known agent, lowest trust first."""
        return self.read(frames.trust_frame)

    @property
    def metrics(self) -> pd.DataFrame:
        """Metric snapshots (bounded), oldest first."""
        return self.read(frames.metrics_frame)

    @property
    def version(self) -> int:
        """How many records have been applied; grows with every update."""
        return self.read(lambda s: s.version)

    @property
    def undecodable(self) -> int:
        """Records skipped because they could not be decoded."""
        return self.read(lambda s: s.undecodable)

    def fingerprint(self) -> dict[str, Any]:
        """The viewer-visible state as plain data, for comparing sessions."""
        return self.read(lambda s: s.fingerprint())

    def request_refresh(self) -> None:
        """Have the watchers called again at the next refresh, even if nothing new arrives.

        For a watcher that updated only part of its view this time (the dashboard's quick
        refreshes) and must still bring the rest up to date once the stream goes quiet.
        """
        with self._lock:
            self._notified_version = -1

    def acknowledge(self, *alert_ids: str) -> None:
        """Mark alerts as acknowledged in this session's views, and tell the watchers."""
        with self._lock:
            self.acknowledged.update(alert_ids)
            self._notified_version = -1
        self._notify(force=True)

    # ------------------------------------------------------------------ the consumer thread

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self._consume_until_stopped()
                return
            except BusError as exc:
                self.error = str(exc)
                log.warning("live session on %s: %s (retrying in %.1fs)", self.bus_url, exc, backoff)
            except Exception as exc:  # a viewer must survive anything the stream throws at it
                self.error = f"{type(exc).__name__}: {exc}"
                log.exception("live session on %s failed; restarting its consumer", self.bus_url)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 10.0)

    def _consume_until_stopped(self) -> None:
        bus = self._given_bus or open_bus(self.bus_url)
        consumer = bus.consumer(None)
        admin = bus.admin()
        # Kept across reconnects: a restarted consumer resumes where the last one stopped,
        # so nothing is folded twice.
        positions, targets = self._positions, self._targets
        first = not self._bootstrapped
        next_discovery = 0.0
        last_notify = 0.0
        interval = self.refresh_s
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_discovery:
                    self._discover(admin, consumer, positions, targets, bootstrap=first)
                    if set(positions) != set(consumer.assignment()):
                        consumer.assign(dict(positions))
                    first = False
                    self._bootstrapped = True
                    complete = len({tp.topic for tp in positions}) == len(self.topics)
                    next_discovery = now + (30.0 if complete else 1.0)
                records = consumer.consume(_BATCH, 0.1)
                if records:
                    with self._lock:
                        state = self._state
                        for record in records:
                            apply_record(state, self.topics[record.topic], record.value)
                            tp = TopicPartition(record.topic, record.partition)
                            positions[tp] = max(positions.get(tp, 0), record.offset + 1)
                    self.error = None
                if not self._caught_up.is_set() and self._reached(consumer, positions, targets, bool(records)):
                    self._caught_up.set()
                    last_notify = 0.0
                # While bootstrapping, a refresh per second is enough: the page is catching up.
                wait = interval if self._caught_up.is_set() else max(interval, 1.0)
                since = time.monotonic() - last_notify
                if since >= wait:
                    began = time.monotonic()
                    # Watchers also hear from the session every few seconds while nothing
                    # changes (so a dashboard can notice that its page went away).
                    if self._notify(force=since >= self.tick_s):
                        last_notify = time.monotonic()
                        # Graceful degradation: when the watchers take long (a large fleet),
                        # refresh less often so that consuming keeps up with the stream.
                        interval = max(self.refresh_s, 3 * (last_notify - began))
                if self._caught_up.is_set() and 0 < len(records) < _BATCH:
                    # Following a busy stream, a fetch right after the last one finds only the
                    # few records of one producer commit, and each fetch asks every followed
                    # partition: one fetch per gather_s instead of one per commit (it was a
                    # tenth of a core per kernel at 2,000 records/s on the embedded bus).
                    self._stop.wait(self.gather_s)
        finally:
            consumer.close()
            if self._given_bus is None:
                bus.close()

    def _discover(self, admin: Any, consumer: Any, positions: dict[TopicPartition, int], targets: dict[TopicPartition, int], *, bootstrap: bool) -> bool:
        """Add partitions of followed topics not assigned yet; return whether any were added.

        At the first discovery each partition starts ``replay_records`` before its end and
        that end is a catch-up target; partitions found later (a topic created after the
        session started) are read from their beginning.
        """
        added = False
        for topic in self.topics:
            description = admin.describe(topic)
            if description is None:
                continue
            for partition in range(description.partitions):
                tp = TopicPartition(topic, partition)
                if tp in positions:
                    continue
                low, high = consumer.watermarks(tp)
                if bootstrap:
                    positions[tp] = max(low, high - self.replay_records)
                    targets[tp] = high
                else:
                    positions[tp] = low
                added = True
        return added

    @staticmethod
    def _reached(consumer: Any, positions: dict[TopicPartition, int], targets: dict[TopicPartition, int], busy: bool) -> bool:
        behind = [tp for tp, end in targets.items() if positions.get(tp, 0) < end]
        if behind and not busy:
            # Transaction markers take offsets but are never returned: ask for the position.
            for tp, position in consumer.position(behind).items():
                positions[tp] = max(positions.get(tp, 0), position)
            behind = [tp for tp in behind if positions[tp] < targets[tp]]
        return not behind

    def _notify(self, force: bool = False) -> bool:
        """Call the watchers if the state changed since the last call; return whether they ran."""
        with self._lock:
            version = self._state.version
            if not self._watchers or (version == self._notified_version and not force):
                return False
            self._notified_version = version
            watchers = list(self._watchers)
        for callback in watchers:
            try:
                callback(self)
            except Exception:
                log.exception("a live-session watcher failed")
        return True
