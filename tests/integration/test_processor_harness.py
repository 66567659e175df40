"""Shared harness of the stage-1 processor tests (the ``test_processor_*`` modules import it).

A :class:`RunningProcessor` is one ``StreamProcessor`` in a background thread on a sandbox
copy of the topics (a unique prefix), plus a producer for its input and a reader that
indexes what it commits: decisions by correlation id, dead letters by source. Property
tests share one per module across all their examples, so an example costs a batch, not a
processor start.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chorus_lab.bus import Bus, DeliveryReport, Record, TopicPartition
from chorus_lab.deadletter import DeadLetter
from chorus_lab.engine import LedgerPredictor
from chorus_lab.engine.ledger import LedgerView
from chorus_lab.processor import ProcessorSettings, StreamProcessor, Topics
from chorus_lab.schema import AgentMessage, ConflictAnalysis, ProcessedDecision, decode

PARTITIONS = 6


class ChaosPredictor(LedgerPredictor):
    """The default predictor, failing on request: ``content.chaos`` = ``raise`` or ``sleep``."""

    def __init__(self, sleep_s: float = 0.0) -> None:
        super().__init__()
        self.sleep_s = sleep_s

    def predict(self, message: AgentMessage, ledger: LedgerView) -> ConflictAnalysis:
        chaos = message.content.get("chaos") if isinstance(message.content, dict) else None
        if chaos == "raise":
            raise RuntimeError(f"chaos requested by {message.message_id}")
        if chaos == "sleep":
            time.sleep(self.sleep_s)
        return super().predict(message, ledger)


@dataclass
class Committed:
    """What a reader saw committed: decisions (in topic order) and dead letters."""

    decisions: dict[str, list[tuple[int, int, ProcessedDecision]]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, list[DeadLetter]] = field(default_factory=lambda: defaultdict(list))
    alerts: list[Record] = field(default_factory=list)


class Reader:
    """Reads a prefix's decision, error and alert topics from the start, read_committed."""

    def __init__(self, bus: Bus, topics: Topics, partitions: int = PARTITIONS) -> None:
        self.topics = topics
        self.consumer = bus.consumer(None)
        wanted = [topics.decisions, topics.errors, topics.alerts]
        self.consumer.assign({TopicPartition(t, p): 0 for t in wanted for p in range(partitions)})
        self.seen = Committed()
        self.count = 0

    def poll(self, timeout: float = 0.05) -> int:
        records = self.consumer.consume(1000, timeout)
        for record in records:
            if record.topic == self.topics.decisions:
                decision = decode(ProcessedDecision, record.value or b"")
                self.seen.decisions[decision.original_message.correlation_id].append((record.partition, record.offset, decision))
            elif record.topic == self.topics.errors:
                letter = DeadLetter.from_record(record)
                self.seen.errors[letter.source].append(letter)
            else:
                self.seen.alerts.append(record)
        self.count += len(records)
        return len(records)

    def until(self, done: Callable[[], bool], timeout: float = 60.0, alive: Callable[[], None] = lambda: None) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            alive()
            assert time.monotonic() < deadline, "timed out waiting for committed output"
            self.poll()

    def close(self) -> None:
        self.consumer.close()


class RunningProcessor:
    """A processor thread, an input producer and a reader on one sandbox prefix."""

    def __init__(self, bus: Bus, *, settings: ProcessorSettings | None = None, predictor: Any = None, instance: str = "p-1") -> None:
        self.bus = bus
        self.topics = Topics(f"t{uuid.uuid4().hex[:10]}-")
        bus.admin().create_topics(self.topics.specs(PARTITIONS))
        self.settings = settings or ProcessorSettings(batch_size=100, poll_timeout_s=0.02, snapshot_every=200)
        self.processor = StreamProcessor(bus, f"g-{uuid.uuid4().hex[:8]}", instance, topics=self.topics, settings=self.settings, predictor=predictor)
        self.stop = threading.Event()
        self.failure: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, name="stage1-under-test", daemon=True)
        self.thread.start()
        self.producer = bus.producer()
        self.reader = Reader(bus, self.topics)
        deadline = time.monotonic() + 60
        while len(self.processor.owned_partitions) < PARTITIONS:
            self.check_alive()
            assert time.monotonic() < deadline, "the processor did not get its partitions"
            time.sleep(0.05)

    def _run(self) -> None:
        try:
            self.processor.run(self.stop)
        except BaseException as exc:  # reported by check_alive in the test thread
            self.failure.append(exc)

    def check_alive(self) -> None:
        if self.failure:
            raise AssertionError(f"the processor stopped: {self.failure[0]!r}") from self.failure[0]
        assert self.thread.is_alive(), "the processor thread ended"

    def send(self, items: list[tuple[bytes | None, bytes | None]], topic: str | None = None) -> list[tuple[int, int]]:
        """Produce (key, value) pairs in order; return each one's (partition, offset)."""
        reports: list[DeliveryReport | None] = [None] * len(items)
        for index, (key, value) in enumerate(items):

            def delivered(report: DeliveryReport, index: int = index) -> None:
                reports[index] = report

            self.producer.produce(topic or self.topics.raw, value, key, on_delivery=delivered)
        assert self.producer.flush(30) == 0
        assert all(r is not None and r.error is None for r in reports), reports
        return [(r.partition, r.offset) for r in reports if r is not None]

    def source(self, partition: int, offset: int) -> str:
        return f"{self.topics.raw}/{partition}/{offset}"

    def wait(self, done: Callable[[], bool], timeout: float = 60.0) -> None:
        self.reader.until(done, timeout, alive=self.check_alive)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        self.producer.close()
        self.reader.close()
