"""Dead letters: input that could not be delivered, decoded or processed, kept with its reason.

A dead letter carries the original bytes unchanged as the record value (so it can be
replayed after a fix), the original key, and the reason in headers named ``error.*`` —
readable by any Kafka tool without knowing our schema.

>>> letter = DeadLetter(stage="decode", error_type="SchemaError", message="agent_id: required field is missing",
...                     field="agent_id", source="file:input.jsonl:3", original_value=b"{}")
>>> DeadLetter.from_record(letter.to_record("agent-messages-dlq", 0, 0, 0)).field
'agent_id'
"""

from __future__ import annotations

from dataclasses import dataclass

from chorus_lab.bus.base import Headers, Record
from chorus_lab.schema import SchemaError

_PREFIX = "error."


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Why an input failed, and the input itself."""

    stage: str
    """Where it failed: ``decode``, ``validate``, ``produce``, ``process``."""
    error_type: str
    message: str
    source: str
    """Where the input came from: ``topic/partition/offset`` or ``file:path:line``."""
    original_value: bytes | None
    original_key: bytes | None = None
    field: str | None = None
    attempts: int = 1

    @classmethod
    def from_exception(
        cls, exc: BaseException, *, stage: str, source: str, value: bytes | None, key: bytes | None = None, attempts: int = 1
    ) -> DeadLetter:
        """A dead letter for ``exc``; a ``SchemaError`` contributes the field at fault."""
        return cls(
            stage=stage,
            error_type=type(exc).__name__,
            message=str(exc),
            source=source,
            original_value=value,
            original_key=key,
            field=exc.field if isinstance(exc, SchemaError) else None,
            attempts=attempts,
        )

    def headers(self) -> Headers:
        items = [
            ("stage", self.stage),
            ("type", self.error_type),
            ("message", self.message),
            ("source", self.source),
            ("attempts", str(self.attempts)),
        ]
        if self.field is not None:
            items.append(("field", self.field))
        return tuple((_PREFIX + name, value.encode()) for name, value in items)

    def to_record(self, topic: str, partition: int, offset: int, timestamp_ms: int) -> Record:
        """The record form (as read back from a dead-letter topic)."""
        return Record(topic, partition, offset, self.original_key, self.original_value, timestamp_ms, self.headers())

    @classmethod
    def from_record(cls, record: Record) -> DeadLetter:
        """Read a dead letter back from a record of a dead-letter or error topic."""

        def text(name: str) -> str | None:
            value = record.header(_PREFIX + name)
            return None if value is None else value.decode("utf-8", "replace")

        return cls(
            stage=text("stage") or "",
            error_type=text("type") or "",
            message=text("message") or "",
            source=text("source") or "",
            original_value=record.value,
            original_key=record.key,
            field=text("field"),
            attempts=int(text("attempts") or 1),
        )


class PoisonedRecord(Exception):
    """Raised out of a batch by a stage shell: this record made its core fail.

    Nothing of the batch was sent yet, so the shell rolls its state back and does the batch
    again with ``letter`` sent in the record's place. ``key`` is the record's
    ``(topic, partition, offset)``.
    """

    def __init__(self, key: tuple[str, int, int], letter: DeadLetter) -> None:
        super().__init__(letter.message)
        self.key = key
        self.letter = letter
