"""Stage 2's shell: the causal graph and the detectors as a transactional consumer.

A :class:`Stage2Processor` reads ``agent-decisions-processed`` (read_committed, every
partition: stage 2 sees the whole fleet) and runs each decision through the pure
:class:`~chorus_lab.stage2.Stage2`. Per batch, in one bus transaction with the batch's
input offsets:

==========================  ===========================  ======================================
output                      topic                        key
==========================  ===========================  ======================================
graph updates               ``causal-graph-updates``     ``stage2.graph_update_key``
alerts                      ``system-alerts``            ``stage2.alert_key``
trust signals               ``chorus-trust-signals``     ``agent_id`` (lands on the agent's raw partition)
resource ledger             ``chorus-resource-ledger``   resource (compacted: the latest state per resource)
metric windows              ``analytics-metrics``        ``"snapshot"``
decode or core failures     ``agent-messages-errors``    the original key (``DeadLetter``)
checkpoint                  ``chorus-snapshots``         ``stage2/<group>/<decisions topic>``
==========================  ===========================  ======================================

**Event time, in order.** Stage 2's state depends on the order of decisions, and the
partitions' decisions arrive interleaved by timing. The shell holds them in a buffer
ordered by (event time, partition, offset) and releases a decision once every partition
with records left to read has reached its time (see :meth:`Stage2Processor._low_watermark`).
After each release it calls ``Stage2.tick(watermark)`` with the newest released time, so
metric windows close and ignored requests are noticed; the core never sees the wall clock.

**Single active, with a standby.** Stage 2 cannot be split by partitions (a routing loop
crosses them), so the instance assigns itself every partition (no group rebalancing) and
uses one fixed ``transactional.id``, ``chorus-stage2.<group>.<decisions topic>``. A second
instance — the standby, or a restarted one — registers the same id at ``init_transactions``, which
fences the first: its next commit fails with ``ProducerFencedError`` and it stops, and
the open transaction it left is aborted at once. The newcomer restores the checkpoint and
carries on from the committed offsets. So at most one instance commits at any time.

**Checkpoints.** The whole stage-2 state (JSON, :mod:`chorus_lab.statecodec`) is written to
``chorus-snapshots`` in the same transaction as the offsets it covers, every
``snapshot_every`` decisions or ``snapshot_interval_s`` seconds (and in an instance's first
transaction). Every other transaction writes a small *journal* record instead: the
records it read and the ones it released, in order (runs of ``partition, first offset,
last offset``). Restore = latest checkpoint (the ordering buffer included), then the
journaled batches after it replayed in their recorded order through the same core,
producing nothing. Decisions of different partitions interleave by timing, and
stage 2's state depends on that order; the journal makes the replay follow the very
order the outputs were committed in, so a restarted instance continues exactly where
the killed one committed: no alert lost, none twice.

**A decision the core fails on is data** (DESIGN.md principle 6), as in stage 1: when
``Stage2.process`` raises, the batch is abandoned before anything was sent, the state is
rolled back to the last commit (the core may hold half of the decision), and the batch is
done again with that decision (``topic, partition, offset``) dead-lettered instead of
processed: a :class:`~chorus_lab.deadletter.DeadLetter` of stage ``stage2`` (exception type
and message, the record's original bytes and key, ``topic/partition/offset``) on
``agent-messages-errors``, counted in ``stats.errors`` and in the metrics' ``errors``
(kind ``stage2``). That batch always writes a checkpoint, so a restore never replays the
failed decision (a journal only ever holds decisions the core took), and the dead letter
commits with the offsets and checkpoint that cover it: a restart sends it neither twice
nor not at all.

**Processing observations.** The shell measures what the core cannot know and passes it
in as observations for ``analytics-metrics`` (``docs/detection.md``, *Stream analytics*):
each decision's time in the decisions topic (``stages.bus``: read time − stage 1's
``processed_at``), stage 2's own time for it (``stages.stage2``: from the start of the
batch's work to its result, the way stage 1 stamps ``received_at``/``processed_at``), and
the consumer lag (end offset − position per decisions partition, every ``lag_interval_s``).
Like ``processing_metadata`` they are wall-clock values; nothing else in the output
depends on them.

>>> import tempfile
>>> from chorus_lab.bus import open_bus
>>> bus = open_bus(f"embedded://{tempfile.mkdtemp()}")
>>> stage2 = Stage2Processor(bus, settings=Stage2Settings(partitions=2))
>>> stage2.start(); stage2.step() >= 0; stage2.close()
True
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import math
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from chorus_lab import config, statecodec
from chorus_lab.audit import AuditStamper
from chorus_lab.bus import Bus, BusError, CommitFailedError, Consumer, Producer, ProducerFencedError, Record, TopicPartition, TransactionAbortedError
from chorus_lab.deadletter import DeadLetter, PoisonedRecord
from chorus_lab.history.eventtime import record_timestamp_ms, to_ms
from chorus_lab.pipeline import DetectionSignal as WireSignal
from chorus_lab.processor import Topics, bounded_reader, consume_batch, default_instance_id, read_range, run_until_caught_up, run_until_stopped
from chorus_lab.schema import ProcessedDecision, SchemaError, decode, encode
from chorus_lab.stage2 import Stage2, Stage2Config, Stage2Output, alert_key, graph_update_key

log = logging.getLogger(__name__)

DEFAULT_STAGE2_GROUP = "chorus-stage2"
STAGE2_CHECKPOINT_FORMAT = 1
_CHUNK_BYTES = 512 * 1024
AUDIT_LANE = "stage2"
"""Stage 2's hash-chain lane in each ``system-alerts`` partition (one active instance writes it)."""


@dataclass(frozen=True, slots=True)
class Stage2Settings:
    """How stage 2 batches and checkpoints."""

    batch_size: int = 500
    """Most decisions in one transaction."""
    poll_timeout_s: float = 0.05
    snapshot_every: int = 5_000
    """Checkpoint after this many decisions (bounds the journal replayed on restore)."""
    snapshot_interval_s: float = 60.0
    """…or after this many seconds with new decisions."""
    max_delay_s: float = 600.0
    """Event-time order across partitions: a decision waits until every partition with
    records left to read has reached its time, but never more than this far behind the
    newest decision (a bound on the buffer when one partition has a large backlog)."""
    idle_lateness_s: float = 2.0
    """How far behind the newest decision a partition with nothing new to read may still be."""
    idle_flush_s: float = 1.0
    """Seconds (wall clock) with every partition read to its end before all held decisions go."""
    max_buffer: int = 100_000
    """Most decisions held for ordering; beyond it the oldest go through at once."""
    transaction_timeout_s: float = 30.0
    max_consecutive_aborts: int = 10
    partitions: int = config.DEFAULT_PARTITIONS
    """Partitions of topics created when missing."""
    create_topics: bool = True
    stats_interval_s: float = 30.0
    lag_interval_s: float = 1.0
    """Seconds (wall clock) between consumer-lag measurements for ``analytics-metrics`` (each
    asks the bus for the end offset of every decisions partition)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.snapshot_every < 1:
            raise ValueError(f"snapshot_every must be at least 1, got {self.snapshot_every}")


@dataclass(slots=True)
class Stage2Stats:
    """Running totals of one stage-2 instance."""

    batches: int = 0
    records: int = 0
    decisions: int = 0
    duplicates: int = 0
    errors: int = 0
    """Decisions dead-lettered: undecodable (stage ``decode``) or failed in the core (``stage2``)."""
    alerts: int = 0
    signals: int = 0
    graph_updates: int = 0
    ledger_updates: int = 0
    metrics: int = 0
    checkpoints: int = 0
    restored: bool = False
    replayed: int = 0
    aborts: int = 0
    held: int = 0
    """Decisions read but waiting for the other partitions (event-time order)."""

    def summary(self) -> str:
        return (
            f"{self.records} records, {self.decisions} decisions, {self.duplicates} duplicates, {self.errors} errors; "
            f"{self.alerts} alerts, {self.signals} trust signals, {self.graph_updates} graph updates, "
            f"{self.ledger_updates} ledger updates, {self.metrics} metric windows; {self.batches} transactions "
            f"({self.aborts} aborted), {self.checkpoints} checkpoints, restored: {'yes' if self.restored else 'no'} "
            f"({self.replayed} records replayed), {self.held} held for ordering"
        )


def stage2_checkpoint_key(group_id: str, decisions_topic: str) -> str:
    """Key of stage 2's checkpoint manifest; chunks add ``/chunk-<i>``, journal records ``/journal-<n>``.

    >>> stage2_checkpoint_key("chorus-stage2", "agent-decisions-processed")
    'stage2/chorus-stage2/agent-decisions-processed'
    """
    return f"stage2/{group_id}/{decisions_topic}"


def order_runs(positions: Sequence[tuple[int, int]]) -> list[list[int]]:
    """``(partition, offset)`` pairs, in their order, as runs ``[partition, first, last]`` (the journal).

    >>> order_runs([(0, 4), (0, 5), (1, 9), (0, 6)])
    [[0, 4, 5], [1, 9, 9], [0, 6, 6]]
    """
    runs: list[list[int]] = []
    for partition, offset in positions:
        if runs and runs[-1][0] == partition and runs[-1][2] + 1 == offset:
            runs[-1][2] = offset
        else:
            runs.append([partition, offset, offset])
    return runs


@dataclass(frozen=True, slots=True)
class Restored:
    """What a restore found on ``chorus-snapshots``: the state, where it stands, what to replay."""

    state: dict[str, Any] | None
    offsets: dict[int, int]
    """Next offset to read per decisions partition, as of the checkpoint."""
    journal: list[dict[str, Any]]
    """Batches committed after the checkpoint: the runs each read and released, in order."""


def read_stage2_checkpoint(records: Sequence[Record], key: str) -> Restored:
    """The newest complete checkpoint under ``key`` and the journal records after it.

    ``records`` are one snapshots partition in offset order (committed only).
    """
    manifest_key = key.encode()
    chunk_prefix = f"{key}/chunk-".encode()
    journal_prefix = f"{key}/journal-".encode()
    chunks: dict[str, dict[int, bytes]] = {}
    state: dict[str, Any] | None = None
    offsets: dict[int, int] = {}
    journal: list[dict[str, Any]] = []
    generation: str | None = None
    for record in records:
        if record.key is None or record.value is None:
            continue
        if record.key.startswith(chunk_prefix):
            gen = (record.header("chorus.generation") or b"").decode()
            chunks.setdefault(gen, {})[int((record.header("chorus.chunk") or b"-1").decode())] = record.value
        elif record.key.startswith(journal_prefix):
            entry = json.loads(record.value)
            if entry.get("generation") == generation:
                journal.append(entry)
        elif record.key == manifest_key:
            manifest = json.loads(record.value)
            parts = chunks.get(manifest["generation"], {})
            chunks.clear()
            if manifest.get("format") != STAGE2_CHECKPOINT_FORMAT or any(i not in parts for i in range(manifest["chunks"])):
                log.warning("ignoring an incomplete or unknown stage-2 checkpoint at offset %d", record.offset)
                continue
            blob = b"".join(parts[i] for i in range(manifest["chunks"]))
            if hashlib.sha256(blob).hexdigest() != manifest["sha256"]:
                log.warning("ignoring stage-2 checkpoint %s: its chunks do not match the manifest's hash", manifest["generation"])
                continue
            state = json.loads(zlib.decompress(blob))
            offsets = {int(p): int(o) for p, o in manifest["offsets"].items()}
            generation = manifest["generation"]
            journal = []
    return Restored(state, offsets, journal)


class Stage2Processor:
    """Stage 2 as a single-active transactional consumer: see the module docstring."""

    def __init__(
        self,
        bus: Bus,
        group_id: str = DEFAULT_STAGE2_GROUP,
        instance_id: str | None = None,
        *,
        topics: Topics | None = None,
        settings: Stage2Settings | None = None,
        stage2_config: Stage2Config | None = None,
        upstream_done: Callable[[], bool] | None = None,
        fault_hook: Callable[[ProcessedDecision], None] | None = None,
    ) -> None:
        """``upstream_done`` (offline runs): True once stage 1 has written everything, so a
        partition read to its end is final; live, a quiet ``idle_flush_s`` means the same.

        ``fault_hook`` (tests): called with each decision right after the core took it, as
        part of the core's step; an exception it raises is handled as the core's (the core's
        state has changed by then, so the rollback is exercised too). It is not part of the
        checkpointed state.
        """
        self.bus = bus
        self.group_id = group_id
        self.instance_id = instance_id or default_instance_id()
        self.topics = topics or Topics()
        self.settings = settings or Stage2Settings()
        self.stage2_config = stage2_config
        self.stage = Stage2(stage2_config)
        self.stats = Stage2Stats()
        # One id for the whole group, whichever instance runs it: a newcomer fences the active one.
        self.transactional_id = f"chorus-stage2.{group_id}.{self.topics.decisions}"
        self.checkpoint_key = stage2_checkpoint_key(group_id, self.topics.decisions)
        self._producer: Producer | None = None
        self._consumer: Consumer | None = None
        self._reader: Consumer | None = None
        self._partitions = 0
        self._next: dict[int, int] = {}
        self._watermark: datetime | None = None
        self._buffer: list[tuple[float, int, int, ProcessedDecision]] = []
        """Decisions read but not yet processed, a heap by (event time, partition, offset)."""
        self._frontier: dict[int, float] = {}
        self._upstream_done = upstream_done
        self._idle_since: float | None = None
        """Newest event time read per decisions partition."""
        self._fault_hook = fault_hook
        self._poison: dict[tuple[str, int, int], DeadLetter] = {}
        """Decisions the core failed on, by (topic, partition, offset): dead-lettered when the
        retried batch releases them; forgotten once that batch commits."""
        self._poisoned_here: list[tuple[str, int, int]] = []
        self._bus_ms: dict[tuple[int, int], float] = {}
        """Per held decision (partition, offset): ms from stage 1's ``processed_at`` to our read
        (a processing observation; not checkpointed, so a restored decision has none)."""
        self._batch_started = 0.0
        self._lag_due = 0.0
        self._outputs: list[tuple[str, bytes | None, bytes | None, Any, int | None, int | None]] = []
        # Alerts are an audit trail: stage 2's lane of each system-alerts partition (see chorus_lab.audit).
        self._audit = AuditStamper(bus)
        self._generation = ""
        self._journal_seq = 0
        self._since_checkpoint = 0
        self._checkpoint_due = 0.0
        self._aborts_in_a_row = 0
        self._next_stats = 0.0
        self._started = False

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Create missing topics, fence any older instance, restore the checkpoint, assign every partition."""
        if self._started:
            return
        admin = self.bus.admin()
        if self.settings.create_topics:
            admin.create_topics(self.topics.specs(self.settings.partitions))
        description = admin.describe(self.topics.decisions)
        if description is None:
            raise BusError(f"topic {self.topics.decisions} does not exist; run `chorus-lab topics create` or let stage 2 create it")
        self._partitions = int(description.partitions)
        self._producer = self._make_producer()
        # Fences the previous holder of our transactional id and aborts what it left open,
        # so the committed offsets and checkpoint read next are final.
        self._producer.init_transactions()
        self._consumer = self.bus.consumer(self.group_id)
        tps = [TopicPartition(self.topics.decisions, p) for p in range(self._partitions)]
        committed = self._consumer.committed(tps)
        self._restore({tp.partition: committed.get(tp) for tp in tps})
        self._consumer.assign({TopicPartition(self.topics.decisions, p): o for p, o in self._next.items()})
        # The first transaction writes a checkpoint: journal records only extend a checkpoint
        # of their own generation.
        self._since_checkpoint = self.settings.snapshot_every
        self._next_stats = time.monotonic() + self.settings.stats_interval_s
        self._started = True
        log.info("stage 2 %s active for group %s on %s (%d partitions)", self.instance_id, self.group_id, self.bus.url, self._partitions)

    def run(self, stop: threading.Event | None = None) -> Stage2Stats:
        """Process until ``stop`` is set; always close."""
        run_until_stopped(self, stop)
        return self.stats

    def run_until_caught_up(self, timeout: float = 3600.0) -> Stage2Stats:
        """Process until every partition is read to its end (offline runs); then close."""
        run_until_caught_up(self, timeout, name="stage 2")
        return self.stats

    def close(self) -> None:
        self._audit.close()
        for name in ("_consumer", "_reader", "_producer"):
            client = getattr(self, name)
            if client is None:
                continue
            try:
                client.close()
            except Exception as exc:  # closing must not fail a shutdown (a fenced producer raises)
                log.warning("closing the stage-2 %s: %s", name.strip("_"), exc)
            setattr(self, name, None)
        if self._started:
            log.info("stage 2 %s stopped: %s", self.instance_id, self.stats.summary())
        self._started = False

    def caught_up(self) -> bool:
        """True when every decisions partition is read to its end and processed."""
        consumer = self._consumer
        if consumer is None or self._buffer:
            return False
        for partition in range(self._partitions):
            tp = TopicPartition(self.topics.decisions, partition)
            end = consumer.watermarks(tp)[1]
            if self._next.get(partition, 0) < end and consumer.position([tp])[tp] < end:
                return False
        return True

    # ------------------------------------------------------------------ one batch

    def step(self) -> int:
        """Consume one batch, commit its outputs with its offsets; return records read."""
        if not self._started:
            raise BusError("call start() before step()")
        assert self._consumer is not None
        records = [r for r in consume_batch(self._consumer, self.settings.batch_size, self.settings.poll_timeout_s) if r.offset >= self._next.get(r.partition, 0)]
        self._maybe_log_stats()
        if not records and not self._buffer:
            return 0
        try:
            self._transact(records)
        except ProducerFencedError:
            log.error("stage 2 %s was fenced: another instance took transactional id %s; stopping", self.instance_id, self.transactional_id)
            raise
        except BusError as exc:
            if not (exc.retriable or isinstance(exc, TransactionAbortedError | CommitFailedError)):
                raise
            self._aborts_in_a_row += 1
            self.stats.aborts += 1
            if self._aborts_in_a_row > self.settings.max_consecutive_aborts:
                raise BusError(f"{self._aborts_in_a_row} stage-2 transactions in a row were aborted; last: {exc}") from exc
            log.warning("stage-2 transaction aborted (%s); rolling back to the last commit", exc)
            self._rollback()
            time.sleep(min(5.0, 0.05 * 2**self._aborts_in_a_row))
        except PoisonedRecord as poisoned:
            # Nothing was sent: forget the batch's half-done state and do it again with the
            # decision dead-lettered (the consumer is seeked back to the last commit).
            letter = poisoned.letter
            log.warning("stage 2: decision %s failed in the core (%s: %s); dead-lettering it and redoing the batch", letter.source, letter.error_type, letter.message)
            self._poison[poisoned.key] = letter
            self._rollback()
        return len(records)

    def _transact(self, records: list[Record]) -> None:
        self._outputs = []
        self._poisoned_here = []
        self._audit.abort()  # links of a batch that did not commit are void
        before = replace(self.stats)  # a batch done again after an abort counts once
        try:
            committed = self._decide_and_commit(records)
        except BaseException:
            self.stats = before
            raise
        if committed:
            self._aborts_in_a_row = 0
            self.stats.batches += 1
            self.stats.records += len(records)
        self.stats.held = len(self._buffer)

    def _decide_and_commit(self, records: list[Record]) -> bool:
        # Measured once the batch is consumed (the windows its decisions close show the backlog
        # behind it) and before it joins the ordering buffer (``held`` is what earlier batches left).
        lag = self._consumer_lag()
        if lag is not None:
            self.stage.observe_consumer_lag(lag)
        self._batch_started = time.perf_counter()  # stage 2's work on the batch starts here (not the measuring)
        for record in records:
            self._arrive(record, live=True)
        released = self._release(live=True)
        if not records and not released:
            return False
        self._since_checkpoint += len(records)
        # A dead-lettered failure is not journaled: a replay must not run the core on it again.
        checkpoint = (
            self._since_checkpoint >= self.settings.snapshot_every
            or time.monotonic() >= self._checkpoint_due
            or bool(self._poisoned_here)
        )
        if checkpoint:
            self._new_generation()
            self._queue_checkpoint(statecodec.dumps(self._state()))
        else:
            self._queue_journal(records, released)
        self._commit({TopicPartition(self.topics.decisions, p): o for p, o in self._next.items()})
        if checkpoint:
            self._since_checkpoint = 0
            self._checkpoint_due = time.monotonic() + self.settings.snapshot_interval_s
            self.stats.checkpoints += 1
        for key in self._poisoned_here:
            self._poison.pop(key, None)
        return True

    def _commit(self, offsets: dict[TopicPartition, int] | None) -> None:
        """Produce the queued outputs and commit them, with ``offsets``, in one transaction."""
        producer, consumer = self._producer, self._consumer
        assert producer is not None and consumer is not None
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
                producer.send_offsets_to_transaction(offsets, consumer)
            producer.commit_transaction()
        except BaseException:
            self._audit.abort()
            try:
                producer.abort_transaction()
            except ProducerFencedError:
                raise
            except BusError as exc:
                log.debug("abort after a failed stage-2 transaction: %s", exc)
            raise
        finally:
            self._outputs = []
        self._audit.commit()

    def flush_event_time(self, seconds: float) -> None:
        """Let event time run ``seconds`` past the watermark and commit what that closes (offline runs).

        The end of a file is the end of its event time: the last metric window closes and
        requests nobody answered are judged. Not for a live stream, where more may come.
        """
        if self._watermark is None:
            return
        self._outputs = []
        lag = self._consumer_lag(force=True)
        if lag is not None:
            self.stage.observe_consumer_lag(lag)
        self._emit(self.stage.tick(self._watermark + timedelta(seconds=seconds)), live=True)
        if self._outputs:
            self._commit(None)

    def _arrive(self, record: Record, *, live: bool) -> None:
        """Decode one decisions record into the ordering buffer (or dead-letter it)."""
        self._next[record.partition] = record.offset + 1
        try:
            decision = decode(ProcessedDecision, record.value or b"")
        except SchemaError as exc:
            if live:
                letter = DeadLetter.from_exception(exc, stage="decode", source=f"{record.topic}/{record.partition}/{record.offset}", value=record.value, key=record.key)
                self._send(self.topics.errors, letter.original_value, letter.original_key, headers=letter.headers())
                self.stats.errors += 1
            if self._watermark is not None:
                self._emit(self.stage.observe_error(self._watermark, "decode"), live=live)
            return
        if live:
            # Time in the bus: from stage 1's decision to our read (wall clocks of two hosts).
            read_ms = time.time() * 1000
            self._bus_ms[(record.partition, record.offset)] = max(0.0, read_ms - decision.processing_metadata.processed_at.timestamp() * 1000)
        when = decision.original_message.timestamp.timestamp()
        if when > self._frontier.get(record.partition, -math.inf):
            self._frontier[record.partition] = when
        heapq.heappush(self._buffer, (when, record.partition, record.offset, decision))

    def _low_watermark(self) -> float:
        """Event time up to which every partition has been read (release decisions up to it).

        A partition still being read holds the others back at its newest decision; one
        read to its end (quiet for now) holds them back only ``idle_lateness_s`` behind the
        newest decision, since its next decisions will be about that recent. When every
        partition is at its end and the upstream is done (offline) or has been quiet for
        ``idle_flush_s`` seconds, everything goes. Nothing waits more than ``max_delay_s``.
        """
        newest = max(self._frontier.values(), default=-math.inf)
        bound = math.inf
        all_at_end = True
        for partition in sorted(range(self._partitions), key=lambda p: self._frontier.get(p, -math.inf)):
            frontier = self._frontier.get(partition, -math.inf)
            if frontier >= bound:
                break
            if self._at_end(partition):
                bound = min(bound, max(frontier, newest - self.settings.idle_lateness_s))
            else:
                bound, all_at_end = frontier, False
                break
        if all_at_end:
            now = time.monotonic()
            if self._idle_since is None:
                self._idle_since = now
            done = self._upstream_done() if self._upstream_done is not None else now - self._idle_since >= self.settings.idle_flush_s
            if done:
                return math.inf
        else:
            self._idle_since = None
        return max(bound, newest - self.settings.max_delay_s)

    def _at_end(self, partition: int) -> bool:
        assert self._consumer is not None
        if self._upstream_done is not None and not self._upstream_done():
            return False  # offline: stage 1 has more to write to every partition
        tp = TopicPartition(self.topics.decisions, partition)
        end = self._consumer.watermarks(tp)[1]
        # Transaction markers take offsets after the last record; the position steps over them.
        return self._next.get(partition, 0) >= end or (self._consumer.position([tp])[tp] or 0) >= end

    def _release(self, *, live: bool) -> list[tuple[int, int]]:
        """Run the decisions the low watermark passed through the core, in event-time order; then tick."""
        if not self._buffer:
            return []
        limit = self._low_watermark()
        released: list[tuple[int, int]] = []
        while self._buffer and (self._buffer[0][0] <= limit or len(self._buffer) > self.settings.max_buffer):
            _, partition, offset, decision = heapq.heappop(self._buffer)
            self._process(partition, offset, decision, live=live)
            released.append((partition, offset))
        if released:
            self._tick(live=live)
        return released

    def _process(self, partition: int, offset: int, decision: ProcessedDecision, *, live: bool) -> None:
        """Run one released decision through the core, or dead-letter it if the core failed on it before.

        Raises ``PoisonedRecord`` when the core raises on it live (``step`` rolls back and redoes
        the batch). During a restore's replay an exception propagates: the journal only
        holds decisions the core took, so one failing there is not reproducible input.
        """
        when = decision.original_message.timestamp
        if self._watermark is None or when > self._watermark:
            self._watermark = when
        key = (self.topics.decisions, partition, offset)
        bus_ms = self._bus_ms.pop((partition, offset), None)
        letter = self._poison.get(key)
        if letter is not None:
            self._dead_letter(key, letter, live=live)
            return
        try:
            out = self.stage.process(decision, None if bus_ms is None else {"bus": bus_ms})
            if self._fault_hook is not None:
                self._fault_hook(decision)
        except Exception as exc:  # any failure of the core is this decision's, not stage 2's
            if not live:
                raise
            raise PoisonedRecord(key, self._core_letter(exc, partition, offset)) from exc
        if live:
            # Like stage 1's received_at → processed_at: from the start of the batch's work to this result.
            self.stage.observe_stage_times({"stage2": (time.perf_counter() - self._batch_started) * 1000})
            self.stats.decisions += not out.duplicate
            self.stats.duplicates += out.duplicate
        self._emit(out, live=live)

    def _dead_letter(self, key: tuple[str, int, int], letter: DeadLetter, *, live: bool) -> None:
        """Send a decision the core failed on to the error topic, count it, and skip it."""
        if live:
            self._send(self.topics.errors, letter.original_value, letter.original_key, headers=letter.headers())
            self.stats.errors += 1
            self._poisoned_here.append(key)
        assert self._watermark is not None  # set from the failed decision's own time
        self._emit(self.stage.observe_error(self._watermark, "stage2"), live=live)

    def _core_letter(self, exc: BaseException, partition: int, offset: int) -> DeadLetter:
        """A dead letter for a decision the core raised on, with the record's original bytes.

        The ordering buffer holds decoded decisions only (it is checkpointed, so no second
        copy of every record); the bytes are read back from the log, which is rare.
        """
        tp = TopicPartition(self.topics.decisions, partition)
        record = next(iter(read_range(self._reader_consumer(), tp, offset, offset + 1)), None)
        return DeadLetter.from_exception(
            exc,
            stage="stage2",
            source=f"{tp.topic}/{partition}/{offset}",
            value=None if record is None else record.value,
            key=None if record is None else record.key,
        )

    def _tick(self, *, live: bool) -> None:
        if self._watermark is not None:
            self._emit(self.stage.tick(self._watermark), live=live)

    def _consumer_lag(self, *, force: bool = False) -> dict[str, Any] | None:
        """Records of the decisions topic not yet read (end offset − position, per partition and
        summed), at most every ``lag_interval_s``; None between measurements (the metrics keep
        the last). ``held``: decisions earlier batches read but still hold for event-time
        order (not lag). Called after a batch is consumed, before it is decoded."""
        consumer = self._consumer
        now = time.monotonic()
        if consumer is None or (now < self._lag_due and not force):
            return None
        self._lag_due = now + self.settings.lag_interval_s
        by_partition: dict[str, int] = {}
        for partition in range(self._partitions):
            tp = TopicPartition(self.topics.decisions, partition)
            end = consumer.watermarks(tp)[1]
            # Our own next offset counts too: after a seek the consumer's position may lag it.
            position = max(consumer.position([tp])[tp] or 0, self._next.get(partition, 0))
            by_partition[str(partition)] = max(0, end - position)
        return {"total": sum(by_partition.values()), "by_partition": by_partition, "held": len(self._buffer), "topic": self.topics.decisions}

    def _emit(self, out: Stage2Output, *, live: bool) -> None:
        if not live:
            return
        topics = self.topics
        now_ms = to_ms(datetime.now(UTC))
        for update in out.graph_updates:
            self._send(topics.name(config.GRAPH_UPDATES), encode(update), graph_update_key(update).encode())
        for alert in out.alerts:
            # Event time, like stage 1's alerts (docs/history.md). Only the audited topics get it:
            # their retention is far longer than the clamp's 7 days, the 7-day topics' is not.
            value, key = encode(alert), alert_key(alert).encode()
            timestamp_ms = record_timestamp_ms(to_ms(alert.detected_at), now_ms)
            headers = self._audit.stamp(topics.alerts, key, value, timestamp_ms, lane=AUDIT_LANE)
            self._send(topics.alerts, value, key, headers=headers, timestamp_ms=timestamp_ms)
        for signal in out.trust_signals:
            wire = WireSignal(signal.agent_id, signal.pattern, signal.confidence, list(signal.evidence), signal.timestamp, signal.alert_id)
            # Keyed by agent: murmur2 puts it on the partition of the agent's raw messages.
            self._send(topics.signals, wire.encode(), signal.agent_id.encode())
        for ledger in out.ledger_updates:
            self._send(topics.name(config.RESOURCE_LEDGER), encode(ledger.to_dict()), ledger.resource.encode())
        for window in out.metrics:
            self._send(topics.name(config.METRICS), encode(window), b"snapshot")
        stats = self.stats
        stats.alerts += len(out.alerts)
        stats.signals += len(out.trust_signals)
        stats.graph_updates += len(out.graph_updates)
        stats.ledger_updates += len(out.ledger_updates)
        stats.metrics += len(out.metrics)

    def _send(self, topic: str, value: bytes | None, key: bytes | None, *, headers: Any = None, partition: int | None = None, timestamp_ms: int | None = None) -> None:
        self._outputs.append((topic, value, key, headers, partition, timestamp_ms))

    # ------------------------------------------------------------------ state

    def _state(self) -> dict[str, Any]:
        """Everything a restore needs besides the offsets: the core, the watermark, the ordering buffer."""
        return {"stage2": self.stage, "watermark": self._watermark, "buffer": self._buffer, "frontier": self._frontier}

    def _load_state(self, state: dict[str, Any]) -> None:
        self.stage = state["stage2"]
        self._watermark = state["watermark"]
        self._buffer = state["buffer"]
        self._frontier = state["frontier"]

    def _rollback(self) -> None:
        """A transaction failed: rebuild the state of the last commit, as a restart would, and read on from there.

        The checkpoint and journal on the bus describe exactly the committed state, so no
        copy of the state is kept per batch.
        """
        assert self._consumer is not None
        self.stage = Stage2(self.stage2_config)
        self._watermark = None
        self._buffer, self._frontier = [], {}
        self._bus_ms.clear()
        tps = [TopicPartition(self.topics.decisions, p) for p in range(self._partitions)]
        committed = self._consumer.committed(tps)
        self._restore({tp.partition: committed.get(tp) for tp in tps})
        for partition, offset in self._next.items():
            self._consumer.seek(TopicPartition(self.topics.decisions, partition), offset)
        # The journal continues after the last committed entry of the current generation.
        self._new_generation()
        self._since_checkpoint = self.settings.snapshot_every  # start a fresh generation with a checkpoint

    def _new_generation(self) -> None:
        self._generation = f"{self.instance_id}-{uuid.uuid4().hex[:12]}"
        self._journal_seq = 0

    def _queue_checkpoint(self, state_json: str) -> None:
        blob = zlib.compress(state_json.encode(), 1)
        chunks = [blob[i : i + _CHUNK_BYTES] for i in range(0, len(blob), _CHUNK_BYTES)] or [b""]
        generation = self._generation.encode()
        snapshots = self.topics.snapshots
        for index, chunk in enumerate(chunks):
            headers = (("chorus.generation", generation), ("chorus.chunk", str(index).encode()))
            self._send(snapshots, chunk, f"{self.checkpoint_key}/chunk-{index}".encode(), headers=headers, partition=0)
        manifest = {
            "format": STAGE2_CHECKPOINT_FORMAT,
            "generation": self._generation,
            "offsets": {str(p): o for p, o in sorted(self._next.items())},
            "chunks": len(chunks),
            "sha256": hashlib.sha256(blob).hexdigest(),
            "instance_id": self.instance_id,
            "created_at": datetime.now(UTC).isoformat(),
        }
        self._send(snapshots, json.dumps(manifest).encode(), self.checkpoint_key.encode(), headers=(("chorus.generation", generation),), partition=0)

    def _queue_journal(self, records: list[Record], released: list[tuple[int, int]]) -> None:
        # Keys cycle with the batch number since the checkpoint: compaction keeps the
        # latest record per key, which are exactly the batches since the checkpoint.
        entry = {
            "generation": self._generation,
            "seq": self._journal_seq,
            "read": order_runs([(r.partition, r.offset) for r in records]),
            "released": order_runs(released),
        }
        key = f"{self.checkpoint_key}/journal-{self._journal_seq}".encode()
        self._send(self.topics.snapshots, json.dumps(entry, separators=(",", ":")).encode(), key, partition=0)
        self._journal_seq += 1

    def _restore(self, committed: dict[int, int | None]) -> None:
        """Set the state and next offsets to those of the last commit of this group."""
        self._audit.forget(AUDIT_LANE)  # re-read from the log: a predecessor may have extended the lane
        self._next = {p: 0 for p in committed}
        if all(o is None for o in committed.values()):
            return  # the group never committed: a fresh start from the log start
        reader = self._reader_consumer()
        tp = TopicPartition(self.topics.snapshots, 0)
        low, high = reader.watermarks(tp)
        found = read_stage2_checkpoint(list(read_range(reader, tp, low, high)), self.checkpoint_key)
        if found.state is not None:
            self._load_state(statecodec.from_data(found.state))
            self._next.update(found.offsets)
        replayed = 0
        for entry in found.journal:
            for partition, first, last in entry["read"]:
                for record in read_range(reader, TopicPartition(self.topics.decisions, partition), first, last + 1):
                    self._arrive(record, live=False)
                    replayed += 1
            self._replay_releases(entry["released"])
        for partition, offset in committed.items():
            if offset is not None and offset != self._next.get(partition, 0):
                log.warning(
                    "stage 2: decisions partition %d is committed at %d but the checkpoint and journal reach %d; continuing from the committed offset",
                    partition, offset, self._next.get(partition, 0),
                )
                self._next[partition] = offset
        self.stats.restored = found.state is not None or replayed > 0
        self.stats.replayed = replayed
        log.info("stage 2 restored: checkpoint %s, %d journaled records replayed", "found" if found.state is not None else "none", replayed)

    def _replay_releases(self, runs: list[list[int]]) -> None:
        """Release exactly the journaled decisions, in the journaled order (not by recomputing a watermark)."""
        wanted = [(p, o) for p, first, last in runs for o in range(first, last + 1)]
        if not wanted:
            return
        held = {(p, o): (t, p, o, d) for t, p, o, d in self._buffer}
        for partition, offset in wanted:
            self._process(partition, offset, held.pop((partition, offset))[3], live=False)
        self._buffer = list(held.values())
        heapq.heapify(self._buffer)
        self._tick(live=False)

    # ------------------------------------------------------------------ clients

    def _make_producer(self) -> Producer:
        from chorus_lab.bus.kafka import KafkaBus

        if isinstance(self.bus, KafkaBus):
            return self.bus.producer(transactional_id=self.transactional_id, **{"transaction.timeout.ms": int(self.settings.transaction_timeout_s * 1000)})
        return self.bus.producer(transactional_id=self.transactional_id)

    def _reader_consumer(self) -> Consumer:
        if self._reader is None:
            self._reader = bounded_reader(self.bus)
        return self._reader

    def _maybe_log_stats(self) -> None:
        now = time.monotonic()
        if now >= self._next_stats:
            self._next_stats = now + self.settings.stats_interval_s
            log.info("stage 2 %s: %s", self.instance_id, self.stats.summary())


__all__ = [
    "DEFAULT_STAGE2_GROUP",
    "Restored",
    "Stage2Processor",
    "Stage2Settings",
    "Stage2Stats",
    "order_runs",
    "read_stage2_checkpoint",
    "stage2_checkpoint_key",
]
