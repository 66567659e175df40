"""Trust: beta reputation with ageing, every change explained."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chorus_lab.engine import EngineConfig, TrustModel, TrustSignal
from chorus_lab.schema import TrustScoreUpdate

T0 = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


def test_a_new_agent_starts_at_100() -> None:
    model = TrustModel()
    assert model.score("nobody") == 100.0
    update = model.observe("a", [], T0)
    assert (update.before, update.after, update.delta) == (100.0, 100.0, 0.0)
    assert update.reason == "no trust evidence: 100.0 → 100.0"


def test_detection_lowers_trust_in_proportion_to_confidence() -> None:
    # prior 2, anomaly weight 1: score = 100·2/(2 + confidence)
    full = TrustModel().penalize("a", "anomaly", 1.0, ["m-1"], T0)
    half = TrustModel().penalize("a", "anomaly", 0.5, ["m-1"], T0)
    none = TrustModel().penalize("a", "anomaly", 0.0, ["m-1"], T0)
    assert math.isclose(full.after, 200 / 3)
    assert math.isclose(half.after, 80.0)
    assert none.after == 100.0
    assert full.evidence == ["m-1"]
    assert full.reason == "anomaly: 100.0 → 66.7"
    assert half.reason == "anomaly (confidence 0.50): 100.0 → 80.0"


def test_patterns_have_their_own_weights_and_aliases() -> None:
    byzantine = TrustModel().penalize("a", "byzantine", 0.5, [], T0).after  # weight 4 → 2/(2+2)
    hoarding = TrustModel().penalize("a", "hoarding", 0.5, [], T0).after  # alias, weight 2 → 2/(2+1)
    unknown = TrustModel().penalize("a", "gremlins", 0.5, [], T0).after  # default weight 1 → 2/2.5
    assert math.isclose(byzantine, 50.0)
    assert math.isclose(hoarding, 200 / 3)
    assert math.isclose(unknown, 80.0)


def test_trust_decays_toward_neutral_over_event_time() -> None:
    model = TrustModel()
    model.penalize("a", "anomaly", 1.0, [], T0)  # negative evidence 1 → 66.67
    # One half-life later the evidence is 0.5: 100·2/2.5 = 80.
    assert math.isclose(model.score("a", at=T0 + HOUR), 80.0)
    assert math.isclose(model.score("a", at=T0 + 2 * HOUR), 100 * 2 / 2.25)
    assert model.score("a", at=T0 + 100 * HOUR) > 99.999
    # score(at=...) only looks; observing at that time stores the ageing and says so.
    assert math.isclose(model.score("a"), 200 / 3)
    update = model.observe("a", [], T0 + HOUR)
    assert math.isclose(update.after, 80.0)
    assert update.reason.startswith("evidence aged 1h00m")


def test_events_in_the_past_do_not_wind_the_clock_back() -> None:
    model = TrustModel()
    model.penalize("a", "anomaly", 1.0, [], T0 + HOUR)
    model.penalize("a", "anomaly", 1.0, [], T0)  # a late signal: counted, not aged backwards
    assert math.isclose(model.score("a"), 50.0)
    assert math.isclose(model.score("a", at=T0 + 2 * HOUR), 100 * 2 / 3)


def test_good_behaviour_raises_a_lowered_score() -> None:
    model = TrustModel()
    model.penalize("a", "anomaly", 1.0, [], T0)
    update = model.reward("a", "grant_given", ["m-2"], T0)
    assert math.isclose(update.after, 100 * 2.25 / 3.25)  # α = 2 + 0.25, β = 1
    assert update.delta > 0
    assert update.reason.startswith("grant_given: 66.7 → 69.2")


def test_banked_good_behaviour_is_capped() -> None:
    model = TrustModel(EngineConfig(trust_max_positive=1.0))
    for i in range(100):
        model.reward("a", "timely_release", [f"m-{i}"], T0)
    update = model.penalize("a", "anomaly", 1.0, [], T0)
    assert math.isclose(update.after, 75.0)  # α = 2 + 1 (capped), β = 1


def test_updates_chain_before_to_after() -> None:
    model = TrustModel()
    first = model.penalize("a", "loop", 0.7, ["m-1"], T0)
    second = model.observe("a", [], T0 + HOUR)
    third = model.reward("a", "consistent_claim", ["m-3"], T0 + 2 * HOUR)
    assert second.before == first.after
    assert third.before == second.after


def test_confidence_outside_0_1_is_rejected() -> None:
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="confidence"):
            TrustSignal("anomaly", bad)


def test_snapshot_round_trip_continues_identically() -> None:
    model = TrustModel()
    model.penalize("a", "byzantine", 0.6, ["m-1"], T0)
    model.reward("b", "grant_given", ["m-2"], T0)
    copy = TrustModel.from_dict(json.loads(json.dumps(model.to_dict())))
    later = T0 + timedelta(minutes=17)
    assert copy.penalize("a", "anomaly", 0.3, [], later) == model.penalize("a", "anomaly", 0.3, [], later)


# --------------------------------------------------------------------------- properties

KINDS = ["grant_given", "timely_release", "consistent_claim", "byzantine", "hoarding", "loop", "anomaly", "denied_while_holding", "novel"]
steps = st.lists(
    st.tuples(
        st.sampled_from(["a", "b"]),
        st.lists(st.tuples(st.sampled_from(KINDS), st.floats(0.0, 1.0)), max_size=3),
        st.floats(-600, 7200),  # seconds since the previous step; negative = out of order
    ),
    max_size=40,
)


def run(model: TrustModel, plan: list[tuple[str, list[tuple[str, float]], float]]) -> list[TrustScoreUpdate]:
    updates = []
    now = T0
    for agent, signals, gap in plan:
        now += timedelta(seconds=gap)
        updates.append(model.observe(agent, [TrustSignal(kind, conf, (f"e{i}",)) for i, (kind, conf) in enumerate(signals)], now))
    return updates


@settings(max_examples=200, deadline=None)
@given(steps)
def test_trust_stays_within_0_100_and_delta_is_after_minus_before(plan: list[tuple[str, list[tuple[str, float]], float]]) -> None:
    model = TrustModel()
    last: dict[str, float] = {}
    for update in run(model, plan):
        assert 0.0 <= update.before <= 100.0
        assert 0.0 <= update.after <= 100.0
        assert update.delta == update.after - update.before
        assert update.before == last.get(update.agent_id, 100.0)
        last[update.agent_id] = update.after


@settings(max_examples=150, deadline=None)
@given(steps)
def test_trust_is_deterministic(plan: list[tuple[str, list[tuple[str, float]], float]]) -> None:
    assert run(TrustModel(), plan) == run(TrustModel(), plan)


@settings(max_examples=150, deadline=None)
@given(steps, st.sampled_from(["byzantine", "anomaly", "hoarding"]), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_more_confident_detections_lower_trust_more(
    plan: list[tuple[str, list[tuple[str, float]], float]], pattern: str, x: float, y: float
) -> None:
    low, high = sorted((x, y))
    at = T0 + timedelta(days=30)
    after_low = TrustModel()
    after_high = TrustModel()
    run(after_low, plan)
    run(after_high, plan)
    assert after_high.penalize("a", pattern, high, [], at).after <= after_low.penalize("a", pattern, low, [], at).after
