"""Reading agent messages off the bus: decode each record, dead-letter what cannot be.

A record that is not a valid ``AgentMessage`` (not UTF-8, not JSON, a field missing or of
the wrong type, too large) never stops the reader: it goes to the dead-letter topic with
the reason, the original bytes and where it came from, and reading goes on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from chorus_lab import config
from chorus_lab.bus.base import Bus, BusError, Consumer, DeliveryReport, Producer, Record
from chorus_lab.deadletter import DeadLetter
from chorus_lab.schema import AgentMessage, SchemaError, decode_agent_message

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Decoded:
    """One record that decoded, with where it came from."""

    message: AgentMessage
    record: Record


@dataclass(slots=True)
class ReadBatch:
    """What one ``read`` returned: the good messages, in order, and the dead letters."""

    messages: list[Decoded] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)


def decode_record(record: Record) -> AgentMessage | DeadLetter:
    """Decode ``record`` into an ``AgentMessage``, or describe why not as a ``DeadLetter``.

    >>> from chorus_lab.bus.base import Record
    >>> letter = decode_record(Record("agent-messages-raw", 0, 7, b"a1", b'{"agent_id": "a1"}', 0))
    >>> letter.field, letter.source
    ('timestamp', 'agent-messages-raw/0/7')
    """
    try:
        return decode_agent_message(record.value or b"")
    except SchemaError as exc:
        return DeadLetter.from_exception(
            exc, stage="decode", source=f"{record.topic}/{record.partition}/{record.offset}", value=record.value, key=record.key
        )


class MessageReader:
    """Reads ``AgentMessage``s from a consumer; undecodable records go to ``dlq_topic``."""

    def __init__(self, bus: Bus, consumer: Consumer, *, dlq_topic: str = config.DLQ, producer: Producer | None = None) -> None:
        self.consumer = consumer
        self.dlq_topic = dlq_topic
        self._producer = producer or bus.producer()
        self.dead_lettered = 0

    def read(self, max_messages: int = 500, timeout: float = 1.0) -> ReadBatch:
        """Read up to ``max_messages`` records; dead letters are delivered before this returns."""
        batch = ReadBatch()
        failures: list[BusError] = []

        def delivered(report: DeliveryReport) -> None:
            if report.error is not None:
                failures.append(report.error)

        for record in self.consumer.consume(max_messages, timeout):
            decoded = decode_record(record)
            if isinstance(decoded, DeadLetter):
                batch.dead_letters.append(decoded)
                log.warning("undecodable record %s sent to %s: %s", decoded.source, self.dlq_topic, decoded.message)
                self._producer.produce(self.dlq_topic, decoded.original_value, decoded.original_key, headers=decoded.headers(), on_delivery=delivered)
            else:
                batch.messages.append(Decoded(decoded, record))
        if batch.dead_letters:
            left = self._producer.flush(30)
            if left or failures:
                cause = failures[0] if failures else f"{left} still queued"
                raise BusError(f"dead letters could not be delivered to {self.dlq_topic} ({cause}); not moving past them", retriable=True)
            self.dead_lettered += len(batch.dead_letters)
        return batch

    def close(self) -> None:
        self._producer.close()
        self.consumer.close()
