"""Stage 1's shell: consume-transform-produce in bus transactions, with recovery by replay.

A :class:`StreamProcessor` is one member of a consumer group on ``agent-messages-raw`` and
``chorus-trust-signals`` (co-partitioned: partition *p* of both topics belongs to the same
member, so an agent's messages and the signals about it meet in one engine). Per batch:

1. take at most ``batch_size`` records (the bound on in-flight work: nothing more is read
   until the batch is committed, so a slow broker slows reading, never memory);
2. run each record through :class:`~chorus_lab.pipeline.Stage1`, in memory: its decision
   and alerts, or its dead letter for ``agent-messages-errors``; then a checkpoint of each
   partition that needs one, for the compacted ``chorus-snapshots`` topic. A *decider*
   (:mod:`chorus_lab.stage1_deciders`) does this CPU work: in this thread, or in
   ``ProcessorSettings.decide_workers`` processes that own the partitions' state;
3. ``begin_transaction``, produce all of it, ``send_offsets_to_transaction`` (the next
   offset of every partition read) and ``commit_transaction``: outputs, checkpoints and
   input offsets become visible together (consumers read ``read_committed``), or not at all.

**Recovery.** A partition's state is rebuilt when it is assigned: the latest checkpoint of
the partition, then a replay of the raw records between the checkpoint's offset and the
group's committed offset (through the same pure core, producing nothing). The checkpoint
is written in the same transaction as the offsets it covers, so it never runs ahead of
them. What a replay could not reproduce is always covered by a checkpoint: every batch
that applied a trust signal (their interleaving with the raw records depends on timing)
or dead-lettered a message for a processing failure or time-out writes one for the
partition. So a processor killed at any moment (SIGKILL included) and restarted commits
exactly the decisions an uninterrupted run would have: nothing lost, nothing twice, the
same trust scores. Checkpoints also bound replay work (every ``snapshot_every`` records or
``snapshot_interval_s`` seconds per partition).

**Failures.** Bad input is data (DESIGN.md, principle 6): a record that cannot be decoded
(stage ``decode``), is not keyed and partitioned by its ``agent_id`` (``validate``), makes
the pipeline raise or takes longer than ``message_timeout_s`` (``process``), or whose
decision cannot be encoded (``produce``) goes to the error topic as a
:class:`~chorus_lab.deadletter.DeadLetter` (reason, original bytes, ``topic/partition/
offset``) in the same transaction, and processing goes on. A processing failure is found
while the batch is decided, before anything is sent: the touched partitions are rebuilt
and the batch is retried with the record dead-lettered, so no half-applied message ever
reaches the state. A transaction the bus aborts (a rebalance, a broker hiccup) is retried
the same way; ``ProducerFencedError`` (a newer instance with our ``transactional.id``)
stops the processor.

**Zombie fencing.** One ``transactional.id`` per instance, ``chorus-stage1.<group>.<instance>``.
On Kafka, ``send_offsets_to_transaction`` carries the consumer group metadata (KIP-447),
so an instance that lost its partitions in a rebalance cannot commit offsets for them
any more, whatever its transactional id; a restarted instance with the same instance id
also fences its predecessor at once (``init_transactions`` aborts its open transaction
instead of leaving it to time out). The embedded backend checks partition ownership at
commit. Per-partition transactional ids (the pre-KIP-447 scheme) are not needed.

>>> import tempfile
>>> from chorus_lab.bus import open_bus
>>> bus = open_bus(f"embedded://{tempfile.mkdtemp()}")
>>> processor = StreamProcessor(bus, "doc-group", "doc-1", settings=ProcessorSettings(partitions=2))
>>> processor.start(); processor.step() >= 0; processor.close()
True
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import os
import signal
import socket
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from chorus_lab import config
from chorus_lab.bus import (
    Bus,
    BusError,
    CommitFailedError,
    ConfigurationError,
    Consumer,
    Producer,
    ProducerFencedError,
    Record,
    TopicError,
    TopicPartition,
    TopicSpec,
    TransactionAbortedError,
)
from chorus_lab.audit import AuditStamper
from chorus_lab.deadletter import DeadLetter, PoisonedRecord
from chorus_lab.engine import EngineConfig, Predictor
from chorus_lab.engine.global_ledger import GlobalLedgerTable
from chorus_lab.history.eventtime import record_timestamp_ms, to_ms
from chorus_lab.pipeline import Stage1
from chorus_lab.schema import SchemaError
from chorus_lab.stage1_deciders import (
    Decider,
    DecideSettings,
    LocalDecider,
    ProcessingTimeout,
    in_chunks,
    make_decider,
    message_or_dead_letter,
)

log = logging.getLogger(__name__)

DEFAULT_GROUP = "chorus-stage1"
CHECKPOINT_FORMAT = 1
_CHUNK_BYTES = 512 * 1024
"""Checkpoints are split into chunks well below Kafka's default 1 MB record limit."""


_FENCING_CODES = frozenset({"_FENCED", "PRODUCER_FENCED", "TRANSACTION_COORDINATOR_FENCED", "INVALID_PRODUCER_EPOCH"})
"""Error codes that mean another producer took our transactional id (stop), unlike other fatal errors (replace the producer)."""


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class Topics:
    """The topics stage 1 reads and writes; ``prefix`` names a sandbox copy (tests, replays).

    >>> Topics("t1-").raw
    't1-agent-messages-raw'
    """

    prefix: str = ""

    @property
    def raw(self) -> str:
        return self.prefix + config.RAW

    @property
    def decisions(self) -> str:
        return self.prefix + config.DECISIONS

    @property
    def alerts(self) -> str:
        return self.prefix + config.ALERTS

    @property
    def errors(self) -> str:
        return self.prefix + config.ERRORS

    @property
    def dlq(self) -> str:
        return self.prefix + config.DLQ

    @property
    def signals(self) -> str:
        return self.prefix + config.TRUST_SIGNALS

    @property
    def snapshots(self) -> str:
        return self.prefix + config.SNAPSHOTS

    def name(self, topic: str) -> str:
        """The sandboxed name of one of ``config``'s topic names."""
        return self.prefix + topic

    def specs(self, partitions: int = config.DEFAULT_PARTITIONS) -> list[TopicSpec]:
        """Specs of every chorus-lab topic under this prefix."""
        return config.topic_specs(partitions, prefix=self.prefix)


@dataclass(frozen=True, slots=True)
class ProcessorSettings:
    """How a processor batches, checkpoints and times out. Defaults suit a laptop and a cluster."""

    batch_size: int = 500
    """Most records in one transaction: the bound on in-flight work."""
    poll_timeout_s: float = 0.05
    """How long an idle processor waits for a record before looking around (stop, stats)."""
    message_timeout_s: float = 2.0
    """Per-message processing budget; a message over it is dead-lettered (stage ``process``)."""
    snapshot_every: int = 5_000
    """Checkpoint a partition after this many records (bounds replay on recovery)."""
    snapshot_interval_s: float = 60.0
    """…or after this many seconds with new records, whichever comes first."""
    session_timeout_s: float = 10.0
    """Group session timeout: how soon a killed instance's partitions move to another."""
    transaction_timeout_s: float = 30.0
    """Kafka ``transaction.timeout.ms``: how long a dead instance's open transaction can block readers."""
    max_consecutive_aborts: int = 10
    """Give up (raise) after this many aborted transactions in a row."""
    partitions: int = config.DEFAULT_PARTITIONS
    """Partitions of the topics the processor creates when they are missing."""
    create_topics: bool = True
    stats_interval_s: float = 30.0
    global_ledger: bool = True
    """With more than one partition, conflict prediction also reads stage 2's fleet-wide
    ``chorus-resource-ledger`` (``engine.global_ledger``); with one, the partition's own
    ledger is the whole fleet's already."""
    decide_workers: int = 0
    """Processes that decide the records (``chorus_lab.stage1_deciders``), each owning some of
    this instance's partitions; 0 decides in the processor's own thread. More than the
    instance's partitions leaves the rest idle."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.message_timeout_s <= 0:
            raise ValueError(f"message_timeout_s must be positive, got {self.message_timeout_s}")
        if self.snapshot_every < 1:
            raise ValueError(f"snapshot_every must be at least 1, got {self.snapshot_every}")
        if self.decide_workers < 0:
            raise ValueError(f"decide_workers must be 0 (decide in the processor's thread) or more, got {self.decide_workers}")


@dataclass(slots=True)
class ProcessorStats:
    """Running totals of one processor (logged every ``stats_interval_s``)."""

    batches: int = 0
    records: int = 0
    decisions: int = 0
    duplicates: int = 0
    signals: int = 0
    alerts: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    """Dead letters sent, by stage (decode, validate, process, produce)."""
    aborts: int = 0
    restores: int = 0
    reused: int = 0
    """Partitions handed back to this instance whose in-memory state was still current."""
    replayed: int = 0
    checkpoints: int = 0
    last_commit_ms: float = 0.0

    def summary(self) -> str:
        errors = sum(self.errors.values())
        return (
            f"{self.records} records, {self.decisions} decisions, {self.duplicates} duplicates, {errors} errors, "
            f"{self.signals} signals, {self.alerts} alerts; {self.batches} transactions ({self.aborts} aborted), "
            f"{self.restores} partition restores ({self.replayed} records replayed, {self.reused} kept), {self.checkpoints} checkpoints"
        )


def default_instance_id() -> str:
    """``<host>-<pid>``: unique, but new on every start. Pass a stable id to fence a predecessor at once."""
    return f"{socket.gethostname()}-{os.getpid()}"


# --------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One partition's stage-1 state and the input offsets it covers (next offsets to read)."""

    partition: int
    raw_offset: int
    signals_offset: int
    state: dict[str, Any]
    generation: str


def checkpoint_key(group_id: str, raw_topic: str, partition: int) -> str:
    """Key of a partition's checkpoint manifest; chunk keys add ``/chunk-<i>``."""
    return f"stage1/{group_id}/{raw_topic}/{partition}"


def checkpoint_records(key: str, checkpoint: Checkpoint, *, instance_id: str) -> list[tuple[bytes, bytes, tuple[tuple[str, bytes], ...]]]:
    """The records (key, value, headers) of one checkpoint: compressed chunks, then the manifest.

    The manifest comes last, so a reader that sees it has seen every chunk before it (same
    partition, same transaction). Compaction keeps the newest record per key; a leftover
    chunk of an older, longer checkpoint is ignored because its generation differs.
    """
    blob = zlib.compress(json.dumps(checkpoint.state, separators=(",", ":")).encode(), 1)
    chunks = [blob[i : i + _CHUNK_BYTES] for i in range(0, len(blob), _CHUNK_BYTES)] or [b""]
    generation = checkpoint.generation.encode()
    records = [
        (f"{key}/chunk-{i}".encode(), chunk, (("chorus.generation", generation), ("chorus.chunk", str(i).encode())))
        for i, chunk in enumerate(chunks)
    ]
    manifest = {
        "format": CHECKPOINT_FORMAT,
        "partition": checkpoint.partition,
        "raw_offset": checkpoint.raw_offset,
        "signals_offset": checkpoint.signals_offset,
        "generation": checkpoint.generation,
        "chunks": len(chunks),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "instance_id": instance_id,
        "created_at": datetime.now(UTC).isoformat(),
    }
    records.append((key.encode(), json.dumps(manifest).encode(), (("chorus.generation", generation),)))
    return records


def latest_checkpoint(records: Sequence[Record], key: str) -> Checkpoint | None:
    """The newest complete checkpoint under ``key`` among ``records`` (in offset order)."""
    manifest_key = key.encode()
    chunk_prefix = f"{key}/chunk-".encode()
    pending: dict[str, dict[int, bytes]] = {}
    found: Checkpoint | None = None
    for record in records:
        if record.key is None or record.value is None:
            continue
        if record.key.startswith(chunk_prefix):
            generation = (record.header("chorus.generation") or b"").decode()
            index = int((record.header("chorus.chunk") or b"-1").decode())
            pending.setdefault(generation, {})[index] = record.value
        elif record.key == manifest_key:
            manifest = json.loads(record.value)
            chunks = pending.get(manifest["generation"], {})
            pending.clear()  # older generations can never complete after a newer manifest
            if manifest.get("format") != CHECKPOINT_FORMAT or any(i not in chunks for i in range(manifest["chunks"])):
                log.warning("ignoring an incomplete or unknown checkpoint %s at %s", manifest.get("generation"), record.offset)
                continue
            blob = b"".join(chunks[i] for i in range(manifest["chunks"]))
            if hashlib.sha256(blob).hexdigest() != manifest["sha256"]:
                log.warning("ignoring checkpoint %s: its chunks do not match the manifest's hash", manifest["generation"])
                continue
            found = Checkpoint(
                partition=manifest["partition"],
                raw_offset=manifest["raw_offset"],
                signals_offset=manifest["signals_offset"],
                state=json.loads(zlib.decompress(blob)),
                generation=manifest["generation"],
            )
    return found


def consume_batch(consumer: Consumer, max_records: int, timeout: float) -> list[Record]:
    """Whatever has arrived, up to ``max_records``; if nothing has, wait up to ``timeout`` for the first.

    The batch is what accumulated while the previous one was processed: small (and quick)
    at low rates, up to ``max_records`` under load. A plain ``consume(max_records,
    timeout)`` on Kafka would wait out ``timeout`` whenever fewer records are queued,
    adding that wait to every record's latency.
    """
    records = consumer.consume(max_records, 0.0)
    if records or timeout <= 0:
        return records
    records = consumer.consume(1, timeout)
    if records and max_records > 1:
        records += consumer.consume(max_records - 1, 0.0)
    return records


class StageRunner(Protocol):
    """What the stage shells (:class:`StreamProcessor`, ``Stage2Processor``) share for running."""

    stats: Any

    def start(self) -> None: ...
    def step(self) -> int: ...
    def caught_up(self) -> bool: ...
    def close(self) -> None: ...


def run_until_stopped(runner: StageRunner, stop: threading.Event | None = None) -> None:
    """Step ``runner`` until ``stop`` is set; always close it."""
    stop = stop or threading.Event()
    runner.start()
    try:
        while not stop.is_set():
            runner.step()
    finally:
        runner.close()


def run_until_caught_up(runner: StageRunner, timeout: float, *, name: str) -> None:
    """Step ``runner`` until a step reads nothing and it has caught up (offline runs); always close it."""
    runner.start()
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                raise BusError(f"{name} did not catch up within {timeout:.0f}s: {runner.stats.summary()}")
            if runner.step() == 0 and runner.caught_up():
                break
    finally:
        runner.close()


def bounded_reader(bus: Bus) -> Consumer:
    """A group-less consumer for bounded reads (checkpoints, replays, audit chain heads)."""
    from chorus_lab.bus.kafka import KafkaBus

    if isinstance(bus, KafkaBus):
        # Its metadata requests (watermarks) wait behind its long-poll fetches: keep those short.
        return bus.consumer(None, **{"fetch.wait.max.ms": 5})
    return bus.consumer(None)


def read_range(consumer: Consumer, tp: TopicPartition, start: int, end: int, *, timeout: float = 120.0) -> Iterator[Record]:
    """Yield the committed records of ``tp`` with ``start <= offset < end``.

    Transaction markers and aborted records take offsets but are never returned, so the
    loop ends on the consumer's position, not on the last record's offset. Raises
    ``BusError`` when ``end`` is not reached within ``timeout`` seconds.
    """
    if start >= end:
        return
    consumer.assign({tp: start})
    deadline = time.monotonic() + timeout
    position = start
    try:
        while position < end:
            # Short waits: a Kafka consume() asked for more records than exist waits its whole
            # timeout, and the last offsets before ``end`` may be markers, not records.
            records = consumer.consume(min(1000, end - position), 0.01)
            for record in records:
                if record.offset >= end:
                    return
                yield record
            position = max(position, records[-1].offset + 1) if records else max(position, consumer.position([tp])[tp])
            if time.monotonic() > deadline:
                raise BusError(f"reading {tp.topic}[{tp.partition}] stopped at offset {position}, before {end}, for {timeout:.0f}s", retriable=True)
    finally:
        # An idle assigned Kafka consumer keeps long-polling, and its other requests
        # (watermarks) queue behind those fetches.
        consumer.assign({})


# --------------------------------------------------------------------------- the processor


@dataclass(slots=True)
class _Parked:
    """State of a partition this instance gave up, kept in case it comes back unchanged."""

    raw_next: int
    signals_next: int


class StreamProcessor:
    """Stage 1 as a consumer-group member: see the module docstring.

    ``run(stop)`` loops until ``stop`` is set (SIGTERM in the CLI), then closes cleanly:
    the batch in hand commits, the group is left, partitions move at once.
    """

    def __init__(
        self,
        bus: Bus,
        group_id: str = DEFAULT_GROUP,
        instance_id: str | None = None,
        *,
        topics: Topics | None = None,
        settings: ProcessorSettings | None = None,
        engine_config: EngineConfig | None = None,
        predictor: Predictor | None = None,
    ) -> None:
        self.bus = bus
        self.group_id = group_id
        self.instance_id = instance_id or default_instance_id()
        self.topics = topics or Topics()
        self.settings = settings or ProcessorSettings()
        self.engine_config = engine_config or EngineConfig()
        self.predictor = predictor
        self.ledger_table = GlobalLedgerTable()
        self._decider: Decider | None = None
        self._table: Consumer | None = None
        self.stats = ProcessorStats()
        self.transactional_id = f"chorus-stage1.{group_id}.{self.instance_id}"
        self._producer: Producer | None = None
        self._consumer: Consumer | None = None
        self._reader: Consumer | None = None
        self._partitions = 0
        self._snapshot_partitions = 0
        self._owned: set[int] = set()
        self._pending: set[int] = set()
        self._parked: dict[int, _Parked] = {}
        self._next: dict[TopicPartition, int] = {}
        self._since_checkpoint: dict[int, int] = {}
        self._checkpoint_due: dict[int, float] = {}
        self._poison: dict[tuple[str, int, int], DeadLetter] = {}
        self._batch_errors: dict[str, int] = {}
        self._outputs: list[tuple[str, bytes | None, bytes | None, Any, int | None, int | None]] = []
        # Chains decisions and alerts (docs/history.md); heads advance only on commit.
        self._audit = AuditStamper(bus)
        self._now_ms = 0
        self._retry: list[Record] = []
        self._aborts_in_a_row = 0
        self._next_stats = 0.0
        self._started = False

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Create missing topics, register the transactional producer, join the group."""
        if self._started:
            return
        admin = self.bus.admin()
        if self.settings.create_topics:
            admin.create_topics(self.topics.specs(self.settings.partitions))
        self._partitions = self._partition_count(admin, self.topics.raw)
        signals = self._partition_count(admin, self.topics.signals)
        if signals != self._partitions:
            raise ConfigurationError(
                f"{self.topics.signals} has {signals} partitions but {self.topics.raw} has {self._partitions}: "
                "they must be co-partitioned (same count) so an agent's signals reach its owner"
            )
        self._snapshot_partitions = self._partition_count(admin, self.topics.snapshots)
        self._producer = self._make_producer()
        self._producer.init_transactions()
        self._consumer = self._make_consumer()
        self._consumer.subscribe([self.topics.raw, self.topics.signals], on_assign=self._on_assign, on_revoke=self._on_revoke)
        if self.settings.global_ledger and self._partitions > 1:
            self._table = self._open_ledger_table(admin)
        decide = DecideSettings(
            raw_topic=self.topics.raw,
            decisions_topic=self.topics.decisions,
            alerts_topic=self.topics.alerts,
            partitions=self._partitions,
            message_timeout_s=self.settings.message_timeout_s,
            instance_id=self.instance_id,
            engine_config=self.engine_config,
            predictor=self.predictor,
            global_ledger=self.settings.global_ledger,
        )
        # Interrupting a runaway message needs SIGALRM, which only the main thread receives.
        alarm = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
        self._decider = make_decider(decide, self.settings.decide_workers, alarm=alarm, table=self.ledger_table)
        self._next_stats = time.monotonic() + self.settings.stats_interval_s
        self._started = True
        log.info("stage 1 %s joined group %s on %s (%d partitions)", self.instance_id, self.group_id, self.bus.url, self._partitions)

    def run(self, stop: threading.Event | None = None) -> ProcessorStats:
        """Process until ``stop`` is set; always close. Returns the final stats."""
        run_until_stopped(self, stop)
        return self.stats

    def run_until_caught_up(self, timeout: float = 3600.0) -> ProcessorStats:
        """Process until every partition is read to its end (for offline runs); then close."""
        run_until_caught_up(self, timeout, name="stage 1")
        return self.stats

    def close(self) -> None:
        """Leave the group (partitions move at once) and release the clients."""
        # Closing must not fail a shutdown: a fenced Kafka producer, for one, raises from
        # its final flush (its queued records were aborted anyway).
        for name in ("_consumer", "_reader", "_producer", "_table"):
            client = getattr(self, name)
            if client is None:
                continue
            try:
                client.close()
            except Exception as exc:
                log.warning("closing the %s: %s", name.strip("_"), exc)
            setattr(self, name, None)
        self._audit.close()
        if self._decider is not None:
            self._decider.close()
        self._started = False
        log.info("stage 1 %s stopped: %s", self.instance_id, self.stats.summary())

    @property
    def owned_partitions(self) -> list[int]:
        """Raw partitions whose state this instance holds now."""
        return sorted(self._owned)

    @property
    def stage(self) -> Stage1:
        """The pure core holding the owned partitions' state (after ``start``, deciding in this process)."""
        if not isinstance(self._decider, LocalDecider):
            where = "yet: call start()" if self._decider is None else f"in this process: {self.settings.decide_workers} workers hold it"
            raise RuntimeError(f"stage 1's state is not here {where}")
        return self._decider.stage

    @property
    def decider(self) -> Decider:
        if self._decider is None:
            raise BusError("call start() first")
        return self._decider

    def caught_up(self) -> bool:
        """True when this instance owns partitions and has read every one of them to its end."""
        consumer = self._consumer
        if consumer is None or self._pending or self._retry:
            return False
        assigned = consumer.assignment()
        if not assigned:
            return False
        for tp in assigned:
            end = consumer.watermarks(tp)[1]
            # Transaction markers take offsets after the last record; the consumer's
            # position steps over them, so ask it when our own count falls short.
            if self._next.get(tp, 0) < end and consumer.position([tp])[tp] < end:
                return False
        return True

    # ------------------------------------------------------------------ one batch

    def step(self) -> int:
        """Consume one batch and commit its results in one transaction; return records read."""
        if not self._started:
            raise BusError("call start() before step()")
        assert self._consumer is not None
        self._refresh_ledger_table()
        retry, self._retry = self._retry, []
        # After an abort the batch in hand is retried first; new records follow it.
        fresh = consume_batch(self._consumer, max(1, self.settings.batch_size - len(retry)), 0.0 if retry else self.settings.poll_timeout_s)
        records = retry + fresh
        try:
            self._restore_pending()
        except BusError as exc:
            if not exc.retriable:
                raise
            log.warning("restoring partitions failed (%s); retrying", exc)
            self._retry = records
            time.sleep(1.0)
            return 0
        self._maybe_log_stats()
        if not any(self._is_new(record) for record in records):
            return len(records)
        try:
            self._transact(records)
        except ProducerFencedError as exc:
            if exc.code is None or exc.code in _FENCING_CODES or self._aborts_in_a_row >= self.settings.max_consecutive_aborts:
                log.error("stage 1 %s was fenced by a newer instance with transactional id %s; stopping", self.instance_id, self.transactional_id)
                raise
            # Fatal for this producer, but nobody took our id: a new producer carries on.
            log.warning("the transactional producer failed for good (%s); starting a new one", exc)
            self._aborts_in_a_row += 1
            self._replace_producer()
            self._rebuild_and_retry(records, counted=True)
        except PoisonedRecord as poisoned:
            log.warning("record %s failed processing (%s: %s); retrying the batch without it", poisoned.letter.source, poisoned.letter.error_type, poisoned.letter.message)
            self._poison[poisoned.key] = poisoned.letter
            self._rebuild_and_retry(records, counted=False)
        except BusError as exc:
            if not (exc.retriable or isinstance(exc, TransactionAbortedError | CommitFailedError)):
                raise
            self._aborts_in_a_row += 1
            if self._aborts_in_a_row > self.settings.max_consecutive_aborts:
                raise BusError(f"{self._aborts_in_a_row} transactions in a row were aborted; last: {exc}") from exc
            log.warning("transaction aborted (%s); rebuilding state and retrying", exc)
            self._rebuild_and_retry(records, counted=True)
            time.sleep(min(5.0, 0.05 * 2**self._aborts_in_a_row))
        return len(records)

    def _transact(self, records: list[Record]) -> None:
        """Decide the batch in memory, then produce it and commit in one transaction.

        Deciding first means a record that makes the pipeline fail is found before anything
        was sent: nothing needs aborting, only the state needs rebuilding.
        """
        producer = self._producer
        assert producer is not None and self._consumer is not None
        received_at = datetime.now(UTC)
        self._now_ms = to_ms(received_at)
        started = time.perf_counter()
        decider = self.decider
        counters = replace(decider.counters)  # a batch done again after a failure counts once
        self._batch_errors = {}
        self._outputs = []
        self._audit.abort()  # links of a batch that did not commit are void
        offsets: dict[TopicPartition, int] = {}
        checkpoint_now: set[int] = set()
        counted: dict[int, int] = {}
        poisoned_here: list[tuple[str, int, int]] = []
        raw = self.topics.raw
        fresh = [record for record in records if self._is_new(record)]
        try:
            decided = iter(decider.decide([r for r in fresh if (r.topic, r.partition, r.offset) not in self._poison], received_at))
            for record in fresh:
                key = (record.topic, record.partition, record.offset)
                letter = self._poison.get(key)
                if letter is not None:
                    self._send_error(letter)
                    checkpoint_now.add(record.partition)
                    poisoned_here.append(key)
                else:
                    self._send_decided(next(decided), record.partition)
                    if record.topic == raw:
                        counted[record.partition] = counted.get(record.partition, 0) + 1
                    else:
                        checkpoint_now.add(record.partition)
                tp = record.topic_partition  # a new tuple per access: take it once
                self._next[tp] = offsets[tp] = record.offset + 1
            now = time.monotonic()
            due = []
            for partition, count in counted.items():
                self._since_checkpoint[partition] = self._since_checkpoint.get(partition, 0) + count
                if self._since_checkpoint[partition] >= self.settings.snapshot_every or now >= self._checkpoint_due.get(partition, math.inf):
                    due.append(partition)
            if due and not checkpoint_now:
                # Routine checkpoints only bound replay work: one per batch at most, so
                # partitions that fill up together do not stall one batch together.
                checkpoint_now.add(max(due, key=lambda p: self._since_checkpoint[p]))
            for partition in sorted(checkpoint_now):
                self._write_checkpoint(partition)
        except BaseException:
            decider.counters = counters
            raise
        producer.begin_transaction()
        try:
            for topic, value, key, headers, partition, timestamp_ms in self._outputs:
                while True:
                    try:
                        producer.produce(topic, value, key, partition=partition, headers=headers, timestamp_ms=timestamp_ms)
                        break
                    except BufferError:
                        producer.poll(0.05)  # the local queue is full: let it drain (backpressure)
            if offsets:
                producer.send_offsets_to_transaction(offsets, self._consumer)
            producer.commit_transaction()
        except BaseException:
            decider.counters = counters
            self._audit.abort()
            self._abort_quietly()
            raise
        else:
            self._audit.commit()
        finally:
            self._outputs = []
        for stage, count in self._batch_errors.items():
            self.stats.errors[stage] = self.stats.errors.get(stage, 0) + count
        for key in poisoned_here:
            self._poison.pop(key, None)
        for partition in checkpoint_now:
            self._since_checkpoint[partition] = 0
            self._checkpoint_due[partition] = time.monotonic() + self.settings.snapshot_interval_s
        self._aborts_in_a_row = 0
        self.stats.batches += 1
        self.stats.records += len(fresh)
        self.stats.last_commit_ms = (time.perf_counter() - started) * 1000
        self._sync_counters()

    def _is_new(self, record: Record) -> bool:
        """Ours, and not yet in the state: records of a partition we no longer own, or that a
        rebalance or retry delivers a second time, are skipped."""
        return record.partition in self._owned and record.offset >= self._next.get(record.topic_partition, 0)

    def _send_decided(self, decided: list[Any], raw_partition: int) -> None:
        """Queue what the decider made of one record: dead letters, and decisions and alerts to stamp."""
        for item in decided:
            if isinstance(item, DeadLetter):
                self._send_error(item)
            else:
                topic, value, key, event_ms = item
                self._send_audited(topic, value, key, raw_partition, event_ms)

    def _send_error(self, letter: DeadLetter) -> None:
        self._batch_errors[letter.stage] = self._batch_errors.get(letter.stage, 0) + 1
        self._send(self.topics.errors, letter.original_value, letter.original_key, headers=letter.headers())

    def _send(self, topic: str, value: bytes | None, key: bytes | None, *, headers: Any = None, partition: int | None = None, timestamp_ms: int | None = None) -> None:
        """Queue an output of the batch; it is produced in the batch's transaction.

        No delivery callbacks: inside a transaction a record that fails fails the commit.
        """
        self._outputs.append((topic, value, key, headers, partition, timestamp_ms))

    def _send_audited(self, topic: str, value: bytes, key: bytes, raw_partition: int, event_ms: int) -> None:
        """Queue a decision or alert: stamped with its event time and chained in lane ``stage1/p<raw partition>``."""
        timestamp_ms = record_timestamp_ms(event_ms, self._now_ms)
        headers = self._audit.stamp(topic, key, value, timestamp_ms, lane=f"stage1/p{raw_partition}")
        self._send(topic, value, key, headers=headers, timestamp_ms=timestamp_ms)

    def _write_checkpoint(self, partition: int) -> None:
        raw = TopicPartition(self.topics.raw, partition)
        signals = TopicPartition(self.topics.signals, partition)
        checkpoint = Checkpoint(
            partition=partition,
            raw_offset=self._next[raw],
            signals_offset=self._next[signals],
            state=self.decider.snapshot(partition),
            generation=f"{self.instance_id}-{uuid.uuid4().hex[:12]}",
        )
        key = checkpoint_key(self.group_id, self.topics.raw, partition)
        for record_key, value, headers in checkpoint_records(key, checkpoint, instance_id=self.instance_id):
            self._send(self.topics.snapshots, value, record_key, headers=headers, partition=partition % self._snapshot_partitions)
        self.stats.checkpoints += 1

    def _replace_producer(self) -> None:
        if self._producer is not None:
            try:
                self._producer.close()
            except Exception as exc:  # it is unusable anyway
                log.debug("closing the failed producer: %s", exc)
        self._producer = self._make_producer()
        self._producer.init_transactions()  # also aborts whatever the old one left open

    def _abort_quietly(self) -> None:
        try:
            assert self._producer is not None
            self._producer.abort_transaction()
        except ProducerFencedError:
            raise
        except BusError as exc:
            log.debug("abort after a failed transaction: %s", exc)

    def _rebuild_and_retry(self, records: list[Record], *, counted: bool) -> None:
        """The batch did not commit (or was never sent): rebuild the partitions it touched and keep it for a retry."""
        if counted:
            self.stats.aborts += 1
        touched = {record.partition for record in records if record.partition in self._owned}
        for partition in touched:
            self.decider.drop(partition)
            self._owned.discard(partition)
            self._pending.add(partition)
        # The consumer has moved past these records; they are processed from memory again
        # (records older than the rebuilt state's position are skipped then).
        self._retry = records

    # ------------------------------------------------------------------ assignment

    def _on_assign(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            if tp.partition not in self._owned:
                self._pending.add(tp.partition)

    def _on_revoke(self, partitions: list[TopicPartition]) -> None:
        for partition in sorted({tp.partition for tp in partitions}):
            self._pending.discard(partition)
            for key in [k for k in self._poison if k[1] == partition]:
                del self._poison[key]
            if partition not in self._owned:
                continue
            self._owned.discard(partition)
            self.decider.park(partition)
            raw = TopicPartition(self.topics.raw, partition)
            signals = TopicPartition(self.topics.signals, partition)
            self._parked[partition] = _Parked(self._next.pop(raw), self._next.pop(signals))

    def _restore_pending(self) -> None:
        if not self._pending:
            return
        assert self._consumer is not None
        partitions = sorted(self._pending)
        raw = {p: TopicPartition(self.topics.raw, p) for p in partitions}
        signals = {p: TopicPartition(self.topics.signals, p) for p in partitions}
        committed = self._consumer.committed([*raw.values(), *signals.values()])
        for partition in partitions:
            # Never committed: the group reads from the log start, and any offset is new.
            raw_committed = committed.get(raw[partition])
            raw_start = raw_committed if raw_committed is not None else 0
            signals_committed = committed.get(signals[partition])
            signals_start = signals_committed if signals_committed is not None else 0
            parked = self._parked.pop(partition, None)
            if parked is not None and (parked.raw_next, parked.signals_next) == (raw_start, signals_start):
                # Nobody processed this partition since we gave it up: our state is current.
                self.decider.unpark(partition)
                self.stats.reused += 1
            else:
                self._rebuild(partition, raw_committed, raw_start, signals_start)
            self._next[raw[partition]] = raw_start
            self._next[signals[partition]] = signals_start
            self._owned.add(partition)
            self._pending.discard(partition)
            self._audit.forget(f"stage1/p{partition}")  # another owner may have extended the lane
            self._since_checkpoint[partition] = 0
            self._checkpoint_due[partition] = time.monotonic() + self.settings.snapshot_interval_s

    def _rebuild(self, partition: int, raw_committed: int | None, raw_start: int, signals_start: int) -> None:
        """State of ``partition`` as of the committed offsets: latest checkpoint plus replay."""
        decider = self.decider
        decider.drop(partition)
        self.stats.restores += 1
        if raw_committed is None:
            decider.fresh(partition)  # the group never processed this partition: fresh state
            return
        reader = self._reader_consumer()
        raw = TopicPartition(self.topics.raw, partition)
        checkpoint = self._read_checkpoint(partition)
        if checkpoint is not None and checkpoint.raw_offset <= raw_start:
            decider.restore(partition, checkpoint.state)
            replay_from = checkpoint.raw_offset
            if checkpoint.signals_offset != signals_start:
                log.warning(
                    "partition %d: checkpoint covers signals up to %d but the group committed %d; signals in between are not in the state",
                    partition, checkpoint.signals_offset, signals_start,
                )
        else:
            replay_from = reader.watermarks(raw)[0]
            if checkpoint is not None:
                log.warning("partition %d: checkpoint at raw offset %d is ahead of the committed offset %d (offsets reset?); rebuilding from the log", partition, checkpoint.raw_offset, raw_start)
            if replay_from > 0:
                log.warning("partition %d: no usable checkpoint and the log starts at %d (older records expired); the state is rebuilt from what remains", partition, replay_from)
            decider.fresh(partition)
        replayed = 0
        for chunk in in_chunks(read_range(reader, raw, replay_from, raw_start), 1000):
            decider.replay(chunk)
            replayed += len(chunk)
        self.stats.replayed += replayed
        log.info("partition %d restored: checkpoint %s, %d records replayed up to offset %d", partition, checkpoint.generation if checkpoint else "none", replayed, raw_start)

    def _read_checkpoint(self, partition: int) -> Checkpoint | None:
        reader = self._reader_consumer()
        tp = TopicPartition(self.topics.snapshots, partition % self._snapshot_partitions)
        low, high = reader.watermarks(tp)
        records = list(read_range(reader, tp, low, high))
        return latest_checkpoint(records, checkpoint_key(self.group_id, self.topics.raw, partition))

    # ------------------------------------------------------------------ global ledger table

    def _open_ledger_table(self, admin: Any) -> Consumer | None:
        """A group-less reader of every partition of ``chorus-resource-ledger``, from its start."""
        topic = self.topics.name(config.RESOURCE_LEDGER)
        description = admin.describe(topic)
        if description is None:
            log.warning("%s does not exist: conflict prediction uses partition-local ledgers only", topic)
            return None
        reader = self.bus.consumer(None)
        reader.assign({TopicPartition(topic, p): 0 for p in range(int(description.partitions))})
        return reader

    def _refresh_ledger_table(self) -> None:
        """Take whatever stage 2 published since the last batch (never waits)."""
        if self._table is None:
            return
        entries: list[tuple[str, Any]] = []
        while True:
            records = self._table.consume(1000, 0.0)
            for record in records:
                if record.value is None:
                    continue  # a tombstone: nothing to forget (resources are never deleted)
                source = f"{config.RESOURCE_LEDGER} record at {record.partition}/{record.offset}"
                try:
                    entries.append((source, json.loads(record.value)))
                except ValueError as exc:
                    log.warning("ignoring a %s: %s", source, exc)
            if len(records) < 1000:
                break
        self.decider.apply_table(entries)

    # ------------------------------------------------------------------ clients

    def _make_producer(self) -> Producer:
        from chorus_lab.bus.kafka import KafkaBus

        if isinstance(self.bus, KafkaBus):
            overrides = {"transaction.timeout.ms": int(self.settings.transaction_timeout_s * 1000)}
            return self.bus.producer(transactional_id=self.transactional_id, **overrides)
        return self.bus.producer(transactional_id=self.transactional_id)

    def _make_consumer(self) -> Consumer:
        from chorus_lab.bus.embedded import EmbeddedBus
        from chorus_lab.bus.kafka import KafkaBus

        session_ms = int(self.settings.session_timeout_s * 1000)
        if isinstance(self.bus, KafkaBus):
            overrides = {
                "session.timeout.ms": session_ms,
                "heartbeat.interval.ms": max(500, session_ms // 4),
                # librdkafka prefetches up to 64 MB per consumer by default; bound it.
                "queued.max.messages.kbytes": 16384,
            }
            return self.bus.consumer(self.group_id, **overrides)
        if isinstance(self.bus, EmbeddedBus):
            return self.bus.consumer(self.group_id, session_timeout=self.settings.session_timeout_s)
        return self.bus.consumer(self.group_id)

    def _reader_consumer(self) -> Consumer:
        """A group-less consumer for checkpoints and replays (bounded reads only)."""
        if self._reader is None:
            self._reader = bounded_reader(self.bus)
        return self._reader

    @staticmethod
    def _partition_count(admin: Any, topic: str) -> int:
        description = admin.describe(topic)
        if description is None:
            raise TopicError(f"topic {topic} does not exist; run `chorus-lab topics create` or let the processor create it")
        return int(description.partitions)

    def _sync_counters(self) -> None:
        counters = self.decider.counters
        self.stats.decisions = counters.decisions
        self.stats.duplicates = counters.duplicates
        self.stats.signals = counters.signals
        self.stats.alerts = counters.alerts

    def _maybe_log_stats(self) -> None:
        now = time.monotonic()
        if now >= self._next_stats:
            self._next_stats = now + self.settings.stats_interval_s
            log.info("stage 1 %s: %s", self.instance_id, self.stats.summary())


# --------------------------------------------------------------------------- whole pipeline


def run_pipeline(
    bus: Bus,
    *,
    stop: threading.Event,
    group_id: str = DEFAULT_GROUP,
    instance_id: str | None = None,
    topics: Topics | None = None,
    settings: ProcessorSettings | None = None,
    stage2: bool = True,
    stage2_group: str | None = None,
    started: Callable[[StreamProcessor, Any], None] | None = None,
) -> PipelineStats:
    """Every stage in this process, wired through the bus's topics (``chorus-lab run``).

    Stage 1 runs in the calling thread (so its per-message time budget can use SIGALRM);
    stage 2 (:class:`~chorus_lab.stage2_processor.Stage2Processor`: the causal graph, the
    detectors, the metrics) runs in a thread of its own, reading ``agent-decisions-processed``
    and writing its topics and ``chorus-trust-signals``. Both stop when ``stop`` is set,
    each after committing the batch in hand; if either fails, the other is stopped too and
    the failure is raised. ``stage2=False`` runs stage 1 alone.

    ``started(stage1, stage2)``, if given, receives the two processors (stage 2 None when it
    does not run) before they start, so that another thread can watch their ``stats``: for
    example ``stage2.stats.held``, the decisions stage 2 read but still holds back for
    event-time order, which it writes out only after a quiet second.
    """
    from chorus_lab.stage2_processor import DEFAULT_STAGE2_GROUP, Stage2Processor, Stage2Settings

    processor = StreamProcessor(bus, group_id, instance_id, topics=topics, settings=settings)
    if not stage2:
        if started is not None:
            started(processor, None)
        return PipelineStats(processor.run(stop), None)
    stage1_settings = processor.settings
    second = Stage2Processor(
        bus, stage2_group or DEFAULT_STAGE2_GROUP, processor.instance_id, topics=processor.topics,
        settings=Stage2Settings(partitions=stage1_settings.partitions, create_topics=stage1_settings.create_topics),
    )
    if started is not None:
        started(processor, second)
    failures: list[BaseException] = []

    def run_stage2() -> None:
        try:
            second.run(stop)
        except BaseException as exc:  # reported by the caller's thread below
            log.error("stage 2 stopped with an error: %s", exc)
            failures.append(exc)
            stop.set()

    # Topics first (stage 1 creates them), so stage 2 never starts on a bus without them.
    if stage1_settings.create_topics:
        bus.admin().create_topics(processor.topics.specs(stage1_settings.partitions))
    thread = threading.Thread(target=run_stage2, name="chorus-stage2", daemon=True)
    thread.start()
    try:
        stats = processor.run(stop)
    finally:
        stop.set()
        thread.join()
    if failures:
        raise failures[0]
    return PipelineStats(stats, second.stats)


@dataclass(frozen=True, slots=True)
class PipelineStats:
    """What ``run_pipeline`` did: stage 1's stats and stage 2's (None when it did not run)."""

    stage1: ProcessorStats
    stage2: Any

    def summary(self) -> str:
        text = f"stage 1: {self.stage1.summary()}"
        return text if self.stage2 is None else f"{text}; stage 2: {self.stage2.summary()}"


# --------------------------------------------------------------------------- offline analysis


OUTPUT_TOPICS = (
    config.DECISIONS, config.ALERTS, config.GRAPH_UPDATES, config.METRICS, config.ERRORS, config.DLQ,
    config.TRUST_SIGNALS, config.RESOURCE_LEDGER,
)
"""What ``chorus-lab analyze`` writes, one ``<topic>.jsonl`` each."""
ANALYZE_FLUSH_S = 3600.0
"""At the end of an offline run, event time moves on this far past the last decision, so
open metric windows close and requests left unanswered are judged (``Stage2.tick``)."""
_DEAD_LETTER_TOPICS = (config.ERRORS, config.DLQ)


@dataclass(frozen=True, slots=True)
class AnalyzeSummary:
    """What an offline run read and wrote."""

    lines: int
    sent: int
    invalid: int
    written: dict[str, int]
    stats: ProcessorStats
    stage2: Any = None
    """Stage 2's ``Stage2Stats``."""


def analyze_file(
    source: Path,
    out_dir: Path,
    *,
    partitions: int = 1,
    engine_config: EngineConfig | None = None,
    settings: ProcessorSettings | None = None,
    stage2_config: Any = None,
) -> AnalyzeSummary:
    """Run the pipeline over a JSON-lines file of agent messages; write every output topic.

    The messages go, in file order, through a fresh embedded bus in a temporary directory:
    lines that are not valid ``AgentMessage`` JSON go to ``agent-messages-dlq`` (source
    ``file:<path>:<line>``, as ``chorus-lab produce`` does), the rest to
    ``agent-messages-raw`` keyed by agent. The stages then run until they have read
    everything, and each output topic is written to ``out_dir/<topic>.jsonl``: JSON-valued
    topics as their record values; dead-letter topics as :func:`dead_letter_json` objects.

    Both stages run, in one thread, taking turns batch by batch: stage 2's trust signals
    reach stage 1 one batch later, as they would live, and because every turn reads what
    the bus holds at that point, two runs over the same file write the same records (apart
    from ``processing_metadata``). At the end event time moves ``ANALYZE_FLUSH_S`` past the
    last decision, closing the last metric window.

    One partition (the default) lets the conflict predictor see the whole fleet's resource
    ledger; ``partitions=N`` reproduces the decisions of a live N-partition deployment.
    """
    from chorus_lab.bus.embedded import EmbeddedBus
    from chorus_lab.stage2_processor import Stage2Processor, Stage2Settings
    from chorus_lab.schema import decode_agent_message

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chorus-analyze-") as scratch:
        bus = EmbeddedBus(scratch, maintenance_interval=None)
        topics = Topics()
        bus.admin().create_topics(topics.specs(partitions))
        producer = bus.producer()
        lines = sent = invalid = 0
        with source.open("rb") as stream:
            for number, line in enumerate(stream, start=1):
                raw = line.rstrip(b"\r\n")
                if not raw.strip():
                    continue
                lines += 1
                try:
                    message = decode_agent_message(raw)
                except SchemaError as exc:
                    letter = DeadLetter.from_exception(exc, stage="decode", source=f"file:{source}:{number}", value=raw)
                    producer.produce(topics.dlq, raw, None, headers=letter.headers())
                    invalid += 1
                    continue
                producer.produce(topics.raw, raw, message.agent_id.encode())
                sent += 1
        if producer.flush(60):
            raise BusError("the embedded bus did not take every input line")
        producer.close()
        processor = StreamProcessor(
            bus, "chorus-analyze", "analyze", topics=topics, engine_config=engine_config,
            settings=replace(settings or ProcessorSettings(), create_topics=False, partitions=partitions, snapshot_interval_s=3600.0),
        )
        second = Stage2Processor(
            bus, "chorus-analyze-stage2", "analyze", topics=topics, stage2_config=stage2_config,
            settings=Stage2Settings(create_topics=False, snapshot_every=1_000_000, snapshot_interval_s=math.inf),
            upstream_done=processor.caught_up,
        )
        stats = _run_in_lockstep(processor, second) if sent else processor.stats
        written = {topic: dump_topic(bus, topics.name(topic), out_dir / f"{topic}.jsonl", dead_letters=topic in _DEAD_LETTER_TOPICS) for topic in OUTPUT_TOPICS}
        bus.close()
    return AnalyzeSummary(lines, sent, invalid, written, stats, second.stats)


def _run_in_lockstep(stage1: StreamProcessor, stage2: Any, timeout: float = 3600.0) -> ProcessorStats:
    """Alternate batches of both stages until neither has anything left to read; then close both."""
    stage1.start()
    stage2.start()
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                raise BusError(f"the offline run did not finish within {timeout:.0f}s: {stage1.stats.summary()}")
            read = stage1.step()
            read += stage2.step()
            if read == 0 and stage1.caught_up() and stage2.caught_up():
                break
        stage2.flush_event_time(ANALYZE_FLUSH_S)
    finally:
        stage1.close()
        stage2.close()
    return stage1.stats


def dump_topic(bus: Bus, topic: str, path: Path, *, dead_letters: bool = False) -> int:
    """Write every committed record of ``topic`` to ``path``, partition by partition, one JSON per line."""
    admin = bus.admin()
    description = admin.describe(topic)
    count = 0
    with path.open("wb") as out:
        if description is None:
            return 0
        reader = bus.consumer(None)
        try:
            for partition in range(description.partitions):
                tp = TopicPartition(topic, partition)
                low, high = reader.watermarks(tp)
                for record in read_range(reader, tp, low, high):
                    if dead_letters:
                        line = json.dumps(dead_letter_json(DeadLetter.from_record(record)), ensure_ascii=False, separators=(",", ":")).encode()
                    else:
                        line = record.value or b"null"
                    out.write(line + b"\n")
                    count += 1
        finally:
            reader.close()
    return count


def dead_letter_json(letter: DeadLetter) -> dict[str, Any]:
    """A dead letter as one JSON object: its ``error.*`` headers as fields, then the original record.

    The original value is text when it is valid UTF-8 (``original_value``), else base64
    (``original_value_base64``); the same for the key.

    >>> dead_letter_json(DeadLetter("decode", "SchemaError", "agent_id: required field is missing", "file:x:3", b"{}", field="agent_id"))["original_value"]
    '{}'
    """
    data: dict[str, Any] = {
        "stage": letter.stage,
        "error_type": letter.error_type,
        "message": letter.message,
        "field": letter.field,
        "source": letter.source,
        "attempts": letter.attempts,
    }
    for name, value in (("original_key", letter.original_key), ("original_value", letter.original_value)):
        if value is None:
            data[name] = None
            continue
        try:
            data[name] = value.decode("utf-8")
        except UnicodeDecodeError:
            data[name + "_base64"] = base64.b64encode(value).decode()
    return data


__all__ = [
    "DEFAULT_GROUP",
    "AnalyzeSummary",
    "Checkpoint",
    "PipelineStats",
    "ProcessingTimeout",
    "ProcessorSettings",
    "ProcessorStats",
    "StreamProcessor",
    "Topics",
    "analyze_file",
    "bounded_reader",
    "checkpoint_key",
    "checkpoint_records",
    "consume_batch",
    "dead_letter_json",
    "default_instance_id",
    "dump_topic",
    "latest_checkpoint",
    "message_or_dead_letter",
    "read_range",
    "run_pipeline",
    "run_until_caught_up",
    "run_until_stopped",
]
