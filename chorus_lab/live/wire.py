"""Reading the four followed topics' records, checking only what a live view uses.

A viewer folds every decision, alert, graph update and metric snapshot of the fleet, in
every open kernel: the generic strict decoder (``schema.decode``, which walks every field
through the type hints) costs about four times the JSON parsing itself. These readers parse
with the project's codec (``schema.load_json``: size limit, UTF-8, no NaN) and then read
and check just the fields the live state needs, raising :class:`~chorus_lab.schema.SchemaError`
with the field's path like the codec does. Timestamps in the codec's canonical form
(``2026-01-01T00:00:00.000000Z``) are kept as text (they sort in time order); any other
ISO-8601 form is parsed and normalized.

>>> read_alert(b'{"alert_id": "a1", "pattern": "anomaly", "severity": "low", "confidence": 0.4,'
...            b' "description": "odd", "affected_agents": ["x"], "evidence": [], "detected_at": "2026-01-01T00:00:00+00:00"}').detected_at
'2026-01-01T00:00:00.000000Z'
>>> read_alert(b'{"alert_id": "a1", "confidence": 2}')
Traceback (most recent call last):
...
chorus_lab.schema.SchemaError: pattern: required field is missing
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from chorus_lab.schema import SchemaError, format_timestamp, load_json, parse_timestamp

_CANONICAL = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")


class EdgeFacts(NamedTuple):
    source: str
    target: str
    relationship: str
    strength: float
    created_at: str
    last_updated: str


class DecisionFacts(NamedTuple):
    agent_id: str
    timestamp: str
    message_id: str
    message_type: str
    action: str
    targets: list[str]
    risk: float
    conflict_type: str
    trust_before: float
    trust_after: float
    trust_delta: float
    intervention: str
    intervention_at: str
    flags: list[str]
    latency_ms: float
    edges: list[EdgeFacts]


class AlertFacts(NamedTuple):
    alert_id: str
    pattern: str
    severity: str
    confidence: float
    description: str
    affected_agents: list[str]
    evidence: int
    detected_at: str


class GraphFacts(NamedTuple):
    update_type: str
    affected_nodes: list[str]
    edges: list[EdgeFacts]
    timestamp: str
    detected_loops: list[list[str]]
    metrics: dict[str, float]


# --------------------------------------------------------------------------- field readers


def _get(obj: dict[str, Any], key: str, path: str) -> Any:
    try:
        return obj[key]
    except KeyError:
        raise SchemaError(path + key, "required field is missing") from None


def _obj(obj: dict[str, Any], key: str, path: str) -> dict[str, Any]:
    value = _get(obj, key, path)
    if not isinstance(value, dict):
        raise SchemaError(path + key, f"expected an object, got {type(value).__name__}")
    return value


def _str(obj: dict[str, Any], key: str, path: str) -> str:
    value = _get(obj, key, path)
    if not isinstance(value, str):
        raise SchemaError(path + key, f"expected a string, got {type(value).__name__}")
    return value


def _num(obj: dict[str, Any], key: str, path: str, low: float = float("-inf"), high: float = float("inf")) -> float:
    value = _get(obj, key, path)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SchemaError(path + key, f"expected a number, got {type(value).__name__}")
    if not low <= value <= high:
        raise SchemaError(path + key, f"must be between {low:g} and {high:g}, got {value}")
    return float(value)


def _strs(obj: dict[str, Any], key: str, path: str) -> list[str]:
    value = _get(obj, key, path)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise SchemaError(path + key, "expected a list of strings")
    return value


def _time(obj: dict[str, Any], key: str, path: str) -> str:
    text = _str(obj, key, path)
    if _CANONICAL.fullmatch(text):
        return text
    return format_timestamp(parse_timestamp(text, path + key))


# Fast paths. Every open kernel reads every decision and graph update, and calling a checking
# helper per field was a third of folding one. These read a record the usual way (JSON's own
# types, canonical timestamps) with inline checks and return None at the first surprise; the
# checked readers then read it again, normalizing or raising with the field's name. So the
# result, or the error, is always the checked readers'.

_NUMBER = frozenset({int, float})
"""JSON numbers as ``json`` parses them (``bool`` is its own type, so it is not one)."""
_canonical = _CANONICAL.fullmatch


def _edge_fast(edge: Any) -> EdgeFacts | None:
    if type(edge) is not dict:
        return None
    get = edge.get
    source, target, kind = get("source_agent"), get("target_agent"), get("relationship_type")
    strength, created, updated = get("strength"), get("created_at"), get("last_updated")
    if (type(source) is str and type(target) is str and type(kind) is str and type(strength) in _NUMBER
            and 0.0 <= strength <= 1.0 and type(created) is str and type(updated) is str
            and _canonical(created) and _canonical(updated)):
        return EdgeFacts(source, target, kind, float(strength), created, updated)
    return None


def _strings(value: Any) -> bool:
    return type(value) is list and all(type(item) is str for item in value)


def _decision_fast(doc: dict[str, Any]) -> DecisionFacts | None:
    message, conflict = doc.get("original_message"), doc.get("conflict_analysis")
    trust, meta = doc.get("trust_impact"), doc.get("processing_metadata")
    if not (type(message) is dict and type(conflict) is dict and type(trust) is dict and type(meta) is dict):
        return None
    if doc.get("intervention_action") is not None:
        return None  # rare: the checked reader
    agent, when, message_id = message.get("agent_id"), message.get("timestamp"), message.get("message_id")
    message_type, targets = message.get("message_type"), message.get("target_agents")
    risk, conflict_type = conflict.get("risk"), conflict.get("conflict_type")
    before, after, delta = trust.get("before"), trust.get("after"), trust.get("delta")
    flags, latency = meta.get("flags", []), meta.get("latency_ms")
    if not (type(agent) is str and type(when) is str and _canonical(when) and type(message_id) is str
            and type(message_type) is str and type(conflict_type) is str and _strings(targets) and _strings(flags)
            and type(risk) in _NUMBER and 0.0 <= risk <= 1.0
            and type(before) in _NUMBER and 0.0 <= before <= 100.0 and type(after) in _NUMBER and 0.0 <= after <= 100.0
            and type(delta) in _NUMBER and type(latency) in _NUMBER and latency >= 0.0):
        return None
    content = message.get("content")
    action_value = content.get("action") if isinstance(content, dict) else None
    return DecisionFacts(
        agent, when, message_id, message_type, "" if action_value is None else str(action_value), targets,
        float(risk), conflict_type, float(before), float(after), float(delta), "", "", flags, float(latency),
        _edges(doc, "causal_relationships", ""),
    )


def _edges(obj: dict[str, Any], key: str, path: str) -> list[EdgeFacts]:
    value = _get(obj, key, path)
    if type(value) is list:
        fast = [_edge_fast(edge) for edge in value]
        if None not in fast:
            return fast  # type: ignore[return-value]  # no None in it
    return _edges_checked(value, key, path)


def _edges_checked(value: Any, key: str, path: str) -> list[EdgeFacts]:
    if not isinstance(value, list):
        raise SchemaError(path + key, f"expected a list, got {type(value).__name__}")
    edges = []
    for i, edge in enumerate(value):
        where = f"{path}{key}[{i}]."
        if not isinstance(edge, dict):
            raise SchemaError(where[:-1], "expected an object")
        edges.append(EdgeFacts(
            _str(edge, "source_agent", where), _str(edge, "target_agent", where), _str(edge, "relationship_type", where),
            _num(edge, "strength", where, 0.0, 1.0), _time(edge, "created_at", where), _time(edge, "last_updated", where),
        ))
    return edges


# --------------------------------------------------------------------------- records


def read_decision(data: bytes | str | dict[str, Any]) -> DecisionFacts:
    """What the live view uses of an ``agent-decisions-processed`` record."""
    doc = load_json(data)
    return _decision_fast(doc) or _decision_checked(doc)


def _decision_checked(doc: dict[str, Any]) -> DecisionFacts:
    message = _obj(doc, "original_message", "")
    conflict = _obj(doc, "conflict_analysis", "")
    trust = _obj(doc, "trust_impact", "")
    meta = _obj(doc, "processing_metadata", "")
    content = message.get("content")
    action_value = content.get("action") if isinstance(content, dict) else None
    intervention = doc.get("intervention_action")
    kind = when = ""
    if intervention is not None:
        if not isinstance(intervention, dict):
            raise SchemaError("intervention_action", f"expected an object or null, got {type(intervention).__name__}")
        kind = _str(intervention, "action", "intervention_action.")
        when = _time(intervention, "timestamp", "intervention_action.")
    return DecisionFacts(
        agent_id=_str(message, "agent_id", "original_message."),
        timestamp=_time(message, "timestamp", "original_message."),
        message_id=_str(message, "message_id", "original_message."),
        message_type=_str(message, "message_type", "original_message."),
        action="" if action_value is None else str(action_value),
        targets=_strs(message, "target_agents", "original_message."),
        risk=_num(conflict, "risk", "conflict_analysis.", 0.0, 1.0),
        conflict_type=_str(conflict, "conflict_type", "conflict_analysis."),
        trust_before=_num(trust, "before", "trust_impact.", 0.0, 100.0),
        trust_after=_num(trust, "after", "trust_impact.", 0.0, 100.0),
        trust_delta=_num(trust, "delta", "trust_impact."),
        intervention=kind,
        intervention_at=when,
        flags=_strs(meta, "flags", "processing_metadata.") if "flags" in meta else [],
        latency_ms=_num(meta, "latency_ms", "processing_metadata.", 0.0),
        edges=_edges(doc, "causal_relationships", ""),
    )


def read_alert(data: bytes | str | dict[str, Any]) -> AlertFacts:
    """What the live view uses of a ``system-alerts`` record."""
    doc = load_json(data)
    evidence = doc.get("evidence", [])
    if not isinstance(evidence, list):
        raise SchemaError("evidence", f"expected a list, got {type(evidence).__name__}")
    return AlertFacts(
        alert_id=_str(doc, "alert_id", ""),
        pattern=_str(doc, "pattern", ""),
        severity=_str(doc, "severity", ""),
        confidence=_num(doc, "confidence", "", 0.0, 1.0),
        description=_str(doc, "description", ""),
        affected_agents=_strs(doc, "affected_agents", ""),
        evidence=len(evidence),
        detected_at=_time(doc, "detected_at", ""),
    )


def read_graph_update(data: bytes | str | dict[str, Any]) -> GraphFacts:
    """What the live view uses of a ``causal-graph-updates`` record."""
    doc = load_json(data)
    metrics = _obj(doc, "graph_metrics", "")
    loops = _get(metrics, "detected_loops", "graph_metrics.")
    if not isinstance(loops, list) or not all(isinstance(loop, list) and all(isinstance(a, str) for a in loop) for loop in loops):
        raise SchemaError("graph_metrics.detected_loops", "expected a list of lists of strings")
    isolated = metrics.get("isolated_nodes", [])
    return GraphFacts(
        update_type=_str(doc, "update_type", ""),
        affected_nodes=_strs(doc, "affected_nodes", ""),
        edges=_edges(doc, "edge_changes", ""),
        timestamp=_time(doc, "timestamp", ""),
        detected_loops=loops,
        metrics={
            "node_count": _num(metrics, "node_count", "graph_metrics.", 0),
            "edge_count": _num(metrics, "edge_count", "graph_metrics.", 0),
            "clustering_coefficient": _num(metrics, "clustering_coefficient", "graph_metrics.", 0.0, 1.0),
            "average_path_length": _num(metrics, "average_path_length", "graph_metrics.", 0.0),
            "isolated_nodes": float(len(isolated)) if isinstance(isolated, list) else 0.0,
        },
    )
