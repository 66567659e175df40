"""Stream analytics: windows, rates, distributions, effectiveness, forecasts, queries."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import pytest

from chorus_lab.analytics import PROCESSING_FIELDS, Holt, MetricsAggregator, MetricsConfig, bottleneck, latency_summary, percentile, stage1_ms
from chorus_lab.schema import Alert, InterventionAction, ProcessedDecision, TrustScoreUpdate
from tests.properties.fleet import T0, at, decide, msg


def decision(
    seconds: float, agent: str = "a", latency: float = 1.0, trust: float = 100.0, flags: tuple[str, ...] = (), stage1: float = 0.0, **content: object
) -> ProcessedDecision:
    """A decision at ``T0 + seconds``; stage 1 took ``stage1`` ms (received → processed)."""
    base = decide(msg(agent, ["s"], f"{agent}-{seconds}", seconds, **content))  # type: ignore[arg-type]
    received = base.processing_metadata.received_at
    meta = replace(base.processing_metadata, latency_ms=latency, flags=list(flags), processed_at=received + timedelta(milliseconds=stage1))
    impact = TrustScoreUpdate(agent, trust, trust, 0.0, "test", at(seconds))
    return replace(base, processing_metadata=meta, trust_impact=impact)


def with_intervention(d: ProcessedDecision, action: str) -> ProcessedDecision:
    agent = d.original_message.agent_id
    return replace(d, intervention_action=InterventionAction(action, agent, "test", d.original_message.timestamp, 20.0))  # type: ignore[arg-type]


def alert(seconds: float, agents: list[str], pattern: str = "anomaly", update: int = 0) -> Alert:
    return Alert(f"al-{seconds}-{update}", pattern, "medium", 0.8, "x", agents, [], at(seconds), {"update": update})  # type: ignore[arg-type]


def test_a_window_closes_when_event_time_passes_its_end() -> None:
    agg = MetricsAggregator(MetricsConfig(interval_s=10.0))
    for i, latency in enumerate([5.0, 1.0, 3.0, 2.0, 4.0]):
        assert agg.observe(decision(1.0 + i, latency=latency, stage1=latency / 2)) == []
    (snapshot,) = agg.observe(decision(12.0))
    assert snapshot["window_start"] == "2026-01-01T00:00:00.000000Z" and snapshot["window_end"] == "2026-01-01T00:00:10.000000Z"
    assert snapshot["messages"] == 5 and snapshot["throughput_per_s"] == 0.5
    assert snapshot["latency_ms"] == {"count": 5, "mean": 3.0, "p50": 3.0, "p95": 5.0, "p99": 5.0, "max": 5.0}
    assert snapshot["stages"] == {"stage1": 1.5} and snapshot["bottleneck"] == "stage1"
    json.dumps(snapshot)  # JSON-able


def test_errors_warnings_and_the_bottleneck() -> None:
    agg = MetricsAggregator(MetricsConfig(interval_s=10.0))
    agg.observe(decision(1.0, latency=2.0, stage1=2.0, flags=("content_warning",)), stage_ms={"stage2": 7.0})
    agg.observe(decision(2.0, latency=4.0, stage1=4.0), stage_ms={"stage2": 9.0})
    agg.observe_error(at(3.0), "decode")
    agg.observe_error(at(4.0), "decode")
    (snapshot,) = agg.advance(at(10.0), consumer_lag={"total": 42})
    assert snapshot["errors"] == {"count": 2, "rate": 0.5, "by_kind": {"decode": 2}}
    assert snapshot["warnings"] == {"count": 1, "rate": 0.5}
    assert snapshot["stages"] == {"stage1": 3.0, "stage2": 8.0} and snapshot["bottleneck"] == "stage2"
    assert snapshot["consumer_lag"] == {"total": 42}


def test_trust_distribution_uses_each_agents_latest_score() -> None:
    agg = MetricsAggregator()
    agg.observe(decision(1.0, "a", trust=95.0))
    agg.observe(decision(2.0, "a", trust=25.0))
    agg.observe(decision(3.0, "b", trust=55.0))
    agg.observe(decision(4.0, "c", trust=100.0))
    (snapshot,) = agg.advance(at(10.0))
    trust = snapshot["trust"]
    assert trust["agents"] == 3 and trust["mean"] == pytest.approx(60.0) and trust["median"] == 55.0 and trust["min"] == 25.0
    assert trust["histogram"] == [0, 0, 1, 0, 0, 1, 0, 0, 0, 1]
    assert trust["below_quarantine"] == 1


def test_conflict_rate_counts_denials_and_refusals_per_request() -> None:
    agg = MetricsAggregator()
    for i in range(4):
        agg.observe(decision(1.0 + i, f"r{i}", action="request_resource", resource="gpu"))
    agg.observe(decision(5.0, "s", action="deny", resource="gpu"))
    agg.observe(decision(6.0, "r9", flags=("refused",), action="request_resource", resource="gpu"))
    (snapshot,) = agg.advance(at(10.0))
    conflicts = snapshot["conflicts"]
    assert conflicts["requests"] == 5 and conflicts["denials"] == 1 and conflicts["refused"] == 1
    assert conflicts["conflict_rate"] == pytest.approx(2 / 5)


def test_intervention_effectiveness_compares_incidents_before_and_after() -> None:
    agg = MetricsAggregator(MetricsConfig(interval_s=10.0, effectiveness_window_s=100.0))
    for s in (10.0, 20.0, 30.0):
        agg.observe_alert(alert(s, ["bad"]))
    agg.observe_alert(alert(31.0, ["bad"], update=1))  # an update is not a new incident
    agg.observe(with_intervention(decision(50.0, "bad"), "quarantine"))
    agg.observe_alert(alert(80.0, ["bad"]))
    pending = agg.advance(at(100.0))[-1]["interventions"]["effectiveness"]
    assert pending["pending"] == 1 and pending["evaluated"] == 0 and pending["reduction"] is None
    done = agg.advance(at(160.0))[-1]["interventions"]
    assert done["effectiveness"]["incidents_before"] == 3 and done["effectiveness"]["incidents_after"] == 1
    assert done["effectiveness"]["reduction"] == pytest.approx(2 / 3)
    assert done["effectiveness"]["recent"][0]["agent"] == "bad"


def test_the_forecast_follows_a_trend_with_an_interval() -> None:
    agg = MetricsAggregator(MetricsConfig(interval_s=1.0, forecast_horizon=2))
    t = 0.0
    for second in range(20):
        for _ in range(second + 1):  # 1, 2, 3 ... messages per second
            agg.observe(decision(second + 0.5, f"a{t}"))
            t += 1
    last = agg.advance(at(20.0))[-1]["forecast"]
    throughput = last["throughput_per_s"]
    assert throughput["value"] == pytest.approx(22.0, abs=0.5)
    assert throughput["low"] <= throughput["value"] <= throughput["high"]
    assert last["horizon_s"] == 2.0


def test_holt_interval_widens_with_the_horizon() -> None:
    model = Holt(0.5, 0.2)
    for y in (1.0, 3.0, 2.0, 5.0, 4.0, 6.0):
        model.update(y)
    near = model.forecast(1, 1.96)
    far = model.forecast(10, 1.96)
    assert far[2] - far[1] > near[2] - near[1] > 0


def test_a_long_silence_emits_a_bounded_number_of_windows() -> None:
    agg = MetricsAggregator(MetricsConfig(interval_s=1.0, max_catchup=5))
    agg.observe(decision(0.5))
    closed = agg.advance(at(1000.0))
    assert len(closed) == 5 and closed[0]["messages"] == 1
    assert agg.skipped_windows == 995


def test_history_is_bounded_and_queryable() -> None:
    agg = MetricsAggregator(MetricsConfig(interval_s=10.0, max_history=5))
    for i in range(10):
        agg.observe(decision(10.0 * i + 1, latency=float(i)))
    agg.advance(at(100.0))
    history = agg.history()
    assert len(history) == 5 and history[0]["window_start"] == "2026-01-01T00:00:50.000000Z"
    assert [v for _, v in agg.series("latency_ms.p50")] == [5.0, 6.0, 7.0, 8.0, 9.0]
    assert len(agg.history(at(70.0), at(90.0))) == 3
    assert agg.at(at(75.0))["latency_ms"]["p50"] == 7.0
    assert agg.at(at(5.0)) is None  # evicted
    evolution = agg.evolution("latency_ms.p50")
    assert evolution["first"] == 5.0 and evolution["last"] == 9.0 and evolution["slope_per_window"] == pytest.approx(1.0)
    assert agg.evolution("no.such.field") == {"path": "no.such.field", "points": 0}


def test_latency_reservoir_is_bounded_and_deterministic() -> None:
    def run() -> dict:
        agg = MetricsAggregator(MetricsConfig(interval_s=100.0, latency_samples=50))
        for i in range(1000):
            agg.observe(decision(i * 0.05, f"a{i}", latency=float(i % 100)))
        return agg.advance(at(100.0))[0]["latency_ms"]

    first, second = run(), run()
    assert first == second and first["count"] == 1000 and first["max"] == 99.0
    assert 30.0 <= first["p50"] <= 70.0


def test_percentiles_are_nearest_rank() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 95) == 5.0
    assert percentile([1.0], 50) == 1.0
    assert latency_summary([], 0, 0.0, 0.0)["p50"] is None


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        MetricsConfig(interval_s=0)
    assert T0 + timedelta(seconds=1) == at(1.0)


def test_stage_times_from_processing_metadata_and_the_shell_name_the_slowest_working_stage() -> None:
    agg = MetricsAggregator(MetricsConfig(interval_s=10.0))
    # Window 1: stage 2 is slow; the bus is slower still, but waiting is not work.
    agg.observe(decision(1.0, latency=500.0, stage1=2.0), stage_ms={"bus": 30.0})
    agg.observe_stages({"stage2": 5.0})
    agg.observe(decision(2.0, latency=500.0, stage1=4.0), stage_ms={"bus": 50.0})
    agg.observe_stages({"stage2": 7.0})
    # Window 2: stage 1 is the slow one.
    (first,) = agg.observe(decision(11.0, stage1=20.0), stage_ms={"bus": 1.0})
    agg.observe_stages({"stage2": 3.0})
    (second,) = agg.advance(at(20.0))
    # stage1 is received_at → processed_at, not latency_ms (which includes the raw topic's wait).
    assert first["stages"] == {"bus": 40.0, "stage1": 3.0, "stage2": 6.0}
    assert first["bottleneck"] == "stage2"
    assert second["stages"] == {"bus": 1.0, "stage1": 20.0, "stage2": 3.0}
    assert second["bottleneck"] == "stage1"
    assert first["latency_ms"]["mean"] == 500.0


def test_stage1_ms_is_received_to_processed_and_never_negative() -> None:
    assert stage1_ms(decision(1.0, latency=99.0, stage1=12.5)) == 12.5
    assert stage1_ms(decision(1.0, stage1=-3.0)) == 0.0  # clocks of two hosts may disagree


def test_the_bottleneck_ignores_waiting_stages_and_is_none_without_working_ones() -> None:
    assert bottleneck({"bus": 1e6, "stage1": 1.0, "stage2": 2.0}) == "stage2"
    assert bottleneck({"stage1": 2.0, "stage2": 2.0}) == "stage2"  # ties: deterministic
    assert bottleneck({"bus": 3.0}) is None and bottleneck({}) is None


def test_stage_times_before_any_decision_are_ignored_and_belong_to_the_current_window() -> None:
    agg = MetricsAggregator(MetricsConfig(interval_s=10.0))
    agg.observe_stages({"stage2": 100.0})  # no window yet: nothing to attribute it to
    agg.observe(decision(1.0, stage1=1.0))
    agg.observe_stages({"stage2": 8.0})
    (snapshot,) = agg.advance(at(10.0))
    assert snapshot["stages"] == {"stage1": 1.0, "stage2": 8.0}


def test_consumer_lag_is_the_latest_measurement_until_a_new_one() -> None:
    agg = MetricsAggregator(MetricsConfig(interval_s=10.0))
    agg.observe(decision(1.0))
    agg.set_consumer_lag({"total": 5, "by_partition": {"0": 2, "1": 3}})
    (first,) = agg.advance(at(10.0))
    agg.observe(decision(11.0))
    (second,) = agg.advance(at(20.0))
    agg.set_consumer_lag({"total": 0, "by_partition": {"0": 0, "1": 0}})
    (third,) = agg.advance(at(30.0), graph=None)
    assert [s["consumer_lag"]["total"] for s in (first, second, third)] == [5, 5, 0]


def test_processing_fields_are_the_only_ones_that_shell_observations_change() -> None:
    """Two runs over the same decisions with different shell timings and lag differ only in
    PROCESSING_FIELDS (the replay guarantee, DESIGN.md principle 1)."""
    runs = []
    for scale in (1.0, 7.0):
        agg = MetricsAggregator(MetricsConfig(interval_s=10.0))
        snapshots = []
        for i in range(30):
            snapshots += agg.observe(decision(float(i), f"a{i % 3}", latency=scale * i, stage1=scale * 2), stage_ms={"bus": scale * 10})
            agg.observe_stages({"stage2": scale * (i % 4)})
            agg.set_consumer_lag({"total": int(scale * i)})
        runs.append(snapshots + agg.advance(at(40.0)))
    first, second = runs
    assert len(first) == len(second) == 4  # [0, 10) … [30, 40)
    for a, b in zip(first, second, strict=True):
        differing = {k for k in a if a[k] != b[k]}
        assert differing and differing <= set(PROCESSING_FIELDS), differing
