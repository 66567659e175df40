"""Reading the conventions inside ``AgentMessage.content``.

Agents may put anything in ``content``. The keys below have a meaning (REQUIREMENTS.md,
"Conventions inside content"); unknown keys are ignored, and a known key with a bad value
is ignored *and reported* as a warning naming the key, so a bad message never stops the
pipeline.

>>> facts, warnings = parse_content({"action": "request_resource", "resource": "gpu",
...                                  "amount": 2, "priority": 11, "colour": "red"})
>>> facts.action, facts.resource, facts.amount, facts.priority
('request_resource', 'gpu', 2.0, None)
>>> warnings, sorted(facts.bad)
(['content.priority: must be within 0–10, got 11 (ignored)'], ['priority'])
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

Action = Literal[
    "request_resource",
    "grant",
    "deny",
    "release",
    "hold",
    "delegate",
    "forward",
    "claim",
    "status",
    "result",
]
ACTIONS: frozenset[str] = frozenset(get_args(Action))

MAX_AMOUNT = 1e12

_NOTHING_BAD: frozenset[str] = frozenset()
"""The ``bad`` of almost every message: shared instead of built from no warnings each time."""


@dataclass(frozen=True, slots=True)
class Claim:
    """A statement of fact: ``value_json`` is the canonical JSON of the claimed value."""

    key: str
    value_json: str


@dataclass(frozen=True, slots=True)
class ContentFacts:
    """The recognised, valid parts of a message's content (None where absent or bad)."""

    action: Action | None = None
    resource: str | None = None
    amount: float | None = None
    priority: float | None = None
    capacity: float | None = None
    task_id: str | None = None
    claim: Claim | None = None
    bad: frozenset[str] = frozenset()
    """Known keys whose value was present but unusable (each also has a warning)."""


def parse_content(content: Any, *, max_amount: float = MAX_AMOUNT) -> tuple[ContentFacts, list[str]]:
    """Extract the conventional keys from ``content``; return the facts and warnings.

    Never raises. An unknown ``action`` string is not an error (agents may have their own
    vocabulary); a non-string one is.
    """
    if not isinstance(content, dict):
        return ContentFacts(), [f"content: expected an object, got {type(content).__name__} (ignored)"]
    warnings: list[str] = []

    action: Action | None = None
    raw_action = content.get("action")
    if raw_action is not None:
        if not isinstance(raw_action, str):
            warnings.append(f"content.action: expected a string, got {_show(raw_action)} (ignored)")
        elif raw_action in ACTIONS:
            action = raw_action  # type: ignore[assignment]

    resource = _text(content, "resource", warnings)
    task_id = _text(content, "task_id", warnings)
    amount = _number(content, "amount", warnings, low=0.0, high=max_amount, low_open=True)
    priority = _number(content, "priority", warnings, low=0.0, high=10.0)
    capacity = _number(content, "capacity", warnings, low=0.0, high=max_amount, low_open=True)
    claim = _claim(content, warnings)
    # Every warning starts with "content.<key>", so the bad keys are read off the warnings.
    bad = frozenset(w.split(":", 1)[0].split(".")[1] for w in warnings) if warnings else _NOTHING_BAD
    facts = ContentFacts(action, resource, amount, priority, capacity, task_id, claim, bad)
    return facts, warnings


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _text(content: dict[str, Any], key: str, warnings: list[str]) -> str | None:
    value = content.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        warnings.append(f"content.{key}: expected a non-empty string, got {_show(value)} (ignored)")
        return None
    return value


def _number(
    content: dict[str, Any],
    key: str,
    warnings: list[str],
    *,
    low: float,
    high: float,
    low_open: bool = False,
) -> float | None:
    if key not in content or content[key] is None:
        return None
    value = content[key]
    # bool is an int in Python, but `"amount": true` is a mistake, not the number 1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        warnings.append(f"content.{key}: expected a number, got {_show(value)} (ignored)")
        return None
    number = float(value)
    if not math.isfinite(number):
        warnings.append(f"content.{key}: must be finite, got {_show(value)} (ignored)")
        return None
    too_low = number <= low if low_open else number < low
    if too_low or number > high:
        if key == "priority":
            bounds = "within 0–10"
        else:
            bounds = f"greater than 0 and at most {high:g}"
        warnings.append(f"content.{key}: must be {bounds}, got {_show(value)} (ignored)")
        return None
    return number


def _claim(content: dict[str, Any], warnings: list[str]) -> Claim | None:
    raw = content.get("claim")
    if raw is None:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("key"), str) or "value" not in raw:
        warnings.append(f"content.claim: expected {{'key': str, 'value': ...}}, got {_show(raw)} (ignored)")
        return None
    try:
        # Canonical JSON, so equal values compare equal however their dict keys are ordered.
        value_json = json.dumps(raw["value"], sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        warnings.append("content.claim.value: not representable as JSON (ignored)")
        return None
    return Claim(raw["key"], value_json)
