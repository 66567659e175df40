"""A durable, bounded local spool: records wait here until the bus has acknowledged them.

Every record is written to the spool before it is handed to a producer and removed only
when its delivery is confirmed, so a process that dies or a broker that is unreachable
loses nothing: the next pump re-sends what is left, in the original order. The spool is a
SQLite file (WAL mode) in its own directory, locked by one process at a time.

>>> import tempfile
>>> spool = Spool(Path(tempfile.mkdtemp()))
>>> spool.append([("t", b"k", b"v", ())])
[1]
>>> [r.value for r in spool.pending(10)], len(spool)
([b'v'], 1)
>>> spool.remove([1]); len(spool)
0
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from chorus_lab.bus.base import BusError, Headers

DEFAULT_MAX_RECORDS = 1_000_000
DEFAULT_MAX_BYTES = 256 * 1024 * 1024

SpoolItem = tuple[str, bytes | None, bytes | None, Headers]
"""(topic, key, value, headers) of a record to deliver."""


class SpoolFullError(BusError):
    """The spool reached its bound; the caller must wait (or raise the bound), not drop."""

    retriable = True


class SpoolLockedError(BusError):
    """Another process holds this spool directory."""


@dataclass(frozen=True, slots=True)
class SpooledRecord:
    seq: int
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers
    created_ms: int


def _encode_headers(headers: Headers) -> str:
    return json.dumps([[k, v.hex()] for k, v in headers])


def _decode_headers(text: str) -> Headers:
    return tuple((k, bytes.fromhex(v)) for k, v in json.loads(text))


class Spool:
    """Records not yet acknowledged by the bus, in the order they were accepted."""

    def __init__(self, directory: Path, *, max_records: int = DEFAULT_MAX_RECORDS, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_records = max_records
        self.max_bytes = max_bytes
        self._lock_file = open(self.directory / "spool.lock", "a+")  # noqa: SIM115 - held for the spool's life
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise SpoolLockedError(f"spool {self.directory} is in use by another process; give each client its own spool_dir") from None
        self._lock_file.seek(0)
        self._lock_file.truncate()
        self._lock_file.write(str(os.getpid()))
        self._lock_file.flush()
        self._db = sqlite3.connect(self.directory / "spool.sqlite3", isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS spool (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,"
            " key BLOB, value BLOB, headers TEXT NOT NULL, size INTEGER NOT NULL, created_ms INTEGER NOT NULL)"
        )
        self._count, self._bytes = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM spool").fetchone()

    def __len__(self) -> int:
        return self._count

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def append(self, items: Sequence[SpoolItem]) -> list[int]:
        """Store ``items`` durably and return their sequence numbers.

        Raises ``SpoolFullError`` (storing none of them) when they do not fit.
        """
        sizes = [len(key or b"") + len(value or b"") + sum(len(k) + len(v) for k, v in headers) for _t, key, value, headers in items]
        if self._count + len(items) > self.max_records or self._bytes + sum(sizes) > self.max_bytes:
            raise SpoolFullError(
                f"local spool {self.directory} is full ({self._count} records, {self._bytes} bytes; limits "
                f"{self.max_records} records, {self.max_bytes} bytes): the bus has not acknowledged them yet. "
                "Restore the connection, or raise max_records/max_bytes; the message was not accepted."
            )
        now = int(time.time() * 1000)
        seqs = []
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            for (topic, key, value, headers), size in zip(items, sizes, strict=True):
                cursor = self._db.execute(
                    "INSERT INTO spool (topic, key, value, headers, size, created_ms) VALUES (?, ?, ?, ?, ?, ?)",
                    (topic, key, value, _encode_headers(headers), size, now),
                )
                seqs.append(int(cursor.lastrowid or 0))
        self._count += len(items)
        self._bytes += sum(sizes)
        return seqs

    def pending(self, limit: int, after_seq: int = 0) -> list[SpooledRecord]:
        """Up to ``limit`` records with ``seq > after_seq``, oldest first."""
        rows = self._db.execute(
            "SELECT seq, topic, key, value, headers, created_ms FROM spool WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
        ).fetchall()
        return [SpooledRecord(seq, topic, key, value, _decode_headers(headers), created) for seq, topic, key, value, headers, created in rows]

    def remove(self, seqs: Iterable[int]) -> None:
        """Forget delivered records."""
        wanted = list(seqs)
        if not wanted:
            return
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            removed_bytes = 0
            removed = 0
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ",".join("?" * len(chunk))
                size, count = self._db.execute(f"SELECT COALESCE(SUM(size), 0), COUNT(*) FROM spool WHERE seq IN ({marks})", chunk).fetchone()
                self._db.execute(f"DELETE FROM spool WHERE seq IN ({marks})", chunk)
                removed_bytes += size
                removed += count
        self._count -= removed
        self._bytes -= removed_bytes

    def close(self) -> None:
        self._db.close()
        fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        self._lock_file.close()
