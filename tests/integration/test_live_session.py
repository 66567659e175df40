"""LiveSession on both buses (the real Kafka broker included): bootstrap, follow, isolation, stop."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import timedelta

import pytest

from chorus_lab import config
from chorus_lab.bus import Bus
from chorus_lab.live import LiveSession
from chorus_lab.live.feed import OutRecord, create_live_topics, pipeline_records, produce_records
from chorus_lab.schema import ProcessedDecision, decode
from chorus_lab.simulate import SimulationConfig, simulate

WAIT_S = 60.0


def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def fleet_records() -> list[OutRecord]:
    """A simulated fleet with every scenario, through stage 1 and stage 2 (no prefix yet)."""
    sim = simulate(SimulationConfig(agents=30, messages=1500, seed=11))
    return list(pipeline_records(sim.messages, finish=sim.messages[-1].timestamp + timedelta(seconds=20)))


def prefixed(records: list[OutRecord], prefix: str) -> list[OutRecord]:
    return [OutRecord(prefix + r.topic, r.key, r.value) for r in records]


def last_trust(records: list[OutRecord]) -> dict[str, float]:
    trust: dict[str, float] = {}
    for r in records:
        if r.topic == config.DECISIONS:
            d = decode(ProcessedDecision, r.value)
            trust[d.original_message.agent_id] = d.trust_impact.after
    return trust


def test_session_bootstraps_then_follows(any_bus: Bus, unique_topic, fleet_records: list[OutRecord]) -> None:
    prefix = unique_topic("live") + "-"
    create_live_topics(any_bus, topic_prefix=prefix)
    half = len(fleet_records) // 2
    produce_records(any_bus, prefixed(fleet_records[:half], prefix))

    session = LiveSession(bus=any_bus, topic_prefix=prefix, refresh_s=0.05).start()
    try:
        assert session.wait_until_caught_up(WAIT_S)
        assert session.version == half, "caught up means everything present at start was read"
        assert set(session.trust["agent_id"]) >= set(last_trust(fleet_records[:half]))

        produce_records(any_bus, prefixed(fleet_records[half:], prefix))
        wait_for(lambda: session.version == len(fleet_records), "the second half")
        trust = session.trust.set_index("agent_id")["trust"].to_dict()
        assert {a: trust[a] for a in last_trust(fleet_records)} == pytest.approx(last_trust(fleet_records))
        alerts = session.alerts
        wanted_ids = {json.loads(r.value)["alert_id"] for r in fleet_records if r.topic == config.ALERTS}
        assert set(alerts["alert_id"]) == wanted_ids
        assert {"routing_loop", "quarantine"} <= set(alerts["pattern"])
        assert list(alerts["detected_at"]) == sorted(alerts["detected_at"], reverse=True), "newest first"
        metrics = session.metrics
        assert len(metrics) == sum(1 for r in fleet_records if r.topic == config.METRICS) > 0
        assert metrics["throughput_per_s"].notna().all()
        assert session.undecodable == 0
    finally:
        session.stop()
        session.stop()  # idempotent
    assert not session.running


def test_viewers_never_share_partitions_and_bad_records_are_skipped(any_bus: Bus, unique_topic, fleet_records: list[OutRecord]) -> None:
    prefix = unique_topic("live") + "-"
    create_live_topics(any_bus, topic_prefix=prefix)
    records = prefixed(fleet_records[:400], prefix)
    bad = [OutRecord(prefix + config.DECISIONS, b"k", b"{not json"), OutRecord(prefix + config.GRAPH_UPDATES, b"k", b'{"update_type": 1}')]
    produce_records(any_bus, records[:200] + bad + records[200:])

    sessions = [LiveSession(bus=any_bus, topic_prefix=prefix, refresh_s=0.05).start() for _ in range(3)]
    try:
        for session in sessions:
            assert session.wait_until_caught_up(WAIT_S)
            wait_for(lambda session=session: session.version == len(records), "every good record in every session")
            assert session.undecodable == 2
        prints = [s.fingerprint() for s in sessions]
        assert prints[1] == prints[0] and prints[2] == prints[0]
    finally:
        for session in sessions:
            session.stop()


def test_session_started_before_the_topics_exist_picks_them_up(any_bus: Bus, unique_topic, fleet_records: list[OutRecord]) -> None:
    prefix = unique_topic("late") + "-"
    session = LiveSession(bus=any_bus, topic_prefix=prefix, refresh_s=0.05).start()
    try:
        assert session.wait_until_caught_up(WAIT_S), "nothing to read yet is caught up"
        create_live_topics(any_bus, topic_prefix=prefix)
        records = prefixed(fleet_records[:300], prefix)
        produce_records(any_bus, records)
        wait_for(lambda: session.version == len(records), "records on topics created after the start")
    finally:
        session.stop()


def test_session_stops_when_its_last_watcher_leaves(any_bus: Bus, unique_topic) -> None:
    prefix = unique_topic("watch") + "-"
    create_live_topics(any_bus, topic_prefix=prefix)
    session = LiveSession(bus=any_bus, topic_prefix=prefix).start()
    calls: list[int] = []
    first = session.watch(lambda s: calls.append(1))
    second = session.watch(lambda s: calls.append(2))
    first()
    assert session.running
    second()
    wait_for(lambda: not session.running, "the session to stop")
