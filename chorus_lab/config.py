"""Settings as data: topic specs and Kafka client properties.

Kafka client properties (Confluent Cloud's SASL_SSL/PLAIN, API key and secret) are read
from a ``client.properties`` file named by ``CHORUS_KAFKA_CONFIG`` and from environment
variables ``CHORUS_KAFKA_<PROPERTY>`` (dots as underscores, e.g.
``CHORUS_KAFKA_SASL_PASSWORD`` for ``sasl.password``); the variables win. Secrets are never
put in logs or errors: use :func:`redact` before showing a configuration.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from chorus_lab.bus.base import TopicSpec

# --------------------------------------------------------------------------- topics

RAW = "agent-messages-raw"
DECISIONS = "agent-decisions-processed"
ALERTS = "system-alerts"
GRAPH_UPDATES = "causal-graph-updates"
METRICS = "analytics-metrics"
DLQ = "agent-messages-dlq"
ERRORS = "agent-messages-errors"
TRUST_SIGNALS = "chorus-trust-signals"
RESOURCE_LEDGER = "chorus-resource-ledger"
SNAPSHOTS = "chorus-snapshots"

PUBLIC_TOPICS = (RAW, DECISIONS, ALERTS, GRAPH_UPDATES, METRICS, DLQ, ERRORS)
INTERNAL_TOPICS = (TRUST_SIGNALS, RESOURCE_LEDGER, SNAPSHOTS)

DEFAULT_PARTITIONS = 6
_DAY_MS = 24 * 3600 * 1000

DEFAULT_RETENTION_MS: dict[str, int | None] = {
    RAW: 30 * _DAY_MS,
    DECISIONS: 30 * _DAY_MS,
    ALERTS: 365 * _DAY_MS,
    GRAPH_UPDATES: 7 * _DAY_MS,
    METRICS: 30 * _DAY_MS,
    DLQ: 30 * _DAY_MS,
    ERRORS: 30 * _DAY_MS,
    TRUST_SIGNALS: 7 * _DAY_MS,
    RESOURCE_LEDGER: None,
    SNAPSHOTS: None,
}
"""Retention per topic; None keeps records forever (the compacted state topics)."""

_COMPACTED = {RESOURCE_LEDGER, SNAPSHOTS}


def topic_specs(
    partitions: int = DEFAULT_PARTITIONS,
    retention_ms: Mapping[str, int | None] | None = None,
    *,
    prefix: str = "",
    replication_factor: int = 1,
) -> list[TopicSpec]:
    """The specs of every topic chorus-lab uses, public and internal.

    ``prefix`` names a sandbox copy (for replays); ``retention_ms`` overrides the defaults
    per topic name (without prefix).

    >>> [s.name for s in topic_specs(prefix="t1-")][:2]
    ['t1-agent-messages-raw', 't1-agent-decisions-processed']
    """
    overrides = dict(retention_ms or {})
    unknown = sorted(set(overrides) - set(DEFAULT_RETENTION_MS))
    if unknown:
        raise ValueError(f"unknown topic in retention settings: {', '.join(unknown)}; topics are {', '.join(DEFAULT_RETENTION_MS)}")
    specs = []
    for name, default in DEFAULT_RETENTION_MS.items():
        specs.append(
            TopicSpec(
                name=prefix + name,
                partitions=partitions,
                retention_ms=overrides.get(name, default),
                cleanup_policy="compact" if name in _COMPACTED else "delete",
                replication_factor=replication_factor,
            )
        )
    return specs


_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration_ms(text: str) -> int | None:
    """Parse ``7d``, ``12h``, ``30m``, ``45s``, ``500ms`` or ``forever`` into milliseconds.

    >>> parse_duration_ms("2h"), parse_duration_ms("forever")
    (7200000, None)
    """
    if text.strip().lower() in {"forever", "infinite", "-1"}:
        return None
    match = _DURATION.match(text)
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"not a duration: {text!r} (use e.g. 7d, 12h, 30m, 45s, 500ms or forever)")
    return int(match.group(1)) * _UNIT_MS[match.group(2) or "ms"]


def parse_retention(items: list[str]) -> dict[str, int | None]:
    """Parse ``TOPIC=DURATION`` items, e.g. ``["system-alerts=365d"]``."""
    result: dict[str, int | None] = {}
    for item in items:
        topic, sep, duration = item.partition("=")
        if not sep:
            raise ValueError(f"retention must be TOPIC=DURATION, got {item!r}")
        result[topic.strip()] = parse_duration_ms(duration)
    return result


# --------------------------------------------------------------------------- kafka client

KAFKA_CONFIG_ENV = "CHORUS_KAFKA_CONFIG"
KAFKA_ENV_PREFIX = "CHORUS_KAFKA_"

SECRET_KEYS = frozenset(
    {
        "sasl.password",
        "sasl.oauthbearer.client.secret",
        "ssl.key.password",
        "ssl.keystore.password",
        "ssl.key.pem",
        "basic.auth.user.info",
    }
)


def read_properties(path: Path) -> dict[str, str]:
    """Read a Java-style ``client.properties`` file (``key=value``, ``#`` comments).

    Raises ``ValueError`` naming the file and line for a line that is not a property.
    """
    properties: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "!")):
            continue
        match = re.match(r"^([^=:\s]+)\s*[=:]\s*(.*)$", stripped)
        if not match:
            raise ValueError(f"{path}:{number}: expected key=value, got {stripped[:40]!r}")
        properties[match.group(1)] = match.group(2).strip()
    return properties


def kafka_client_properties(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Client properties from ``$CHORUS_KAFKA_CONFIG`` and ``CHORUS_KAFKA_*`` variables.

    >>> kafka_client_properties({"CHORUS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"})
    {'security.protocol': 'SASL_SSL'}
    """
    env = os.environ if environ is None else environ
    properties: dict[str, str] = {}
    config_file = env.get(KAFKA_CONFIG_ENV)
    if config_file:
        path = Path(config_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{KAFKA_CONFIG_ENV} names {path}, which is not a file")
        properties.update(read_properties(path))
    for name, value in env.items():
        if name.startswith(KAFKA_ENV_PREFIX) and name != KAFKA_CONFIG_ENV:
            properties[name[len(KAFKA_ENV_PREFIX) :].lower().replace("_", ".")] = value
    return properties


def redact(config: Mapping[str, object]) -> dict[str, object]:
    """A copy of ``config`` with secret values replaced by ``'***'``, safe to print."""
    return {key: ("***" if key in SECRET_KEYS or "password" in key or "secret" in key else value) for key, value in config.items()}
