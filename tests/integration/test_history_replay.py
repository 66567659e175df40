"""Replay on both bus backends: the state rebuilt for a time equals the live state at that
time (Property 14 and the replay-equality check), replays are deterministic, and a re-run
into a sandbox prefix never touches the live topics.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chorus_lab import simulate
from chorus_lab.bus import Bus, ConfigurationError, TopicPartition, open_bus
from chorus_lab.bus.kafka import KafkaBus
from chorus_lab.bus.partitioner import partition_for_key
from chorus_lab.graph import GraphTopologyManager
from chorus_lab.history import state_at
from chorus_lab.history.replay import SystemState, replay_into, replay_outputs
from chorus_lab.pipeline import RecordMeta, Stage1, decision_fingerprint
from chorus_lab.processor import read_range
from chorus_lab.schema import AgentMessage, ProcessedDecision, decode
from tests.integration.test_audit_trail import PARTITIONS, Stage1Run, start_stage1

EXAMPLES = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
STATE_KEYS = ("trust", "quarantined", "ledger")


def _fleet(messages: int, seed: int) -> list[AgentMessage]:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    config = simulate.SimulationConfig(agents=10, messages=messages, seed=seed, start=start, mean_interval=timedelta(seconds=4))
    return simulate.simulate(config).messages


def _wait_processed(run: Stage1Run, count: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while run.processor.stats.records < count:
        assert not run.failure, f"the processor stopped: {run.failure[0]!r}"
        assert time.monotonic() < deadline, f"processed {run.processor.stats.records} of {count}"
        time.sleep(0.05)


def _ends(bus: Bus, topic: str) -> dict[int, int]:
    consumer = bus.consumer(None)
    try:
        return {p: consumer.watermarks(TopicPartition(topic, p))[1] for p in range(PARTITIONS)}
    finally:
        consumer.close()


def _live_graph(bus: Bus, run: Stage1Run, at: datetime) -> GraphTopologyManager:
    """The causal graph of the decisions committed so far, as a stage-2 reader would build it."""
    consumer = bus.consumer(None)
    decisions: list[tuple[datetime, int, int, ProcessedDecision]] = []
    try:
        for p in range(PARTITIONS):
            tp = TopicPartition(run.topics.decisions, p)
            low, high = consumer.watermarks(tp)
            for record in read_range(consumer, tp, low, high):
                d = decode(ProcessedDecision, record.value or b"")
                decisions.append((d.original_message.timestamp, p, record.offset, d))
    finally:
        consumer.close()
    graph = GraphTopologyManager()
    for *_, d in sorted(decisions, key=lambda item: item[:3]):
        assert d.original_message.timestamp <= at
        graph.observe(d)
    return graph


def _live_state(bus: Bus, run: Stage1Run, at: datetime) -> dict[str, object]:
    # Through JSON: a copy, so the running processor cannot change it afterwards.
    return json.loads(json.dumps(SystemState(at, run.processor.stage, _live_graph(bus, run, at)).to_dict()))


@pytest.fixture(params=["embedded", "kafka"])
def fresh_stage1(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Bus, Stage1Run]]:
    if request.param == "embedded":
        bus: Bus = open_bus(f"embedded://{tmp_path_factory.mktemp('bus')}")
    else:
        bus = KafkaBus(request.getfixturevalue("kafka_broker").bootstrap, properties={})
    run = start_stage1(bus, snapshot_every=150)
    yield bus, run
    run.stop.set()
    run.thread.join(30)
    bus.close()


def test_the_state_rebuilt_for_a_time_equals_the_live_state_at_that_time(fresh_stage1: tuple[Bus, Stage1Run]) -> None:
    bus, run = fresh_stage1
    messages = _fleet(300, seed=3)
    middle = messages[len(messages) // 2].timestamp
    before = [m for m in messages if m.timestamp <= middle]
    after = [m for m in messages if m.timestamp > middle]
    assert before and after
    run.send(before)
    _wait_processed(run, len(before))
    live_middle = _live_state(bus, run, middle)
    run.send(after)
    _wait_processed(run, len(messages))
    end = messages[-1].timestamp
    live_end = _live_state(bus, run, end)
    assert live_middle["trust"] != live_end["trust"] or live_middle["graph"] != live_end["graph"]  # the two moments differ

    replayed_middle = state_at(bus, middle, group_id=run.processor.group_id, topic_prefix=run.topics.prefix).to_dict()
    from_checkpoints = state_at(bus, end, group_id=run.processor.group_id, topic_prefix=run.topics.prefix)
    from_start = state_at(bus, end, group_id=run.processor.group_id, topic_prefix=run.topics.prefix, use_checkpoints=False)

    for key in (*STATE_KEYS, "graph"):
        assert replayed_middle[key] == live_middle[key], key
        assert from_checkpoints.to_dict()[key] == live_end[key], key
        assert from_start.to_dict()[key] == live_end[key], key
    assert from_checkpoints.checkpoints, "the processor wrote checkpoints; the replay to the end should start from them"
    assert from_checkpoints.events < from_start.events


def test_replaying_the_whole_log_twice_gives_the_live_decisions_both_times(fresh_stage1: tuple[Bus, Stage1Run]) -> None:
    bus, run = fresh_stage1
    messages = _fleet(150, seed=5)
    run.send(messages)
    _wait_processed(run, len(messages))
    consumer = bus.consumer(None)
    live = []
    try:
        for p in range(PARTITIONS):
            tp = TopicPartition(run.topics.decisions, p)
            live += [decision_fingerprint(decode(ProcessedDecision, r.value or b"")) for r in read_range(consumer, tp, *consumer.watermarks(tp))]
    finally:
        consumer.close()
    end = messages[-1].timestamp
    options = {"group_id": run.processor.group_id, "topic_prefix": run.topics.prefix, "use_checkpoints": False}

    first = replay_outputs(bus, end, **options)
    second = replay_outputs(bus, end, **options)

    def key(d: dict) -> str:
        return d["original_message"]["message_id"]

    assert first == second
    assert sorted(first, key=key) == sorted(live, key=key) and len(first) == len(messages)


def test_a_rerun_goes_into_the_sandbox_prefix_only(fresh_stage1: tuple[Bus, Stage1Run]) -> None:
    bus, run = fresh_stage1
    messages = _fleet(120, seed=7)
    run.send(messages)
    _wait_processed(run, len(messages))
    live_ends = _ends(bus, run.topics.decisions)
    since, until = messages[40].timestamp, messages[80].timestamp
    sandbox = run.topics.prefix + "whatif-"

    with pytest.raises(ConfigurationError):
        replay_into(bus, since, until, run.topics.prefix, topic_prefix=run.topics.prefix)
    result = replay_into(bus, since, until, sandbox, group_id=run.processor.group_id, topic_prefix=run.topics.prefix)

    expected = [m for m in messages if since < m.timestamp <= until]
    assert result.copied == len(expected) and result.stats.decisions == len(expected)
    assert _ends(bus, run.topics.decisions) == live_ends
    # The sandbox started from the state at ``since``: its final trust scores are the live ones at ``until``.
    sandbox_state = state_at(bus, until, group_id=run.processor.group_id, topic_prefix=run.topics.prefix).trust_scores()
    consumer = bus.consumer(None)
    last_trust: dict[str, float] = {}
    try:
        for p in range(PARTITIONS):
            tp = TopicPartition(sandbox + "agent-decisions-processed", p)
            for r in read_range(consumer, tp, *consumer.watermarks(tp)):
                d = decode(ProcessedDecision, r.value or b"")
                last_trust[d.original_message.agent_id] = round(d.trust_impact.after, 6)
    finally:
        consumer.close()
    assert last_trust and all(abs(sandbox_state[a] - t) < 1e-6 for a, t in last_trust.items())


# --------------------------------------------------------------------------- Property 14


@pytest.fixture(scope="module", params=["embedded", "kafka"])
def processed_fleet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Bus, Stage1Run, list[AgentMessage]]]:
    if request.param == "embedded":
        bus: Bus = open_bus(f"embedded://{tmp_path_factory.mktemp('bus')}")
    else:
        bus = KafkaBus(request.getfixturevalue("kafka_broker").bootstrap, properties={})
    run = start_stage1(bus, snapshot_every=80)
    messages = _fleet(150, seed=11)
    run.send(messages)
    _wait_processed(run, len(messages))
    yield bus, run, messages
    run.stop.set()
    run.thread.join(30)
    bus.close()


# Feature: real-time-data-flow, Property 14: For any historical timestamp, the system should be able to replay events from that point to reconstruct system state
@EXAMPLES
@given(offset_s=st.integers(-60, 4000), use_checkpoints=st.booleans())
def test_replay_to_any_time_reconstructs_the_state_of_that_time(processed_fleet: tuple[Bus, Stage1Run, list[AgentMessage]], offset_s: int, use_checkpoints: bool) -> None:
    """For any time, the replayed trust scores, quarantines and ledger are those of a fresh
    stage-1 core fed exactly the messages up to that time, in each partition's order."""
    bus, run, messages = processed_fleet
    at = messages[0].timestamp + timedelta(seconds=offset_s)
    oracle = Stage1(instance_id="oracle")
    for offset, m in enumerate(messages):
        if m.timestamp <= at:
            oracle.decide(RecordMeta("raw", partition_for_key(m.agent_id.encode(), PARTITIONS), offset, 0, m.agent_id.encode()), m)
    for p in range(PARTITIONS):
        oracle.engine(p)
    expected = SystemState(at, oracle, GraphTopologyManager()).to_dict()

    replayed = state_at(bus, at, group_id=run.processor.group_id, topic_prefix=run.topics.prefix, use_checkpoints=use_checkpoints).to_dict()

    for key in STATE_KEYS:
        assert replayed[key] == expected[key], key
