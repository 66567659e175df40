"""Stage 2's shell feeds the metrics what only it knows: consumer lag and time per stage."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from chorus_lab import config
from chorus_lab.analytics import MetricsConfig
from chorus_lab.bus import Bus, TopicPartition, open_bus
from chorus_lab.pipeline import encode_decision
from chorus_lab.processor import Topics, read_range
from chorus_lab.schema import ProcessedDecision
from chorus_lab.stage2 import Stage2, Stage2Config
from chorus_lab.stage2_processor import Stage2Processor, Stage2Settings
from tests.properties.fleet import T0, decide, msg

DECISIONS = 100
BATCH = 10
STAGE1_SLOW_MS = 10_000.0
BUS_WAIT = timedelta(hours=1)


def decisions() -> list[ProcessedDecision]:
    """One decision per second of event time; stage 1 "took" 10 s for the first half, 0 ms after.

    Stage 1 decided them an hour ago (wall clock), so each waited about an hour in the bus.
    """
    decided = datetime.now(UTC) - BUS_WAIT
    out = []
    for i in range(DECISIONS):
        base = decide(msg(f"a{i % 5}", ["s"], f"m-{i}", float(i), kind="broadcast", status="idle"))
        took = timedelta(milliseconds=STAGE1_SLOW_MS if i < DECISIONS // 2 else 0.0)
        meta = replace(base.processing_metadata, received_at=decided - took, processed_at=decided)
        out.append(replace(base, processing_metadata=meta))
    return out


def metric_snapshots(bus: Bus, topics: Topics) -> list[dict[str, Any]]:
    reader = bus.consumer(None)
    try:
        tp = TopicPartition(topics.name(config.METRICS), 0)
        return [json.loads(r.value) for r in read_range(reader, tp, *reader.watermarks(tp))]
    finally:
        reader.close()


def test_the_shell_reports_consumer_lag_and_the_time_of_each_stage(tmp_path: Path) -> None:
    bus = open_bus(f"embedded://{tmp_path}/bus")
    topics = Topics()
    bus.admin().create_topics(topics.specs(1))
    producer = bus.producer()
    for decision in decisions():
        producer.produce(topics.decisions, encode_decision(decision), decision.original_message.agent_id.encode())
    assert producer.flush(30) == 0
    producer.close()

    settings = Stage2Settings(partitions=1, batch_size=BATCH, lag_interval_s=0.0)
    Stage2Processor(bus, "metrics-test", "m1", topics=topics, settings=settings).run_until_caught_up(60)
    snapshots = metric_snapshots(bus, topics)
    bus.close()

    # Windows [0, 10) … [80, 90) s are closed by the decisions of the next window.
    assert len(snapshots) >= 9
    closed = snapshots[:9]
    # Window k is closed by decision 10(k + 1), read in batch k + 2 (10 per batch, one
    # partition), and shows the lag measured once that batch was read: 100 − 10(k + 2).
    assert [s["consumer_lag"]["total"] for s in closed] == [80, 70, 60, 50, 40, 30, 20, 10, 0]
    assert all(s["consumer_lag"]["by_partition"] == {"0": s["consumer_lag"]["total"]} for s in closed)
    # One partition: every batch is released whole, so nothing is held over for ordering.
    assert [s["consumer_lag"]["held"] for s in closed] == [0] * 9
    assert all(s["consumer_lag"]["topic"] == topics.decisions for s in closed)

    for snapshot in closed:
        stages = snapshot["stages"]
        assert set(stages) == {"bus", "stage1", "stage2"}, stages
        # About an hour in the bus (plus however long this test took to read it).
        assert BUS_WAIT.total_seconds() * 1000 <= stages["bus"] < (BUS_WAIT + timedelta(minutes=10)).total_seconds() * 1000
        assert 0.0 < stages["stage2"] < STAGE1_SLOW_MS
    # The first half: stage 1 took 10 s a message and is the bottleneck (the bus, slower
    # still, is waiting, not work). The second half: stage 1 took nothing, so stage 2 is.
    assert [s["stages"]["stage1"] for s in closed[:5]] == [STAGE1_SLOW_MS] * 5
    assert [s["bottleneck"] for s in closed[:5]] == ["stage1"] * 5
    assert [s["stages"]["stage1"] for s in closed[5:]] == [0.0] * 4
    assert [s["bottleneck"] for s in closed[5:]] == ["stage2"] * 4
    assert all(s["errors"]["count"] == 0 for s in closed)


def test_the_core_takes_the_shells_observations_without_closing_windows() -> None:
    stage = Stage2(Stage2Config(metrics=MetricsConfig(interval_s=10.0)))
    assert stage.process(decide(msg("a", ["b"], "m-1", 1.0)), {"bus": 6.0}).metrics == []
    stage.observe_stage_times({"stage2": 4.0})
    stage.observe_consumer_lag({"total": 3})
    assert stage.metrics.watermark == T0.timestamp() + 1.0  # observations move no event time
    (snapshot,) = stage.process(decide(msg("a", ["b"], "m-2", 12.0))).metrics
    assert snapshot["consumer_lag"] == {"total": 3}
    assert snapshot["stages"] == {"bus": 6.0, "stage1": 0.0, "stage2": 4.0} and snapshot["bottleneck"] == "stage2"
