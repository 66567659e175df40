"""Wire types and their JSON codec.

The seed's dataclasses (``AgentMessage``, ``ProcessedDecision``, ``CausalGraphUpdate``,
``CausalEdge``, ``GraphMetrics``) keep their field names; the types the seed leaves
undefined (``ConflictAnalysis``, ``TrustScoreUpdate``, ``InterventionAction``,
``ProcessingMetadata``, ``Alert``) are defined here. ``docs/schema.md`` documents every
field with an example.

Encoding is JSON (UTF-8) with UTC ISO-8601 timestamps carrying microseconds. Decoding is
strict: every problem raises :class:`SchemaError` naming the field path and what is wrong.

>>> raw = b'{"agent_id": "a1", "timestamp": "2026-01-01T00:00:00Z", "message_type": "request",'
>>> raw += b' "content": {}, "target_agents": ["a2"], "correlation_id": "c1", "metadata": {}}'
>>> msg = decode_agent_message(raw)
>>> msg.message_id.startswith("m-"), msg.timestamp.isoformat()
(True, '2026-01-01T00:00:00+00:00')
>>> decode_agent_message(b'{"agent_id": 7}')
Traceback (most recent call last):
...
chorus_lab.schema.SchemaError: agent_id: expected a string, got int 7
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Optional, TypeVar, Union

SCHEMA_VERSION = 1
"""Version written by this code; input without a version is read as version 1."""

MAX_MESSAGE_BYTES = 1_000_000
"""Largest encoded message accepted (Kafka's default ``message.max.bytes`` is ~1 MB)."""

MAX_ID_LENGTH = 256
MAX_TARGETS = 10_000

MessageType = Literal["request", "response", "broadcast"]
RelationshipType = Literal["request", "dependency", "conflict"]
ConflictType = Literal["none", "denial", "over_capacity", "contention", "deadlock"]
InterventionKind = Literal["quarantine", "release", "throttle", "alert"]
Severity = Literal["info", "low", "medium", "high", "critical"]
Pattern = Literal[
    "routing_loop",
    "resource_hoarding",
    "communication_cascade",
    "byzantine",
    "anomaly",
    "conflict",
    "quarantine",
]
GraphUpdateType = Literal[
    "node_added",
    "node_updated",
    "node_removed",
    "edge_created",
    "edge_updated",
    "edge_removed",
    "node_quarantined",
    "node_released",
    "loop_detected",
    "metrics",
]


class SchemaError(ValueError):
    """A value that does not match the wire schema.

    ``field`` is the dotted path of the offending field (``"<json>"`` for the document
    itself), ``problem`` says what is wrong with it.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


# --------------------------------------------------------------------------- types


@dataclass(frozen=True, slots=True)
class AgentMessage:
    """One message an agent sends (topic ``agent-messages-raw``, key ``agent_id``)."""

    agent_id: str
    timestamp: datetime
    message_type: MessageType
    content: dict[str, Any]
    target_agents: list[str]
    correlation_id: str
    metadata: dict[str, Any]
    message_id: str = ""
    causation_id: Optional[str] = None
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        _check_id("agent_id", self.agent_id)
        _check_id("correlation_id", self.correlation_id, allow_empty=True)
        _check_aware("timestamp", self.timestamp)
        if len(self.target_agents) > MAX_TARGETS:
            raise SchemaError("target_agents", f"at most {MAX_TARGETS} targets, got {len(self.target_agents)}")
        for i, target in enumerate(self.target_agents):
            if type(target) is not str or not target or len(target) > MAX_ID_LENGTH:  # name the field only when it is wrong
                _check_id(f"target_agents[{i}]", target)
        if self.causation_id is not None:
            _check_id("causation_id", self.causation_id)
        if not self.message_id:
            object.__setattr__(self, "message_id", derive_message_id(self))
        else:
            _check_id("message_id", self.message_id)


@dataclass(frozen=True, slots=True)
class CausalEdge:
    """A directed relationship between two agents, as the causal graph holds it."""

    source_agent: str
    target_agent: str
    relationship_type: RelationshipType
    strength: float
    created_at: datetime
    last_updated: datetime

    def __post_init__(self) -> None:
        _check_id("source_agent", self.source_agent)
        _check_id("target_agent", self.target_agent)
        _check_range("strength", self.strength, 0.0, 1.0)
        _check_aware("created_at", self.created_at)
        _check_aware("last_updated", self.last_updated)


@dataclass(frozen=True, slots=True)
class GraphMetrics:
    """Summary metrics of the causal graph at one moment."""

    node_count: int
    edge_count: int
    clustering_coefficient: float
    average_path_length: float
    detected_loops: list[list[str]]
    isolated_nodes: list[str]

    def __post_init__(self) -> None:
        _check_range("node_count", self.node_count, 0, math.inf)
        _check_range("edge_count", self.edge_count, 0, math.inf)
        _check_range("clustering_coefficient", self.clustering_coefficient, 0.0, 1.0)
        _check_range("average_path_length", self.average_path_length, 0.0, math.inf)


@dataclass(frozen=True, slots=True)
class CausalGraphUpdate:
    """One change to the causal graph (topic ``causal-graph-updates``)."""

    update_type: GraphUpdateType
    affected_nodes: list[str]
    edge_changes: list[CausalEdge]
    graph_metrics: GraphMetrics
    timestamp: datetime
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        _check_aware("timestamp", self.timestamp)


@dataclass(frozen=True, slots=True)
class ConflictAnalysis:
    """The predicted risk that a message (usually a resource request) ends in a conflict."""

    risk: float
    confidence: float
    conflict_type: ConflictType
    reason: str
    resource: Optional[str] = None
    competing_agents: list[str] = field(default_factory=list)
    predictor: str = "ledger-v1"

    def __post_init__(self) -> None:
        _check_range("risk", self.risk, 0.0, 1.0)
        _check_range("confidence", self.confidence, 0.0, 1.0)


@dataclass(frozen=True, slots=True)
class TrustScoreUpdate:
    """A change (possibly zero) of one agent's trust score, with its reason."""

    agent_id: str
    before: float
    after: float
    delta: float
    reason: str
    timestamp: datetime
    evidence: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_id("agent_id", self.agent_id)
        _check_range("before", self.before, 0.0, 100.0)
        _check_range("after", self.after, 0.0, 100.0)
        if not math.isclose(self.after - self.before, self.delta, abs_tol=1e-6):
            raise SchemaError("delta", f"must equal after - before ({self.after - self.before}), got {self.delta}")
        _check_aware("timestamp", self.timestamp)


@dataclass(frozen=True, slots=True)
class InterventionAction:
    """What the pipeline did about an agent: quarantine, release, throttle or alert."""

    action: InterventionKind
    agent_id: str
    reason: str
    timestamp: datetime
    trust_score: float
    until: Optional[datetime] = None
    evidence: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_id("agent_id", self.agent_id)
        _check_aware("timestamp", self.timestamp)
        _check_range("trust_score", self.trust_score, 0.0, 100.0)
        if self.until is not None:
            _check_aware("until", self.until)


@dataclass(frozen=True, slots=True)
class ProcessingMetadata:
    """Where and when a message was processed. The only non-deterministic part of a decision."""

    instance_id: str
    pipeline_version: str
    topic: str
    partition: int
    offset: int
    received_at: datetime
    processed_at: datetime
    latency_ms: float
    flags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_aware("received_at", self.received_at)
        _check_aware("processed_at", self.processed_at)
        _check_range("latency_ms", self.latency_ms, 0.0, math.inf)


@dataclass(frozen=True, slots=True)
class ProcessedDecision:
    """The pipeline's result for one agent message (topic ``agent-decisions-processed``)."""

    original_message: AgentMessage
    conflict_analysis: ConflictAnalysis
    trust_impact: TrustScoreUpdate
    intervention_action: Optional[InterventionAction]
    processing_metadata: ProcessingMetadata
    causal_relationships: list[CausalEdge]
    schema_version: int = SCHEMA_VERSION


@dataclass(frozen=True, slots=True)
class Alert:
    """A detected pattern (topic ``system-alerts``)."""

    alert_id: str
    pattern: Pattern
    severity: Severity
    confidence: float
    description: str
    affected_agents: list[str]
    evidence: list[str]
    detected_at: datetime
    details: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        _check_id("alert_id", self.alert_id)
        _check_range("confidence", self.confidence, 0.0, 1.0)
        _check_aware("detected_at", self.detected_at)
        if not self.description.strip():
            raise SchemaError("description", "must not be empty")


# --------------------------------------------------------------------------- checks


def _check_id(name: str, value: str, *, allow_empty: bool = False) -> None:
    if not isinstance(value, str):
        raise SchemaError(name, f"expected a string, got {_describe(value)}")
    if not value and not allow_empty:
        raise SchemaError(name, "must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise SchemaError(name, f"at most {MAX_ID_LENGTH} characters, got {len(value)}")


def _check_aware(name: str, value: datetime) -> None:
    if value.__class__ is datetime and value.tzinfo is UTC:
        return  # the usual case, checked first: a decision holds half a dozen timestamps
    if not isinstance(value, datetime):
        raise SchemaError(name, f"expected a datetime, got {_describe(value)}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise SchemaError(name, f"timestamp has no time zone: {value.isoformat()} (use UTC, e.g. '...Z')")


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not (low <= value <= high):
        raise SchemaError(name, f"must be between {low} and {high}, got {value!r}")


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def derive_message_id(message: AgentMessage) -> str:
    """A stable id for a message that arrived without one.

    Derived from the message's content, so reading the same file twice yields the same
    ids and a re-sent message is recognised as a duplicate downstream.
    """
    body = {
        "agent_id": message.agent_id,
        "timestamp": format_timestamp(message.timestamp),
        "message_type": message.message_type,
        "content": message.content,
        "target_agents": message.target_agents,
        "correlation_id": message.correlation_id,
        "causation_id": message.causation_id,
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return "m-" + hashlib.sha256(canonical.encode()).hexdigest()[:24]


# --------------------------------------------------------------------------- codec

T = TypeVar("T")


def format_timestamp(value: datetime) -> str:
    """UTC ISO-8601 with microseconds, e.g. ``2026-01-01T00:00:00.000000Z``."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_timestamp(text: str, path: str = "timestamp") -> datetime:
    """Parse an ISO-8601 timestamp that carries a time zone; return it in UTC."""
    try:
        value = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise SchemaError(path, f"not an ISO-8601 timestamp: {text!r}") from None
    if value.tzinfo is None:
        raise SchemaError(path, f"timestamp has no time zone: {text!r} (use UTC, e.g. '...Z')")
    return value.astimezone(UTC)


def to_dict(obj: Any) -> Any:
    """The JSON-ready form of a wire object (dataclasses, datetimes, lists, dicts)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, datetime):
        return format_timestamp(obj)
    if isinstance(obj, list | tuple):
        return [to_dict(item) for item in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj


def encode(obj: Any) -> bytes:
    """Serialize a wire object to compact UTF-8 JSON bytes.

    Raises :class:`SchemaError` when the result is larger than ``MAX_MESSAGE_BYTES`` or
    holds something JSON cannot carry (NaN, infinity, non-string keys of odd types).
    """
    try:
        data = json.dumps(to_dict(obj), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SchemaError("<message>", f"cannot be encoded as JSON: {exc}") from None
    try:
        raw = data.encode()
    except UnicodeEncodeError as exc:
        raise SchemaError("<message>", f"holds text that is not valid Unicode (lone surrogate at position {exc.start})") from None
    if len(raw) > MAX_MESSAGE_BYTES:
        raise SchemaError("<message>", f"encoded size {len(raw)} bytes exceeds the limit of {MAX_MESSAGE_BYTES}")
    return raw


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
"""Made once: ``json.loads`` with ``parse_constant`` builds a decoder on every call, a
sixth of the parsing of a decision (each live kernel parses every record)."""


def load_json(data: bytes | str | dict[str, Any]) -> dict[str, Any]:
    """Parse raw input into a JSON object, or raise :class:`SchemaError` saying why not."""
    if isinstance(data, dict):
        return data
    if isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        if len(raw) > MAX_MESSAGE_BYTES:
            raise SchemaError("<message>", f"size {len(raw)} bytes exceeds the limit of {MAX_MESSAGE_BYTES}")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SchemaError("<bytes>", f"not valid UTF-8 at byte {exc.start}") from None
    elif isinstance(data, str):
        text = data
        if len(text) > MAX_MESSAGE_BYTES:
            raise SchemaError("<message>", f"size {len(text)} characters exceeds the limit of {MAX_MESSAGE_BYTES}")
    else:
        raise SchemaError("<message>", f"expected bytes, str or dict, got {type(data).__name__}")
    try:
        if text.startswith("\ufeff"):  # what json.loads says; the decoder itself does not check
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        value = _DECODER.decode(text)
    except (ValueError, RecursionError) as exc:  # json.JSONDecodeError is a ValueError
        raise SchemaError("<json>", f"invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise SchemaError("<json>", f"expected a JSON object, got {type(value).__name__}")
    return value


def decode(cls: type[T], data: bytes | str | dict[str, Any]) -> T:
    """Decode JSON (bytes, text or an already parsed dict) into the wire type ``cls``.

    >>> decode(CausalEdge, {"source_agent": "a", "target_agent": "b",
    ...     "relationship_type": "request", "strength": 0.5,
    ...     "created_at": "2026-01-01T00:00:00Z", "last_updated": "2026-01-01T00:00:00Z"}).strength
    0.5
    """
    return _from_json(cls, load_json(data), "")


def decode_agent_message(data: bytes | str | dict[str, Any]) -> AgentMessage:
    """Decode an ``AgentMessage``; ``message_id`` and ``schema_version`` may be absent."""
    return decode(AgentMessage, data)


@dataclass(frozen=True, slots=True)
class _FieldSpec:
    name: str
    hint: Any
    required: bool


_SPECS: dict[type, tuple[_FieldSpec, ...]] = {}


def _specs(cls: type) -> tuple[_FieldSpec, ...]:
    specs = _SPECS.get(cls)
    if specs is None:
        hints = typing.get_type_hints(cls)
        specs = tuple(
            _FieldSpec(
                f.name,
                hints[f.name],
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
            )
            for f in dataclasses.fields(cls)
        )
        _SPECS[cls] = specs
    return specs


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _from_json(cls: type[T], obj: Any, path: str) -> T:
    if not isinstance(obj, dict):
        raise SchemaError(path or "<json>", f"expected an object, got {_describe(obj)}")
    specs = _specs(cls)
    known = {spec.name for spec in specs}
    unknown = sorted(set(obj) - known)
    if unknown:
        raise SchemaError(_join(path, unknown[0]), f"unknown field (known fields: {', '.join(sorted(known))})")
    kwargs: dict[str, Any] = {}
    for spec in specs:
        where = _join(path, spec.name)
        if spec.name not in obj:
            if spec.required:
                raise SchemaError(where, "required field is missing")
            continue
        kwargs[spec.name] = _convert(spec.hint, obj[spec.name], where)
    version = kwargs.get("schema_version", SCHEMA_VERSION)
    if "schema_version" in known and not 1 <= version <= SCHEMA_VERSION:
        raise SchemaError(_join(path, "schema_version"), f"unsupported version {version} (this reader knows 1..{SCHEMA_VERSION})")
    try:
        return cls(**kwargs)
    except SchemaError as exc:
        raise SchemaError(_join(path, exc.field), exc.problem) from None


def _convert(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin is Union or origin is types.UnionType:
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if value is None:
            return None
        return _convert(options[0], value, path)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise SchemaError(path, f"must be one of {', '.join(map(repr, allowed))}, got {_describe(value)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise SchemaError(path, f"expected a list, got {_describe(value)}")
        (item_hint,) = typing.get_args(hint)
        return [_convert(item_hint, item, f"{path}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise SchemaError(path, f"expected an object, got {_describe(value)}")
        return value
    if hint is datetime:
        if not isinstance(value, str):
            raise SchemaError(path, f"expected an ISO-8601 timestamp string, got {_describe(value)}")
        return parse_timestamp(value, path)
    if hint is str:
        if not isinstance(value, str):
            raise SchemaError(path, f"expected a string, got {_describe(value)}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise SchemaError(path, f"expected true or false, got {_describe(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(path, f"expected an integer, got {_describe(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SchemaError(path, f"expected a number, got {_describe(value)}")
        return float(value)
    if dataclasses.is_dataclass(hint):
        return _from_json(hint, value, path)
    raise TypeError(f"no JSON conversion for {hint!r} at {path}")  # a bug in this module, not bad input
