"""Properties 4, 5 and 6 through the stage-1 processor, on both bus backends.

One processor per backend runs for the whole module; each Hypothesis example sends its
records with its own run id and waits (with a deadline) for what the processor commits.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chorus_lab.bus import Bus, Record, open_bus
from chorus_lab.bus.kafka import KafkaBus
from chorus_lab.bus.partitioner import partition_for_key
from chorus_lab.ingest import decode_record
from chorus_lab.pipeline import PIPELINE_VERSION
from chorus_lab.processor import ProcessorSettings
from chorus_lab.schema import AgentMessage, encode
from tests.integration.test_processor_harness import PARTITIONS, ChaosPredictor, RunningProcessor
from tests.strategies import agent_messages

AGENTS = ["alpha-1", "beta-2", "gamma-3", "delta-4", "eps-5", "zeta-6", "eta-7", "theta-8"]
MESSAGE_BUDGET_S = 1.0
"""The processor's per-message budget. Wall clock, so a loaded CI machine can stall an
ordinary message for a few tenths of a second (a 0.2 s budget once dead-lettered one)."""
SLOW_S = 1.5
"""How long a ``chaos: sleep`` message takes: well over the budget."""
EXAMPLES = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module", params=["embedded", "kafka"])
def stage1(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProcessor]:
    """One processor per backend for the module, with a predictor that fails on request."""
    if request.param == "embedded":
        bus: Bus = open_bus(f"embedded://{tmp_path_factory.mktemp('bus')}")
    else:
        bus = KafkaBus(request.getfixturevalue("kafka_broker").bootstrap, properties={})
    running = RunningProcessor(
        bus,
        settings=ProcessorSettings(batch_size=100, poll_timeout_s=0.02, message_timeout_s=MESSAGE_BUDGET_S, snapshot_every=200),
        predictor=ChaosPredictor(sleep_s=SLOW_S),
    )
    yield running
    running.close()
    bus.close()


def _with(template: AgentMessage, **changes: object) -> AgentMessage:
    fields = {name: getattr(template, name) for name in template.__dataclass_fields__}
    fields.update(changes)
    content = dict(fields["content"])  # type: ignore[arg-type]
    content.pop("chaos", None)  # only the plans below ask for chaos
    fields["content"] = content
    return AgentMessage(**fields)  # type: ignore[arg-type]


# Feature: real-time-data-flow, Property 4: Stream processing pipeline integration
@EXAMPLES
@given(
    plan=st.lists(st.tuples(st.sampled_from(AGENTS), agent_messages()), min_size=1, max_size=12),
    resends=st.lists(st.integers(0, 11), max_size=3),
)
def test_every_raw_message_gets_exactly_one_decision(stage1: RunningProcessor, plan: list[tuple[str, AgentMessage]], resends: list[int]) -> None:
    """Each message on agent-messages-raw yields one enriched decision; a re-sent message_id none."""
    run = uuid.uuid4().hex
    messages = [_with(template, agent_id=agent, message_id=f"{run}-{i}", correlation_id=run) for i, (agent, template) in enumerate(plan)]
    resent = [messages[i] for i in resends if i < len(messages)]
    duplicates_before = stage1.processor.stats.duplicates
    placed = stage1.send([(m.agent_id.encode(), encode(m)) for m in messages + resent])
    stage1.wait(lambda: len(stage1.reader.seen.decisions[run]) >= len(messages) and stage1.processor.stats.duplicates >= duplicates_before + len(resent))
    stage1.reader.poll(0.05)  # anything extra would be committed with the duplicates' batch

    decided = {d.original_message.message_id: (p, o, d) for p, o, d in stage1.reader.seen.decisions[run]}
    assert len(stage1.reader.seen.decisions[run]) == len(messages) == len(decided)
    for message, (partition, offset) in zip(messages, placed[: len(messages)], strict=True):
        out_partition, _, decision = decided[message.message_id]
        assert decision.original_message == message
        meta = decision.processing_metadata
        assert (meta.topic, meta.partition, meta.offset) == (stage1.topics.raw, partition, offset)
        assert meta.pipeline_version == PIPELINE_VERSION and meta.instance_id == "p-1"
        assert meta.processed_at >= meta.received_at and meta.latency_ms >= 0
        assert out_partition == partition  # decisions are keyed by agent, like the input
        assert 0.0 <= decision.conflict_analysis.risk <= 1.0 and decision.conflict_analysis.reason
        assert decision.trust_impact.agent_id == message.agent_id
        targets = {t for t in message.target_agents if t != message.agent_id}
        assert {e.target_agent for e in decision.causal_relationships} == targets
        assert all(e.source_agent == message.agent_id for e in decision.causal_relationships)


@st.composite
def mixed_inputs(draw: st.DrawFn) -> list[tuple[str, str, AgentMessage | bytes]]:
    """(kind, agent, payload): good messages and every kind of bad input, in random order."""
    undecodable = st.one_of(
        st.binary(max_size=60),
        st.just(b'{"agent_id": "a-1", "timestamp": "2026-01-01T00:00:00"'),
        st.just(b'{"agent_id": 5}'),
        st.just(b"\xff\xfe not utf-8"),
        st.text(max_size=20).map(lambda t: ('{"agent_id": "%s"}' % t.replace('"', "").replace("\\", "")).encode()),
        st.integers(257, 20_000).map(lambda n: b'{"agent_id": "' + b"x" * n + b'"}'),
    )
    kinds = st.sampled_from(["good", "good", "good", "undecodable", "wrong_key", "raise"])
    items: list[tuple[str, str, AgentMessage | bytes]] = []
    for kind in draw(st.lists(kinds, min_size=1, max_size=10)):
        agent = draw(st.sampled_from(AGENTS))
        items.append((kind, agent, draw(undecodable) if kind == "undecodable" else draw(agent_messages())))
    if draw(st.integers(0, 9)) == 0:  # a slow message now and then: each costs a time-out and a retry
        items.insert(draw(st.integers(0, len(items))), ("sleep", draw(st.sampled_from(AGENTS)), draw(agent_messages())))
    return items


# Feature: real-time-data-flow, Property 5: Processing error routing
@EXAMPLES
@given(items=mixed_inputs())
def test_processing_errors_go_to_the_error_topic_with_their_metadata(stage1: RunningProcessor, items: list[tuple[str, str, AgentMessage | bytes]]) -> None:
    """Fuzzed bad input never stops the processor: each bad record is on the error topic with
    its stage, exception, reason, bytes and source; each good one gets exactly one decision."""
    run = uuid.uuid4().hex
    records: list[tuple[bytes | None, bytes | None]] = []
    for i, (kind, agent, payload) in enumerate(items):
        if kind == "undecodable":
            assert isinstance(payload, bytes)
            records.append((f"{run}-{i}".encode(), payload))
            continue
        assert isinstance(payload, AgentMessage)
        content = {"chaos": kind} if kind in ("raise", "sleep") else {}
        message = _with(payload, agent_id=agent, message_id=f"{run}-{i}", correlation_id=run)
        message = AgentMessage(**{**{n: getattr(message, n) for n in message.__dataclass_fields__}, "content": {**message.content, **content}})
        # A wrong key: another agent's id, so the record also sits in that agent's partition.
        key = (agent + "-elsewhere" if kind == "wrong_key" else agent).encode()
        records.append((key, encode(message)))
    placed = stage1.send(records)
    good = [i for i, (kind, _, _) in enumerate(items) if kind == "good"]
    bad = [i for i, (kind, _, _) in enumerate(items) if kind != "good"]
    errors = stage1.reader.seen.errors
    stage1.wait(lambda: len(stage1.reader.seen.decisions[run]) >= len(good) and all(stage1.source(*placed[i]) in errors for i in bad), timeout=90)

    decided = [d.original_message.message_id for _, _, d in stage1.reader.seen.decisions[run]]
    assert sorted(decided) == sorted(f"{run}-{i}" for i in good)
    for i in good:
        assert stage1.source(*placed[i]) not in errors
    for i in bad:
        kind = items[i][0]
        (letter,) = errors[stage1.source(*placed[i])]
        key, value = records[i]
        assert (letter.original_key, letter.original_value) == (key, value)
        assert letter.message
        if kind == "undecodable":
            expected = decode_record(Record(stage1.topics.raw, placed[i][0], placed[i][1], key, value, 0))
            assert (letter.stage, letter.error_type, letter.message, letter.field) == ("decode", "SchemaError", expected.message, expected.field)
        elif kind == "wrong_key":
            assert (letter.stage, letter.field) == ("validate", "agent_id") and "keyed by agent_id" in letter.message
        elif kind == "raise":
            assert (letter.stage, letter.error_type) == ("process", "RuntimeError") and "chaos requested" in letter.message
        else:
            assert (letter.stage, letter.error_type) == ("process", "ProcessingTimeout")
    stage1.check_alive()


# Feature: real-time-data-flow, Property 6: Agent-specific message ordering
@EXAMPLES
@given(senders=st.lists(st.sampled_from(AGENTS), min_size=1, max_size=40), templates=st.lists(agent_messages(), min_size=1, max_size=5))
def test_each_agents_decisions_keep_its_message_order(stage1: RunningProcessor, senders: list[str], templates: list[AgentMessage]) -> None:
    """An agent's messages are decided in the order sent, in the agent's own partition, and
    its trust updates chain (each one starts where the previous one ended)."""
    run = uuid.uuid4().hex
    messages = [_with(templates[i % len(templates)], agent_id=agent, message_id=f"{run}-{i:03d}", correlation_id=run) for i, agent in enumerate(senders)]
    placed = stage1.send([(m.agent_id.encode(), encode(m)) for m in messages])
    stage1.wait(lambda: len(stage1.reader.seen.decisions[run]) >= len(messages))

    sent: dict[str, list[str]] = defaultdict(list)
    for message, (partition, _) in zip(messages, placed, strict=True):
        assert partition == partition_for_key(message.agent_id.encode(), PARTITIONS)
        sent[message.agent_id].append(message.message_id)
    committed: dict[str, list[tuple[int, int, object]]] = defaultdict(list)
    for partition, offset, decision in sorted(stage1.reader.seen.decisions[run], key=lambda item: (item[0], item[1])):
        committed[decision.original_message.agent_id].append((partition, offset, decision))
    for agent, ids in sent.items():
        decisions = committed[agent]
        assert [d.original_message.message_id for _, _, d in decisions] == ids
        assert {p for p, _, _ in decisions} == {partition_for_key(agent.encode(), PARTITIONS)}
        raw_offsets = [d.processing_metadata.offset for _, _, d in decisions]
        assert raw_offsets == sorted(raw_offsets)
        for (_, _, earlier), (_, _, later) in zip(decisions, decisions[1:], strict=False):
            assert later.trust_impact.before == pytest.approx(earlier.trust_impact.after, abs=1e-9)


def test_the_shared_processor_survived_every_example(stage1: RunningProcessor) -> None:
    """After all examples (bad ones included) the processor still runs and never gave up a batch for good."""
    stage1.check_alive()
    assert stage1.processor.stats.batches > 0
