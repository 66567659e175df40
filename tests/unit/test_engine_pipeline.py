"""The prediction pipeline end to end: scenarios, determinism, checkpoints."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from chorus_lab.engine import EngineConfig, EngineResult, PredictionEngine, SignalResult
from chorus_lab.engine.ledger import LedgerView
from chorus_lab.schema import AgentMessage, ConflictAnalysis, ProcessedDecision, ProcessingMetadata, decode, encode

T0 = datetime(2026, 1, 1, tzinfo=UTC)
MIN = timedelta(minutes=1)


def msg(sender: str, targets: list[str], mid: str, at: datetime = T0, **content: Any) -> AgentMessage:
    return AgentMessage(sender, at, "request", content, targets, "c-1", {}, message_id=mid)


# --------------------------------------------------------------------------- scenarios


def test_duplicate_message_changes_nothing() -> None:
    engine = PredictionEngine()
    first = engine.process(msg("a", ["s"], "m-1", action="request_resource", resource="gpu", amount=2))
    state = engine.snapshot()
    again = engine.process(msg("a", ["s"], "m-1", T0 + MIN, action="request_resource", resource="gpu", amount=2))
    assert not first.duplicate
    assert again.duplicate
    assert (again.edges, again.interventions, again.flags) == ([], [], ["duplicate"])
    assert again.trust.delta == 0.0
    assert engine.snapshot() == state


def test_same_id_from_another_agent_is_not_a_duplicate() -> None:
    engine = PredictionEngine()
    engine.process(msg("a", ["s"], "m-1"))
    assert not engine.process(msg("b", ["s"], "m-1")).duplicate


def test_dedup_window_is_bounded() -> None:
    engine = PredictionEngine(EngineConfig(dedup_window=2))
    for mid in ("m-1", "m-2", "m-3"):
        engine.process(msg("a", [], mid))
    assert engine.process(msg("a", [], "m-1")).duplicate is False  # forgotten
    assert engine.process(msg("a", [], "m-3")).duplicate is True


def test_quarantined_agents_request_is_not_granted_and_is_flagged() -> None:
    engine = PredictionEngine()
    signal = engine.apply_signal("q", "byzantine", 0.95, ["m-0"], T0)
    assert signal.intervention is not None and signal.intervention.action == "quarantine"
    result = engine.process(msg("q", ["steward"], "m-1", T0 + MIN, action="request_resource", resource="gpu"))
    assert (result.conflict.risk, result.conflict.conflict_type) == (1.0, "denial")
    assert result.flags == ["quarantined", "refused"]
    grant = engine.process(msg("steward", ["q"], "m-2", T0 + MIN, action="grant", resource="gpu"))
    assert "refused" in grant.flags
    assert engine.state.ledger.holders("gpu") == {}
    assert grant.trust.delta == 0.0  # a refused grant is not a grant given


def test_double_quarantine_is_a_no_op() -> None:
    engine = PredictionEngine()
    first = engine.apply_signal("a", "byzantine", 0.95, ["m-1"], T0)
    assert first.intervention is not None
    record = engine.state.quarantine.quarantined["a"]
    # The same finding re-sent: no second penalty, no second quarantine.
    same = engine.apply_signal("a", "byzantine", 0.95, ["m-1"], T0 + MIN)
    assert same == SignalResult(same.trust, None, True)
    assert (same.trust.before, same.trust.after) == (first.trust.after, first.trust.after)
    # A new finding lowers trust by its own evidence, but does not quarantine again.
    new = engine.apply_signal("a", "byzantine", 0.99, ["m-2"], T0 + 2 * MIN)
    assert new.intervention is None
    assert engine.state.quarantine.quarantined["a"] == record


def test_release_after_probation_when_trust_recovered() -> None:
    engine = PredictionEngine(EngineConfig(trust_half_life_s=600.0))
    quarantine = engine.apply_signal("a", "byzantine", 1.0, ["m-0"], T0)  # 100·2/6 = 33.3
    assert quarantine.intervention is not None and quarantine.intervention.action == "quarantine"
    # 5 minutes later: evidence aged by 2^-0.5 → 100·2/(2 + 4/√2) ≈ 41.4, and still on probation.
    early = engine.process(msg("a", [], "m-1", T0 + 5 * MIN))
    assert math.isclose(early.trust.after, 200 / (2 + 4 / math.sqrt(2)))
    assert early.intervention is None and early.flags == ["quarantined"]
    # 10 minutes: probation over, evidence 2 → score exactly 50, not above the release threshold.
    on_time = engine.process(msg("a", [], "m-2", T0 + 10 * MIN))
    assert math.isclose(on_time.trust.after, 50.0) and on_time.intervention is None
    # 20 minutes: evidence 1 → 66.7 → released.
    later = engine.process(msg("a", ["s"], "m-3", T0 + 20 * MIN, action="request_resource", resource="gpu"))
    assert later.intervention is not None and later.intervention.action == "release"
    assert later.flags == ["quarantined", "refused"]  # it was quarantined when the message arrived...
    assert engine.state.ledger.pending("gpu") == {}  # ...so that request was refused
    after = engine.process(msg("a", ["s"], "m-4", T0 + 21 * MIN, action="request_resource", resource="gpu"))
    assert after.flags == [] and list(engine.state.ledger.pending("gpu")) == ["a"]


def test_low_trust_from_repeated_detections_quarantines() -> None:
    engine = PredictionEngine()
    results = [engine.apply_signal("a", "hoarding", 0.8, [f"m-{i}"], T0) for i in range(3)]
    # hoarding weight 2 → evidence 1.6 each: 55.6, 38.5, 29.4
    assert [r.intervention.action if r.intervention else None for r in results] == ["alert", None, "quarantine"]
    assert math.isclose(results[-1].trust.after, 200 / 6.8)


def test_behaviour_moves_the_senders_trust() -> None:
    engine = PredictionEngine()
    engine.apply_signal("s", "anomaly", 1.0, ["x"], T0)  # 66.7, so gains are visible
    engine.process(msg("a", ["s"], "m-1", action="request_resource", resource="gpu"))
    grant = engine.process(msg("s", ["a"], "m-2", action="grant", resource="gpu"))
    assert grant.trust.delta > 0 and grant.trust.reason.startswith("grant_given")
    engine.process(msg("s", [], "m-3", action="hold", resource="disk", amount=1))
    engine.process(msg("b", ["s"], "m-4", action="request_resource", resource="disk"))
    deny = engine.process(msg("s", ["b"], "m-5", action="deny", resource="disk"))
    assert deny.trust.delta < 0 and deny.trust.reason.startswith("denied_while_holding")
    release = engine.process(msg("a", [], "m-6", T0 + MIN, action="release", resource="gpu"))
    assert release.trust.reason.startswith("timely_release")


def test_repeated_consistent_claims_count_as_good_behaviour() -> None:
    engine = PredictionEngine()
    engine.apply_signal("a", "anomaly", 1.0, ["x"], T0)
    claim: dict[str, Any] = {"action": "claim", "claim": {"key": "temp", "value": {"c": 20, "unit": "C"}}}
    first = engine.process(msg("a", ["b"], "m-1", **claim))
    assert first.trust.delta == 0.0
    same: dict[str, Any] = {"action": "claim", "claim": {"key": "temp", "value": {"unit": "C", "c": 20}}}
    second = engine.process(msg("a", ["c"], "m-2", **same))
    assert second.trust.delta > 0 and second.trust.reason.startswith("consistent_claim")
    changed: dict[str, Any] = {"action": "claim", "claim": {"key": "temp", "value": 25}}
    assert engine.process(msg("a", ["c"], "m-3", **changed)).trust.delta == 0.0


def test_causal_edges_one_per_distinct_target() -> None:
    engine = PredictionEngine()
    request = engine.process(msg("a", ["s", "b", "s", "a"], "m-1", action="request_resource", resource="gpu"))
    assert [(e.source_agent, e.target_agent, e.relationship_type, e.strength) for e in request.edges] == [
        ("a", "s", "request", 0.5),
        ("a", "b", "request", 0.5),
    ]
    assert all(e.created_at == e.last_updated == T0 for e in request.edges)
    hand_off = engine.process(msg("a", ["c"], "m-2", action="delegate", task_id="t-1"))
    assert [(e.relationship_type, e.strength) for e in hand_off.edges] == [("dependency", 0.7)]
    engine.process(msg("h", [], "m-3", action="hold", resource="lock", amount=1, capacity=1))
    contested = engine.process(msg("a", ["s"], "m-4", action="request_resource", resource="lock"))
    assert contested.conflict.risk >= 0.7
    assert [(e.relationship_type, e.strength) for e in contested.edges] == [("conflict", 0.9)]
    assert engine.process(msg("a", [], "m-5", action="forward")).edges == []


def test_edge_strength_comes_from_the_config() -> None:
    config = EngineConfig(edge_strength={"request": 0.1, "dependency": 0.2, "conflict": 0.3})
    result = PredictionEngine(config).process(msg("a", ["b"], "m-1", action="forward"))
    assert result.edges[0].strength == 0.2


def test_throttle_is_reported_as_an_intervention() -> None:
    engine = PredictionEngine(EngineConfig(throttle_max_messages=2, throttle_window_s=60))
    results = [engine.process(msg("a", [], f"m-{i}", T0 + timedelta(seconds=i))) for i in range(3)]
    assert [r.intervention.action if r.intervention else None for r in results] == [None, None, "throttle"]
    assert results[-1].flags == ["throttled"]


def test_bad_content_is_reported_not_raised() -> None:
    engine = PredictionEngine()
    result = engine.process(msg("a", ["s"], "m-1", action=["x"], resource="", amount="lots", priority=99, claim=3))
    assert not result.duplicate
    assert "content_warning" in result.flags
    keys = sorted(w.split(":")[0] for w in result.warnings)
    assert keys == ["content.action", "content.amount", "content.claim", "content.priority", "content.resource"]


def test_a_custom_predictor_plugs_in() -> None:
    class Cautious:
        def predict(self, message: AgentMessage, ledger: LedgerView) -> ConflictAnalysis:
            return ConflictAnalysis(0.8, 0.4, "contention", "always cautious", None, [], "cautious-v0")

    result = PredictionEngine(predictor=Cautious()).process(msg("a", ["b"], "m-1", action="request_resource", resource="gpu"))
    assert result.conflict.predictor == "cautious-v0"
    assert result.edges[0].relationship_type == "conflict"


def test_result_fits_the_wire_decision() -> None:
    engine = PredictionEngine()
    engine.apply_signal("a", "byzantine", 0.95, ["m-0"], T0)
    message = msg("a", ["s"], "m-1", T0 + MIN, action="request_resource", resource="gpu")
    result = engine.process(message)
    meta = ProcessingMetadata("i-1", "0.1.0", "agent-messages-raw", 0, 5, T0, T0, 0.0, result.flags)
    decision = ProcessedDecision(message, result.conflict, result.trust, result.intervention, meta, result.edges)
    assert decode(ProcessedDecision, encode(decision)) == decision


# --------------------------------------------------------------------------- properties

AGENTS = ["a", "b", "s"]
amounts = st.one_of(st.floats(0.1, 12), st.sampled_from([-1, 0, "2", None, True, float("inf")]))
content = st.fixed_dictionaries(
    {
        "action": st.sampled_from(
            ["request_resource"] * 3 + ["grant"] * 2 + ["deny", "release", "hold", "delegate", "forward", "claim", "status", "chat"]
        ),
        "resource": st.sampled_from(["gpu", "lock"]),
    },
    optional={
        "amount": amounts,
        "priority": st.one_of(st.integers(0, 10), st.sampled_from([-3, 11, "high"])),
        "capacity": st.one_of(st.sampled_from([1, 2, 5, 10]), st.sampled_from([0, -4])),
        "claim": st.fixed_dictionaries({"key": st.sampled_from(["k1", "k2"]), "value": st.integers(0, 2)}),
    },
)
gaps = st.sampled_from([0, 0, 1, 1, 5, 30, 120, 400, 1800])  # seconds after the previous event: bursts and lulls
message_op = st.tuples(
    st.just("msg"),
    st.sampled_from(AGENTS),
    st.lists(st.sampled_from(AGENTS), max_size=3),
    content,
    gaps,
    st.integers(0, 15),  # message number: a repeat from the same agent is a duplicate
)
signal_op = st.tuples(
    st.just("signal"),
    st.sampled_from(AGENTS),
    st.sampled_from(["byzantine", "byzantine", "hoarding", "loop", "anomaly", "communication_cascade"]),
    st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.9, 1.0])),
    gaps,
    st.lists(st.sampled_from(["e1", "e2", "e3", "e4"]), max_size=2),
)
plans = st.lists(st.one_of(message_op, message_op, message_op, signal_op), min_size=15, max_size=60)

# Small capacities and fast thresholds, so conflicts, quarantine, release and throttle all
# happen within short plans.
FAST = EngineConfig(
    default_capacity=2.0,
    probation_s=300.0,
    trust_half_life_s=900.0,
    throttle_max_messages=2,
    throttle_window_s=120.0,
    dedup_window=8,
)


def run(engine: PredictionEngine, plan: list[tuple[Any, ...]], now: datetime = T0) -> list[EngineResult | SignalResult]:
    outputs: list[EngineResult | SignalResult] = []
    for op in plan:
        if op[0] == "msg":
            _, agent, targets, body, gap, number = op
            now += timedelta(seconds=gap)
            outputs.append(engine.process(msg(agent, targets, f"{agent}-{number}", now, **body)))
        else:
            _, agent, pattern, confidence, gap, evidence = op
            now += timedelta(seconds=gap)
            outputs.append(engine.apply_signal(agent, pattern, confidence, evidence, now))
    return outputs


def elapsed(plan: list[tuple[Any, ...]]) -> timedelta:
    return timedelta(seconds=sum(op[4] for op in plan))


@settings(max_examples=150, deadline=None)
@given(plans)
def test_same_input_gives_same_output(plan: list[tuple[Any, ...]]) -> None:
    first, second = PredictionEngine(FAST), PredictionEngine(FAST)
    assert run(first, plan) == run(second, plan)
    assert first.snapshot() == second.snapshot()


@settings(max_examples=150, deadline=None)
@given(plans, st.data())
def test_snapshot_restore_continue_equals_an_uninterrupted_run(plan: list[tuple[Any, ...]], data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(plan)), label="cut")
    uninterrupted = PredictionEngine(FAST)
    expected = run(uninterrupted, plan)

    before = PredictionEngine(FAST)
    head = run(before, plan[:cut])
    checkpoint = json.loads(json.dumps(before.snapshot(), allow_nan=False))  # strict JSON
    restored = PredictionEngine(FAST)
    restored.restore(checkpoint)
    tail = run(restored, plan[cut:], now=T0 + elapsed(plan[:cut]))
    assert head + tail == expected
    assert restored.snapshot() == uninterrupted.snapshot()


@settings(max_examples=150, deadline=None)
@given(plans)
def test_outputs_stay_within_their_ranges(plan: list[tuple[Any, ...]]) -> None:
    engine = PredictionEngine(FAST)
    for output in run(engine, plan):
        trust = output.trust
        assert 0.0 <= trust.before <= 100.0 and 0.0 <= trust.after <= 100.0
        assert trust.delta == trust.after - trust.before
        if isinstance(output, EngineResult):
            assert 0.0 <= output.conflict.risk <= 1.0
            assert len(output.edges) == len({e.target_agent for e in output.edges})
    for name in engine.state.ledger.resources:
        assert all(held > 0 for held in engine.state.ledger.holders(name).values())
    assert engine.state.ledger.quarantined == set(engine.state.quarantine.quarantined)
