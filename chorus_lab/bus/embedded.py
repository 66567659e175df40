"""The ``embedded`` backend: a durable log in one directory, shared by processes on one machine.

``EmbeddedBus("/some/dir")`` (``embedded:///some/dir``) keeps everything in one SQLite
database, ``<dir>/bus.sqlite3``, in WAL mode: topics and their partitions, the records,
consumer groups (members, partition ownership, committed offsets) and transactional
producer epochs. Every producer, consumer and admin has its own connection, so any number
of processes on the machine (a notebook kernel, the processor, the simulator) can read and
write the same bus at once: readers never block, writers take turns.

Semantics follow Kafka's (see :mod:`chorus_lab.bus.base`):

- a keyed record goes to ``partition_for_key(key, n)`` (Kafka's murmur2); a keyless one
  round-robin; producing to a missing topic fails in the delivery report, topics are never
  auto-created;
- producers buffer records in memory and write them in one SQLite transaction on
  ``poll``/``flush`` (or when the buffer holds a few thousand), which is what makes the log
  fast; delivery callbacks run inside ``poll``/``flush``;
- a transaction (``producer(transactional_id=...)``) keeps its records in memory and writes
  them, with the consumer offsets sent to it, in one SQLite transaction at
  ``commit_transaction``, after checking the producer's epoch: read-committed is free,
  since uncommitted records are never in the log;
- consumer groups keep their members in the database; each member heartbeats from
  ``consume``/``commit``, and one that stays silent longer than its session timeout is
  dropped. Partitions are spread with Kafka's range assignor (per topic, over the sorted
  member ids, so co-partitioned topics stay together). A partition changes hands only once
  its previous owner has released it (after its ``on_revoke``) or has been dropped, so two
  members never own one partition; a member that lost a partition cannot commit it
  (``CommitFailedError``).

Durability: WAL with ``synchronous=NORMAL``. A commit that returned survives the crash of
any process (SIGKILL included); after a power loss or OS crash, the last commits before the
crash may be lost (the database itself stays consistent). ``EmbeddedBus(path,
synchronous="FULL")`` syncs every commit to disk instead, at a cost in throughput.

Retention and compaction are lazy, as in Kafka where the log cleaner runs in the
background: producers run them at most once per ``maintenance_interval`` (5 s by default,
coordinated across processes), and ``EmbeddedBus.enforce_retention()`` and
``EmbeddedBus.compact(topic)`` run them now. Retention deletes a prefix of each partition
up to the first record younger than ``retention.ms`` and advances the log start, as Kafka
deletes whole old segments. Compaction keeps the newest record per key and drops
tombstones older than ``delete.retention.ms`` (default one day); offsets never change, so
a compacted partition has gaps, as in Kafka.

What the embedded backend does less than Kafka:

- one machine only, on a local file system (SQLite's WAL needs shared memory; not NFS),
  and no replication: the copy on this disk is the only one;
- ``replication_factor`` is accepted and ignored (always reported as 1); ``retention.bytes``
  and other size/segment settings are stored but not enforced;
- no background heartbeat thread: a group member heartbeats when it calls ``consume`` or
  ``commit``, so the session timeout (10 s by default) also bounds the time between
  ``consume`` calls, like Kafka's ``max.poll.interval.ms``;
- a transaction's records wait in the producer's memory until commit, so one transaction
  holds at most ``max_buffered`` records (100 000 by default); their delivery callbacks run
  after the commit (or report the abort), not as each record is sent;
- rebalances are incremental: ``on_revoke`` gets only the partitions that leave a member
  and ``on_assign`` only those that arrive (Kafka's eager protocol passes all of them),
  and neither is called with an empty list;
- waits are bounded by SQLite's busy timeout (30 s) rather than by ``flush``'s timeout.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import struct
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Literal, NamedTuple

from chorus_lab.bus.base import (
    Admin,
    Bus,
    BusError,
    BusUnavailableError,
    CommitFailedError,
    ConfigurationError,
    Consumer,
    DeliveryReport,
    Headers,
    Producer,
    ProducerFencedError,
    Record,
    TopicDescription,
    TopicError,
    TopicPartition,
    TopicSpec,
    TransactionAbortedError,
)
from chorus_lab.bus.partitioner import partition_for_key

log = logging.getLogger(__name__)

DB_FILE = "bus.sqlite3"
SCHEMA_VERSION = 1

DEFAULT_SESSION_TIMEOUT = 10.0
DEFAULT_MAX_BUFFERED = 100_000
DEFAULT_MAINTENANCE_INTERVAL = 5.0
DEFAULT_BUSY_TIMEOUT = 30.0
DEFAULT_DELETE_RETENTION_MS = 24 * 3600 * 1000

# Large enough that the per-transaction cost disappears, small enough to keep the write
# lock for only a few milliseconds.
_WRITE_BATCH = 5_000
# consume() sleeps between cheap change checks; the cap is the worst added latency.
_WAIT_MIN = 0.001
_WAIT_MAX = 0.02

_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_CLEANUP_POLICIES = {"delete", "compact", "compact,delete", "delete,compact"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS topics(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    partitions INTEGER NOT NULL,
    config TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS partitions(
    topic_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    log_start INTEGER NOT NULL DEFAULT 0,
    next_offset INTEGER NOT NULL DEFAULT 0,
    cleaned_offset INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (topic_id, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records(
    topic_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    key BLOB,
    value BLOB,
    headers BLOB,
    PRIMARY KEY (topic_id, partition, offset)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_by_time ON records(topic_id, partition, timestamp_ms);
CREATE TABLE IF NOT EXISTS consumer_groups(
    group_id TEXT PRIMARY KEY,
    generation INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS group_members(
    group_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    topics TEXT NOT NULL,
    session_timeout_ms INTEGER NOT NULL,
    heartbeat_ms INTEGER NOT NULL,
    PRIMARY KEY (group_id, member_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS group_owners(
    group_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    member_id TEXT NOT NULL,
    PRIMARY KEY (group_id, topic, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS group_offsets(
    group_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    PRIMARY KEY (group_id, topic, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS producers(
    transactional_id TEXT PRIMARY KEY,
    epoch INTEGER NOT NULL
);
"""

_INSERT_RECORD = (
    "INSERT INTO records(topic_id, partition, offset, timestamp_ms, key, value, headers) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_FETCH = (
    "SELECT offset, timestamp_ms, key, value, headers FROM records"
    " WHERE topic_id = ? AND partition = ? AND offset >= ? ORDER BY offset LIMIT ?"
)
_UPSERT_OFFSET = (
    "INSERT INTO group_offsets(group_id, topic, partition, offset) VALUES (?, ?, ?, ?)"
    " ON CONFLICT(group_id, topic, partition) DO UPDATE SET offset = excluded.offset"
)

DeliveryCallback = Callable[[DeliveryReport], None]
PartitionsCallback = Callable[[list[TopicPartition]], None]

_key_partition = lru_cache(maxsize=1 << 16)(partition_for_key)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# --------------------------------------------------------------------------- storage helpers


@contextmanager
def _write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One SQLite write transaction; SQLite failures become ``BusUnavailableError``.

    ``BEGIN IMMEDIATE`` takes the write lock up front, so a transaction never has to
    upgrade a read snapshot that another writer has since made stale.
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        raise BusUnavailableError(f"embedded bus is busy or unavailable: {exc}") from exc
    try:
        yield conn
    except sqlite3.OperationalError as exc:
        _rollback(conn)
        raise BusUnavailableError(f"embedded bus write failed: {exc}") from exc
    except BaseException:
        _rollback(conn)
        raise
    try:
        conn.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        _rollback(conn)
        raise BusUnavailableError(f"embedded bus commit failed: {exc}") from exc


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _encode_headers(headers: Headers | None) -> bytes | None:
    if not headers:
        return None
    parts: list[bytes] = []
    for name, value in headers:
        encoded = name.encode()
        parts.append(struct.pack(">I", len(encoded)))
        parts.append(encoded)
        if value is None:  # Kafka allows null header values; keep them rather than fail
            parts.append(struct.pack(">i", -1))
        else:
            parts.append(struct.pack(">i", len(value)))
            parts.append(bytes(value))
    return b"".join(parts)


def _decode_headers(blob: bytes | None) -> Headers:
    if blob is None:
        return ()
    headers: list[tuple[str, bytes]] = []
    pos = 0
    while pos < len(blob):
        (name_len,) = struct.unpack_from(">I", blob, pos)
        pos += 4
        name = blob[pos : pos + name_len].decode()
        pos += name_len
        (value_len,) = struct.unpack_from(">i", blob, pos)
        pos += 4
        if value_len < 0:
            headers.append((name, None))  # type: ignore[arg-type]
        else:
            headers.append((name, blob[pos : pos + value_len]))
            pos += value_len
    return tuple(headers)


class _TopicRow(NamedTuple):
    id: int
    name: str
    partitions: int
    config: dict[str, str]

    @property
    def compacted(self) -> bool:
        return "compact" in self.config.get("cleanup.policy", "delete").split(",")

    @property
    def deletes_old(self) -> bool:
        return "delete" in self.config.get("cleanup.policy", "delete").split(",")


def _topic(conn: sqlite3.Connection, name: str) -> _TopicRow | None:
    row = conn.execute("SELECT id, name, partitions, config FROM topics WHERE name = ?", (name,)).fetchone()
    return None if row is None else _TopicRow(row[0], row[1], row[2], json.loads(row[3]))


def _all_topics(conn: sqlite3.Connection) -> list[_TopicRow]:
    rows = conn.execute("SELECT id, name, partitions, config FROM topics ORDER BY name").fetchall()
    return [_TopicRow(r[0], r[1], r[2], json.loads(r[3])) for r in rows]


def _watermarks(conn: sqlite3.Connection, tp: TopicPartition) -> tuple[int, int] | None:
    row = conn.execute(
        "SELECT p.log_start, p.next_offset FROM partitions p JOIN topics t ON t.id = p.topic_id"
        " WHERE t.name = ? AND p.partition = ?",
        (tp.topic, tp.partition),
    ).fetchone()
    return None if row is None else (row[0], row[1])


def _bump_generation(conn: sqlite3.Connection, group_id: str) -> None:
    conn.execute(
        "INSERT INTO consumer_groups(group_id, generation) VALUES (?, 1)"
        " ON CONFLICT(group_id) DO UPDATE SET generation = generation + 1",
        (group_id,),
    )


def _generation(conn: sqlite3.Connection, group_id: str) -> int:
    row = conn.execute("SELECT generation FROM consumer_groups WHERE group_id = ?", (group_id,)).fetchone()
    return 0 if row is None else int(row[0])


def _owners(conn: sqlite3.Connection, group_id: str) -> dict[TopicPartition, str]:
    rows = conn.execute("SELECT topic, partition, member_id FROM group_owners WHERE group_id = ?", (group_id,))
    return {TopicPartition(topic, partition): member for topic, partition, member in rows}


def _check_ownership(conn: sqlite3.Connection, group_id: str, member_id: str, partitions: Iterable[TopicPartition]) -> None:
    """Raise ``CommitFailedError`` unless ``member_id`` is in the group and owns every partition."""
    alive = conn.execute(
        "SELECT 1 FROM group_members WHERE group_id = ? AND member_id = ?", (group_id, member_id)
    ).fetchone()
    if alive is None:
        raise CommitFailedError(
            f"member {member_id} is no longer in group {group_id} (its session timed out or it left); "
            "its partitions were reassigned"
        )
    owners = _owners(conn, group_id)
    foreign = sorted(tp for tp in partitions if owners.get(tp) != member_id)
    if foreign:
        names = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in foreign)
        raise CommitFailedError(f"member {member_id} of group {group_id} does not own {names} (rebalanced)")


def range_assign(members: Mapping[str, Iterable[str]], partition_counts: Mapping[str, int]) -> dict[str, list[TopicPartition]]:
    """Kafka's range assignor: per topic, consecutive partitions to each subscribed member.

    Members subscribed to a topic are taken in sorted order; the first ``n % m`` of them get
    one extra partition. Because every topic is split the same way, equal partitions of
    co-partitioned topics land on the same member. O(members × topics + partitions).

    >>> range_assign({"b": ["t"], "a": ["t"]}, {"t": 3})
    {'a': [TopicPartition(topic='t', partition=0), TopicPartition(topic='t', partition=1)], 'b': [TopicPartition(topic='t', partition=2)]}
    """
    result: dict[str, list[TopicPartition]] = {member: [] for member in sorted(members)}
    subscriptions = {member: set(topics) for member, topics in members.items()}
    for topic in sorted(partition_counts):
        subscribers = sorted(m for m, topics in subscriptions.items() if topic in topics)
        if not subscribers:
            continue
        per_member, extra = divmod(partition_counts[topic], len(subscribers))
        start = 0
        for index, member in enumerate(subscribers):
            count = per_member + (1 if index < extra else 0)
            result[member].extend(TopicPartition(topic, p) for p in range(start, start + count))
            start += count
    return result


# --------------------------------------------------------------------------- maintenance


def _enforce_retention(conn: sqlite3.Connection, now_ms: int) -> int:
    """Delete, per partition, the prefix older than ``retention.ms``; return records removed."""
    removed = 0
    for topic in _all_topics(conn):
        retention_ms = int(topic.config.get("retention.ms", "-1"))
        if retention_ms < 0 or not topic.deletes_old:
            continue
        cutoff = now_ms - retention_ms
        with _write_transaction(conn):
            for partition, log_start, next_offset in conn.execute(
                "SELECT partition, log_start, next_offset FROM partitions WHERE topic_id = ?", (topic.id,)
            ).fetchall():
                # '+timestamp_ms' keeps SQLite on the primary key: the scan walks from the
                # log start and stops at the first young record, so it costs what it deletes.
                row = conn.execute(
                    "SELECT offset FROM records WHERE topic_id = ? AND partition = ? AND +timestamp_ms >= ?"
                    " ORDER BY offset LIMIT 1",
                    (topic.id, partition, cutoff),
                ).fetchone()
                new_start = next_offset if row is None else row[0]
                if new_start <= log_start:
                    continue
                removed += conn.execute(
                    "DELETE FROM records WHERE topic_id = ? AND partition = ? AND offset < ?",
                    (topic.id, partition, new_start),
                ).rowcount
                conn.execute(
                    "UPDATE partitions SET log_start = ? WHERE topic_id = ? AND partition = ?",
                    (new_start, topic.id, partition),
                )
    return removed


def _compact(conn: sqlite3.Connection, topic: _TopicRow, now_ms: int, *, only_dirty: bool) -> int:
    """Keep the newest record per key in each partition of ``topic``; return records removed."""
    delete_retention_ms = int(topic.config.get("delete.retention.ms", str(DEFAULT_DELETE_RETENTION_MS)))
    tombstone_cutoff = now_ms - delete_retention_ms
    removed = 0
    for partition, next_offset, cleaned_offset in conn.execute(
        "SELECT partition, next_offset, cleaned_offset FROM partitions WHERE topic_id = ?", (topic.id,)
    ).fetchall():
        if only_dirty and cleaned_offset >= next_offset:
            continue
        with _write_transaction(conn):
            rows = conn.execute(
                "SELECT offset, key, value IS NULL, timestamp_ms FROM records"
                " WHERE topic_id = ? AND partition = ? ORDER BY offset",
                (topic.id, partition),
            ).fetchall()
            newest: dict[bytes, int] = {}
            for offset, key, _tombstone, _ts in rows:
                if key is not None:
                    newest[key] = offset
            doomed = [
                (topic.id, partition, offset)
                for offset, key, tombstone, ts in rows
                if key is not None and (newest[key] != offset or (tombstone and ts < tombstone_cutoff))
            ]
            conn.executemany("DELETE FROM records WHERE topic_id = ? AND partition = ? AND offset = ?", doomed)
            removed += len(doomed)
            conn.execute(
                "UPDATE partitions SET cleaned_offset = next_offset WHERE topic_id = ? AND partition = ?",
                (topic.id, partition),
            )
    return removed


# --------------------------------------------------------------------------- the bus


class EmbeddedBus(Bus):
    """A durable, file-backed bus in directory ``path``, shared by processes on this machine.

    The directory is created if missing; ``url`` is ``embedded://`` plus its absolute path.
    Keyword arguments tune the backend: ``session_timeout`` (seconds a silent group member
    keeps its partitions), ``max_buffered`` (records a producer holds before ``BufferError``),
    ``maintenance_interval`` (seconds between lazy retention/compaction runs; None turns
    them off), ``busy_timeout`` (seconds to wait for the write lock) and ``synchronous``
    (``"NORMAL"`` or ``"FULL"``, see the module docstring).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as directory:
    ...     EmbeddedBus(directory).admin().create_topics([TopicSpec("demo", partitions=2)])
    ['demo']
    """

    def __init__(
        self,
        path: str | Path,
        *,
        session_timeout: float = DEFAULT_SESSION_TIMEOUT,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
        maintenance_interval: float | None = DEFAULT_MAINTENANCE_INTERVAL,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
    ) -> None:
        if session_timeout <= 0:
            raise ConfigurationError(f"session_timeout must be positive, got {session_timeout}")
        if max_buffered < 1:
            raise ConfigurationError(f"max_buffered must be at least 1, got {max_buffered}")
        if synchronous not in ("NORMAL", "FULL"):
            raise ConfigurationError(f"synchronous must be NORMAL or FULL, got {synchronous!r}")
        self.path = Path(path).resolve()
        self.url = "embedded://" + str(self.path)
        self.db_path = self.path / DB_FILE
        self.session_timeout = session_timeout
        self.max_buffered = max_buffered
        self.maintenance_interval = maintenance_interval
        self.busy_timeout = busy_timeout
        self.synchronous = synchronous
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(f"cannot create embedded bus directory {self.path}: {exc}") from exc
        with self.connection() as conn:
            self._init_schema(conn)

    def __repr__(self) -> str:
        return f"EmbeddedBus({str(self.path)!r})"

    def connect(self) -> sqlite3.Connection:
        """A new connection to the bus database, configured for shared use. The caller closes it."""
        try:
            # check_same_thread=False: an object may be handed to another thread (a
            # background consumer); the roles still say "one thread at a time".
            conn = sqlite3.connect(self.db_path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise BusUnavailableError(f"cannot open embedded bus {self.db_path}: {exc}") from exc
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        return conn

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """A short-lived connection, closed on exit."""
        conn = self.connect()
        try:
            yield conn
        finally:
            conn.close()

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:
            raise BusUnavailableError(f"cannot open embedded bus {self.db_path}: {exc}") from exc
        if str(mode).lower() != "wal":
            raise ConfigurationError(f"embedded bus {self.db_path} cannot use WAL mode (got {mode}); is it on a local disk?")
        with _write_transaction(conn):
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise ConfigurationError(
                    f"embedded bus {self.db_path} has schema version {row[0]}; this chorus-lab reads version {SCHEMA_VERSION}"
                )

    def producer(self, *, transactional_id: str | None = None) -> EmbeddedProducer:
        return EmbeddedProducer(self, transactional_id)

    def consumer(
        self,
        group_id: str | None,
        *,
        auto_offset_reset: Literal["earliest", "latest"] = "earliest",
        session_timeout: float | None = None,
    ) -> EmbeddedConsumer:
        if auto_offset_reset not in ("earliest", "latest"):
            raise ConfigurationError(f"auto_offset_reset must be 'earliest' or 'latest', got {auto_offset_reset!r}")
        if group_id is not None and not group_id:
            raise ConfigurationError("group_id must be a non-empty string or None")
        timeout = self.session_timeout if session_timeout is None else session_timeout
        if timeout <= 0:
            raise ConfigurationError(f"session_timeout must be positive, got {timeout}")
        return EmbeddedConsumer(self, group_id, auto_offset_reset, timeout)

    def admin(self) -> EmbeddedAdmin:
        return EmbeddedAdmin(self)

    def enforce_retention(self, now_ms: int | None = None) -> int:
        """Apply ``retention.ms`` to every topic now; return how many records were deleted."""
        with self.connection() as conn:
            return _enforce_retention(conn, _now_ms() if now_ms is None else now_ms)

    def compact(self, topic: str) -> int:
        """Compact ``topic`` now (keep the newest record per key); return records removed.

        Raises ``TopicError`` if the topic is missing or its cleanup policy is not compact.
        """
        with self.connection() as conn:
            row = _topic(conn, topic)
            if row is None:
                raise TopicError(f"topic {topic} does not exist on {self.url}")
            if not row.compacted:
                raise TopicError(f"topic {topic} has cleanup.policy={row.config.get('cleanup.policy')}, not compact")
            return _compact(conn, row, _now_ms(), only_dirty=False)

    def _maintain(self, conn: sqlite3.Connection) -> None:
        """Run retention and compaction if no process did within ``maintenance_interval``."""
        if self.maintenance_interval is None:
            return
        now = _now_ms()
        with _write_transaction(conn):
            row = conn.execute("SELECT value FROM meta WHERE key = 'maintained_ms'").fetchone()
            if row is not None and now - int(row[0]) < self.maintenance_interval * 1000:
                return
            conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('maintained_ms', ?)", (str(now),))
        _enforce_retention(conn, now)
        for topic in _all_topics(conn):
            if topic.compacted:
                _compact(conn, topic, now, only_dirty=True)


# --------------------------------------------------------------------------- producer


class _Queued(NamedTuple):
    topic: str
    value: bytes | None
    key: bytes | None
    partition: int | None
    headers: bytes | None
    timestamp_ms: int
    on_delivery: DeliveryCallback | None


class _RejectedRecord(Exception):
    def __init__(self, record: _Queued, error: BusError) -> None:
        super().__init__(str(error))
        self.record = record
        self.error = error


class _TxnOffsets(NamedTuple):
    group_id: str
    member_id: str | None  # None: a manually assigned consumer, which owns nothing to check
    offsets: dict[TopicPartition, int]


def _append(
    conn: sqlite3.Connection, batch: Sequence[_Queued], round_robin: dict[str, int], *, atomic: bool
) -> list[tuple[DeliveryCallback, DeliveryReport]]:
    """Write ``batch`` inside the caller's transaction; return the delivery reports to serve.

    A record that cannot be written (missing topic, bad partition, keyless record for a
    compacted topic) gets an error report, or, when ``atomic``, fails the whole batch.
    """
    topics: dict[str, _TopicRow | None] = {}
    next_offsets: dict[tuple[int, int], int] = {}
    touched: set[tuple[int, int]] = set()
    rows: list[tuple[int, int, int, int, bytes | None, bytes | None, bytes | None]] = []
    reports: list[tuple[DeliveryCallback, DeliveryReport]] = []
    unreported: set[str] = set()
    for record in batch:
        if record.topic in topics:
            topic = topics[record.topic]
        else:
            topic = topics[record.topic] = _topic(conn, record.topic)
            if topic is not None:
                for partition, next_offset in conn.execute(
                    "SELECT partition, next_offset FROM partitions WHERE topic_id = ?", (topic.id,)
                ):
                    next_offsets[(topic.id, partition)] = next_offset
        error: BusError | None = None
        partition = -1 if record.partition is None else record.partition
        if topic is None:
            error = TopicError(f"topic {record.topic} does not exist (embedded topics are never auto-created)")
        elif record.partition is not None:
            if not 0 <= record.partition < topic.partitions:
                error = TopicError(f"topic {record.topic} has no partition {record.partition} (it has {topic.partitions})")
        elif record.key is not None:
            partition = _key_partition(record.key, topic.partitions)
        else:
            partition = round_robin.get(record.topic, 0) % topic.partitions
            round_robin[record.topic] = partition + 1
        if error is None and topic is not None and record.key is None and topic.compacted:
            error = TopicError(f"compacted topic {record.topic} refuses a record without a key")
        if error is not None:
            if atomic:
                raise _RejectedRecord(record, error)
            if record.on_delivery is not None:
                reports.append((record.on_delivery, DeliveryReport(record.topic, partition, -1, record.key, record.value, error)))
            else:
                unreported.add(str(error))
            continue
        assert topic is not None
        slot = (topic.id, partition)
        offset = next_offsets[slot]
        next_offsets[slot] = offset + 1
        touched.add(slot)
        rows.append((topic.id, partition, offset, record.timestamp_ms, record.key, record.value, record.headers))
        if record.on_delivery is not None:
            reports.append((record.on_delivery, DeliveryReport(record.topic, partition, offset, record.key, record.value)))
    conn.executemany(_INSERT_RECORD, rows)
    conn.executemany(
        "UPDATE partitions SET next_offset = ? WHERE topic_id = ? AND partition = ?",
        [(next_offsets[slot], slot[0], slot[1]) for slot in touched],
    )
    for message in sorted(unreported):
        # Without a callback nobody else would ever hear of the loss.
        log.warning("dropped records without a delivery callback: %s", message)
    return reports


def _as_bytes(what: str, data: object) -> bytes:
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise TypeError(f"{what} must be bytes or None, got {type(data).__name__}")


class EmbeddedProducer(Producer):
    """A producer on an :class:`EmbeddedBus`; see the module docstring for its semantics."""

    def __init__(self, bus: EmbeddedBus, transactional_id: str | None) -> None:
        if transactional_id is not None and not transactional_id:
            raise ConfigurationError("transactional_id must be a non-empty string or None")
        self._bus = bus
        self.transactional_id = transactional_id
        self._conn = bus.connect()
        self._queue: list[_Queued] = []
        self._reports: deque[tuple[DeliveryCallback, DeliveryReport]] = deque()
        self._round_robin: dict[str, int] = {}
        self._epoch: int | None = None
        self._in_transaction = False
        self._txn_offsets: dict[str, _TxnOffsets] = {}
        self._fenced = False
        self._closed = False
        self._next_maintenance = 0.0

    # ---- plain produce

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        *,
        partition: int | None = None,
        headers: Headers | None = None,
        timestamp_ms: int | None = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> None:
        self._check_usable()
        if self.transactional_id is not None and not self._in_transaction:
            raise BusError(f"producer {self.transactional_id!r} is transactional: call begin_transaction() before produce()")
        if value is not None and type(value) is not bytes:
            value = _as_bytes("value", value)
        if key is not None and type(key) is not bytes:
            key = _as_bytes("key", key)
        if len(self._queue) + len(self._reports) >= self._bus.max_buffered:
            raise BufferError(
                f"embedded producer holds {self._bus.max_buffered} undelivered records; call poll() or flush()"
            )
        self._queue.append(
            _Queued(
                topic,
                value,
                key,
                partition,
                _encode_headers(headers) if headers else None,
                _now_ms() if timestamp_ms is None else timestamp_ms,
                on_delivery,
            )
        )
        if self.transactional_id is None and len(self._queue) >= _WRITE_BATCH:
            self._write_queued()

    def _write_queued(self) -> bool:
        """Write the queue in one transaction; False (queue kept) if the bus is busy."""
        batch = self._queue
        try:
            with _write_transaction(self._conn):
                reports = _append(self._conn, batch, self._round_robin, atomic=False)
        except BusUnavailableError as exc:
            log.warning("embedded producer will retry %d records: %s", len(batch), exc)
            return False
        self._queue = []
        self._reports.extend(reports)
        self._maybe_maintain()
        return True

    def _maybe_maintain(self) -> None:
        interval = self._bus.maintenance_interval
        now = time.monotonic()
        if interval is None or now < self._next_maintenance:
            return
        self._next_maintenance = now + interval
        try:
            self._bus._maintain(self._conn)
        except BusUnavailableError as exc:
            log.warning("embedded bus maintenance skipped: %s", exc)

    def _serve_reports(self) -> int:
        served = 0
        while self._reports:
            callback, report = self._reports.popleft()
            served += 1
            callback(report)
        return served

    def poll(self, timeout: float = 0.0) -> int:
        self._check_open()
        if self._queue and not self._in_transaction:
            self._write_queued()
        return self._serve_reports()

    def flush(self, timeout: float = 30.0) -> int:
        """Write queued records and serve their callbacks; return how many are still queued.

        Inside a transaction the records wait for ``commit_transaction`` and are not
        counted (as Kafka's flush returns once they are sent, though not yet committed).
        """
        self._check_open()
        if self._in_transaction:
            self._serve_reports()
            return 0
        if self._queue:
            self._write_queued()
        self._serve_reports()
        return len(self._queue)

    # ---- transactions

    def init_transactions(self, timeout: float = 30.0) -> None:
        self._check_open()
        if self.transactional_id is None:
            raise ConfigurationError("init_transactions needs a producer created with a transactional_id")
        with _write_transaction(self._conn) as conn:
            conn.execute(
                "INSERT INTO producers(transactional_id, epoch) VALUES (?, 1)"
                " ON CONFLICT(transactional_id) DO UPDATE SET epoch = epoch + 1",
                (self.transactional_id,),
            )
            self._epoch = int(
                conn.execute("SELECT epoch FROM producers WHERE transactional_id = ?", (self.transactional_id,)).fetchone()[0]
            )
        self._fenced = False
        self._in_transaction = False
        self._queue = []
        self._txn_offsets = {}

    def begin_transaction(self) -> None:
        self._check_usable()
        if self._epoch is None:
            raise BusError("call init_transactions() before begin_transaction()")
        if self._in_transaction:
            raise BusError("a transaction is already open")
        self._in_transaction = True
        self._txn_offsets = {}

    def send_offsets_to_transaction(
        self, offsets: Mapping[TopicPartition, int], consumer: Consumer, timeout: float = 30.0
    ) -> None:
        self._check_usable()
        if not self._in_transaction:
            raise BusError("send_offsets_to_transaction needs an open transaction")
        if not isinstance(consumer, EmbeddedConsumer) or consumer._bus.db_path != self._bus.db_path:
            raise ConfigurationError("send_offsets_to_transaction needs a consumer of the same embedded bus")
        if consumer.group_id is None:
            raise ConfigurationError("send_offsets_to_transaction needs a consumer with a group_id")
        self._check_epoch(self._conn)
        member = consumer._member_id if consumer._subscribed else None
        if member is not None:
            _check_ownership(self._conn, consumer.group_id, member, offsets)
        entry = self._txn_offsets.setdefault(consumer.group_id, _TxnOffsets(consumer.group_id, member, {}))
        entry.offsets.update(offsets)

    def commit_transaction(self, timeout: float = 30.0) -> None:
        """Write the transaction's records and offsets atomically.

        Raises ``ProducerFencedError`` if a newer producer took the ``transactional_id``, and
        ``TransactionAbortedError`` (nothing written) if a record was refused or a consumer
        lost a partition whose offsets were sent. ``BusUnavailableError`` leaves the
        transaction open, so commit or abort can be retried.
        """
        self._check_usable()
        if not self._in_transaction:
            raise BusError("commit_transaction needs an open transaction")
        now = _now_ms()
        try:
            with _write_transaction(self._conn) as conn:
                self._check_epoch(conn)
                for entry in self._txn_offsets.values():
                    if entry.member_id is not None:
                        _check_ownership(conn, entry.group_id, entry.member_id, entry.offsets)
                        conn.execute(
                            "UPDATE group_members SET heartbeat_ms = ? WHERE group_id = ? AND member_id = ?",
                            (now, entry.group_id, entry.member_id),
                        )
                reports = _append(conn, self._queue, self._round_robin, atomic=True)
                for entry in self._txn_offsets.values():
                    conn.executemany(
                        _UPSERT_OFFSET, [(entry.group_id, tp.topic, tp.partition, off) for tp, off in entry.offsets.items()]
                    )
        except ProducerFencedError as exc:
            self._discard_transaction(exc)
            raise
        except _RejectedRecord as exc:
            aborted = TransactionAbortedError(f"transaction aborted: a record was refused: {exc.error}")
            self._discard_transaction(aborted, rejected=exc)
            raise aborted from None
        except CommitFailedError as exc:
            aborted = TransactionAbortedError(f"transaction aborted: {exc}")
            self._discard_transaction(aborted)
            raise aborted from None
        self._queue = []
        self._txn_offsets = {}
        self._in_transaction = False
        self._reports.extend(reports)
        self._serve_reports()
        self._maybe_maintain()

    def abort_transaction(self, timeout: float = 30.0) -> None:
        """Discard the open transaction (a no-op when none is open, e.g. after a failed commit)."""
        self._check_open()
        if self._in_transaction:
            self._discard_transaction(TransactionAbortedError("transaction aborted"))

    def _discard_transaction(self, error: BusError, rejected: _RejectedRecord | None = None) -> None:
        for record in self._queue:
            if record.on_delivery is not None:
                reason = rejected.error if rejected is not None and record is rejected.record else error
                partition = -1 if record.partition is None else record.partition
                self._reports.append((record.on_delivery, DeliveryReport(record.topic, partition, -1, record.key, record.value, reason)))
        self._queue = []
        self._txn_offsets = {}
        self._in_transaction = False
        self._serve_reports()

    def _check_epoch(self, conn: sqlite3.Connection) -> None:
        row = conn.execute("SELECT epoch FROM producers WHERE transactional_id = ?", (self.transactional_id,)).fetchone()
        if row is None or int(row[0]) != self._epoch:
            self._fenced = True
            raise ProducerFencedError(
                f"producer {self.transactional_id!r} (epoch {self._epoch}) was fenced by a newer one"
                f" (epoch {None if row is None else row[0]}); create a new producer"
            )

    def _check_open(self) -> None:
        if self._closed:
            raise BusError("producer is closed")

    def _check_usable(self) -> None:
        self._check_open()
        if self._fenced:
            raise ProducerFencedError(f"producer {self.transactional_id!r} was fenced by a newer one; create a new producer")

    def close(self) -> None:
        if self._closed:
            return
        try:
            if self._in_transaction:
                self._discard_transaction(TransactionAbortedError("producer closed with an open transaction"))
            elif self._queue:
                self._write_queued()
                self._serve_reports()
            if self._queue:
                log.warning("embedded producer closed with %d records it could not write", len(self._queue))
        finally:
            self._closed = True
            self._conn.close()


# --------------------------------------------------------------------------- consumer


class EmbeddedConsumer(Consumer):
    """A consumer on an :class:`EmbeddedBus`; see the module docstring for its semantics."""

    def __init__(
        self, bus: EmbeddedBus, group_id: str | None, auto_offset_reset: Literal["earliest", "latest"], session_timeout: float
    ) -> None:
        self._bus = bus
        self.group_id = group_id
        self._reset = auto_offset_reset
        self._session_timeout_ms = int(session_timeout * 1000)
        # Several heartbeats per session, so one slow consume() does not cost the membership.
        self._heartbeat_interval = min(session_timeout / 4, 1.0)
        self._conn = bus.connect()
        self._member_id = uuid.uuid4().hex
        self._subscribed = False
        self._topics: tuple[str, ...] = ()
        self._on_assign: PartitionsCallback | None = None
        self._on_revoke: PartitionsCallback | None = None
        self._positions: dict[TopicPartition, int] = {}  # its keys are the assignment
        self._unchecked: set[TopicPartition] = set()  # positions to check against the log bounds
        self._topic_ids: dict[str, int] = {}
        self._pending: set[TopicPartition] = set()  # ours by assignment, still held by another member
        self._generation = -1
        self._next_heartbeat = 0.0
        self._data_version: int | None = None
        self._rotation = 0
        self._closed = False

    # ---- assignment

    def subscribe(
        self,
        topics: Sequence[str],
        *,
        on_assign: PartitionsCallback | None = None,
        on_revoke: PartitionsCallback | None = None,
    ) -> None:
        self._check_open()
        if self.group_id is None:
            raise ConfigurationError("subscribe needs a group_id; use assign() for a consumer without a group")
        if isinstance(topics, str):
            raise TypeError("subscribe takes a sequence of topic names, not one string")
        if not self._subscribed and self._positions:
            raise BusError("this consumer uses assign(); create another consumer to subscribe")
        self._topics = tuple(sorted(set(topics)))
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        with _write_transaction(self._conn) as conn:
            conn.execute(
                "INSERT INTO group_members(group_id, member_id, topics, session_timeout_ms, heartbeat_ms)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT(group_id, member_id) DO UPDATE SET topics = excluded.topics,"
                " heartbeat_ms = excluded.heartbeat_ms",
                (self.group_id, self._member_id, json.dumps(self._topics), self._session_timeout_ms, _now_ms()),
            )
            _bump_generation(conn, self.group_id)
        self._subscribed = True
        # The assignment itself happens inside consume(), as in Kafka.
        self._next_heartbeat = 0.0

    def assign(self, partitions: Mapping[TopicPartition, int | None]) -> None:
        self._check_open()
        if self._subscribed:
            raise BusError("this consumer is subscribed to a group; create another consumer to assign()")
        wanted = {TopicPartition(*tp): offset for tp, offset in partitions.items()}
        starts = self._start_offsets(self._conn, [tp for tp, offset in wanted.items() if offset is None])
        self._positions = {tp: (starts[tp] if offset is None else offset) for tp, offset in wanted.items()}
        self._unchecked = set(self._positions)

    def assignment(self) -> list[TopicPartition]:
        return sorted(self._positions)

    def _start_offsets(self, conn: sqlite3.Connection, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """Where reading starts: the committed offset if it is inside the log, else the reset policy."""
        committed = self._read_committed(conn, partitions) if self.group_id is not None else {}
        starts: dict[TopicPartition, int] = {}
        for tp in partitions:
            marks = _watermarks(conn, tp)
            low, high = marks if marks is not None else (0, 0)
            offset = committed.get(tp)
            if offset is None or not low <= offset <= high:
                offset = low if self._reset == "earliest" else high
            starts[tp] = offset
        return starts

    def _maybe_sync(self, changed: bool) -> bool:
        """Heartbeat and rebalance if due; return whether the assignment changed."""
        assert self.group_id is not None
        due = time.monotonic() >= self._next_heartbeat
        if not due and changed:
            due = bool(self._pending) or _generation(self._conn, self.group_id) != self._generation
        if not due:
            return False
        before = set(self._positions)
        self._sync_group()
        return set(self._positions) != before

    def _sync_group(self) -> None:
        """Heartbeat, drop expired members, then revoke and claim partitions to match the assignor."""
        group, me = self.group_id, self._member_id
        assert group is not None
        now = _now_ms()
        with _write_transaction(self._conn) as conn:
            alive = (
                conn.execute(
                    "UPDATE group_members SET heartbeat_ms = ? WHERE group_id = ? AND member_id = ?", (now, group, me)
                ).rowcount
                == 1
            )
            if not alive:  # our session expired: rejoin; what we held is already someone else's
                conn.execute(
                    "INSERT INTO group_members(group_id, member_id, topics, session_timeout_ms, heartbeat_ms)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (group, me, json.dumps(self._topics), self._session_timeout_ms, now),
                )
                _bump_generation(conn, group)
            expired = [
                m
                for (m,) in conn.execute(
                    "SELECT member_id FROM group_members WHERE group_id = ? AND heartbeat_ms + session_timeout_ms < ?",
                    (group, now),
                )
            ]
            if expired:
                conn.executemany("DELETE FROM group_members WHERE group_id = ? AND member_id = ?", [(group, m) for m in expired])
                conn.executemany("DELETE FROM group_owners WHERE group_id = ? AND member_id = ?", [(group, m) for m in expired])
                _bump_generation(conn, group)
            generation = _generation(conn, group)
            members = {
                member: json.loads(topics)
                for member, topics in conn.execute("SELECT member_id, topics FROM group_members WHERE group_id = ?", (group,))
            }
            counts = {
                name: count
                for name, count in conn.execute("SELECT name, partitions FROM topics")
                if any(name in topics for topics in members.values())
            }
            owners = _owners(conn, group)
        target = set(range_assign(members, counts).get(me, ()))
        held = set(self._positions)
        lost = held if not alive else {tp for tp in held if owners.get(tp) != me}
        revoke = (held - target) | lost
        if revoke:
            try:
                self._call(self._on_revoke, sorted(revoke))
            finally:
                for tp in revoke:
                    self._positions.pop(tp, None)
                    self._unchecked.discard(tp)
                with _write_transaction(self._conn) as conn:
                    conn.executemany(
                        "DELETE FROM group_owners WHERE group_id = ? AND topic = ? AND partition = ? AND member_id = ?",
                        [(group, tp.topic, tp.partition, me) for tp in revoke],
                    )
        wanted = target - set(self._positions)
        gained: list[TopicPartition] = []
        if wanted:
            with _write_transaction(self._conn) as conn:
                live = {m for (m,) in conn.execute("SELECT member_id FROM group_members WHERE group_id = ?", (group,))}
                owners = _owners(conn, group)
                for tp in sorted(wanted):
                    owner = owners.get(tp)
                    if owner is None or owner == me or owner not in live:
                        conn.execute(
                            "INSERT OR REPLACE INTO group_owners(group_id, topic, partition, member_id) VALUES (?, ?, ?, ?)",
                            (group, tp.topic, tp.partition, me),
                        )
                        gained.append(tp)
                starts = self._start_offsets(conn, gained)
            self._positions.update(starts)
        self._pending = wanted - set(gained)
        self._generation = generation
        self._next_heartbeat = time.monotonic() + self._heartbeat_interval
        if gained:
            self._call(self._on_assign, gained)

    @staticmethod
    def _call(callback: PartitionsCallback | None, partitions: list[TopicPartition]) -> None:
        if callback is not None and partitions:
            callback(partitions)

    # ---- reading

    def consume(self, max_messages: int = 500, timeout: float = 1.0) -> list[Record]:
        self._check_open()
        if max_messages < 1:
            raise ValueError(f"max_messages must be at least 1, got {max_messages}")
        deadline = time.monotonic() + max(timeout, 0.0)
        delay = _WAIT_MIN
        self._data_changed()  # the baseline: anything committed after this wakes us
        changed = True
        while True:
            if self._subscribed and self._maybe_sync(changed):
                changed = True
            if changed:
                records = self._fetch(max_messages)
                if records:
                    return records
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, _WAIT_MAX)
            changed = self._data_changed()

    def _data_changed(self) -> bool:
        # data_version changes whenever another connection commits; reading it is a
        # memory access, so polling it often is cheap.
        version = int(self._conn.execute("PRAGMA data_version").fetchone()[0])
        changed = version != self._data_version
        self._data_version = version
        return changed

    def _fetch(self, max_messages: int) -> list[Record]:
        if not self._positions:
            return []
        conn = self._conn
        ids = dict(conn.execute("SELECT name, id FROM topics").fetchall())
        for tp in self._positions:
            if tp.topic in ids and self._topic_ids.get(tp.topic) != ids[tp.topic]:
                self._unchecked.add(tp)  # the topic is new or was re-created: re-check positions
        self._topic_ids = {name: ids[name] for name in {tp.topic for tp in self._positions} if name in ids}
        for tp in list(self._unchecked):
            marks = _watermarks(conn, tp)
            if marks is None:
                continue
            low, high = marks
            if not low <= self._positions[tp] <= high:
                self._positions[tp] = low if self._reset == "earliest" else high
            self._unchecked.discard(tp)
        partitions = list(self._positions)
        start = self._rotation % len(partitions)
        self._rotation += 1
        records: list[Record] = []
        for tp in partitions[start:] + partitions[:start]:
            room = max_messages - len(records)
            if room <= 0:
                break
            topic_id = ids.get(tp.topic)
            if topic_id is None:
                continue
            position = self._positions[tp]
            rows = conn.execute(_FETCH, (topic_id, tp.partition, position, room)).fetchall()
            if not rows:
                continue
            if rows[0][0] > position and self._reset == "latest":
                # Either a compaction gap or retention overtook us; only the latter resets.
                marks = _watermarks(conn, tp)
                if marks is not None and position < marks[0]:
                    self._positions[tp] = marks[1]
                    continue
            topic, partition = tp
            records.extend(
                Record(topic, partition, offset, key, value, ts, _decode_headers(headers))
                for offset, ts, key, value, headers in rows
            )
            self._positions[tp] = rows[-1][0] + 1
        return records

    def position(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        self._check_open()
        wanted = [TopicPartition(*tp) for tp in partitions]
        unknown = [tp for tp in wanted if tp not in self._positions]
        starts = self._start_offsets(self._conn, unknown) if unknown else {}
        return {tp: self._positions[tp] if tp in self._positions else starts[tp] for tp in wanted}

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._check_open()
        tp = TopicPartition(*partition)
        if tp not in self._positions:
            raise BusError(f"cannot seek {tp.topic}[{tp.partition}]: it is not assigned to this consumer")
        self._positions[tp] = offset
        self._unchecked.add(tp)

    # ---- offsets

    def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        self._check_open()
        if self.group_id is None:
            raise ConfigurationError("commit needs a consumer with a group_id")
        wanted = dict(self._positions) if offsets is None else {TopicPartition(*tp): off for tp, off in offsets.items()}
        if not wanted:
            return
        with _write_transaction(self._conn) as conn:
            if self._subscribed:
                _check_ownership(conn, self.group_id, self._member_id, wanted)
                conn.execute(
                    "UPDATE group_members SET heartbeat_ms = ? WHERE group_id = ? AND member_id = ?",
                    (_now_ms(), self.group_id, self._member_id),
                )
            conn.executemany(_UPSERT_OFFSET, [(self.group_id, tp.topic, tp.partition, off) for tp, off in wanted.items()])

    def committed(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int | None]:
        self._check_open()
        if self.group_id is None:
            raise ConfigurationError("committed needs a consumer with a group_id")
        return self._read_committed(self._conn, [TopicPartition(*tp) for tp in partitions])

    def _read_committed(self, conn: sqlite3.Connection, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        result: dict[TopicPartition, int | None] = {}
        for tp in partitions:
            row = conn.execute(
                "SELECT offset FROM group_offsets WHERE group_id = ? AND topic = ? AND partition = ?",
                (self.group_id, tp.topic, tp.partition),
            ).fetchone()
            result[tp] = None if row is None else int(row[0])
        return result

    def watermarks(self, partition: TopicPartition) -> tuple[int, int]:
        self._check_open()
        marks = _watermarks(self._conn, partition)
        if marks is None:
            raise TopicError(f"{partition.topic}[{partition.partition}] does not exist on {self._bus.url}")
        return marks

    def offsets_for_time(self, topic: str, timestamp_ms: int) -> dict[int, int]:
        self._check_open()
        row = _topic(self._conn, topic)
        if row is None:
            raise TopicError(f"topic {topic} does not exist on {self._bus.url}")
        result: dict[int, int] = {}
        for partition, next_offset in self._conn.execute(
            "SELECT partition, next_offset FROM partitions WHERE topic_id = ? ORDER BY partition", (row.id,)
        ).fetchall():
            # The time index holds every record at or after the time, so this costs about
            # what a replay from that time then reads.
            found = self._conn.execute(
                "SELECT MIN(offset) FROM records INDEXED BY records_by_time"
                " WHERE topic_id = ? AND partition = ? AND timestamp_ms >= ?",
                (row.id, partition, timestamp_ms),
            ).fetchone()[0]
            result[partition] = next_offset if found is None else int(found)
        return result

    def close(self) -> None:
        """Revoke the assignment (``on_revoke`` runs), leave the group and release the connection."""
        if self._closed:
            return
        try:
            if self._subscribed:
                try:
                    self._call(self._on_revoke, sorted(self._positions))
                finally:
                    assert self.group_id is not None
                    with _write_transaction(self._conn) as conn:
                        conn.execute("DELETE FROM group_members WHERE group_id = ? AND member_id = ?", (self.group_id, self._member_id))
                        conn.execute("DELETE FROM group_owners WHERE group_id = ? AND member_id = ?", (self.group_id, self._member_id))
                        _bump_generation(conn, self.group_id)
        finally:
            self._positions = {}
            self._closed = True
            self._conn.close()

    def _check_open(self) -> None:
        if self._closed:
            raise BusError("consumer is closed")


# --------------------------------------------------------------------------- admin


class EmbeddedAdmin(Admin):
    """Topic administration on an :class:`EmbeddedBus` (a short connection per call)."""

    def __init__(self, bus: EmbeddedBus) -> None:
        self._bus = bus

    def create_topics(self, specs: Sequence[TopicSpec]) -> list[str]:
        """Create missing topics (all in one transaction); then raise ``TopicError`` if any
        existing topic differs from its spec, listing every difference."""
        for spec in specs:
            _validate_spec(spec)
        created: list[str] = []
        problems: list[str] = []
        with self._bus.connection() as conn, _write_transaction(conn):
            for spec in specs:
                existing = _describe(conn, spec.name)
                if existing is not None:
                    differences = existing.differences(spec)
                    if differences:
                        problems.append(f"{spec.name}: " + "; ".join(differences))
                    continue
                topic_id = conn.execute(
                    "INSERT INTO topics(name, partitions, config) VALUES (?, ?, ?)",
                    (spec.name, spec.partitions, json.dumps(spec.topic_config(), sort_keys=True)),
                ).lastrowid
                conn.executemany(
                    "INSERT INTO partitions(topic_id, partition) VALUES (?, ?)", [(topic_id, p) for p in range(spec.partitions)]
                )
                created.append(spec.name)
        if problems:
            raise TopicError("existing topics differ from their spec: " + " | ".join(problems))
        return sorted(created)

    def describe(self, name: str) -> TopicDescription | None:
        with self._bus.connection() as conn:
            return _describe(conn, name)

    def list_topics(self) -> list[str]:
        with self._bus.connection() as conn:
            return [name for (name,) in conn.execute("SELECT name FROM topics ORDER BY name")]

    def delete_topics(self, names: Sequence[str]) -> None:
        """Delete topics with their records and committed offsets; missing names are ignored."""
        with self._bus.connection() as conn, _write_transaction(conn):
            for name in names:
                topic = _topic(conn, name)
                if topic is None:
                    continue
                conn.execute("DELETE FROM records WHERE topic_id = ?", (topic.id,))
                conn.execute("DELETE FROM partitions WHERE topic_id = ?", (topic.id,))
                conn.execute("DELETE FROM topics WHERE id = ?", (topic.id,))
                conn.execute("DELETE FROM group_offsets WHERE topic = ?", (name,))
                conn.execute("DELETE FROM group_owners WHERE topic = ?", (name,))


def _describe(conn: sqlite3.Connection, name: str) -> TopicDescription | None:
    topic = _topic(conn, name)
    if topic is None:
        return None
    return TopicDescription(name=topic.name, partitions=topic.partitions, config=topic.config, replication_factor=1)


def _validate_spec(spec: TopicSpec) -> None:
    """Refuse what Kafka would refuse, so a spec that works here works on a cluster."""
    if not _TOPIC_NAME.match(spec.name) or spec.name in (".", ".."):
        raise TopicError(f"topic name {spec.name!r} is not valid: use letters, digits, '.', '_' and '-'")
    config = spec.topic_config()
    if config["cleanup.policy"] not in _CLEANUP_POLICIES:
        raise TopicError(f"topic {spec.name}: cleanup.policy {config['cleanup.policy']!r} is not one of {sorted(_CLEANUP_POLICIES)}")
    for key in ("retention.ms", "delete.retention.ms"):
        if key in config:
            try:
                int(config[key])
            except ValueError:
                raise TopicError(f"topic {spec.name}: {key} must be an integer, got {config[key]!r}") from None
