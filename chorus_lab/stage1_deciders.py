"""Where stage 1 decides its records: in the shell's own thread, or in worker processes.

The stage-1 shell (:mod:`chorus_lab.processor`) does everything Kafka: it consumes a batch,
produces the outputs in one transaction, stamps the audit chain and writes checkpoints.
Deciding a record (decode, validate, the pure core, encode the decision) is the CPU work
between, and a *decider* does it:

- :class:`LocalDecider` decides in the calling thread, on one :class:`~chorus_lab.pipeline.Stage1`
  (the default, ``ProcessorSettings.decide_workers = 0``);
- :class:`WorkerDecider` spreads the partitions over ``decide_workers`` processes
  (partition *p* goes to worker ``p % workers``), each with its own ``Stage1`` holding
  the state of its partitions. A batch goes out to every worker at once and comes back
  in its original order, so the outputs, the audit chain and the committed state are
  exactly those of a local decider: only the CPU work runs on more cores. Python runs
  one thread at a time per process, and one process decides ~6,000–9,500 messages a
  second on a 2-core VM (``bench/pipeline_throughput.py``), so this is how one group
  member uses more of a machine than a core; more members (``process --autoscale``) is
  how a fleet does. It pays when a batch spans partitions, as live traffic does; a
  backlog arrives a partition at a time (docs/processor.md, *Deciding on more cores*).

Both answer the same calls: :meth:`~LocalDecider.decide` a batch, and the partition-state
calls the shell makes on assignment, rebalance and recovery (snapshot, restore, fresh,
park/unpark, drop, replay). The fleet-wide ledger table (``engine.global_ledger``) is
read by the shell and handed to the deciders with :meth:`~LocalDecider.apply_table`
before the batch it precedes, so every worker sees the table the local decider would.

A record that makes the core fail raises :class:`~chorus_lab.deadletter.PoisonedRecord`
out of ``decide``, as in the shell: the shell then rebuilds the touched partitions and
retries the batch without it. A worker that dies or stops answering is the shell's
failure (``WorkerError``): the processor stops, and its restart rebuilds the state from
the checkpoints, as after any crash.
"""

from __future__ import annotations

import logging
import multiprocessing
import pickle
import signal
import time
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any, Protocol

from chorus_lab.bus import BusError, Record
from chorus_lab.deadletter import DeadLetter, PoisonedRecord
from chorus_lab.engine import EngineConfig, LedgerPredictor, PredictionEngine, Predictor
from chorus_lab.engine.global_ledger import GlobalLedgerTable, GlobalTablePredictor
from chorus_lab.history.eventtime import to_ms
from chorus_lab.ingest import decode_record
from chorus_lab.pipeline import DetectionSignal, RecordMeta, Stage1, Stage1Counters, decode_message, encode_decision, validate, validate_signal
from chorus_lab.schema import AgentMessage, SchemaError, encode

log = logging.getLogger(__name__)

Output = tuple[str, bytes, bytes, int]
"""An audited output: ``(topic, value, key, event time in ms)`` (a decision or an alert)."""

Decided = list[Output | DeadLetter]
"""What one input record gives, in the order the shell sends it."""


class ProcessingTimeout(Exception):
    """One message took longer than the per-message budget."""


class WorkerError(BusError):
    """A decide worker died or stopped answering: the processor cannot go on."""


@dataclass(frozen=True, slots=True)
class DecideSettings:
    """What a decider needs besides the records (picklable: workers get a copy)."""

    raw_topic: str
    """Records of other topics are trust signals (``chorus-trust-signals``)."""
    decisions_topic: str
    alerts_topic: str
    partitions: int
    message_timeout_s: float
    instance_id: str
    engine_config: EngineConfig
    predictor: Predictor | None = None
    global_ledger: bool = True


def message_or_dead_letter(record: Record) -> AgentMessage | DeadLetter:
    """The record's message (fast path), or the dead letter ``ingest.decode_record`` makes of it."""
    try:
        return decode_message(record.value or b"")
    except SchemaError:
        return decode_record(record)


def make_stage(settings: DecideSettings, table: GlobalLedgerTable) -> Stage1:
    """The ``Stage1`` a decider runs, reading ``table`` when the fleet-wide ledger is on."""
    predictor = settings.predictor
    if settings.global_ledger:
        # Empty until the shell feeds it (more than one partition): then it reads the same as before.
        predictor = GlobalTablePredictor(predictor or LedgerPredictor(settings.engine_config), table)
    return Stage1(settings.engine_config, instance_id=settings.instance_id, predictor=predictor, clock=lambda: datetime.now(UTC))


def counters_between(before: Stage1Counters, after: Stage1Counters) -> Stage1Counters:
    """``after - before``, field by field."""
    return Stage1Counters(**{f.name: getattr(after, f.name) - getattr(before, f.name) for f in fields(Stage1Counters)})


def add_counters(total: Stage1Counters, delta: Stage1Counters) -> None:
    for f in fields(Stage1Counters):
        setattr(total, f.name, getattr(total, f.name) + getattr(delta, f.name))


class Decider(Protocol):
    """What the stage-1 shell asks of whoever decides its records."""

    counters: Stage1Counters

    def decide(self, records: Sequence[Record], received_at: datetime) -> list[Decided]: ...
    def apply_table(self, entries: list[tuple[str, Any]]) -> None: ...
    def snapshot(self, partition: int) -> dict[str, Any]: ...
    def restore(self, partition: int, state: dict[str, Any]) -> None: ...
    def fresh(self, partition: int) -> None: ...
    def park(self, partition: int) -> None: ...
    def unpark(self, partition: int) -> None: ...
    def drop(self, partition: int) -> None: ...
    def replay(self, records: Sequence[Record]) -> None: ...
    def close(self) -> None: ...


# --------------------------------------------------------------------------- in this thread


class LocalDecider:
    """Decides in the calling thread on one ``Stage1``.

    ``alarm``: interrupt a message over its budget with SIGALRM (only the main thread of a
    process can; elsewhere an over-budget message is dead-lettered after it finishes). One
    interval timer runs per batch, ticking every quarter budget, rather than a timer set and
    cleared around every message (two system calls each): a message is interrupted between
    one and one and a quarter budgets after it started.
    """

    def __init__(self, settings: DecideSettings, *, alarm: bool, table: GlobalLedgerTable | None = None) -> None:
        self.settings = settings
        self.table = table if table is not None else GlobalLedgerTable()
        self.stage = make_stage(settings, self.table)
        self.alarm = alarm
        self._parked: dict[int, PredictionEngine] = {}
        self._began: float | None = None
        """When the message being decided started (perf_counter), for the alarm to judge."""
        if alarm:
            signal.signal(signal.SIGALRM, self._on_alarm)

    @property
    def counters(self) -> Stage1Counters:
        return self.stage.counters

    @counters.setter
    def counters(self, value: Stage1Counters) -> None:
        self.stage.counters = value

    def decide(self, records: Sequence[Record], received_at: datetime) -> list[Decided]:
        """What each record gives, in order; raises ``PoisonedRecord`` for one the core fails on."""
        raw = self.settings.raw_topic
        if self.alarm:
            tick = self.settings.message_timeout_s / 4
            signal.setitimer(signal.ITIMER_REAL, tick, tick)
        try:
            return [self._message(record, received_at) if record.topic == raw else self._signal(record, received_at) for record in records]
        finally:
            if self.alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)

    def apply_table(self, entries: list[tuple[str, Any]]) -> None:
        """Apply ``(source, value)`` records of the fleet-wide ledger table; a malformed one is logged and skipped."""
        for source, value in entries:
            try:
                self.table.apply(value)
            except (KeyError, ValueError, TypeError, AttributeError) as exc:
                log.warning("ignoring a %s: %s", source, exc)

    def snapshot(self, partition: int) -> dict[str, Any]:
        return self.stage.snapshot(partition)

    def restore(self, partition: int, state: dict[str, Any]) -> None:
        self.drop(partition)
        self.stage.restore(partition, state)

    def fresh(self, partition: int) -> None:
        self.drop(partition)
        self.stage.engine(partition)

    def park(self, partition: int) -> None:
        engine = self.stage.drop(partition)
        if engine is not None:
            self._parked[partition] = engine

    def unpark(self, partition: int) -> None:
        self.stage.engines[partition] = self._parked.pop(partition)

    def drop(self, partition: int) -> None:
        self.stage.drop(partition)
        self._parked.pop(partition, None)

    def replay(self, records: Sequence[Record]) -> None:
        """Re-apply already committed raw records to the state; their outputs exist already."""
        counters = replace(self.stage.counters)  # a replay decides again, but is not new work
        for record in records:
            meta = RecordMeta(record.topic, record.partition, record.offset, record.timestamp_ms, record.key)
            decoded = message_or_dead_letter(record)
            if isinstance(decoded, DeadLetter):
                continue
            try:
                validate(meta, decoded, self.settings.partitions)
                self.stage.decide(meta, decoded)
            except Exception as exc:  # it failed the same way live, and was dead-lettered then
                log.debug("replay of %s failed again: %s", meta.source, exc)
        self.stage.counters = counters

    def close(self) -> None:
        if self.alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)

    # ------------------------------------------------------------------ one record

    def _message(self, record: Record, received_at: datetime) -> Decided:
        meta = RecordMeta(record.topic, record.partition, record.offset, record.timestamp_ms, record.key, received_at)
        decoded = message_or_dead_letter(record)
        if isinstance(decoded, DeadLetter):
            return [decoded]
        try:
            validate(meta, decoded, self.settings.partitions)
        except SchemaError as exc:
            return [DeadLetter.from_exception(exc, stage="validate", source=meta.source, value=record.value, key=record.key)]
        output = self._guarded(record, meta, lambda: self.stage.decide(meta, decoded))
        agent = decoded.agent_id.encode()
        event_ms = to_ms(decoded.timestamp)
        decided: Decided = []
        if output.decision is not None:
            try:
                decided.append((self.settings.decisions_topic, encode_decision(output.decision), agent, event_ms))
            except SchemaError as exc:
                # Deterministic (same input, same size), so a replay agrees; the state keeps the message.
                decided.append(DeadLetter.from_exception(exc, stage="produce", source=meta.source, value=record.value, key=record.key))
        for alert in output.alerts:
            decided.append((self.settings.alerts_topic, encode(alert), agent, event_ms))
        return decided

    def _signal(self, record: Record, received_at: datetime) -> Decided:
        meta = RecordMeta(record.topic, record.partition, record.offset, record.timestamp_ms, record.key, received_at)
        try:
            signal_ = DetectionSignal.decode(record.value or b"")
        except SchemaError as exc:
            return [DeadLetter.from_exception(exc, stage="decode", source=meta.source, value=record.value, key=record.key)]
        try:
            validate_signal(meta, signal_, self.settings.partitions)
        except SchemaError as exc:
            return [DeadLetter.from_exception(exc, stage="validate", source=meta.source, value=record.value, key=record.key)]
        output = self._guarded(record, meta, lambda: self.stage.apply_signal(record.partition, signal_))
        agent, event_ms = signal_.agent_id.encode(), to_ms(signal_.detected_at)
        return [(self.settings.alerts_topic, encode(alert), agent, event_ms) for alert in output.alerts]

    def _on_alarm(self, signum: int, frame: Any) -> None:
        began = self._began
        if began is not None and time.perf_counter() - began > self.settings.message_timeout_s:
            self._began = None  # once per message
            raise ProcessingTimeout("processing exceeded the per-message time budget (interrupted)")

    def _guarded(self, record: Record, meta: RecordMeta, work: Any) -> Any:
        """``work()`` within the message budget; its failure is the record's (``PoisonedRecord``)."""
        budget = self.settings.message_timeout_s
        key = (record.topic, record.partition, record.offset)
        began = time.perf_counter()
        try:
            self._began = began
            try:
                result = work()
            finally:
                self._began = None  # an alarm before this line is still this message's
        except Exception as exc:  # any failure of the core is this message's, not the processor's
            raise PoisonedRecord(key, _process_letter(exc, meta, record)) from exc
        took = time.perf_counter() - began
        if took > budget:
            timeout = ProcessingTimeout(f"processing took {took:.2f}s, over the {budget:g}s budget")
            raise PoisonedRecord(key, _process_letter(timeout, meta, record))
        return result


def _process_letter(exc: BaseException, meta: RecordMeta, record: Record) -> DeadLetter:
    return DeadLetter.from_exception(exc, stage="process", source=meta.source, value=record.value, key=record.key)


# --------------------------------------------------------------------------- in worker processes


class WorkerDecider:
    """Decides in ``workers`` processes; partition *p* lives in worker ``p % workers``.

    The workers are started with ``spawn`` (a fork would copy the Kafka clients' threads),
    so ``settings.predictor`` must be picklable.
    """

    def __init__(self, settings: DecideSettings, workers: int, *, answer_within_s: float = 60.0) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.settings = settings
        self.counters = Stage1Counters()
        self.answer_within_s = answer_within_s
        context = multiprocessing.get_context("spawn")
        self._connections: list[Connection] = []
        self._processes: list[Any] = []
        for index in range(workers):
            ours, theirs = context.Pipe()
            process = context.Process(target=_serve, args=(theirs, settings), name=f"chorus-stage1-decide-{index}", daemon=True)
            try:
                process.start()  # pickles the settings, the predictor included
            except (TypeError, AttributeError, pickle.PicklingError) as exc:
                ours.close()
                theirs.close()
                self.close()  # the workers started before this one
                raise ValueError(f"decide workers get a copy of the predictor and engine config, which must be picklable: {exc}") from exc
            theirs.close()
            self._connections.append(ours)
            self._processes.append(process)

    @property
    def workers(self) -> int:
        return len(self._connections)

    def decide(self, records: Sequence[Record], received_at: datetime) -> list[Decided]:
        """Every worker decides its partitions' records at once; the answers come back in order."""
        shares: list[list[Record]] = [[] for _ in self._connections]
        places: list[tuple[int, int]] = []
        for record in records:
            share = shares[record.partition % len(shares)]
            places.append((record.partition % len(shares), len(share)))
            share.append(record)
        asked = [index for index, share in enumerate(shares) if share]
        for index in asked:
            self._send(index, ("decide", shares[index], received_at))
        answers: dict[int, list[Decided]] = {}
        poisoned: PoisonedRecord | None = None
        for index in asked:  # every asked worker answers before anything is raised
            status, payload = self._answer(index, self.answer_within_s + self.settings.message_timeout_s * len(shares[index]))
            if status == "poisoned":
                key, letter, delta = payload
                poisoned = poisoned or PoisonedRecord(key, letter)
            else:
                answers[index], delta = payload
            add_counters(self.counters, delta)
        if poisoned is not None:
            raise poisoned
        return [answers[index][position] for index, position in places]

    def apply_table(self, entries: list[tuple[str, Any]]) -> None:
        if entries:
            for index in range(self.workers):
                self._send(index, ("apply_table", entries))  # no answer: it is applied before the next request

    def snapshot(self, partition: int) -> dict[str, Any]:
        return self._call(partition, "snapshot", partition)  # type: ignore[no-any-return]

    def restore(self, partition: int, state: dict[str, Any]) -> None:
        self._call(partition, "restore", partition, state)

    def fresh(self, partition: int) -> None:
        self._call(partition, "fresh", partition)

    def park(self, partition: int) -> None:
        self._call(partition, "park", partition)

    def unpark(self, partition: int) -> None:
        self._call(partition, "unpark", partition)

    def drop(self, partition: int) -> None:
        self._call(partition, "drop", partition)

    def replay(self, records: Sequence[Record]) -> None:
        by_worker: dict[int, list[Record]] = {}
        for record in records:
            by_worker.setdefault(record.partition % self.workers, []).append(record)
        for index, share in by_worker.items():
            self._send(index, ("replay", share))
        for index in by_worker:
            self._answer(index, self.answer_within_s)

    def close(self) -> None:
        for connection in self._connections:
            try:
                connection.send(("stop",))
            except (OSError, ValueError):
                pass  # already gone
        for process in self._processes:
            process.join(5)
            if process.is_alive():
                process.terminate()
                process.join(5)
        for connection in self._connections:
            connection.close()

    # ------------------------------------------------------------------ the pipes

    def _call(self, partition: int, operation: str, *args: Any) -> Any:
        index = partition % self.workers
        self._send(index, (operation, *args))
        return self._answer(index, self.answer_within_s)[1]

    def _send(self, index: int, request: tuple[Any, ...]) -> None:
        try:
            self._connections[index].send(request)
        except (OSError, ValueError) as exc:
            raise self._gone(index, exc) from exc

    def _answer(self, index: int, within_s: float) -> tuple[str, Any]:
        connection = self._connections[index]
        try:
            if not connection.poll(within_s):
                raise WorkerError(f"stage-1 decide worker {index} did not answer within {within_s:.0f}s")
            status, payload = connection.recv()
        except (EOFError, OSError) as exc:
            raise self._gone(index, exc) from exc
        if status == "failed":
            raise WorkerError(f"stage-1 decide worker {index} failed: {payload}")
        return status, payload

    def _gone(self, index: int, exc: BaseException) -> WorkerError:
        process = self._processes[index]
        process.join(1)
        return WorkerError(f"stage-1 decide worker {index} is gone (exit code {process.exitcode}): {exc}")


def _serve(connection: Connection, settings: DecideSettings) -> None:
    """A worker's loop: answer the shell's requests in order until it says stop or goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the shell's to handle; it stops us
    decider = LocalDecider(settings, alarm=True)
    while True:
        try:
            request = connection.recv()
        except (EOFError, OSError):
            return
        operation, args = request[0], request[1:]
        if operation == "stop":
            return
        before = replace(decider.counters)
        try:
            result = getattr(decider, operation)(*args)
        except PoisonedRecord as poisoned:
            connection.send(("poisoned", (poisoned.key, poisoned.letter, counters_between(before, decider.counters))))
            continue
        except Exception as exc:
            connection.send(("failed", "".join(traceback.format_exception_only(exc)).strip() + "\n" + traceback.format_exc()))
            continue
        if operation == "decide":
            connection.send(("ok", (result, counters_between(before, decider.counters))))
        elif operation != "apply_table":
            connection.send(("ok", result))


def make_decider(settings: DecideSettings, workers: int, *, alarm: bool, table: GlobalLedgerTable | None = None) -> LocalDecider | WorkerDecider:
    """A local decider for ``workers == 0``, else ``workers`` decide processes."""
    if workers == 0:
        return LocalDecider(settings, alarm=alarm, table=table)
    return WorkerDecider(settings, workers)


def in_chunks(records: Iterable[Record], size: int) -> Iterable[list[Record]]:
    """``records`` in lists of at most ``size`` (replays go to the deciders a chunk at a time)."""
    chunk: list[Record] = []
    for record in records:
        chunk.append(record)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
