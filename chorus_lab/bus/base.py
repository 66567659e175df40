"""The bus contract: what every backend (embedded, kafka) provides.

The shape follows Kafka's client API closely, so that code written against the contract
behaves the same on the embedded log and on a real cluster:

- records are keyed; a key always lands in the same partition (murmur2, as Kafka's Java
  client and librdkafka's ``murmur2_random`` do), so per-key order is kept;
- offsets are per partition and increasing, but not dense: transaction markers and
  compaction leave gaps, as in Kafka; a *committed* offset is the next offset to read;
- consumers read ``read_committed``: records produced inside a transaction are visible
  only once it commits;
- a transaction commits produced records and consumer offsets atomically.

Where the embedded backend does less than Kafka, the backend's module docstring says so.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

Headers = tuple[tuple[str, bytes], ...]
CleanupPolicy = Literal["delete", "compact", "compact,delete"]


class TopicPartition(NamedTuple):
    topic: str
    partition: int


class Record(NamedTuple):
    """One record read from the bus.

    A named tuple rather than a dataclass: consumers build one per record, and a tuple is
    several times cheaper to build (it shows in bench/bus_throughput.py).
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: Headers = ()

    @property
    def topic_partition(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)

    def header(self, name: str) -> bytes | None:
        """The last value of header ``name``, or None."""
        for key, value in reversed(self.headers):
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """The outcome of one produce call, passed to its ``on_delivery`` callback."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    error: BusError | None = None


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """What a topic must look like. ``retention_ms=None`` keeps records forever."""

    name: str
    partitions: int = 6
    retention_ms: int | None = 7 * 24 * 3600 * 1000
    cleanup_policy: CleanupPolicy = "delete"
    replication_factor: int = 1
    config: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 249:
            raise ValueError(f"topic name must be 1-249 characters, got {self.name!r}")
        if self.partitions < 1:
            raise ValueError(f"topic {self.name}: partitions must be at least 1, got {self.partitions}")
        if self.retention_ms is not None and self.retention_ms < 1:
            raise ValueError(f"topic {self.name}: retention_ms must be positive or None, got {self.retention_ms}")

    def topic_config(self) -> dict[str, str]:
        """Kafka topic configuration entries for this spec."""
        config = {
            "cleanup.policy": self.cleanup_policy,
            "retention.ms": "-1" if self.retention_ms is None else str(self.retention_ms),
        }
        config.update(self.config)
        return config


@dataclass(frozen=True, slots=True)
class TopicDescription:
    """What a topic looks like on the bus."""

    name: str
    partitions: int
    config: Mapping[str, str]
    replication_factor: int = 1

    def differences(self, spec: TopicSpec) -> list[str]:
        """Human-readable differences between this topic and ``spec`` (empty when it matches)."""
        found: list[str] = []
        if self.partitions != spec.partitions:
            found.append(f"partitions: topic has {self.partitions}, spec wants {spec.partitions}")
        for key, wanted in spec.topic_config().items():
            actual = self.config.get(key)
            if actual is not None and actual != wanted:
                found.append(f"{key}: topic has {actual}, spec wants {wanted}")
        return found


# --------------------------------------------------------------------------- errors


class BusError(Exception):
    """Base of every bus error. ``retriable`` says whether trying again may succeed."""

    retriable: bool = False

    def __init__(self, message: str, *, retriable: bool | None = None, code: str | None = None) -> None:
        super().__init__(message)
        if retriable is not None:
            self.retriable = retriable
        self.code = code


class BusUnavailableError(BusError):
    """The bus cannot be reached (broker down, network cut, circuit open)."""

    retriable = True


class AuthenticationError(BusError):
    """The bus refused our credentials; retrying with the same ones will not help."""


class ConfigurationError(BusError):
    """The bus URL or client properties are wrong."""


class TopicError(BusError):
    """A topic is missing, or exists with another shape than its spec."""


class CommitFailedError(BusError):
    """Offsets could not be committed: this consumer no longer owns the partition."""


class ProducerFencedError(BusError):
    """Another producer with the same ``transactional_id`` took over; this one must stop."""


class TransactionAbortedError(BusError):
    """The transaction could not commit and was aborted; nothing in it is visible."""

    retriable = True


# --------------------------------------------------------------------------- roles


class Producer(abc.ABC):
    """Sends records. Not thread-safe: use one per thread."""

    @abc.abstractmethod
    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        *,
        partition: int | None = None,
        headers: Headers | None = None,
        timestamp_ms: int | None = None,
        on_delivery: Callable[[DeliveryReport], None] | None = None,
    ) -> None:
        """Queue a record. ``on_delivery`` runs later, inside ``poll`` or ``flush``.

        Without ``partition`` a keyed record goes to ``partition_for_key(key, n)``.
        Raises ``BufferError`` when the local queue is full (call ``poll``/``flush``).
        """

    @abc.abstractmethod
    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery callbacks; return how many ran."""

    @abc.abstractmethod
    def flush(self, timeout: float = 30.0) -> int:
        """Wait until queued records are delivered; return how many are still queued."""

    @abc.abstractmethod
    def init_transactions(self, timeout: float = 30.0) -> None:
        """Register the ``transactional_id``, fencing older producers that used it."""

    @abc.abstractmethod
    def begin_transaction(self) -> None: ...

    @abc.abstractmethod
    def send_offsets_to_transaction(
        self, offsets: Mapping[TopicPartition, int], consumer: Consumer, timeout: float = 30.0
    ) -> None:
        """Add ``consumer``'s group offsets (next offset to read) to the open transaction."""

    @abc.abstractmethod
    def commit_transaction(self, timeout: float = 30.0) -> None: ...

    @abc.abstractmethod
    def abort_transaction(self, timeout: float = 30.0) -> None: ...

    @abc.abstractmethod
    def close(self) -> None:
        """Flush what is queued and release resources."""

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Consumer(abc.ABC):
    """Reads records, in a consumer group (``subscribe``) or by manual ``assign``."""

    group_id: str | None

    @abc.abstractmethod
    def subscribe(
        self,
        topics: Sequence[str],
        *,
        on_assign: Callable[[list[TopicPartition]], None] | None = None,
        on_revoke: Callable[[list[TopicPartition]], None] | None = None,
    ) -> None:
        """Join the group for ``topics``; partitions are shared among its members.

        The callbacks run inside ``consume``. Portable code handles exactly the partitions
        it is given: Kafka's eager protocol passes the whole assignment, the embedded
        backend only the partitions that change.
        """

    @abc.abstractmethod
    def assign(self, partitions: Mapping[TopicPartition, int | None]) -> None:
        """Read exactly these partitions, from the given offsets (None: committed, else reset)."""

    @abc.abstractmethod
    def assignment(self) -> list[TopicPartition]: ...

    @abc.abstractmethod
    def consume(self, max_messages: int = 500, timeout: float = 1.0) -> list[Record]:
        """Up to ``max_messages`` records, waiting at most ``timeout`` seconds for the first."""

    @abc.abstractmethod
    def position(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The next offset this consumer will read, per partition."""

    @abc.abstractmethod
    def seek(self, partition: TopicPartition, offset: int) -> None: ...

    @abc.abstractmethod
    def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        """Commit ``offsets`` (next offset to read) or, if None, the current positions."""

    @abc.abstractmethod
    def committed(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int | None]: ...

    @abc.abstractmethod
    def watermarks(self, partition: TopicPartition) -> tuple[int, int]:
        """(log start offset, end offset) — the end is the offset the next record will get."""

    @abc.abstractmethod
    def offsets_for_time(self, topic: str, timestamp_ms: int) -> dict[int, int]:
        """Per partition, the first offset whose timestamp is at or after ``timestamp_ms``.

        A partition with no such record maps to its end offset.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Leave the group and release resources."""

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Admin(abc.ABC):
    """Topic administration."""

    @abc.abstractmethod
    def create_topics(self, specs: Sequence[TopicSpec]) -> list[str]:
        """Create the topics that are missing; return the names created.

        Existing topics are checked against their spec; a mismatch raises ``TopicError``
        listing every difference.
        """

    @abc.abstractmethod
    def describe(self, name: str) -> TopicDescription | None:
        """The topic as it is, or None when it does not exist."""

    @abc.abstractmethod
    def list_topics(self) -> list[str]: ...

    @abc.abstractmethod
    def delete_topics(self, names: Sequence[str]) -> None: ...

    def verify(self, spec: TopicSpec) -> list[str]:
        """Differences between the topic on the bus and ``spec``; ``["missing"]`` if absent."""
        description = self.describe(spec.name)
        if description is None:
            return [f"topic {spec.name} does not exist"]
        return description.differences(spec)


class Bus(abc.ABC):
    """A backend: makes producers, consumers and an admin for one bus URL."""

    url: str

    @abc.abstractmethod
    def producer(self, *, transactional_id: str | None = None) -> Producer: ...

    @abc.abstractmethod
    def consumer(self, group_id: str | None, *, auto_offset_reset: Literal["earliest", "latest"] = "earliest") -> Consumer:
        """A consumer; ``group_id=None`` can only ``assign`` and cannot commit."""

    @abc.abstractmethod
    def admin(self) -> Admin: ...

    def close(self) -> None:
        """Release shared resources; producers and consumers close themselves."""
