"""The agents' entry point: send messages to ``agent-messages-raw``, durably.

``AgentClient.send`` validates the message (a ``SchemaError`` names the field at fault),
writes it to a local spool and hands it to an idempotent producer; it is removed from the
spool only once the bus acknowledged it. While the bus is unreachable messages wait in the
spool (bounded: ``SpoolFullError`` when full, never silent loss) and are re-sent in their
original order when it is back. A message the bus rejects for good (too large for the
topic, say) goes to ``agent-messages-dlq`` with the reason.

>>> import tempfile
>>> from datetime import datetime, UTC
>>> with AgentClient(f"embedded://{tempfile.mkdtemp()}", spool_dir=Path(tempfile.mkdtemp()), ensure_topics=True) as client:
...     message_id = client.send({"agent_id": "planner-1", "timestamp": "2026-01-01T00:00:00Z",
...         "message_type": "request", "content": {"action": "request_resource", "resource": "gpu-1", "amount": 1},
...         "target_agents": ["steward-1"], "correlation_id": "task-9", "metadata": {}})
...     client.flush(10)
0
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from chorus_lab import config
from chorus_lab.bus import Bus, open_bus
from chorus_lab.bus.base import AuthenticationError, BusError, DeliveryReport, Headers, Producer, TopicError
from chorus_lab.bus.retry import CircuitBreaker
from chorus_lab.bus.spool import DEFAULT_MAX_BYTES, DEFAULT_MAX_RECORDS, Spool, SpooledRecord, SpoolItem
from chorus_lab.deadletter import DeadLetter
from chorus_lab.schema import AgentMessage, decode_agent_message, encode

log = logging.getLogger(__name__)

SCHEMA_HEADER: Headers = (("chorus.schema", b"AgentMessage/1"),)
# Failures of the setup, not of a message: keep the message in the spool and retry later
# instead of dead-lettering everything while credentials or topics are wrong.
_NOT_THE_MESSAGES_FAULT = (AuthenticationError, TopicError)
_POLL_INTERVAL = 0.01
"""Seconds between delivery-report polls while sending: batches the embedded log's writes."""


class AgentClient:
    """Sends agent messages through a durable spool to the bus.

    Not thread-safe: one client per thread (or guard it with a lock).
    """

    def __init__(
        self,
        bus: Bus | str | None = None,
        *,
        spool_dir: Path | None = None,
        topic: str = config.RAW,
        dlq_topic: str = config.DLQ,
        max_spool_records: int = DEFAULT_MAX_RECORDS,
        max_spool_bytes: int = DEFAULT_MAX_BYTES,
        max_in_flight: int = 50_000,
        breaker: CircuitBreaker | None = None,
        ensure_topics: bool = False,
    ) -> None:
        self.bus = bus if isinstance(bus, Bus) else open_bus(bus)
        self.topic = topic
        self.dlq_topic = dlq_topic
        if ensure_topics:
            self.bus.admin().create_topics([s for s in config.topic_specs() if s.name in (topic, dlq_topic)])
        self.spool = Spool(
            spool_dir or Path(tempfile.mkdtemp(prefix="chorus-spool-")), max_records=max_spool_records, max_bytes=max_spool_bytes
        )
        self.breaker = breaker or CircuitBreaker(failure_threshold=3, reset_timeout=2.0)
        self.max_in_flight = max_in_flight
        self.dead_lettered = 0
        self.delivered = 0
        self._producer: Producer = self.bus.producer()
        self._cursor = 0  # highest spool seq handed to the producer
        self._in_flight: set[int] = set()
        self._resend_from: int | None = None
        self._acked: list[int] = []
        self._last_poll = 0.0

    # ------------------------------------------------------------------ sending

    def send(self, message: AgentMessage | Mapping[str, Any]) -> str:
        """Accept one message for delivery and return its ``message_id``.

        Raises ``SchemaError`` for an invalid message and ``SpoolFullError`` when the
        spool is full; in both cases the message was not accepted.
        """
        return self.send_many([message])[0]

    def send_many(self, messages: Sequence[AgentMessage | Mapping[str, Any]]) -> list[str]:
        """Accept several messages at once (one spool write); all or none are accepted."""
        decoded = [m if isinstance(m, AgentMessage) else decode_agent_message(dict(m)) for m in messages]
        self._accept([(self.topic, m.agent_id.encode(), encode(m), SCHEMA_HEADER) for m in decoded])
        return [m.message_id for m in decoded]

    def send_dead_letter(self, letter: DeadLetter) -> None:
        """Accept a dead letter (e.g. an invalid input line) for the dead-letter topic."""
        self._accept([(self.dlq_topic, letter.original_key, letter.original_value, letter.headers())])

    def _accept(self, items: list[SpoolItem]) -> None:
        seqs = self.spool.append(items)
        if seqs and self._cursor == seqs[0] - 1 and self._resend_from is None and self.breaker.allow():
            # Nothing is waiting ahead of these: hand them over as they are, without
            # reading them back from the spool.
            now = int(time.time() * 1000)
            for seq, (topic, key, value, headers) in zip(seqs, items, strict=True):
                if len(self._in_flight) >= self.max_in_flight or not self._hand_over(SpooledRecord(seq, topic, key, value, headers, now)):
                    break
        if time.monotonic() - self._last_poll >= _POLL_INTERVAL:
            self.pump()

    @property
    def pending(self) -> int:
        """Messages accepted but not yet acknowledged by the bus."""
        return len(self.spool)

    def pump(self) -> int:
        """Hand spooled records to the producer as far as the circuit breaker allows.

        Returns how many were handed over. Serves delivery reports first.
        """
        self._last_poll = time.monotonic()
        self._producer.poll(0)
        self._settle()
        if not self.breaker.allow():
            return 0
        if self._resend_from is not None and not self._in_flight:
            # Everything after the first failure goes again, in order.
            self._cursor = self._resend_from - 1
            self._resend_from = None
        handed = 0
        while len(self._in_flight) < self.max_in_flight:
            batch = self.spool.pending(min(1000, self.max_in_flight - len(self._in_flight)), after_seq=self._cursor)
            if not batch:
                break
            for record in batch:
                if not self._hand_over(record):
                    return handed
                handed += 1
        return handed

    def _hand_over(self, record: SpooledRecord) -> bool:
        try:
            self._producer.produce(
                record.topic,
                record.value,
                record.key,
                headers=record.headers,
                on_delivery=lambda report, seq=record.seq: self._on_delivery(seq, record, report),
            )
        except BufferError:
            self._producer.poll(0.05)
            return False
        except BusError as exc:
            if exc.retriable or isinstance(exc, _NOT_THE_MESSAGES_FAULT):
                self.breaker.record_failure()
                return False
            self._dead_letter(record, exc)
        else:
            self._in_flight.add(record.seq)
        self._cursor = record.seq
        return True

    def _on_delivery(self, seq: int, record: SpooledRecord, report: DeliveryReport) -> None:
        self._in_flight.discard(seq)
        error = report.error
        if error is None:
            self._acked.append(seq)
            self.breaker.record_success()
            if record.topic == self.topic:
                self.delivered += 1
            return
        if error.retriable or isinstance(error, _NOT_THE_MESSAGES_FAULT):
            log.warning("delivery of spooled record %d failed, will retry: %s", seq, error)
            self.breaker.record_failure()
            self._resend_from = seq if self._resend_from is None else min(self._resend_from, seq)
            return
        self._dead_letter(record, error)

    def _dead_letter(self, record: SpooledRecord, error: BusError) -> None:
        if record.topic == self.dlq_topic:
            # Even the dead-letter topic refuses it: keep it in the spool, loudly.
            log.error("dead letter %d could not be delivered and stays in the spool %s: %s", record.seq, self.spool.directory, error)
            return
        letter = DeadLetter.from_exception(error, stage="produce", source=f"spool:{record.seq}", value=record.value, key=record.key)
        self.spool.append([(self.dlq_topic, record.key, record.value, letter.headers())])
        self._acked.append(record.seq)
        self.dead_lettered += 1
        log.warning("message rejected by %s, sent to %s: %s", record.topic, self.dlq_topic, error)

    def _settle(self) -> None:
        if self._acked:
            self.spool.remove(self._acked)
            self._acked = []

    def flush(self, timeout: float = 30.0) -> int:
        """Deliver what is spooled, waiting up to ``timeout`` seconds; return what is left."""
        deadline = time.monotonic() + timeout
        while True:
            self.pump()
            self._producer.flush(min(0.2, max(0.0, deadline - time.monotonic())))
            self._settle()
            if not len(self.spool) or time.monotonic() >= deadline:
                return len(self.spool)

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what can be delivered within ``timeout``; the rest stays in the spool."""
        left = self.flush(timeout)
        if left:
            log.warning("%d messages not yet delivered remain in the spool %s; they are sent when a client opens it again", left, self.spool.directory)
        self._producer.close()
        self.spool.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
