"""Properties 16 and 18: metrics and aggregated statistics equal a brute-force count."""

from __future__ import annotations

import math
import statistics
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from chorus_lab.analytics import MetricsAggregator, MetricsConfig
from chorus_lab.schema import Alert, InterventionAction, ProcessedDecision, TrustScoreUpdate
from tests.properties.fleet import at, decide, msg

INTERVAL = 10.0
BASE = decide(msg("a", ["s"], "base", 0.0))


def make(seconds: float, agent: str, latency: float, trust: float, action: str | None, flags: list[str], mid: str) -> ProcessedDecision:
    message = msg(agent, ["s"], mid, seconds, **({"action": action, "resource": "gpu"} if action else {}))
    return replace(
        BASE,
        original_message=message,
        processing_metadata=replace(BASE.processing_metadata, latency_ms=latency, flags=flags),
        trust_impact=TrustScoreUpdate(agent, trust, trust, 0.0, "t", message.timestamp),
    )


events = st.lists(
    st.tuples(
        st.floats(0.0, 99.999).map(lambda x: round(x, 3)),  # event time (the wire keeps microseconds)
        st.sampled_from(["decision", "decision", "decision", "error"]),
        st.floats(0.0, 500.0, allow_nan=False),  # latency
        st.sampled_from(["a", "b", "c", "d", "e"]),
    ),
    min_size=1,
    max_size=80,
).map(lambda xs: sorted(xs, key=lambda x: x[0]))


# Feature: real-time-data-flow, Property 16: Real-time metrics calculation
@settings(max_examples=100, deadline=None)
@given(events)
def test_throughput_latency_and_error_rates_are_exact(stream: list) -> None:
    agg = MetricsAggregator(MetricsConfig(interval_s=INTERVAL))
    snapshots = []
    for i, (t, kind, latency, agent) in enumerate(stream):
        if kind == "error":
            snapshots += agg.observe_error(at(t), "decode")
        else:
            snapshots += agg.observe(make(t, agent, latency, 100.0, None, [], f"m{i}"))
    snapshots += agg.advance(at(100.0))
    by_start = {s["window_start"]: s for s in snapshots}
    first = math.floor(stream[0][0] / INTERVAL)
    for window in range(first, 10):
        inside = [e for e in stream if window * INTERVAL <= e[0] < (window + 1) * INTERVAL]
        snap = by_start[at(window * INTERVAL).strftime("%Y-%m-%dT%H:%M:%S.%fZ")]
        decisions = [e for e in inside if e[1] == "decision"]
        errors = len(inside) - len(decisions)
        assert snap["messages"] == len(decisions)
        assert math.isclose(snap["throughput_per_s"], len(decisions) / INTERVAL)
        assert snap["errors"]["count"] == errors
        assert math.isclose(snap["errors"]["rate"], errors / len(inside) if inside else 0.0)
        latencies = sorted(e[2] for e in decisions)
        if latencies:
            rank = lambda p: latencies[max(1, math.ceil(p / 100 * len(latencies))) - 1]  # noqa: E731
            assert snap["latency_ms"]["count"] == len(latencies)
            assert math.isclose(snap["latency_ms"]["mean"], statistics.fmean(latencies), rel_tol=1e-9, abs_tol=1e-9)
            assert (snap["latency_ms"]["p50"], snap["latency_ms"]["p95"], snap["latency_ms"]["p99"]) == (rank(50), rank(95), rank(99))
            assert snap["latency_ms"]["max"] == latencies[-1]
        else:
            assert snap["latency_ms"]["count"] == 0


stats_events = st.lists(
    st.tuples(
        st.floats(0.0, 299.0).map(lambda x: round(x, 3)),  # the wire keeps microseconds
        st.sampled_from(["a", "b", "c", "d"]),
        st.sampled_from(["request", "deny", "refused", "other", "alert", "quarantine"]),
        st.floats(0.0, 100.0),
    ),
    min_size=1,
    max_size=60,
).map(lambda xs: sorted(xs, key=lambda x: x[0]))


# Feature: real-time-data-flow, Property 18: Aggregated statistics generation
@settings(max_examples=100, deadline=None)
@given(stats_events)
def test_conflict_rates_effectiveness_and_trust_distribution_are_exact(stream: list) -> None:
    window_s = 50.0
    agg = MetricsAggregator(MetricsConfig(interval_s=INTERVAL, effectiveness_window_s=window_s))
    latest: dict[str, float] = {}
    incidents: list[tuple[float, str]] = []
    quarantines: list[tuple[float, str]] = []
    for i, (t, agent, kind, trust) in enumerate(stream):
        if kind == "alert":
            agg.observe_alert(Alert(f"al{i}", "anomaly", "low", 0.7, "x", [agent], [], at(t), {"update": 0}))
            incidents.append((t, agent))
            continue
        action = {"request": "request_resource", "refused": "request_resource", "deny": "deny"}.get(kind)
        decision = make(t, agent, 1.0, trust, action, ["refused"] if kind == "refused" else [], f"m{i}")
        if kind == "quarantine":
            decision = replace(decision, intervention_action=InterventionAction("quarantine", agent, "t", at(t), 10.0))
            quarantines.append((t, agent))
        agg.observe(decision)
        latest[agent] = trust
    snapshots = agg.advance(at(1000.0))
    final = snapshots[-1]

    trust = final["trust"]
    assert trust["agents"] == len(latest)
    assert trust["mean"] is None if not latest else math.isclose(trust["mean"], statistics.fmean(latest.values()))
    assert sum(trust["histogram"]) == len(latest)
    assert trust["histogram"] == [sum(1 for v in latest.values() if min(9, int(v // 10)) == b) for b in range(10)]
    assert trust["below_quarantine"] == sum(1 for v in latest.values() if v < 30.0)

    for snap in snapshots:
        start = snap["window_start"]
        inside = [e for e in stream if at(e[0]).strftime("%Y-%m-%dT%H:%M:%S.%fZ") >= start and e[0] < _end(snap)]
        requests = sum(1 for e in inside if e[2] in ("request", "refused"))
        conflicts = sum(1 for e in inside if e[2] in ("deny", "refused"))
        assert snap["conflicts"]["requests"] == requests
        assert math.isclose(snap["conflicts"]["conflict_rate"], conflicts / requests if requests else 0.0)

    effect = final["interventions"]["effectiveness"]
    before = sum(1 for q, a in quarantines for t, b in incidents if a == b and q - window_s <= t < q)
    after = sum(1 for q, a in quarantines for t, b in incidents if a == b and q < t <= q + window_s)
    assert effect["evaluated"] == len(quarantines)
    assert (effect["incidents_before"], effect["incidents_after"]) == (before, after)
    assert effect["reduction"] == (1 - after / before if before else None)


def _end(snapshot: dict) -> float:
    from chorus_lab.schema import parse_timestamp

    return (parse_timestamp(snapshot["window_end"]) - at(0.0)).total_seconds()
