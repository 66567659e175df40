"""The resource ledger: content conventions applied, bad values reported, never a crash."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from chorus_lab.engine import EngineConfig, ResourceLedger, parse_content
from chorus_lab.schema import AgentMessage

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def msg(sender: str, targets: list[str], dt: float = 0.0, mid: str = "", **content: Any) -> AgentMessage:
    return AgentMessage(sender, T0 + timedelta(seconds=dt), "request", content, targets, "c-1", {}, message_id=mid)


def request(ledger: ResourceLedger, agent: str, resource: str = "gpu", dt: float = 0.0, **extra: Any) -> None:
    ledger.apply(msg(agent, ["steward"], dt, action="request_resource", resource=resource, **extra))


# --------------------------------------------------------------------------- conventions


def test_request_is_pending_with_default_amount_and_priority() -> None:
    ledger = ResourceLedger()
    ledger.apply(msg("a", ["steward"], mid="m-7", action="request_resource", resource="gpu"))
    pending = ledger.pending("gpu")
    assert list(pending) == ["a"]
    assert (pending["a"].amount, pending["a"].priority, pending["a"].message_id) == (1.0, 5.0, "m-7")
    assert ledger.holders("gpu") == {}


def test_a_new_request_replaces_the_earlier_one() -> None:
    ledger = ResourceLedger()
    request(ledger, "a", amount=2)
    request(ledger, "a", amount=5, priority=9)
    assert (ledger.pending("gpu")["a"].amount, ledger.pending("gpu")["a"].priority) == (5.0, 9.0)


def test_grant_moves_the_pending_amount_into_holdings() -> None:
    ledger = ResourceLedger()
    request(ledger, "a", amount=3)
    update = ledger.apply(msg("steward", ["a"], action="grant", resource="gpu"))
    assert update.granted == ["a"]
    assert ledger.holders("gpu") == {"a": 3.0}
    assert ledger.pending("gpu") == {}
    assert ledger.waiting_for("a") == []


def test_grant_with_an_amount_overrides_the_request() -> None:
    ledger = ResourceLedger()
    request(ledger, "a", amount=3)
    ledger.apply(msg("steward", ["a"], action="grant", resource="gpu", amount=2))
    assert ledger.holders("gpu") == {"a": 2.0}


def test_grant_beyond_capacity_is_recorded_and_warned() -> None:
    ledger = ResourceLedger()
    ledger.apply(msg("steward", [], resource="gpu", capacity=2))
    request(ledger, "a", amount=3)
    update = ledger.apply(msg("steward", ["a"], action="grant", resource="gpu"))
    assert ledger.holders("gpu") == {"a": 3.0}
    assert any("beyond its capacity (3 of 2)" in w for w in update.warnings)


def test_unsolicited_grant_is_warned() -> None:
    ledger = ResourceLedger()
    update = ledger.apply(msg("steward", ["b"], action="grant", resource="gpu"))
    assert ledger.holders("gpu") == {"b": 1.0}
    assert update.warnings == ["grant of gpu to b, which has no pending request"]


def test_deny_clears_pending_and_counts_a_denial() -> None:
    ledger = ResourceLedger()
    request(ledger, "a")
    request(ledger, "a", dt=1)
    ledger.apply(msg("steward", ["a"], action="deny", resource="gpu"))
    request(ledger, "a", dt=2)
    update = ledger.apply(msg("steward", ["a"], action="deny", resource="gpu"))
    assert update.denied == ["a"]
    assert ledger.pending("gpu") == {}
    assert ledger.denials("gpu", "a") == 2


def test_release_partial_then_all() -> None:
    ledger = ResourceLedger()
    request(ledger, "a", amount=4)
    ledger.apply(msg("steward", ["a"], action="grant", resource="gpu"))
    first = ledger.apply(msg("a", [], 30, action="release", resource="gpu", amount=1))
    assert (first.released, first.held_for_s) == (1.0, 30.0)
    assert ledger.holders("gpu") == {"a": 3.0}
    rest = ledger.apply(msg("a", [], 90, action="release", resource="gpu"))
    assert (rest.released, rest.held_for_s) == (3.0, 90.0)
    assert ledger.holders("gpu") == {}


def test_release_of_more_than_held_releases_what_is_held_and_warns() -> None:
    ledger = ResourceLedger()
    ledger.apply(msg("a", [], action="hold", resource="gpu", amount=2))
    update = ledger.apply(msg("a", [], action="release", resource="gpu", amount=5))
    assert update.released == 2.0
    assert update.warnings == ["a released 5 of gpu but held only 2"]
    assert ledger.holders("gpu") == {}


def test_capacity_is_announced_or_defaults() -> None:
    ledger = ResourceLedger(EngineConfig(default_capacity=7))
    assert (ledger.capacity("gpu"), ledger.capacity_known("gpu")) == (7.0, False)
    ledger.apply(msg("steward", [], action="status", resource="gpu", capacity=3))
    assert (ledger.capacity("gpu"), ledger.capacity_known("gpu")) == (3.0, True)


def test_stale_requests_expire() -> None:
    ledger = ResourceLedger(EngineConfig(pending_ttl_s=60))
    request(ledger, "a")
    later = T0 + timedelta(seconds=61)
    assert ledger.pending("gpu", later) == {}
    assert ledger.waiting_for("a", later) == []
    assert list(ledger.pending("gpu", T0 + timedelta(seconds=59))) == ["a"]


# --------------------------------------------------------------------------- quarantine


def test_request_from_a_quarantined_agent_is_refused() -> None:
    ledger = ResourceLedger()
    ledger.set_quarantined("q", True)
    update = ledger.apply(msg("q", ["steward"], action="request_resource", resource="gpu"))
    assert update.refused == ["q"]
    assert ledger.pending("gpu") == {}
    assert ledger.refusals("gpu", "q") == 1


def test_grant_to_a_quarantined_agent_is_refused() -> None:
    ledger = ResourceLedger()
    request(ledger, "a", amount=2)
    request(ledger, "q", amount=2)
    ledger.set_quarantined("q", True)  # quarantined after it asked
    update = ledger.apply(msg("steward", ["q", "a"], action="grant", resource="gpu"))
    assert (update.granted, update.refused) == (["a"], ["q"])
    assert ledger.holders("gpu") == {"a": 2.0}
    assert ledger.pending("gpu") == {}


def test_released_agent_can_be_granted_again() -> None:
    ledger = ResourceLedger()
    ledger.set_quarantined("q", True)
    ledger.set_quarantined("q", False)
    request(ledger, "q")
    ledger.apply(msg("steward", ["q"], action="grant", resource="gpu"))
    assert ledger.holders("gpu") == {"q": 1.0}


# --------------------------------------------------------------------------- bad input


def test_unknown_keys_and_actions_are_ignored_silently() -> None:
    ledger = ResourceLedger()
    update = ledger.apply(msg("a", ["b"], action="dance", resource="gpu", colour="red", amount=1))
    assert update.warnings == []
    assert ledger.pending("gpu") == {}


def test_bad_values_void_the_action_and_are_reported() -> None:
    ledger = ResourceLedger()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"amount": -1}, "content.amount"),
        ({"amount": "3"}, "content.amount"),
        ({"amount": True}, "content.amount"),
        ({"amount": float("nan")}, "content.amount"),
        ({"priority": 11}, "content.priority"),
        ({"priority": -0.5}, "content.priority"),
        ({"resource": 42}, "content.resource"),
    ]
    for extra, key in cases:
        content = {"action": "request_resource", "resource": "gpu", **extra}
        update = ledger.apply(msg("a", ["steward"], **content))
        assert update.warnings[0].startswith(key + ":"), (extra, update.warnings)
        assert "ignored" in update.warnings[-1]
    assert ledger.pending("gpu") == {}


def test_bad_capacity_is_reported_and_ignored() -> None:
    ledger = ResourceLedger()
    update = ledger.apply(msg("s", [], resource="gpu", capacity=0))
    assert update.warnings == ["content.capacity: must be greater than 0 and at most 1e+12, got 0 (ignored)"]
    assert ledger.capacity_known("gpu") is False


def test_content_that_is_not_an_object_is_reported() -> None:
    facts, warnings = parse_content(["not", "a", "dict"])
    assert facts.action is None
    assert warnings == ["content: expected an object, got list (ignored)"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**15), 10**15) | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)
conventional = st.fixed_dictionaries(
    {},
    optional={
        "action": st.sampled_from(["request_resource", "grant", "deny", "release", "hold", "claim", "x"]) | json_values,
        "resource": st.sampled_from(["gpu", "disk"]) | json_values,
        "amount": st.floats(-5, 20) | json_values,
        "priority": st.integers(-2, 12) | json_values,
        "capacity": st.floats(-5, 20) | json_values,
        "claim": json_values,
        "extra": json_values,
    },
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.lists(st.sampled_from(["a", "b", "c"]), max_size=3), conventional), max_size=25))
def test_any_content_never_crashes_and_keeps_the_ledger_sane(steps: list[tuple[str, list[str], dict[str, Any]]]) -> None:
    ledger = ResourceLedger()
    for i, (sender, targets, content) in enumerate(steps):
        update = ledger.apply(msg(sender, targets, float(i), **content))
        assert all(isinstance(w, str) and w for w in update.warnings)
    for name in ledger.resources:
        assert all(amount > 0 for amount in ledger.holders(name).values())
        assert ledger.capacity(name) > 0
    data = ledger.to_dict()
    text = json.dumps(data, allow_nan=False)  # strict JSON: no NaN or infinity sneaks in
    assert ResourceLedger.from_dict(json.loads(text)).to_dict() == data
