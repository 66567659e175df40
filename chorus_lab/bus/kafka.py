"""The ``kafka`` backend: Apache Kafka or Confluent Cloud through confluent-kafka.

Thin, typed wrappers over ``confluent_kafka.Producer``/``Consumer``/``AdminClient``:

- every producer is idempotent (``acks=all``) and uses the murmur2 partitioner, so Java
  and Python clients, and the embedded backend, put a key in the same partition;
- consumers read ``read_committed`` and never auto-commit;
- admin calls retry with exponential backoff behind a circuit breaker, and authentication
  and bootstrap failures are reported by cluster and cause, never with the secret.

Client properties come from :func:`chorus_lab.config.kafka_client_properties`.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, TypeVar

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import TopicPartition as KafkaTopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from chorus_lab.bus.base import (
    Admin,
    AuthenticationError,
    Bus,
    BusError,
    BusUnavailableError,
    CommitFailedError,
    ConfigurationError,
    Consumer,
    DeliveryReport,
    Headers,
    Producer,
    ProducerFencedError,
    Record,
    TopicDescription,
    TopicError,
    TopicPartition,
    TopicSpec,
    TransactionAbortedError,
)
from chorus_lab.bus.retry import CircuitBreaker, RetryPolicy, call_with_retry
from chorus_lab.config import SECRET_KEYS, kafka_client_properties

T = TypeVar("T")
_new_tuple = tuple.__new__
log = logging.getLogger(__name__)
librdkafka_log = logging.getLogger("chorus_lab.librdkafka")
"""librdkafka's own log lines (served inside poll/consume); the CLI shows them with --verbose."""

_AUTH_CODES = {
    KafkaError._AUTHENTICATION,
    KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError.ILLEGAL_SASL_STATE,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
}
_UNREACHABLE_CODES = {
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._RESOLVE,
    KafkaError._TIMED_OUT,
    KafkaError._MSG_TIMED_OUT,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError._SSL,
}
# Leadership and coordinators move (or are still being elected on a fresh cluster);
# librdkafka does not always flag these as retriable, but a later try succeeds.
_TRANSIENT_CODES = {
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_LEADER_EPOCH,
    KafkaError.FENCED_LEADER_EPOCH,
    KafkaError.REPLICA_NOT_AVAILABLE,
    KafkaError.NOT_ENOUGH_REPLICAS,
    KafkaError.UNSTABLE_OFFSET_COMMIT,
    KafkaError._WAIT_COORD,
    KafkaError._IN_PROGRESS,
}
_FENCED_CODES = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.TRANSACTION_COORDINATOR_FENCED}
_REBALANCE_CODES = {KafkaError.ILLEGAL_GENERATION, KafkaError.REBALANCE_IN_PROGRESS, KafkaError.UNKNOWN_MEMBER_ID}

# Favour low latency with modest batching (see STACK-NOTES "Throughput"); client
# properties may change these.
_PRODUCER_DEFAULTS = {
    "linger.ms": 5,
    # Topics are created explicitly and awaited, so a topic still unknown after 5 s is missing.
    "topic.metadata.propagation.max.ms": 5000,
    "compression.type": "lz4",
    "reconnect.backoff.ms": 100,
    "reconnect.backoff.max.ms": 2000,
}
# What the contract promises; client properties cannot change these.
_PRODUCER_REQUIRED = {"enable.idempotence": True, "acks": "all", "partitioner": "murmur2_random"}
_CONSUMER_REQUIRED = {"enable.auto.commit": False, "enable.auto.offset.store": False, "isolation.level": "read_committed"}
_CONSUMER_DEFAULTS = {
    "enable.partition.eof": False,
    "fetch.wait.max.ms": 50,
    "reconnect.backoff.ms": 100,
    "reconnect.backoff.max.ms": 2000,
}


class _ClientErrors:
    """Collects errors librdkafka reports through ``error_cb`` while it retries on its own.

    Authentication failures mostly arrive here rather than as exceptions, so callers
    consult it to name the real cause of a time-out.
    """

    def __init__(self, cluster: str, secrets: Iterable[str]) -> None:
        self.cluster = cluster
        self._secrets = [s for s in secrets if s]
        self._lock = threading.Lock()
        self.last: KafkaError | None = None
        self.last_auth: KafkaError | None = None

    def __call__(self, error: KafkaError) -> None:
        with self._lock:
            self.last = error
            if error.code() in _AUTH_CODES:
                self.last_auth = error
        log.debug("kafka client error on %s: %s", self.cluster, self.scrub(error.str()))

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def auth_error(self) -> AuthenticationError | None:
        with self._lock:
            error = self.last_auth
        if error is None:
            return None
        return AuthenticationError(
            f"authentication to Kafka cluster {self.cluster} failed: {self.scrub(error.str())} "
            "(check the API key and secret, sasl.mechanisms and security.protocol)",
            code=error.name(),
        )

    def unreachable_error(self, what: str) -> BusUnavailableError:
        with self._lock:
            error = self.last
        cause = f": {self.scrub(error.str())}" if error is not None else ""
        return BusUnavailableError(f"cannot reach Kafka cluster {self.cluster} ({what}){cause}", code=error.name() if error else None)


def to_bus_error(error: KafkaError, errors: _ClientErrors, what: str) -> BusError:
    """Map a librdkafka error to the contract's error types, with a message naming the cause."""
    code = error.code()
    text = f"{what} on Kafka cluster {errors.cluster}: {errors.scrub(error.str())}"
    if code in _AUTH_CODES:
        return AuthenticationError(text, code=error.name())
    if code in _FENCED_CODES or error.fatal():
        return ProducerFencedError(text, code=error.name())
    if code in _REBALANCE_CODES:
        return CommitFailedError(text, code=error.name())
    if code in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
        return TopicError(text, code=error.name())
    if code in _UNREACHABLE_CODES:
        return BusUnavailableError(text, code=error.name())
    return BusError(text, retriable=error.retriable() or code in _TRANSIENT_CODES, code=error.name())


def _retry_transient(call: Callable[[], T], errors: _ClientErrors, what: str, attempts: int = 20) -> T:
    """Run a metadata call, retrying the short-lived errors of a cluster in motion."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except KafkaException as exc:
            mapped = _kafka_exception(exc, errors, what)
            if not mapped.retriable or attempt == attempts:
                raise mapped from None
            time.sleep(min(1.0, 0.05 * 2**attempt))
    raise AssertionError("unreachable")


def _kafka_exception(exc: KafkaException, errors: _ClientErrors, what: str) -> BusError:
    error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
    if error is None:
        return BusError(f"{what} on Kafka cluster {errors.cluster}: {errors.scrub(str(exc))}")
    return to_bus_error(error, errors, what)


class KafkaBus(Bus):
    """The Kafka backend for ``kafka://host:port[,host:port]``.

    >>> KafkaBus("127.0.0.1:9092", properties={}).url
    'kafka://127.0.0.1:9092'
    """

    def __init__(
        self,
        bootstrap: str = "",
        *,
        properties: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        config: dict[str, Any] = dict(kafka_client_properties() if properties is None else properties)
        if bootstrap:
            config["bootstrap.servers"] = bootstrap.rstrip("/")
        if not config.get("bootstrap.servers"):
            raise ConfigurationError("no Kafka bootstrap servers: use kafka://host:port or set bootstrap.servers in $CHORUS_KAFKA_CONFIG")
        self.bootstrap = str(config["bootstrap.servers"])
        self.url = f"kafka://{self.bootstrap}"
        self._config = config
        self._secrets = [str(config[k]) for k in SECRET_KEYS if k in config]
        self.retry = retry or RetryPolicy(max_attempts=3, base_delay=0.5)
        self.breaker = CircuitBreaker()

    def client_config(
        self, defaults: Mapping[str, Any] | None = None, required: Mapping[str, Any] | None = None, **overrides: Any
    ) -> tuple[dict[str, Any], _ClientErrors]:
        """A librdkafka configuration for a new client, and its error collector.

        Precedence: ``defaults`` < client properties < ``overrides`` < ``required``.
        """
        errors = _ClientErrors(self.bootstrap, self._secrets)
        config = {**(defaults or {}), **self._config, **overrides, **(required or {}), "error_cb": errors, "logger": librdkafka_log}
        return config, errors

    def producer(self, *, transactional_id: str | None = None, **overrides: Any) -> KafkaProducer:
        if transactional_id:
            overrides["transactional.id"] = transactional_id
        config, errors = self.client_config(_PRODUCER_DEFAULTS, _PRODUCER_REQUIRED, **overrides)
        return KafkaProducer(confluent_kafka.Producer(config), errors)

    def consumer(
        self, group_id: str | None, *, auto_offset_reset: Literal["earliest", "latest"] = "earliest", **overrides: Any
    ) -> KafkaConsumer:
        # librdkafka insists on a group.id; a private one is never committed to.
        overrides["group.id"] = group_id or f"chorus-private-{uuid.uuid4().hex}"
        overrides["auto.offset.reset"] = auto_offset_reset
        config, errors = self.client_config(_CONSUMER_DEFAULTS, _CONSUMER_REQUIRED, **overrides)
        return KafkaConsumer(confluent_kafka.Consumer(config), errors, group_id, reset_to_earliest=auto_offset_reset == "earliest")

    def admin(self) -> KafkaAdmin:
        config, errors = self.client_config()
        return KafkaAdmin(AdminClient(config), errors, self)

    def check_connection(self, timeout: float = 10.0) -> int:
        """Fetch cluster metadata, retrying with backoff; return the number of brokers.

        Raises ``AuthenticationError`` or ``BusUnavailableError`` naming the cluster and cause.
        """
        admin = self.admin()
        return len(admin._metadata(None, timeout).brokers)


class KafkaProducer(Producer):
    """A confluent-kafka producer behind the bus contract."""

    def __init__(self, producer: confluent_kafka.Producer, errors: _ClientErrors) -> None:
        self._producer = producer
        self._errors = errors

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
        kwargs: dict[str, Any] = {"value": value, "key": key}
        if partition is not None:
            kwargs["partition"] = partition
        if headers:
            kwargs["headers"] = list(headers)
        if timestamp_ms is not None:
            kwargs["timestamp"] = timestamp_ms
        if on_delivery is not None:
            kwargs["on_delivery"] = self._report(on_delivery)
        try:
            self._producer.produce(topic, **kwargs)
        except KafkaException as exc:
            raise _kafka_exception(exc, self._errors, f"produce to {topic}") from None

    def _report(self, callback: Callable[[DeliveryReport], None]) -> Callable[[KafkaError | None, Any], None]:
        errors = self._errors

        def deliver(error: KafkaError | None, message: Any) -> None:
            callback(
                DeliveryReport(
                    topic=message.topic(),
                    partition=message.partition(),
                    offset=message.offset() if error is None else -1,
                    key=message.key(),
                    value=message.value(),
                    error=None if error is None else to_bus_error(error, errors, f"delivery to {message.topic()}"),
                )
            )

        return deliver

    def poll(self, timeout: float = 0.0) -> int:
        try:
            return self._producer.poll(timeout)
        except KafkaException as exc:
            raise _kafka_exception(exc, self._errors, "poll") from None

    def flush(self, timeout: float = 30.0) -> int:
        try:
            return self._producer.flush(timeout)
        except KafkaException as exc:
            raise _kafka_exception(exc, self._errors, "flush") from None

    def _transactional(self, what: str, call: Callable[[], None]) -> None:
        """Run a transaction API call: retry what librdkafka says is retriable, abort
        what requires it, and map the rest (see STACK-NOTES "Transactions")."""
        for attempt in range(1, 6):
            try:
                call()
                return
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.retriable() and attempt < 5:
                    time.sleep(0.1 * 2**attempt)
                    continue
                if error.fatal():
                    raise ProducerFencedError(
                        f"{what}: producer can no longer be used ({self._errors.scrub(error.str())}); create a new one",
                        code=error.name(),
                    ) from None
                if error.txn_requires_abort():
                    self._producer.abort_transaction(30)
                    raise TransactionAbortedError(f"{what}: transaction aborted ({self._errors.scrub(error.str())})", code=error.name()) from None
                raise to_bus_error(error, self._errors, what) from None

    def init_transactions(self, timeout: float = 30.0) -> None:
        self._transactional("init_transactions", lambda: self._producer.init_transactions(timeout))

    def begin_transaction(self) -> None:
        self._transactional("begin_transaction", self._producer.begin_transaction)

    def send_offsets_to_transaction(self, offsets: Mapping[TopicPartition, int], consumer: Consumer, timeout: float = 30.0) -> None:
        if not isinstance(consumer, KafkaConsumer):
            raise ConfigurationError("send_offsets_to_transaction needs a consumer of the same Kafka bus")
        partitions = [KafkaTopicPartition(tp.topic, tp.partition, offset) for tp, offset in offsets.items()]
        metadata = consumer._consumer.consumer_group_metadata()
        self._transactional("send_offsets_to_transaction", lambda: self._producer.send_offsets_to_transaction(partitions, metadata, timeout))

    def commit_transaction(self, timeout: float = 30.0) -> None:
        self._transactional("commit_transaction", lambda: self._producer.commit_transaction(timeout))

    def abort_transaction(self, timeout: float = 30.0) -> None:
        self._transactional("abort_transaction", lambda: self._producer.abort_transaction(timeout))

    def close(self) -> None:
        try:
            self._producer.flush(10)
        except (KafkaException, SystemError) as exc:
            # A fenced (fatal) producer cannot flush; confluent-kafka 2.16 then raises a
            # bare SystemError. Nothing more can be delivered through it either way.
            log.warning("closing a producer that can no longer deliver on %s: %s", self._errors.cluster, self._errors.scrub(str(exc)))


class KafkaConsumer(Consumer):
    """A confluent-kafka consumer behind the bus contract."""

    def __init__(self, consumer: confluent_kafka.Consumer, errors: _ClientErrors, group_id: str | None, *, reset_to_earliest: bool) -> None:
        self._consumer = consumer
        self._errors = errors
        self._reset_to_earliest = reset_to_earliest
        self.group_id = group_id
        self._manual: dict[TopicPartition, int | None] | None = None

    def subscribe(
        self,
        topics: Sequence[str],
        *,
        on_assign: Callable[[list[TopicPartition]], None] | None = None,
        on_revoke: Callable[[list[TopicPartition]], None] | None = None,
    ) -> None:
        if self.group_id is None:
            raise ConfigurationError("subscribe needs a group_id; use assign() for a consumer without a group")

        def assigned(_consumer: Any, partitions: list[KafkaTopicPartition]) -> None:
            if on_assign is not None:
                on_assign([TopicPartition(p.topic, p.partition) for p in partitions])

        def revoked(_consumer: Any, partitions: list[KafkaTopicPartition]) -> None:
            if on_revoke is not None:
                on_revoke([TopicPartition(p.topic, p.partition) for p in partitions])

        self._consumer.subscribe(list(topics), on_assign=assigned, on_revoke=revoked, on_lost=revoked)

    def assign(self, partitions: Mapping[TopicPartition, int | None]) -> None:
        self._manual = dict(partitions)
        committed = self.committed([tp for tp, offset in partitions.items() if offset is None]) if self.group_id else {}
        # Without a group there is nothing committed: start at the reset point directly,
        # so a group-less reader never waits on a group coordinator.
        reset = confluent_kafka.OFFSET_BEGINNING if self._reset_to_earliest else confluent_kafka.OFFSET_END
        assignment = []
        for tp, offset in partitions.items():
            start = offset if offset is not None else committed.get(tp)
            kafka_offset = start if start is not None else (confluent_kafka.OFFSET_INVALID if self.group_id else reset)
            assignment.append(KafkaTopicPartition(tp.topic, tp.partition, kafka_offset))
        self._consumer.assign(assignment)

    def assignment(self) -> list[TopicPartition]:
        return sorted(TopicPartition(p.topic, p.partition) for p in self._consumer.assignment())

    def consume(self, max_messages: int = 500, timeout: float = 1.0) -> list[Record]:
        try:
            messages = self._consumer.consume(num_messages=max_messages, timeout=timeout)
        except KafkaException as exc:
            raise _kafka_exception(exc, self._errors, "consume") from None
        records: list[Record] = []
        append = records.append
        for message in messages:  # the hot loop of every consumer: keep it lean
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                bus_error = to_bus_error(error, self._errors, "consume")
                if bus_error.retriable:
                    log.warning("%s (retrying)", bus_error)
                    continue
                raise bus_error
            headers = message.headers()
            # tuple.__new__ skips the named tuple's Python-level __new__: half the cost.
            append(
                _new_tuple(
                    Record,
                    (
                        message.topic(),
                        message.partition(),
                        message.offset(),
                        message.key(),
                        message.value(),
                        message.timestamp()[1],
                        tuple(headers) if headers else (),
                    ),
                )
            )
        return records

    def position(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        wanted = [KafkaTopicPartition(tp.topic, tp.partition) for tp in partitions]
        result: dict[TopicPartition, int] = {}
        for p in self._consumer.position(wanted):
            tp = TopicPartition(p.topic, p.partition)
            result[tp] = p.offset if p.offset >= 0 else self._start_offset(tp)
        return result

    def _start_offset(self, tp: TopicPartition) -> int:
        """Where a partition with no fetch position yet will start: committed, else reset policy."""
        if self._manual is not None and self._manual.get(tp) is not None:
            return int(self._manual[tp])  # type: ignore[arg-type]
        committed = self.committed([tp]).get(tp) if self.group_id else None
        if committed is not None:
            return committed
        low, high = self.watermarks(tp)
        return low if self._reset_to_earliest else high

    def seek(self, partition: TopicPartition, offset: int) -> None:
        try:
            self._consumer.seek(KafkaTopicPartition(partition.topic, partition.partition, offset))
        except KafkaException as exc:
            # librdkafka refuses to seek a partition whose fetcher has not started yet;
            # re-assigning it at the offset has the same effect.
            if exc.args[0].code() != KafkaError._STATE:
                raise _kafka_exception(exc, self._errors, "seek") from None
            self._consumer.incremental_unassign([KafkaTopicPartition(partition.topic, partition.partition)])
            self._consumer.incremental_assign([KafkaTopicPartition(partition.topic, partition.partition, offset)])
        if self._manual is not None and partition in self._manual:
            self._manual[partition] = offset

    def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        if self.group_id is None:
            raise ConfigurationError("commit needs a group_id")
        if offsets is None:
            offsets = self.position(self.assignment())
        partitions = [KafkaTopicPartition(tp.topic, tp.partition, offset) for tp, offset in offsets.items()]
        if not partitions:
            return
        try:
            result = self._consumer.commit(offsets=partitions, asynchronous=False)
        except KafkaException as exc:
            raise _kafka_exception(exc, self._errors, "commit") from None
        for p in result or ():
            if p.error is not None:
                raise to_bus_error(p.error, self._errors, f"commit {p.topic}[{p.partition}]")

    def committed(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int | None]:
        wanted = [KafkaTopicPartition(tp.topic, tp.partition) for tp in partitions]
        if not wanted:
            return {}
        found = _retry_transient(lambda: self._consumer.committed(wanted, timeout=10), self._errors, "committed")
        return {TopicPartition(p.topic, p.partition): (p.offset if p.offset >= 0 else None) for p in found}

    def watermarks(self, partition: TopicPartition) -> tuple[int, int]:
        tp = KafkaTopicPartition(partition.topic, partition.partition)
        low, high = _retry_transient(
            lambda: self._consumer.get_watermark_offsets(tp, timeout=10, cached=False), self._errors, f"watermarks of {partition.topic}[{partition.partition}]"
        )
        return int(low), int(high)

    def offsets_for_time(self, topic: str, timestamp_ms: int) -> dict[int, int]:
        metadata = self._consumer.list_topics(topic, timeout=10)
        info = metadata.topics.get(topic)
        if info is None or info.error is not None:
            raise TopicError(f"topic {topic} does not exist on Kafka cluster {self._errors.cluster}")
        query = [KafkaTopicPartition(topic, p, timestamp_ms) for p in sorted(info.partitions)]
        found = _retry_transient(lambda: self._consumer.offsets_for_times(query, timeout=10), self._errors, f"offsets_for_time on {topic}")
        result: dict[int, int] = {}
        for p in found:
            # -1 means no record at or after the time: the next record will be the first.
            result[p.partition] = p.offset if p.offset >= 0 else self.watermarks(TopicPartition(topic, p.partition))[1]
        return result

    def close(self) -> None:
        self._consumer.close()


class KafkaAdmin(Admin):
    """Topic administration on Kafka, with retries behind the bus's circuit breaker."""

    def __init__(self, admin: AdminClient, errors: _ClientErrors, bus: KafkaBus) -> None:
        self._admin = admin
        self._errors = errors
        self._bus = bus

    def _retrying(self, what: str, operation: Callable[[], Any]) -> Any:
        return call_with_retry(operation, policy=self._bus.retry, breaker=self._bus.breaker, describe=f"{what} on {self._errors.cluster}")

    def _metadata(self, topic: str | None, timeout: float = 10.0) -> Any:
        def fetch() -> Any:
            # Short slices, so an authentication failure reported through error_cb ends
            # the wait at once instead of after the whole timeout.
            deadline = time.monotonic() + timeout
            while True:
                try:
                    return self._admin.list_topics(topic, timeout=min(0.5, max(0.1, deadline - time.monotonic())))
                except KafkaException:
                    self._admin.poll(0)  # error_cb runs only inside poll()
                    auth = self._errors.auth_error()
                    if auth is not None:
                        raise auth from None
                    if time.monotonic() >= deadline:
                        raise self._errors.unreachable_error("fetching metadata") from None

        return self._retrying("fetching metadata", fetch)

    def list_topics(self) -> list[str]:
        return sorted(name for name in self._metadata(None).topics if not name.startswith("__"))

    def describe(self, name: str) -> TopicDescription | None:
        info = self._metadata(name).topics.get(name)
        if info is None or info.error is not None:
            return None
        resource = ConfigResource(ConfigResource.Type.TOPIC, name)

        def configs() -> dict[str, str]:
            try:
                entries = self._admin.describe_configs([resource])[resource].result(timeout=10)
            except KafkaException as exc:
                raise _kafka_exception(exc, self._errors, f"describe {name}") from None
            return {key: entry.value for key, entry in entries.items() if entry.value is not None}

        replicas = len(next(iter(info.partitions.values())).replicas) if info.partitions else 0
        return TopicDescription(name=name, partitions=len(info.partitions), config=self._retrying(f"describe {name}", configs), replication_factor=replicas)

    def create_topics(self, specs: Sequence[TopicSpec]) -> list[str]:
        existing = set(self._metadata(None).topics)
        missing = [spec for spec in specs if spec.name not in existing]
        created: list[str] = []
        if missing:
            futures = self._admin.create_topics(
                [NewTopic(s.name, num_partitions=s.partitions, replication_factor=s.replication_factor, config=s.topic_config()) for s in missing],
                operation_timeout=30,
            )
            for name, future in futures.items():
                try:
                    future.result(timeout=60)
                    created.append(name)
                except KafkaException as exc:
                    error: KafkaError = exc.args[0]
                    if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:  # a concurrent creator won
                        raise TopicError(f"cannot create topic {name} on {self._errors.cluster}: {self._errors.scrub(error.str())}", code=error.name()) from None
        self._wait_visible([s.name for s in missing])
        problems = []
        for spec in specs:
            if spec.name in created:
                continue
            differences = self.verify(spec)
            if differences:
                problems.append(f"{spec.name}: " + "; ".join(differences))
        if problems:
            raise TopicError("existing topics differ from their spec: " + " | ".join(problems))
        return sorted(created)

    def _wait_visible(self, names: Sequence[str], timeout: float = 30.0) -> None:
        """Block until new topics have leaders, so an immediate produce does not fail."""
        deadline = time.monotonic() + timeout
        pending = set(names)
        while pending and time.monotonic() < deadline:
            topics = self._admin.list_topics(timeout=5).topics
            pending = {n for n in pending if n not in topics or topics[n].error is not None or any(p.leader < 0 for p in topics[n].partitions.values())}
            if pending:
                time.sleep(0.05)
        if pending:
            raise TopicError(f"topics created but not ready after {timeout:.0f}s: {', '.join(sorted(pending))}")

    def delete_topics(self, names: Sequence[str]) -> None:
        if not names:
            return
        for name, future in self._admin.delete_topics(list(names), operation_timeout=30).items():
            try:
                future.result(timeout=60)
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise TopicError(f"cannot delete topic {name}: {self._errors.scrub(error.str())}", code=error.name()) from None
