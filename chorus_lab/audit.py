"""A tamper-evident audit trail: a SHA-256 hash chain over the audited topics' records.

Every record stage 1 writes to ``agent-decisions-processed`` and ``system-alerts`` (and
stage 2 to ``system-alerts``, through the same :class:`AuditStamper`) carries four headers
linking it to the previous record of its *lane* in the same topic partition:

=============  ==================================================================
``audit.lane``  the writer: ``stage1/p<raw partition>``, ``stage2``, … (one writer at a time)
``audit.seq``   1, 2, 3 … per (topic, partition, lane)
``audit.prev``  the hex SHA-256 of the lane's previous record (64 zeros for the first)
``audit.hash``  SHA-256 over prev, lane, seq, topic, partition, key, value, timestamp
=============  ==================================================================

Lanes exist because two writers share ``system-alerts`` partitions (stage 1 keys its
alerts by agent, stage 2 by incident): one chain per writer per partition needs no
coordination between them, while a single chain would need a single writer. Stage 1's
lane names the *raw* partition whose owner writes it, so the lane has exactly one writer
even while partitions move between instances (the consumer group guarantees that).

A chain head only advances when the transaction that carries the records commits
(:meth:`AuditStamper.commit`); after an abort the pending links are dropped
(:meth:`AuditStamper.abort`). A restarted or rebalanced writer finds its head by reading
the lane's last committed record of the partition (:func:`last_link`).

What the chain proves: a record altered, deleted, duplicated or moved in the log breaks
it, and :func:`check_records` names the first such record. What it does not: whoever can
write the topic can also compute hashes (there is no secret), so an attacker who rewrites
a whole suffix of a lane, or appends a well-formed record past its head, is only caught
against a head kept elsewhere (``chorus-lab audit verify`` prints each lane's head so a
scheduled run can keep them).

>>> h1 = link_hash(GENESIS, "stage1/p0", 1, "t", 0, b"a-1", b"{}", 1000)
>>> h2 = link_hash(h1, "stage1/p0", 2, "t", 0, b"a-1", b"{}", 2000)
>>> len(h1), h1 != h2
(64, True)
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from chorus_lab.bus import Bus, Consumer, Record, TopicError, TopicPartition
from chorus_lab.bus.base import Headers
from chorus_lab.bus.partitioner import partition_for_key

GENESIS = "0" * 64
"""``audit.prev`` of a lane's first record."""

LANE = "audit.lane"
SEQ = "audit.seq"
PREV = "audit.prev"
HASH = "audit.hash"

FindingKind = Literal["altered", "missing", "duplicated", "reordered", "unstamped"]


def link_hash(prev: str, lane: str, seq: int, topic: str, partition: int, key: bytes | None, value: bytes | None, timestamp_ms: int) -> str:
    """The hex SHA-256 of one chain link.

    Every field is length-prefixed (a missing key or value is length -1), so no two
    different records hash the same input.
    """
    # One buffer and one update: the same bytes as hashing each part in turn, at half the
    # cost (stage 1 stamps every decision).
    buffer = bytearray()
    for part in (prev.encode(), lane.encode(), str(seq).encode(), topic.encode(), str(partition).encode(), key, value, str(timestamp_ms).encode()):
        if part is None:
            buffer += _MISSING
        else:
            buffer += _LENGTH.pack(len(part))
            buffer += part
    return hashlib.sha256(buffer).hexdigest()


_LENGTH = struct.Struct(">i")
_MISSING = _LENGTH.pack(-1)


@dataclass(frozen=True, slots=True)
class Link:
    """A lane's chain head: the last record's sequence number and hash."""

    seq: int
    hash: str


START = Link(0, GENESIS)
"""The head of a lane with no record yet."""


def link_of(record: Record) -> tuple[str, Link, str] | None:
    """``(lane, Link(seq, hash), prev)`` from a record's audit headers, or None if unstamped."""
    lane, seq, prev, digest = (record.header(name) for name in (LANE, SEQ, PREV, HASH))
    if lane is None or seq is None or prev is None or digest is None:
        return None
    try:
        return lane.decode(), Link(int(seq), digest.decode()), prev.decode()
    except (UnicodeDecodeError, ValueError):
        return None


def stamp_headers(head: Link, lane: str, topic: str, partition: int, key: bytes | None, value: bytes | None, timestamp_ms: int) -> tuple[Link, Headers]:
    """The next link after ``head`` and the headers that carry it (pure).

    >>> link, headers = stamp_headers(START, "stage2", "t", 1, None, b"x", 5)
    >>> link.seq, [name for name, _ in headers]
    (1, ['audit.lane', 'audit.seq', 'audit.prev', 'audit.hash'])
    """
    seq = head.seq + 1
    digest = link_hash(head.hash, lane, seq, topic, partition, key, value, timestamp_ms)
    headers = ((LANE, lane.encode()), (SEQ, str(seq).encode()), (PREV, head.hash.encode()), (HASH, digest.encode()))
    return Link(seq, digest), headers


# --------------------------------------------------------------------------- verification


@dataclass(frozen=True, slots=True)
class Finding:
    """The first record of a range that breaks the chain, and why."""

    kind: FindingKind
    topic: str
    partition: int
    offset: int
    lane: str | None
    detail: str

    def __str__(self) -> str:
        lane = f" (lane {self.lane})" if self.lane else ""
        return f"{self.kind}: {self.topic}[{self.partition}] offset {self.offset}{lane}: {self.detail}"


@dataclass(slots=True)
class PartitionReport:
    """The verification of one partition range."""

    topic: str
    partition: int
    start: int
    end: int
    records: int = 0
    finding: Finding | None = None
    heads: dict[str, Link] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.finding is None


def check_records(records: Sequence[Record], *, allow_unstamped: bool = False) -> tuple[Finding | None, dict[str, Link]]:
    """Check the chain over records of one topic partition, in offset order (pure).

    Returns the first finding (or None) and each lane's last link. The first record of a
    lane in the range is trusted to follow whatever precedes the range; from then on each
    record must carry the next sequence number, link to its predecessor's hash and hash to
    its own headers' value.

    >>> from chorus_lab.bus import Record
    >>> def rec(offset, head, value):
    ...     link, headers = stamp_headers(head, "L", "t", 0, b"k", value, offset)
    ...     return link, Record("t", 0, offset, b"k", value, offset, headers)
    >>> l1, r1 = rec(0, START, b"a"); l2, r2 = rec(1, l1, b"b"); l3, r3 = rec(2, l2, b"c")
    >>> check_records([r1, r2, r3])[0] is None
    True
    >>> print(check_records([r1, r3])[0])
    missing: t[0] offset 2 (lane L): sequence 2 is missing before sequence 3
    >>> print(check_records([r1, r2._replace(value=b"B"), r3])[0])
    altered: t[0] offset 1 (lane L): the record's content does not match its audit.hash
    """
    links: list[tuple[Record, str, Link, str] | None] = []
    seqs_in_range: dict[str, set[int]] = {}
    for record in records:
        parsed = link_of(record)
        if parsed is None:
            links.append(None)
            continue
        lane, link, prev = parsed
        links.append((record, lane, link, prev))
        seqs_in_range.setdefault(lane, set()).add(link.seq)
    heads: dict[str, Link] = {}
    seen: dict[str, dict[int, str]] = {}
    for record, item in zip(records, links, strict=True):
        if item is None:
            if allow_unstamped:
                continue
            return Finding("unstamped", record.topic, record.partition, record.offset, None, "the record has no audit headers (written outside the audited writers)"), heads
        _, lane, link, prev = item
        expected = link_hash(prev, lane, link.seq, record.topic, record.partition, record.key, record.value, record.timestamp_ms)

        def finding(kind: FindingKind, detail: str) -> tuple[Finding, dict[str, Link]]:
            return Finding(kind, record.topic, record.partition, record.offset, lane, detail), heads  # noqa: B023 (used at once)

        earlier = seen.setdefault(lane, {})
        if link.seq in earlier:
            same = earlier[link.seq] == link.hash and expected == link.hash
            return finding("duplicated", f"sequence {link.seq} appears again" + ("" if same else " with other content"))
        if expected != link.hash:
            return finding("altered", "the record's content does not match its audit.hash")
        head = heads.get(lane)
        if head is not None:
            if link.seq < head.seq:
                return finding("reordered", f"sequence {link.seq} comes after sequence {head.seq}")
            if link.seq > head.seq + 1:
                gap = head.seq + 1
                if gap in seqs_in_range[lane]:
                    return finding("reordered", f"sequence {gap} comes later in the log than sequence {link.seq}")
                return finding("missing", f"sequence {gap} is missing before sequence {link.seq}" if link.seq == gap + 1 else f"sequences {gap}-{link.seq - 1} are missing before sequence {link.seq}")
            if prev != head.hash:
                return finding("altered", f"audit.prev does not match the hash of sequence {head.seq}: the record before it was replaced")
        earlier[link.seq] = link.hash
        heads[lane] = link
    return None, heads


# --------------------------------------------------------------------------- reading the log


def read_partition(consumer: Consumer, tp: TopicPartition, start: int, end: int) -> list[Record]:
    """The committed records of ``tp`` in ``[start, end)`` (a bounded read)."""
    from chorus_lab.processor import read_range

    return list(read_range(consumer, tp, start, end))


def last_link(consumer: Consumer, tp: TopicPartition, lane: str, *, window: int = 64) -> Link:
    """The newest link of ``lane`` in ``tp`` (:data:`START` if the lane has none).

    Reads backwards from the end in growing windows, so a partition with one writer
    costs one short read.
    """
    low, high = consumer.watermarks(tp)
    end = high
    while end > low:
        start = max(low, end - window)
        for record in reversed(read_partition(consumer, tp, start, end)):
            parsed = link_of(record)
            if parsed is not None and parsed[0] == lane:
                return parsed[1]
        end = start
        window *= 4
    return START


def verify_partition(consumer: Consumer, tp: TopicPartition, start: int | None = None, end: int | None = None, *, allow_unstamped: bool = False) -> PartitionReport:
    """Verify one partition between ``start`` (default: log start) and ``end`` (default: the end now)."""
    low, high = consumer.watermarks(tp)
    first = low if start is None else max(low, start)
    last = high if end is None else min(high, end)
    records = read_partition(consumer, tp, first, last)
    found, heads = check_records(records, allow_unstamped=allow_unstamped)
    return PartitionReport(tp.topic, tp.partition, first, last, len(records), found, heads)


def verify(
    bus: Bus,
    topics: Iterable[str],
    *,
    partition: int | None = None,
    from_offset: int | None = None,
    to_offset: int | None = None,
    allow_unstamped: bool = False,
) -> list[PartitionReport]:
    """Verify every partition (or one) of ``topics``; end offsets are taken when each read starts."""
    admin = bus.admin()
    reports: list[PartitionReport] = []
    consumer = bus.consumer(None)
    try:
        for topic in topics:
            description = admin.describe(topic)
            if description is None:
                raise TopicError(f"topic {topic} does not exist on {bus.url}")
            partitions = range(description.partitions) if partition is None else [partition]
            for p in partitions:
                if not 0 <= p < description.partitions:
                    raise TopicError(f"{topic} has {description.partitions} partitions; there is no partition {p}")
                reports.append(verify_partition(consumer, TopicPartition(topic, p), from_offset, to_offset, allow_unstamped=allow_unstamped))
    finally:
        consumer.close()
    return reports


# --------------------------------------------------------------------------- writing


_KEY_PARTITIONS_KEPT = 1 << 16
"""Bound on the remembered key → partition results (cleared when full)."""


class AuditStamper:
    """Chains the records one writer produces; heads advance only when a transaction commits.

    Use, per transaction::

        stamper.abort()                       # drop links of a batch that did not commit
        headers = stamper.stamp(topic, key, value, timestamp_ms, lane="stage2")
        producer.produce(topic, value, key, partition=stamper.partition(topic, key), headers=headers, timestamp_ms=...)
        producer.commit_transaction(); stamper.commit()

    ``stamp`` computes the partition like the producer does (murmur2 over the key; pass
    ``partition`` for keyless or explicitly placed records). A lane's head is read from the
    log the first time it is needed (after :meth:`forget`, too: call it when the writer
    gains a partition, since another instance may have written the lane meanwhile).
    """

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._heads: dict[tuple[str, int, str], Link] = {}
        self._pending: dict[tuple[str, int, str], Link] = {}
        self._partitions: dict[str, int] = {}
        self._key_partitions: dict[tuple[bytes, int], int] = {}
        self._reader: Consumer | None = None

    def partition(self, topic: str, key: bytes | None) -> int:
        """The partition a keyed record goes to (as the producer computes it)."""
        if key is None:
            raise ValueError(f"a keyless record for {topic} needs an explicit partition to be audited")
        count = self._partition_count(topic)
        found = self._key_partitions.get((key, count))
        if found is None:
            # murmur2 is pure Python; a fleet has few agents, so their partitions are remembered.
            if len(self._key_partitions) >= _KEY_PARTITIONS_KEPT:
                self._key_partitions.clear()
            found = self._key_partitions[(key, count)] = partition_for_key(key, count)
        return found

    def stamp(self, topic: str, key: bytes | None, value: bytes | None, timestamp_ms: int, *, lane: str, partition: int | None = None) -> Headers:
        """Audit headers for the next record of ``lane`` in the record's partition (pending until :meth:`commit`)."""
        p = self.partition(topic, key) if partition is None else partition
        slot = (topic, p, lane)
        head = self._pending.get(slot) or self._heads.get(slot)
        if head is None:
            head = self._heads[slot] = last_link(self._consumer(), TopicPartition(topic, p), lane)
        link, headers = stamp_headers(head, lane, topic, p, key, value, timestamp_ms)
        self._pending[slot] = link
        return headers

    def commit(self) -> None:
        """The transaction committed: its links become the heads."""
        self._heads.update(self._pending)
        self._pending.clear()

    def abort(self) -> None:
        """The transaction did not commit (or the batch is redone): forget its links."""
        self._pending.clear()

    def forget(self, lane: str | None = None) -> None:
        """Drop cached heads (of one lane, or all); they are read from the log when next needed."""
        for slot in [s for s in self._heads if lane is None or s[2] == lane]:
            del self._heads[slot]
        self._pending.clear()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _partition_count(self, topic: str) -> int:
        count = self._partitions.get(topic)
        if count is None:
            description = self.bus.admin().describe(topic)
            if description is None:
                raise TopicError(f"topic {topic} does not exist on {self.bus.url}; cannot audit its records")
            count = self._partitions[topic] = description.partitions
        return count

    def _consumer(self) -> Consumer:
        if self._reader is None:
            from chorus_lab.processor import bounded_reader

            self._reader = bounded_reader(self.bus)
        return self._reader


__all__ = [
    "GENESIS",
    "START",
    "AuditStamper",
    "Finding",
    "Link",
    "PartitionReport",
    "check_records",
    "last_link",
    "link_hash",
    "link_of",
    "stamp_headers",
    "verify",
    "verify_partition",
]
