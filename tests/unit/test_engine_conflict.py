"""Conflict prediction: types, explanations, deadlocks, bounds, monotonicity, calibration."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from chorus_lab.engine import EngineConfig, LedgerPredictor, ResourceLedger
from chorus_lab.engine.conflict import sigmoid
from chorus_lab.schema import AgentMessage

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def msg(sender: str, targets: list[str], dt: float = 0.0, **content: Any) -> AgentMessage:
    return AgentMessage(sender, T0 + timedelta(seconds=dt), "request", content, targets, "c-1", {})


def ask(agent: str, resource: str, amount: float = 1, priority: float = 5, dt: float = 0.0) -> AgentMessage:
    return msg(agent, ["steward"], dt, action="request_resource", resource=resource, amount=amount, priority=priority)


def ledger_with(
    capacity: dict[str, float],
    holds: dict[tuple[str, str], float] | None = None,
    waits: list[AgentMessage] | None = None,
) -> ResourceLedger:
    """A ledger with announced capacities, holdings {(agent, resource): amount} and requests."""
    ledger = ResourceLedger()
    for resource, cap in capacity.items():
        ledger.apply(msg("steward", [], resource=resource, capacity=cap))
    for (agent, resource), amount in (holds or {}).items():
        ledger.apply(msg(agent, [], action="hold", resource=resource, amount=amount))
    for request in waits or []:
        ledger.apply(request)
    return ledger


predictor = LedgerPredictor()


def test_non_requests_have_no_risk() -> None:
    ledger = ledger_with({"gpu": 1}, {("b", "gpu"): 1})
    for action in ("grant", "deny", "release", "status", "delegate"):
        analysis = predictor.predict(msg("a", ["b"], action=action, resource="gpu"), ledger)
        assert (analysis.risk, analysis.conflict_type, analysis.competing_agents) == (0.0, "none", [])


def test_free_mutex_is_low_risk_and_a_held_one_high() -> None:
    free = predictor.predict(ask("a", "lock"), ledger_with({"lock": 1}))
    assert free.risk < 0.2
    assert free.conflict_type == "none"
    held = predictor.predict(ask("a", "lock"), ledger_with({"lock": 1}, {("b", "lock"): 1}))
    assert held.risk > 0.99
    assert held.conflict_type == "over_capacity"
    assert held.competing_agents == ["b"]
    assert "2/1 (200% of capacity)" in held.reason


def test_logistic_formula_matches_hand_computation() -> None:
    # capacity 10, held 6, request 3: u = 0.9; one competitor waiting 2 at priority 7 vs 5:
    # c = 2·σ(2)/10. z = 16·(0.9 + c − 1.1).
    ledger = ledger_with({"gpu": 10}, {("h", "gpu"): 6}, [ask("w", "gpu", amount=2, priority=7)])
    analysis = predictor.predict(ask("a", "gpu", amount=3, priority=5), ledger)
    c = 2 * (1 / (1 + math.exp(-2))) / 10
    expected = 1 / (1 + math.exp(-16 * (0.9 + c - 1.1)))
    assert math.isclose(analysis.risk, expected, rel_tol=1e-12)
    assert analysis.competing_agents == ["h", "w"]
    assert analysis.conflict_type == "contention"
    assert "1 competitor(s) wait at equal or higher priority (w)" in analysis.reason


def test_deadlock_between_two_agents_is_detected() -> None:
    # a holds r1 and waits for r2; b holds r2 and now asks for r1.
    ledger = ledger_with({"r1": 1, "r2": 1}, {("a", "r1"): 1, ("b", "r2"): 1}, [ask("a", "r2")])
    analysis = predictor.predict(ask("b", "r1"), ledger)
    assert analysis.conflict_type == "deadlock"
    assert analysis.competing_agents == ["a"]
    assert "deadlock: b → a → b" in analysis.reason


def test_deadlock_through_three_agents_is_detected() -> None:
    ledger = ledger_with(
        {"r1": 1, "r2": 1, "r3": 1},
        {("a", "r1"): 1, ("b", "r2"): 1, ("c", "r3"): 1},
        [ask("a", "r2"), ask("b", "r3")],
    )
    analysis = predictor.predict(ask("c", "r1"), ledger)
    assert analysis.conflict_type == "deadlock"
    assert "c → a → b → c" in analysis.reason


def test_no_deadlock_when_capacity_suffices() -> None:
    # Same hold-and-wait shape, but r1 has room, so b will not wait for a.
    ledger = ledger_with({"r1": 5, "r2": 1}, {("a", "r1"): 1, ("b", "r2"): 1}, [ask("a", "r2")])
    analysis = predictor.predict(ask("b", "r1"), ledger)
    assert analysis.conflict_type == "none"
    assert "deadlock" not in analysis.reason


def test_deadlock_raises_risk_over_the_same_load_without_it() -> None:
    with_cycle = ledger_with({"r1": 1, "r2": 1}, {("a", "r1"): 1, ("b", "r2"): 1}, [ask("a", "r2")])
    without = ledger_with({"r1": 1, "r2": 1}, {("a", "r1"): 1, ("b", "r2"): 1})
    # A tiny request just over capacity, so the load term alone leaves the risk moderate.
    risk_cycle = predictor.predict(ask("b", "r1", amount=0.01), with_cycle).risk
    risk_plain = predictor.predict(ask("b", "r1", amount=0.01), without).risk
    assert risk_plain < 0.7 < risk_cycle


def test_quarantined_requester_is_certain_denial() -> None:
    ledger = ledger_with({"gpu": 100})
    ledger.set_quarantined("q", True)
    analysis = predictor.predict(ask("q", "gpu"), ledger)
    assert (analysis.risk, analysis.confidence, analysis.conflict_type) == (1.0, 1.0, "denial")
    assert "quarantined" in analysis.reason


def test_quarantined_competitors_do_not_count_as_contention() -> None:
    plain = ledger_with({"gpu": 2}, {}, [ask("q", "gpu", amount=2, priority=9)])
    quarantined = ledger_with({"gpu": 2}, {}, [ask("q", "gpu", amount=2, priority=9)])
    quarantined.set_quarantined("q", True)
    assert predictor.predict(ask("a", "gpu"), quarantined).risk < predictor.predict(ask("a", "gpu"), plain).risk


def test_earlier_denials_raise_risk() -> None:
    ledger = ledger_with({"gpu": 10}, {("h", "gpu"): 8})
    before = predictor.predict(ask("a", "gpu", amount=2), ledger).risk
    ledger.apply(ask("a", "gpu", amount=2))
    ledger.apply(msg("steward", ["a"], action="deny", resource="gpu"))
    after = predictor.predict(ask("a", "gpu", amount=2, dt=1), ledger).risk
    assert after > before


def test_confidence_grows_with_what_the_ledger_knows() -> None:
    unknown = predictor.predict(ask("a", "gpu"), ResourceLedger())
    announced = predictor.predict(ask("a", "gpu"), ledger_with({"gpu": 4}))
    assert (unknown.confidence, announced.confidence) == (0.5, 1.0)


def test_invalid_request_is_not_assessed() -> None:
    analysis = predictor.predict(msg("a", ["s"], action="request_resource", resource="gpu", amount=-2), ResourceLedger())
    assert (analysis.risk, analysis.conflict_type) == (0.0, "none")
    assert "bad amount" in analysis.reason


def test_sigmoid_is_stable_at_extremes() -> None:
    assert sigmoid(-1e308) == 0.0
    assert sigmoid(1e308) == 1.0
    assert sigmoid(0.0) == 0.5


# --------------------------------------------------------------------------- properties

competitor = st.tuples(st.sampled_from(["b", "c", "d"]), st.floats(0.1, 20), st.integers(0, 10))


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "capacity": draw(st.floats(0.5, 50)),
        "holds": draw(st.dictionaries(st.sampled_from(["a", "b", "c", "e"]), st.floats(0.1, 30), max_size=3)),
        "waits": draw(st.lists(competitor, max_size=4)),
        "cross": draw(st.booleans()),  # a holds something b waits for: deadlock material
        "amount": draw(st.floats(0.1, 40)),
        "priority": draw(st.integers(0, 10)),
        "denials": draw(st.integers(0, 3)),
    }


def build(s: dict[str, Any], *, capacity: float | None = None, amount: float | None = None, bump: int = 0) -> tuple[ResourceLedger, AgentMessage]:
    ledger = ledger_with({"gpu": capacity if capacity is not None else s["capacity"], "disk": 1})
    for agent, held in s["holds"].items():
        ledger.apply(msg(agent, [], action="hold", resource="gpu", amount=held))
    for agent, need, prio in s["waits"]:
        ledger.apply(ask(agent, "gpu", amount=need, priority=min(10, prio + bump)))
    if s["cross"]:
        ledger.apply(msg("a", [], action="hold", resource="disk", amount=1))
        ledger.apply(ask("b", "disk"))
    for i in range(s["denials"]):
        ledger.apply(ask("a", "gpu", dt=i))
        ledger.apply(msg("steward", ["a"], i, action="deny", resource="gpu"))
    request = ask("a", "gpu", amount=amount if amount is not None else s["amount"], priority=s["priority"], dt=10)
    return ledger, request


def risk_of(s: dict[str, Any], **changes: Any) -> float:
    ledger, request = build(s, **changes)
    return predictor.predict(request, ledger).risk


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_risk_and_confidence_are_within_bounds(s: dict[str, Any]) -> None:
    ledger, request = build(s)
    analysis = predictor.predict(request, ledger)
    assert 0.0 <= analysis.risk <= 1.0
    assert 0.0 <= analysis.confidence <= 1.0
    assert analysis.competing_agents == sorted(set(analysis.competing_agents))
    assert analysis.reason.endswith(".")


@settings(max_examples=200, deadline=None)
@given(scenarios(), st.floats(0.1, 40), st.floats(0.1, 40))
def test_more_demand_never_lowers_risk(s: dict[str, Any], x: float, y: float) -> None:
    small, large = sorted((x, y))
    risk_small = risk_of(s, amount=small)
    risk_large = risk_of(s, amount=large)
    assert risk_small <= risk_large + 1e-12


@settings(max_examples=200, deadline=None)
@given(scenarios(), st.floats(0.5, 50), st.floats(0.5, 50))
def test_more_capacity_never_raises_risk(s: dict[str, Any], x: float, y: float) -> None:
    small, large = sorted((x, y))
    risk_small_cap = risk_of(s, capacity=small)
    risk_large_cap = risk_of(s, capacity=large)
    assert risk_large_cap <= risk_small_cap + 1e-12


@settings(max_examples=150, deadline=None)
@given(scenarios(), st.integers(1, 5))
def test_higher_priority_competitors_never_lower_risk(s: dict[str, Any], bump: int) -> None:
    base = risk_of(s)
    bumped = risk_of(s, bump=bump)
    assert base <= bumped + 1e-12


def test_higher_risk_goes_with_more_real_conflicts() -> None:
    """Calibration against an independent outcome: a steward serving by priority, first fit.

    Random ledgers; the steward serves the waiting requests and the new one in priority
    order (ties in random arrival order), granting each that fits in the free capacity.
    The request "ends in conflict" when it is not served. Risk must rank outcomes well
    (ROC AUC) and the conflict rate must rise from the low-risk to the high-risk third.
    """
    rng = random.Random(20260101)
    scored: list[tuple[float, bool]] = []
    for _ in range(600):
        capacity = rng.choice([1, 2, 4, 10])
        ledger = ledger_with({"r": capacity})
        held = 0
        for i in range(rng.randint(0, 3)):
            amount = rng.randint(1, capacity)
            if held + amount > capacity:
                break
            ledger.apply(msg(f"h{i}", [], action="hold", resource="r", amount=amount))
            held += amount
        queue = []
        for i in range(rng.randint(0, 3)):
            amount, prio = rng.randint(1, max(1, capacity // 2)), rng.randint(0, 10)
            ledger.apply(ask(f"w{i}", "r", amount=amount, priority=prio))
            queue.append((prio, rng.random(), amount, f"w{i}"))
        amount, prio = rng.randint(1, capacity), rng.randint(0, 10)
        risk = predictor.predict(ask("a", "r", amount=amount, priority=prio), ledger).risk
        queue.append((prio, rng.random(), amount, "a"))
        free, conflict = capacity - held, False
        for _, _, need, who in sorted(queue, key=lambda q: (-q[0], q[1])):
            served = need <= free
            free -= need if served else 0
            if who == "a":
                conflict = not served
        scored.append((risk, conflict))

    positives = [r for r, c in scored if c]
    negatives = [r for r, c in scored if not c]
    auc = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives) / (len(positives) * len(negatives))
    assert auc >= 0.9, auc
    scored.sort(key=lambda rc: rc[0])
    third = len(scored) // 3
    rate = [sum(c for _, c in part) / len(part) for part in (scored[:third], scored[third : 2 * third], scored[2 * third :])]
    assert rate[0] < rate[1] < rate[2], rate


def test_a_config_changes_the_formula() -> None:
    ledger = ledger_with({"gpu": 10}, {("h", "gpu"): 5})
    soft = LedgerPredictor(EngineConfig(risk_load_slope=1.0)).predict(ask("a", "gpu", amount=5), ledger).risk
    assert math.isclose(soft, 1 / (1 + math.exp(-(1.0 - 1.1))), rel_tol=1e-12)
