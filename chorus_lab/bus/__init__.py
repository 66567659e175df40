"""One bus contract, two backends, chosen by URL.

- ``embedded:///abs/dir`` or ``embedded://rel/dir``: a durable log in a directory on this
  machine, shared by every process that opens the same directory (the default:
  ``embedded://.chorus/bus`` under the working directory).
- ``kafka://host:port[,host:port...]``: Apache Kafka or Confluent Cloud through
  confluent-kafka; client properties come from ``CHORUS_KAFKA_CONFIG`` (a
  ``client.properties`` file) and ``CHORUS_KAFKA_*`` variables (see ``chorus_lab.config``).

>>> bus = open_bus("embedded:///tmp/chorus-doctest-bus")
>>> bus.url
'embedded:///tmp/chorus-doctest-bus'
"""

from __future__ import annotations

import os

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
    Producer,
    ProducerFencedError,
    Record,
    TopicDescription,
    TopicError,
    TopicPartition,
    TopicSpec,
    TransactionAbortedError,
)

DEFAULT_BUS_URL = "embedded://.chorus/bus"
BUS_ENV = "CHORUS_BUS"

__all__ = [
    "Admin",
    "AuthenticationError",
    "Bus",
    "BusError",
    "BusUnavailableError",
    "CommitFailedError",
    "ConfigurationError",
    "Consumer",
    "DEFAULT_BUS_URL",
    "DeliveryReport",
    "Producer",
    "ProducerFencedError",
    "Record",
    "TopicDescription",
    "TopicError",
    "TopicPartition",
    "TopicSpec",
    "TransactionAbortedError",
    "open_bus",
    "resolve_bus_url",
]


def resolve_bus_url(url: str | None = None) -> str:
    """The bus URL to use: ``url`` if given, else ``$CHORUS_BUS``, else the embedded default."""
    return url or os.environ.get(BUS_ENV) or DEFAULT_BUS_URL


def open_bus(url: str | None = None) -> Bus:
    """Open the bus named by ``url`` (see :func:`resolve_bus_url`).

    Raises ``ConfigurationError`` for an unknown scheme, naming the schemes that exist.
    """
    resolved = resolve_bus_url(url)
    scheme, sep, rest = resolved.partition("://")
    if not sep:
        raise ConfigurationError(f"bus URL {resolved!r} has no scheme; use embedded:///dir or kafka://host:port")
    if scheme == "embedded":
        from chorus_lab.bus.embedded import EmbeddedBus

        return EmbeddedBus(rest or DEFAULT_BUS_URL.partition("://")[2])
    if scheme == "kafka":
        from chorus_lab.bus.kafka import KafkaBus

        return KafkaBus(rest)
    raise ConfigurationError(f"unknown bus scheme {scheme!r} in {resolved!r}; use embedded:// or kafka://")
