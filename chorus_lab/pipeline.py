"""Stage 1 as a pure core: one agent message (or detection signal) in, its outputs out.

:class:`Stage1` wraps the prediction engine (:mod:`chorus_lab.engine`) for the stream
processor, ``chorus-lab analyze``, replays and tests. It holds one
:class:`~chorus_lab.engine.PredictionEngine` per partition of ``agent-messages-raw``: an
agent's messages all land in the partition its id hashes to, so per-agent state (trust,
quarantine, recent message ids, claims) lives in exactly one engine, and the partitions
can be owned by different processor instances and checkpointed separately.

There is no Kafka, no thread and no clock in here (DESIGN.md, principle 1). The shell
passes where a record came from and when it was read (:class:`RecordMeta`); the only
wall-clock value in an output is ``ProcessedDecision.processing_metadata``, and it comes
from the injected ``clock`` (without one, ``processed_at`` is ``received_at``).

For one agent message :meth:`Stage1.decide` returns a :class:`Stage1Output`:

- the ``ProcessedDecision`` (original message, conflict analysis, trust impact,
  intervention, processing metadata, causal edges), or None for a duplicate
  ``message_id`` of the same agent (counted in ``counters.duplicates``);
- an ``Alert`` (pattern ``quarantine``) for each quarantine or release the message caused.

Stage 2 feeds what it detects back on ``chorus-trust-signals`` as :class:`DetectionSignal`
records (key ``agent_id``, co-partitioned with the raw topic); :meth:`Stage1.apply_signal`
applies one to the agent's engine.

>>> from datetime import datetime, UTC
>>> from chorus_lab.schema import AgentMessage
>>> stage = Stage1(instance_id="doc")
>>> t = datetime(2026, 1, 1, tzinfo=UTC)
>>> m = AgentMessage("a-1", t, "request", {"action": "request_resource", "resource": "gpu"},
...                  ["steward"], "c-1", {}, message_id="m-1")
>>> meta = RecordMeta("agent-messages-raw", partition=3, offset=41, timestamp_ms=1767225600000, key=b"a-1")
>>> out = stage.decide(meta, m)
>>> out.decision.trust_impact.after, out.decision.processing_metadata.offset
(100.0, 41)
>>> stage.decide(meta, m).decision is None, stage.counters.duplicates
(True, 1)
>>> signal = DetectionSignal("a-1", "byzantine", 0.95, ["m-1"], t)
>>> [alert.pattern for alert in stage.apply_signal(3, signal).alerts]
['quarantine']
"""

from __future__ import annotations

import hashlib
import json
import json.encoder
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from functools import lru_cache
from importlib import metadata
from typing import Any, Optional, cast, get_args

from chorus_lab.bus.partitioner import partition_for_key
from chorus_lab.engine import EngineConfig, EngineResult, PredictionEngine, Predictor
from chorus_lab.schema import (
    MAX_MESSAGE_BYTES,
    SCHEMA_VERSION,
    AgentMessage,
    Alert,
    InterventionAction,
    MessageType,
    ProcessedDecision,
    ProcessingMetadata,
    SchemaError,
    TrustScoreUpdate,
    decode,
    decode_agent_message,
    encode,
    format_timestamp,
    parse_timestamp,
    to_dict,
)

STAGE1_VERSION = 1
"""Bumped when stage 1 changes what it decides for the same input."""


def _package_version() -> str:
    try:
        return metadata.version("chorus-lab")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


PIPELINE_VERSION = f"chorus-lab {_package_version()} stage1/v{STAGE1_VERSION}"
"""Written into every decision's ``processing_metadata.pipeline_version``."""


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class RecordMeta:
    """Where an input record came from, and when the shell read it.

    ``timestamp_ms`` is the record's bus timestamp (its append or create time);
    ``received_at`` defaults to that time, so pure callers need no clock.
    """

    topic: str
    partition: int
    offset: int
    timestamp_ms: int = 0
    key: bytes | None = None
    received_at: datetime | None = None

    @property
    def source(self) -> str:
        """``topic/partition/offset``, as dead letters name their source."""
        return f"{self.topic}/{self.partition}/{self.offset}"

    def received(self) -> datetime:
        if self.received_at is not None:
            return self.received_at
        return datetime.fromtimestamp(max(self.timestamp_ms, 0) / 1000, UTC)


@dataclass(frozen=True, slots=True)
class DetectionSignal:
    """What stage 2 learned about an agent, sent back to its owner (``chorus-trust-signals``).

    The record is keyed by ``agent_id`` (murmur2, like the raw topic, so it lands in the
    partition of the agent's own messages) and its value is this object as JSON:

    ``{"agent_id": "agent-7", "pattern": "byzantine", "confidence": 0.95,
    "evidence": ["m-1", "m-9"], "detected_at": "2026-01-01T00:00:05.000000Z",
    "alert_id": "alert-…", "schema_version": 1}``

    ``pattern`` is an ``Alert.pattern`` name (or one of the engine's aliases: ``hoarding``,
    ``loop``, ``cascade``, ``equivocation``); trust falls in proportion to ``confidence``,
    and the same pattern with the same evidence counts once (a redelivered signal is not a
    second penalty). ``alert_id`` (optional) names the alert the signal comes from.

    >>> raw = DetectionSignal("a-1", "anomaly", 0.5, ["m-3"], datetime(2026, 1, 1, tzinfo=UTC)).encode()
    >>> DetectionSignal.decode(raw).confidence
    0.5
    >>> DetectionSignal.decode(b'{"agent_id": "a-1", "pattern": "anomaly", "confidence": 2, "evidence": [],'
    ...                        b' "detected_at": "2026-01-01T00:00:00Z"}')
    Traceback (most recent call last):
    ...
    chorus_lab.schema.SchemaError: confidence: must be between 0 and 1, got 2.0
    """

    agent_id: str
    pattern: str
    confidence: float
    evidence: list[str]
    detected_at: datetime
    alert_id: Optional[str] = None
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.agent_id, str) or not self.agent_id:
            raise SchemaError("agent_id", "must be a non-empty string")
        if not isinstance(self.pattern, str) or not self.pattern:
            raise SchemaError("pattern", "must be a non-empty string")
        if not (isinstance(self.confidence, int | float) and 0.0 <= self.confidence <= 1.0):
            raise SchemaError("confidence", f"must be between 0 and 1, got {self.confidence!r}")
        if self.detected_at.tzinfo is None:
            raise SchemaError("detected_at", "timestamp has no time zone (use UTC, e.g. '...Z')")

    def encode(self) -> bytes:
        return encode(self)

    @classmethod
    def decode(cls, data: bytes | str | dict[str, Any]) -> DetectionSignal:
        """Decode a signal; raises ``SchemaError`` naming the field at fault."""
        return decode(cls, data)


# --------------------------------------------------------------------------- outputs


@dataclass(frozen=True, slots=True)
class Stage1Output:
    """What stage 1 concluded about one agent message."""

    decision: ProcessedDecision | None
    """None when the message was a duplicate (no second decision)."""
    alerts: list[Alert]
    result: EngineResult
    """The engine's full result (warnings included), for callers that want more."""

    @property
    def duplicate(self) -> bool:
        return self.result.duplicate


@dataclass(frozen=True, slots=True)
class SignalOutput:
    """What one detection signal did to its agent."""

    trust: TrustScoreUpdate
    intervention: InterventionAction | None
    alerts: list[Alert]
    duplicate: bool


@dataclass(slots=True)
class Stage1Counters:
    """Running totals (metrics, not state: a restored stage starts them at zero)."""

    decisions: int = 0
    duplicates: int = 0
    signals: int = 0
    duplicate_signals: int = 0
    alerts: int = 0


# --------------------------------------------------------------------------- the core


class Stage1:
    """The prediction pipeline for every partition of the raw topic one owner holds.

    ``engine_config`` and ``predictor`` are handed to each partition's engine;
    ``clock`` (wall clock, injected by the shell) only stamps ``processed_at``.
    """

    def __init__(
        self,
        engine_config: EngineConfig | None = None,
        *,
        instance_id: str = "local",
        predictor: Predictor | None = None,
        clock: Callable[[], datetime] | None = None,
        pipeline_version: str = PIPELINE_VERSION,
    ) -> None:
        self.engine_config = engine_config or EngineConfig()
        self.instance_id = instance_id
        self.predictor = predictor
        self.clock = clock
        self.pipeline_version = pipeline_version
        self.engines: dict[int, PredictionEngine] = {}
        self.counters = Stage1Counters()

    # ------------------------------------------------------------------ partitions

    def engine(self, partition: int) -> PredictionEngine:
        """The engine of ``partition`` (a fresh one the first time)."""
        engine = self.engines.get(partition)
        if engine is None:
            engine = self.engines[partition] = PredictionEngine(self.engine_config, self.predictor)
        return engine

    def partitions(self) -> list[int]:
        return sorted(self.engines)

    def snapshot(self, partition: int) -> dict[str, Any]:
        """The state of one partition as JSON-able data (see ``PredictionEngine.snapshot``)."""
        return {"stage1_version": STAGE1_VERSION, "engine": self.engine(partition).snapshot()}

    def restore(self, partition: int, data: Mapping[str, Any]) -> None:
        """Replace one partition's state with a :meth:`snapshot`."""
        if data.get("stage1_version") != STAGE1_VERSION:
            raise ValueError(f"unsupported stage-1 snapshot version {data.get('stage1_version')!r} (expected {STAGE1_VERSION})")
        engine = PredictionEngine(self.engine_config, self.predictor)
        engine.restore(data["engine"])
        self.engines[partition] = engine

    def drop(self, partition: int) -> PredictionEngine | None:
        """Forget one partition's state (it moved to another owner); return it."""
        return self.engines.pop(partition, None)

    # ------------------------------------------------------------------ inputs

    def decide(self, meta: RecordMeta, message: AgentMessage) -> Stage1Output:
        """Run one agent message through its partition's engine."""
        result = self.engine(meta.partition).process(message)
        if result.duplicate:
            self.counters.duplicates += 1
            return Stage1Output(None, [], result)
        received_at = meta.received()
        processed_at = self.clock() if self.clock is not None else received_at
        latency_ms = max(0.0, processed_at.timestamp() * 1000 - meta.timestamp_ms) if meta.timestamp_ms > 0 else 0.0
        decision = ProcessedDecision(
            original_message=message,
            conflict_analysis=result.conflict,
            trust_impact=result.trust,
            intervention_action=result.intervention,
            processing_metadata=ProcessingMetadata(
                instance_id=self.instance_id,
                pipeline_version=self.pipeline_version,
                topic=meta.topic,
                partition=meta.partition,
                offset=meta.offset,
                received_at=received_at,
                processed_at=processed_at,
                latency_ms=round(latency_ms, 3),
                flags=list(result.flags),
            ),
            causal_relationships=result.edges,
        )
        alerts = intervention_alerts(result.interventions, trigger=message.message_id)
        self.counters.decisions += 1
        self.counters.alerts += len(alerts)
        return Stage1Output(decision, alerts, result)

    def apply_signal(self, partition: int, signal: DetectionSignal) -> SignalOutput:
        """Apply a detection fed back by stage 2 to the agent's engine."""
        result = self.engine(partition).apply_signal(
            signal.agent_id, signal.pattern, float(signal.confidence), signal.evidence, signal.detected_at
        )
        if result.duplicate:
            self.counters.duplicate_signals += 1
            return SignalOutput(result.trust, None, [], True)
        trigger = signal.alert_id or f"{signal.pattern}:{','.join(sorted(set(signal.evidence)))}"
        alerts = intervention_alerts([result.intervention] if result.intervention else [], trigger=trigger)
        self.counters.signals += 1
        self.counters.alerts += len(alerts)
        return SignalOutput(result.trust, result.intervention, alerts, False)


# --------------------------------------------------------------------------- pure helpers


def validate(meta: RecordMeta, message: AgentMessage, partitions: int) -> None:
    """Check that a decoded message sits where its agent's state lives.

    Per-agent state is partitioned with the agents, so a message must be keyed by its
    ``agent_id`` and be in the partition murmur2 gives that key (what every producer
    configured with ``partitioner=murmur2_random`` does). Anything else would split an
    agent's state; it raises ``SchemaError`` naming ``agent_id`` instead.

    >>> m = AgentMessage("a-1", datetime(2026, 1, 1, tzinfo=UTC), "broadcast", {}, [], "c", {})
    >>> validate(RecordMeta("raw", partition_for_key(b"a-1", 6), 0, key=b"a-1"), m, 6)
    >>> validate(RecordMeta("raw", 0, 0, key=b"other"), m, 6)
    Traceback (most recent call last):
    ...
    chorus_lab.schema.SchemaError: agent_id: the record key b'other' is not the agent_id 'a-1'; agent messages must be keyed by agent_id
    """
    key = message.agent_id.encode()
    if meta.key != key:
        raise SchemaError("agent_id", f"the record key {meta.key!r} is not the agent_id {message.agent_id!r}; agent messages must be keyed by agent_id")
    expected = _home_partition(key, partitions)
    if expected != meta.partition:
        raise SchemaError(
            "agent_id",
            f"agent {message.agent_id!r} belongs in partition {expected} of {partitions} (murmur2 of its key), "
            f"but the record is in partition {meta.partition}; produce with partitioner=murmur2_random",
        )


def validate_signal(meta: RecordMeta, signal: DetectionSignal, partitions: int) -> None:
    """The same placement rule for a detection signal: keyed by, and in the partition of, its agent."""
    key = signal.agent_id.encode()
    if meta.key != key or partition_for_key(key, partitions) != meta.partition:
        raise SchemaError(
            "agent_id",
            f"a signal about {signal.agent_id!r} must be keyed by that id and sit in partition "
            f"{partition_for_key(key, partitions)}; got key {meta.key!r} in partition {meta.partition}",
        )


def intervention_alerts(interventions: list[InterventionAction], *, trigger: str) -> list[Alert]:
    """An ``Alert`` (pattern ``quarantine``) for each quarantine or release.

    Throttles and trust alerts stay in the decision only. The alert id is derived from the
    action, the agent and the triggering message (or signal), so a replay gives the same
    id. ``confidence`` reads the trust model as a probability: the beta-reputation score
    is the expected share of good behaviour, so a quarantine's confidence is
    ``1 - trust/100`` and a release's ``trust/100``.

    >>> t = datetime(2026, 1, 1, tzinfo=UTC)
    >>> action = InterventionAction("quarantine", "a-1", "trust 24.0 below 30", t, 24.0)
    >>> alert, = intervention_alerts([action], trigger="m-9")
    >>> alert.severity, alert.confidence, alert.affected_agents
    ('high', 0.76, ['a-1'])
    """
    alerts = []
    for action in interventions:
        if action.action not in ("quarantine", "release"):
            continue
        digest = hashlib.sha256(f"{action.action}|{action.agent_id}|{trigger}".encode()).hexdigest()[:24]
        quarantine = action.action == "quarantine"
        share = action.trust_score / 100.0
        details: dict[str, Any] = {"action": action.action, "trust_score": action.trust_score, "trigger": trigger}
        if action.until is not None:
            details["until"] = format_timestamp(action.until)
        verb = "quarantined" if quarantine else "released from quarantine"
        alerts.append(
            Alert(
                alert_id=f"alert-{digest}",
                pattern="quarantine",
                severity="high" if quarantine else "info",
                confidence=round(min(1.0, max(0.0, 1.0 - share if quarantine else share)), 6),
                description=f"Agent {action.agent_id} {verb} at trust {action.trust_score:.1f}: {action.reason}.",
                affected_agents=[action.agent_id],
                evidence=list(action.evidence),
                detected_at=action.timestamp,
                details=details,
            )
        )
    return alerts


_home_partition = lru_cache(maxsize=1 << 16)(partition_for_key)
"""murmur2 is pure Python; a fleet has few agents, so their partitions are remembered."""



def _timestamp_text(value: datetime) -> str:
    """``schema.format_timestamp(value)``, several times faster for the usual UTC datetime.

    A decision holds five or more timestamps, most of them distinct (``processed_at``
    is read per message), so ``strftime`` was a sizeable share of encoding one. Other
    zones and years before 1000 (where ``%Y`` padding differs between platforms) take
    ``format_timestamp`` itself.

    >>> t = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    >>> _timestamp_text(t) == format_timestamp(t) == "2026-01-02T03:04:05.000006Z"
    True
    """
    if value.tzinfo is not UTC or value.year < 1000:
        return format_timestamp(value)
    return value.isoformat(timespec="microseconds")[:-6] + "Z"  # drop "+00:00"


_MESSAGE_FIELDS = frozenset(f.name for f in fields(AgentMessage))
_MESSAGE_REQUIRED = frozenset(("agent_id", "timestamp", "message_type", "content", "target_agents", "correlation_id", "metadata"))
_MESSAGE_TYPES = frozenset(get_args(MessageType))
# What ``_timestamp_text`` writes; ``fromisoformat`` also reads other texts of this length
# (a space for the T, a decimal comma, a week date), which are not.
_CANONICAL_TIMESTAMP = re.compile(r"[1-9]\d{3}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", re.ASCII)


def decode_message(raw: bytes) -> AgentMessage:
    """``schema.decode_agent_message(raw)``, with a fast path for well-formed input.

    The generic decoder walks the type hints of every field; most input is well formed,
    so this checks the exact shape the wire contract allows and builds the message
    directly. Anything it is not sure of (a missing or extra field, an odd type, bad
    UTF-8, NaN, a bad timestamp) goes to the strict decoder, which gives the same message
    or raises its ``SchemaError`` naming the field: the two never disagree (property-tested).

    >>> decode_message(b'{"agent_id": "a", "timestamp": "2026-01-01T00:00:00Z", "message_type": "broadcast",'
    ...                b' "content": {}, "target_agents": [], "correlation_id": "", "metadata": {}}').agent_id
    'a'
    """
    try:
        message = _well_formed_message(raw)
    except Exception:  # whatever it is, the strict decoder names it
        message = None
    return message if message is not None else decode_agent_message(raw)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# Built once: ``json.loads``/``json.dumps`` with options build a new decoder/encoder per call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_DECISION_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _well_formed_message(raw: bytes) -> AgentMessage | None:
    global _last_sent
    if len(raw) > MAX_MESSAGE_BYTES:
        return None
    text = raw.decode("utf-8")
    # ``decode`` also skips white space around the document with two regular expressions;
    # text with any takes the strict decoder.
    data, end = _DECODER.raw_decode(text)
    if end != len(text) or type(data) is not dict or not data.keys() <= _MESSAGE_FIELDS or not _MESSAGE_REQUIRED <= data.keys():
        return None
    agent_id, timestamp, message_type = data["agent_id"], data["timestamp"], data["message_type"]
    content, targets, correlation_id, meta = data["content"], data["target_agents"], data["correlation_id"], data["metadata"]
    message_id, causation_id = data.get("message_id", ""), data.get("causation_id")
    version = data.get("schema_version", SCHEMA_VERSION)
    if not (
        type(agent_id) is str
        and type(timestamp) is str
        and type(message_type) is str
        and message_type in _MESSAGE_TYPES
        and type(content) is dict
        and type(targets) is list
        and all(type(target) is str for target in targets)
        and type(correlation_id) is str
        and type(meta) is dict
        and type(message_id) is str
        and (causation_id is None or type(causation_id) is str)
        and type(version) is int
        and 1 <= version <= SCHEMA_VERSION
    ):
        return None
    sent = parse_timestamp(timestamp)
    if _CANONICAL_TIMESTAMP.fullmatch(timestamp):  # already the text the decision will write
        _last_sent = (sent, timestamp)
    return AgentMessage(
        agent_id,
        sent,
        message_type,  # type: ignore[arg-type]  # checked against MessageType above
        content,
        targets,
        correlation_id,
        meta,
        message_id=message_id,
        causation_id=causation_id,
        schema_version=version,
    )


def encode_decision(decision: ProcessedDecision) -> bytes:
    """``schema.encode(decision)``, byte for byte, in about a fifth of the time.

    The generic encoder walks every value (including the free-form ``content`` and
    ``metadata``) looking for dataclasses and datetimes; a decision's shape is known, so
    this writes its JSON text directly and leaves only ``content``/``metadata`` to the JSON
    encoder. Anything unusual (a datetime put into ``content`` by Python code, a bool where
    a number belongs, NaN) falls back to the generic encoder, so the result and its errors
    never differ (property-tested against ``schema.encode``).
    """
    try:
        raw = _decision_text(decision).encode()
    except (TypeError, ValueError, UnicodeEncodeError, RecursionError):
        return encode(decision)
    if len(raw) > MAX_MESSAGE_BYTES:
        return encode(decision)  # raises the schema's size error
    return raw


# The JSON encoder's own string escaping (ensure_ascii=False); raises TypeError for a non-str.
_string = cast(Callable[[str], str], json.encoder.encode_basestring)


def _no_default(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# ``_DECISION_ENCODER.encode(obj)`` builds this C encoder anew on every call, which was half
# its cost for the small ``content``/``metadata`` objects. No circular-reference markers:
# a circular object raises RecursionError instead, and the generic encoder reports it.
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_OBJECT_CHUNKS: Callable[[dict[str, Any], int], Sequence[str]] | None = (
    _c_make_encoder(None, _no_default, _string, None, ":", ",", False, False, False) if _c_make_encoder is not None else None
)


def _json_object(value: dict[str, Any]) -> str:
    """``content`` or ``metadata`` as ``_DECISION_ENCODER`` writes it, when it is a plain dict with
    string keys (``to_dict`` would turn other keys into ``str(key)``, which differs)."""
    if type(value) is not dict:
        raise TypeError("not a plain JSON object")
    for key in value:
        if type(key) is not str:
            raise TypeError("not a plain JSON object")
    if _OBJECT_CHUNKS is None:
        return _DECISION_ENCODER.encode(value)
    return "".join(_OBJECT_CHUNKS(value, 0))


def _check_numbers(*values: float) -> None:
    """Raise unless every value is a finite ``float`` or an ``int`` (not a bool): those are
    written with ``repr``, exactly as the JSON encoder writes them."""
    for value in values:
        kind = type(value)
        if kind is float:
            if value - value != 0.0:  # NaN or infinity: the generic encoder raises its error
                raise ValueError("not a finite number")
        elif kind is not int:
            raise TypeError(f"not a number: {value!r}")


def _optional_string(value: str | None) -> str:
    return "null" if value is None else _string(value)


def _strings(values: list[str]) -> str:
    if type(values) is not list:
        raise TypeError("not a list")
    return "[" + ",".join(map(_string, values)) + "]" if values else "[]"


# Two texts a decision usually repeats, each with the datetime it is the text of: the
# timestamp of the message decoded last (the one being decided), and the last
# ``received_at`` written (a batch's decisions share one). Each is read once, as a tuple,
# because another thread may replace it meanwhile; a miss only costs the formatting.
_last_sent: tuple[datetime | None, str] = (None, "")
_last_received: tuple[datetime | None, str] = (None, "")


def _received_text(value: datetime) -> str:
    global _last_received
    last = _last_received
    if last[0] is value:
        return last[1]
    text = _timestamp_text(value)
    _last_received = (value, text)
    return text


def _decision_text(d: ProcessedDecision) -> str:
    """The JSON text of ``to_dict(d)`` with compact separators, field order as declared."""
    m, c, t, meta = d.original_message, d.conflict_analysis, d.trust_impact, d.processing_metadata
    action = d.intervention_action
    sent = m.timestamp
    # Timestamp texts are digits and ``-:.TZ`` only: nothing to escape.
    last_sent = _last_sent
    sent_text = '"' + (last_sent[1] if last_sent[0] is sent else _timestamp_text(sent)) + '"'

    def when(value: datetime) -> str:
        # Trust and edge times are usually the message's own (the same immutable object).
        return sent_text if value is sent else '"' + _timestamp_text(value) + '"'

    _check_numbers(m.schema_version, c.risk, c.confidence, t.before, t.after, t.delta, meta.partition, meta.offset, meta.latency_ms, d.schema_version)
    if action is None:
        action_text = "null"
    else:
        _check_numbers(action.trust_score)
        action_text = (
            f'{{"action":{_string(action.action)},"agent_id":{_string(action.agent_id)},"reason":{_string(action.reason)},'
            f'"timestamp":{when(action.timestamp)},"trust_score":{action.trust_score!r},'
            f'"until":{"null" if action.until is None else when(action.until)},"evidence":{_strings(action.evidence)}}}'
        )
    edges = d.causal_relationships
    if type(edges) is not list:
        raise TypeError("causal_relationships is not a list")
    edge_texts = []
    for e in edges:
        _check_numbers(e.strength)
        edge_texts.append(
            f'{{"source_agent":{_string(e.source_agent)},"target_agent":{_string(e.target_agent)},'
            f'"relationship_type":{_string(e.relationship_type)},"strength":{e.strength!r},'
            f'"created_at":{when(e.created_at)},"last_updated":{when(e.last_updated)}}}'
        )
    return (
        f'{{"original_message":{{"agent_id":{_string(m.agent_id)},"timestamp":{sent_text},"message_type":{_string(m.message_type)},'
        f'"content":{_json_object(m.content)},"target_agents":{_strings(m.target_agents)},'
        f'"correlation_id":{_string(m.correlation_id)},"metadata":{_json_object(m.metadata)},'
        f'"message_id":{_string(m.message_id)},"causation_id":{_optional_string(m.causation_id)},"schema_version":{m.schema_version!r}}},'
        f'"conflict_analysis":{{"risk":{c.risk!r},"confidence":{c.confidence!r},"conflict_type":{_string(c.conflict_type)},'
        f'"reason":{_string(c.reason)},"resource":{_optional_string(c.resource)},"competing_agents":{_strings(c.competing_agents)},'
        f'"predictor":{_string(c.predictor)}}},'
        f'"trust_impact":{{"agent_id":{_string(t.agent_id)},"before":{t.before!r},"after":{t.after!r},"delta":{t.delta!r},'
        f'"reason":{_string(t.reason)},"timestamp":{when(t.timestamp)},"evidence":{_strings(t.evidence)}}},'
        f'"intervention_action":{action_text},'
        f'"processing_metadata":{{"instance_id":{_string(meta.instance_id)},"pipeline_version":{_string(meta.pipeline_version)},'
        f'"topic":{_string(meta.topic)},"partition":{meta.partition!r},"offset":{meta.offset!r},'
        f'"received_at":"{_received_text(meta.received_at)}","processed_at":"{_timestamp_text(meta.processed_at)}",'
        f'"latency_ms":{meta.latency_ms!r},"flags":{_strings(meta.flags)}}},'
        f'"causal_relationships":[{",".join(edge_texts)}],"schema_version":{d.schema_version!r}}}'
    )


def decision_fingerprint(decision: ProcessedDecision) -> dict[str, Any]:
    """The deterministic part of a decision: everything but the wall-clock and host fields.

    Two runs over the same input (live, replayed, recovered after a crash) give equal
    fingerprints; only ``received_at``, ``processed_at``, ``latency_ms`` and
    ``instance_id`` may differ.
    """
    data = to_dict(decision)
    meta = data["processing_metadata"]
    for name in ("received_at", "processed_at", "latency_ms", "instance_id"):
        meta.pop(name, None)
    return data


__all__ = [
    "PIPELINE_VERSION",
    "DetectionSignal",
    "RecordMeta",
    "SignalOutput",
    "Stage1",
    "Stage1Counters",
    "Stage1Output",
    "decision_fingerprint",
    "decode_message",
    "encode_decision",
    "intervention_alerts",
    "validate",
    "validate_signal",
]
