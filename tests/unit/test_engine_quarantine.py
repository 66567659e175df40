"""Quarantine, release after probation, throttle and alert."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from chorus_lab.engine import EngineConfig, QuarantinePolicy
from chorus_lab.schema import TrustScoreUpdate

T0 = datetime(2026, 1, 1, tzinfo=UTC)
MIN = timedelta(minutes=1)


def update(agent: str, before: float, after: float, at: datetime = T0, evidence: list[str] | None = None) -> TrustScoreUpdate:
    return TrustScoreUpdate(agent, before, after, after - before, "test", at, evidence or [])


def test_score_below_threshold_quarantines_with_probation() -> None:
    policy = QuarantinePolicy()
    action = policy.evaluate(update("a", 40.0, 29.9, evidence=["m-1"]))
    assert action is not None
    assert (action.action, action.agent_id, action.trust_score) == ("quarantine", "a", 29.9)
    assert action.until == T0 + 10 * MIN
    assert action.evidence == ["m-1"]
    assert "below the quarantine threshold 30" in action.reason
    assert policy.is_quarantined("a")


def test_score_at_threshold_is_not_quarantined() -> None:
    policy = QuarantinePolicy()
    assert policy.evaluate(update("a", 40.0, 30.0)) is None
    assert not policy.is_quarantined("a")


def test_threshold_is_configurable() -> None:
    policy = QuarantinePolicy(EngineConfig(quarantine_threshold=45.0))
    action = policy.evaluate(update("a", 50.0, 44.0))
    assert action is not None and action.action == "quarantine"


def test_quarantining_twice_is_a_no_op() -> None:
    policy = QuarantinePolicy()
    first = policy.quarantine("a", "first", 20.0, T0)
    assert first is not None
    record = policy.quarantined["a"]
    assert policy.quarantine("a", "second", 10.0, T0 + 5 * MIN) is None
    assert policy.evaluate(update("a", 20.0, 5.0, T0 + 5 * MIN)) is None
    assert policy.evaluate(update("a", 5.0, 5.0, T0 + 6 * MIN), byzantine_confidence=1.0) is None
    assert policy.quarantined["a"] == record  # probation not restarted, reason unchanged


def test_high_confidence_byzantine_quarantines_at_once() -> None:
    policy = QuarantinePolicy()
    assert policy.evaluate(update("a", 100.0, 60.0), byzantine_confidence=0.89) is None
    action = policy.evaluate(update("b", 100.0, 60.0), byzantine_confidence=0.9)
    assert action is not None and action.action == "quarantine"
    assert "Byzantine" in action.reason


def test_release_only_after_probation_and_recovery() -> None:
    policy = QuarantinePolicy()
    policy.quarantine("a", "low trust", 20.0, T0)
    assert policy.evaluate(update("a", 20.0, 90.0, T0 + 9 * MIN)) is None  # recovered, still on probation
    assert policy.evaluate(update("a", 20.0, 50.0, T0 + 11 * MIN)) is None  # probation over, not above 50
    assert policy.is_quarantined("a")
    action = policy.evaluate(update("a", 50.0, 50.1, T0 + 12 * MIN))
    assert action is not None
    assert (action.action, action.trust_score, action.until) == ("release", 50.1, None)
    assert not policy.is_quarantined("a")


def test_release_at_exactly_the_end_of_probation() -> None:
    policy = QuarantinePolicy(EngineConfig(probation_s=60.0, release_threshold=40.0))
    policy.quarantine("a", "low trust", 20.0, T0)
    action = policy.evaluate(update("a", 20.0, 41.0, T0 + MIN))
    assert action is not None and action.action == "release"


def test_alert_when_trust_falls_through_the_alert_level() -> None:
    policy = QuarantinePolicy()
    action = policy.evaluate(update("a", 70.0, 55.0))
    assert action is not None and action.action == "alert"
    assert policy.evaluate(update("a", 55.0, 50.0)) is None  # already below: no repeat
    assert not policy.is_quarantined("a")


def test_throttle_when_rate_exceeds_the_limit() -> None:
    policy = QuarantinePolicy(EngineConfig(throttle_max_messages=3, throttle_window_s=10, throttle_duration_s=30))
    seconds = [0, 1, 2]
    assert all(policy.observe_message("a", T0 + timedelta(seconds=s), 100.0) is None for s in seconds)
    action = policy.observe_message("a", T0 + timedelta(seconds=3), 100.0)
    assert action is not None
    assert (action.action, action.until) == ("throttle", T0 + timedelta(seconds=33))
    assert policy.is_throttled("a", T0 + timedelta(seconds=32))
    # Still too fast, but already throttled: no second action.
    assert policy.observe_message("a", T0 + timedelta(seconds=4), 100.0) is None
    assert not policy.is_throttled("a", T0 + timedelta(seconds=33))


def test_slow_senders_are_never_throttled() -> None:
    policy = QuarantinePolicy(EngineConfig(throttle_max_messages=3, throttle_window_s=10))
    actions = [policy.observe_message("a", T0 + timedelta(seconds=4 * i), 100.0) for i in range(50)]
    assert actions == [None] * 50


def test_snapshot_round_trip() -> None:
    config = EngineConfig(throttle_max_messages=2)
    policy = QuarantinePolicy(config)
    policy.quarantine("a", "low trust", 20.0, T0)
    for s in range(3):
        policy.observe_message("b", T0 + timedelta(seconds=s), 100.0)
    copy = QuarantinePolicy.from_dict(json.loads(json.dumps(policy.to_dict())), config)
    assert copy.to_dict() == policy.to_dict()
    assert copy.is_quarantined("a") and copy.is_throttled("b", T0 + timedelta(seconds=3))
    later = T0 + timedelta(seconds=4)
    assert copy.observe_message("c", later, 90.0) == policy.observe_message("c", later, 90.0)
