"""Replay: the pipeline's state as of any time, rebuilt from the log; and re-runs into a sandbox.

:func:`state_at` rebuilds, as of event time ``at`` (every event at or before it counts):

- stage 1's per-partition state — trust scores, quarantines, the resource ledger — by
  running the partition's ``agent-messages-raw`` records (and ``chorus-trust-signals``
  records) through the same pure core the processor runs (:class:`~chorus_lab.pipeline.Stage1`);
- the causal graph, from the committed decisions on ``agent-decisions-processed`` whose
  message time is at or before ``at``, in event-time order (from the log start, or only the
  last ``graph_window_ms`` of them: edges decay with a 10-minute half-life, so an hour or
  two of decisions gives the same edges at a fraction of the cost; nodes not seen in the
  window are then missing).

It starts from the partition's checkpoint on ``chorus-snapshots`` when that checkpoint
covers only events up to ``at``; the topic is compacted, so only the newest checkpoint
per partition survives and it is usable for recent times only; otherwise from the log
start. Signals are merged with the raw records by event time (a checkpoint holds exactly
what the live processor applied; a replay from the log start approximates the live
interleaving of signals, which depended on timing — see docs/history.md).

Each partition is read up to its end offset taken when the replay starts, and stops once
its message times pass ``at`` by more than ``lateness_ms``, so a replay always ends.

:func:`replay_into` re-runs the events of ``(since, until]`` into sandbox topics
(``<prefix><topic>``) starting from the state at ``since``: the state is written there as
checkpoints, the events are copied to the sandbox raw topic and a stage-1 processor runs
over it. The live topics are only read.
"""

from __future__ import annotations

import heapq
import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from chorus_lab.bus import Bus, ConfigurationError, Consumer, Record, TopicError, TopicPartition
from chorus_lab.engine import EngineConfig
from chorus_lab.graph import GraphTopologyManager
from chorus_lab.history.eventtime import to_ms
from chorus_lab.pipeline import DetectionSignal, RecordMeta, Stage1, decision_fingerprint, validate, validate_signal
from chorus_lab.processor import (
    DEFAULT_GROUP,
    Checkpoint,
    ProcessorSettings,
    ProcessorStats,
    StreamProcessor,
    Topics,
    checkpoint_key,
    checkpoint_records,
    latest_checkpoint,
    message_or_dead_letter,
    read_range,
)
from chorus_lab.schema import AgentMessage, ProcessedDecision, SchemaError, decode, parse_timestamp

log = logging.getLogger(__name__)

DEFAULT_LATENESS_MS = 5 * 60 * 1000


@dataclass
class SystemState:
    """The pipeline's state as of ``at``, and how it was rebuilt."""

    at: datetime
    stage: Stage1
    graph: GraphTopologyManager
    events: int = 0
    """Raw records and signals applied."""
    read: int = 0
    """Records read (the applied ones, and those past ``at`` that ended a partition)."""
    checkpoints: dict[int, int] = field(default_factory=dict)
    """Partition -> raw offset of the checkpoint the replay started from."""
    decisions: list[ProcessedDecision] = field(default_factory=list)
    """The decisions the replay made (with ``keep_decisions``)."""

    def trust_scores(self) -> dict[str, float]:
        """Every agent's trust score (as last updated, like the live engine reports it)."""
        scores: dict[str, float] = {}
        for p in self.stage.partitions():
            for agent, trust in self.stage.engine(p).state.trust.agents.items():
                scores[agent] = round(trust.score, 6)
        return dict(sorted(scores.items()))

    def quarantined(self) -> dict[str, str]:
        """Quarantined agents -> since when (ISO time)."""
        found: dict[str, str] = {}
        for p in self.stage.partitions():
            for agent, record in self.stage.engine(p).state.quarantine.quarantined.items():
                found[agent] = record.since.isoformat()
        return dict(sorted(found.items()))

    def ledger(self) -> dict[str, dict[str, float]]:
        """Resource -> holder -> amount held (each partition's ledger holds its agents' requests)."""
        held: dict[str, dict[str, float]] = {}
        for p in self.stage.partitions():
            ledger = self.stage.engine(p).state.ledger
            for resource in sorted(ledger.resources):
                holders = ledger.holders(resource)
                if holders:
                    held.setdefault(resource, {}).update(holders)
        return {r: dict(sorted(h.items())) for r, h in sorted(held.items())}

    def graph_summary(self) -> dict[str, Any]:
        """Nodes (status, trust) and edges (strength decayed to ``at``) of the causal graph."""
        now_s = self.at.timestamp()
        half_life = self.graph.config.half_life_s
        return {
            "nodes": {a: {"status": n.status, "trust": round(n.trust, 6)} for a, n in sorted(self.graph.nodes.items())},
            "edges": sorted([e.source, e.target, e.relationship_type, round(e.strength_at(now_s, half_life), 6)] for e in self.graph.edges.values()),
            "quarantined": sorted(self.graph.quarantined),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: what ``chorus-lab replay --at`` prints."""
        return {
            "at": self.at.isoformat(),
            "events": self.events,
            "checkpoints": {str(p): o for p, o in sorted(self.checkpoints.items())},
            "trust": self.trust_scores(),
            "quarantined": self.quarantined(),
            "ledger": self.ledger(),
            "graph": self.graph_summary(),
        }


@dataclass(frozen=True, slots=True)
class _Event:
    time_ms: int
    kind: int  # 0 raw, 1 signal: at the same time a message goes first
    offset: int
    record: Record
    payload: AgentMessage | DetectionSignal


def _raw_events(consumer: Consumer, tp: TopicPartition, start: int, end: int, at_ms: int, lateness_ms: int, counter: list[int]) -> Iterator[_Event]:
    for record in read_range(consumer, tp, start, end):
        counter[0] += 1
        decoded = message_or_dead_letter(record)
        if not isinstance(decoded, AgentMessage):
            continue  # dead-lettered live, never in the state
        t = to_ms(decoded.timestamp)
        if t > at_ms + lateness_ms:
            return
        if t <= at_ms:
            yield _Event(t, 0, record.offset, record, decoded)


def _signal_events(consumer: Consumer, tp: TopicPartition, start: int, end: int, at_ms: int, counter: list[int]) -> list[_Event]:
    events = []
    for record in read_range(consumer, tp, start, end):
        counter[0] += 1
        try:
            signal = DetectionSignal.decode(record.value or b"")
        except SchemaError:
            continue
        t = to_ms(signal.detected_at)
        if t <= at_ms:
            events.append(_Event(t, 1, record.offset, record, signal))
    return events


def _event_time_before(consumer: Consumer, tp: TopicPartition, offset: int, signals: bool) -> int | None:
    """Event time of the last record before ``offset`` (None when there is none)."""
    low = consumer.watermarks(tp)[0]
    start = max(low, offset - 16)
    records = list(read_range(consumer, tp, start, offset))
    if not records:
        return None
    value = records[-1].value or b""
    try:
        return to_ms(DetectionSignal.decode(value).detected_at if signals else message_or_dead_letter(records[-1]).timestamp)  # type: ignore[union-attr]
    except (SchemaError, AttributeError):
        return None


def state_at(
    bus: Bus,
    at: datetime,
    *,
    group_id: str = DEFAULT_GROUP,
    topic_prefix: str = "",
    engine_config: EngineConfig | None = None,
    use_checkpoints: bool = True,
    keep_decisions: bool = False,
    lateness_ms: int = DEFAULT_LATENESS_MS,
    graph_window_ms: int | None = None,
    progress: bool = False,
) -> SystemState:
    """The pipeline's state as of event time ``at`` (see the module docstring).

    ``group_id`` names whose checkpoints to use (the processor's group); ``progress``
    shows a tqdm bar over the records to read.
    """
    if at.tzinfo is None:
        raise ValueError(f"at={at.isoformat()} has no time zone; use UTC")
    topics = Topics(topic_prefix)
    admin = bus.admin()
    raw_description = admin.describe(topics.raw)
    if raw_description is None:
        raise TopicError(f"topic {topics.raw} does not exist on {bus.url}: nothing to replay")
    partitions = raw_description.partitions
    signals_description = admin.describe(topics.signals)
    snapshots_description = admin.describe(topics.snapshots)
    at_ms = to_ms(at)
    stage = Stage1(engine_config, instance_id="replay")
    state = SystemState(at, stage, GraphTopologyManager())
    consumer = bus.consumer(None)
    bar = None
    produced: list[tuple[int, int, int, ProcessedDecision]] = []
    try:
        plans = []
        for p in range(partitions):
            raw = TopicPartition(topics.raw, p)
            signals = TopicPartition(topics.signals, p) if signals_description is not None and p < signals_description.partitions else None
            raw_low, raw_end = consumer.watermarks(raw)
            sig_low, sig_end = consumer.watermarks(signals) if signals is not None else (0, 0)
            checkpoint = _usable_checkpoint(consumer, topics, group_id, p, snapshots_description.partitions if snapshots_description else 0, raw, signals, at_ms) if use_checkpoints else None
            if checkpoint is not None:
                stage.restore(p, checkpoint.state)
                state.checkpoints[p] = checkpoint.raw_offset
                raw_low, sig_low = checkpoint.raw_offset, checkpoint.signals_offset
            else:
                stage.engine(p)
            plans.append((p, raw, raw_low, raw_end, signals, sig_low, sig_end))
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=sum(r_end - r_low + s_end - s_low for _, _, r_low, r_end, _, s_low, s_end in plans), unit="rec", desc=f"replay to {at.isoformat()}")
        for p, raw, raw_low, raw_end, signals, sig_low, sig_end in plans:
            counter = [0]
            signal_events = _signal_events(consumer, signals, sig_low, sig_end, at_ms, counter) if signals is not None else []
            for event in heapq.merge(list(_raw_events(consumer, raw, raw_low, raw_end, at_ms, lateness_ms, counter)), signal_events, key=lambda e: (e.time_ms, e.kind, e.offset)):
                decision = _apply(stage, event, partitions)
                state.events += 1
                if decision is not None:
                    produced.append((event.time_ms, p, event.offset, decision))
            state.read += counter[0]
            if bar is not None:
                bar.update(raw_end - raw_low + sig_end - sig_low)
    finally:
        consumer.close()
        if bar is not None:
            bar.close()
    produced.sort(key=lambda item: item[:3])
    if state.checkpoints:
        # A checkpoint holds no decisions: take the committed ones for the graph.
        graph_input = _committed_decisions(bus, topics, at_ms, lateness_ms, graph_window_ms)
    else:
        # Replayed from the log start, the replay made every decision itself (equal to the
        # committed ones but for wall-clock fields, which the graph does not read).
        low_ms = None if graph_window_ms is None else at_ms - graph_window_ms
        graph_input = [d for t, _, _, d in produced if low_ms is None or t > low_ms]
    for decision in graph_input:
        state.graph.observe(decision)
    if keep_decisions:
        state.decisions = [d for *_, d in produced]
    return state


def _committed_decisions(bus: Bus, topics: Topics, at_ms: int, lateness_ms: int, window_ms: int | None) -> list[ProcessedDecision]:
    """The committed decisions with message time in ``(at - window, at]``, in event-time order."""
    description = bus.admin().describe(topics.decisions)
    if description is None:
        return []
    consumer = bus.consumer(None)
    found: list[tuple[int, int, int, bytes]] = []
    low_ms = None if window_ms is None else at_ms - window_ms
    try:
        # Record timestamps are at or after the event time (eventtime clamps only forwards for
        # old events), so the window's start can use the time index; its end cannot.
        starts = consumer.offsets_for_time(topics.decisions, low_ms) if low_ms is not None else {}
        for p in range(description.partitions):
            tp = TopicPartition(topics.decisions, p)
            low, end = consumer.watermarks(tp)
            for record in read_range(consumer, tp, max(low, starts.get(p, low)), end):
                value = record.value or b""
                t = to_ms(parse_timestamp(json.loads(value)["original_message"]["timestamp"]))
                if t > at_ms + lateness_ms:
                    break
                if t <= at_ms and (low_ms is None or t > low_ms):
                    found.append((t, p, record.offset, value))
    finally:
        consumer.close()
    found.sort(key=lambda item: item[:3])
    return [decode(ProcessedDecision, value) for *_, value in found]


def _apply(stage: Stage1, event: _Event, partitions: int) -> ProcessedDecision | None:
    record = event.record
    meta = RecordMeta(record.topic, record.partition, record.offset, record.timestamp_ms, record.key)
    try:
        if isinstance(event.payload, AgentMessage):
            validate(meta, event.payload, partitions)
            return stage.decide(meta, event.payload).decision
        validate_signal(meta, event.payload, partitions)
        stage.apply_signal(record.partition, event.payload)
    except Exception as exc:  # it failed the same way live, and was dead-lettered then
        log.debug("replay of %s skipped: %s", meta.source, exc)
    return None


def _usable_checkpoint(consumer: Consumer, topics: Topics, group_id: str, p: int, snapshot_partitions: int, raw: TopicPartition, signals: TopicPartition | None, at_ms: int) -> Checkpoint | None:
    """The partition's checkpoint if everything it covers happened at or before ``at``."""
    if snapshot_partitions == 0:
        return None
    tp = TopicPartition(topics.snapshots, p % snapshot_partitions)
    low, high = consumer.watermarks(tp)
    checkpoint = latest_checkpoint(list(read_range(consumer, tp, low, high)), checkpoint_key(group_id, topics.raw, p))
    if checkpoint is None:
        return None
    last_raw = _event_time_before(consumer, raw, checkpoint.raw_offset, signals=False)
    if last_raw is not None and last_raw > at_ms:
        return None
    if signals is not None and checkpoint.signals_offset > 0:
        last_signal = _event_time_before(consumer, signals, checkpoint.signals_offset, signals=True)
        if last_signal is not None and last_signal > at_ms:
            return None
    return checkpoint


def replay_outputs(bus: Bus, at: datetime, **options: Any) -> list[dict[str, Any]]:
    """The fingerprints (:func:`~chorus_lab.pipeline.decision_fingerprint`) of the decisions a
    replay up to ``at`` makes: what two replays of the same log must agree on."""
    state = state_at(bus, at, keep_decisions=True, **options)
    return [decision_fingerprint(d) for d in state.decisions]


# --------------------------------------------------------------------------- sandbox re-runs


@dataclass(frozen=True, slots=True)
class ReplayRun:
    """What :func:`replay_into` did."""

    prefix: str
    copied: int
    start_state_events: int
    stats: ProcessorStats


def replay_into(
    bus: Bus,
    since: datetime,
    until: datetime,
    prefix: str,
    *,
    group_id: str = DEFAULT_GROUP,
    topic_prefix: str = "",
    engine_config: EngineConfig | None = None,
    progress: bool = False,
    timeout: float = 3600.0,
) -> ReplayRun:
    """Re-run the events of ``(since, until]`` into ``<prefix><topic>`` from the state at ``since``.

    Raises ``ConfigurationError`` when ``prefix`` would name the live topics (empty, or the
    same as ``topic_prefix``) or the sandbox raw topic already holds records.
    """
    if not prefix or prefix == topic_prefix:
        raise ConfigurationError(f"replay prefix {prefix!r} would write to the live topics; give a sandbox prefix such as 'whatif-'")
    if until <= since:
        raise ValueError(f"until ({until.isoformat()}) must be after since ({since.isoformat()})")
    live, sandbox = Topics(topic_prefix), Topics(prefix)
    partitions = _partitions(bus, live.raw)
    start = state_at(bus, since, group_id=group_id, topic_prefix=topic_prefix, engine_config=engine_config, progress=progress)
    bus.admin().create_topics(sandbox.specs(partitions))
    replay_group = f"chorus-replay-{uuid.uuid4().hex[:8]}"
    reader = bus.consumer(None)
    producer = bus.producer()
    copied = 0
    since_ms, until_ms = to_ms(since), to_ms(until)
    try:
        if any(reader.watermarks(TopicPartition(sandbox.raw, p))[1] > 0 for p in range(partitions)):
            raise ConfigurationError(f"{sandbox.raw} already holds records; choose a new prefix for each replay")
        snapshot_partitions = _partitions(bus, sandbox.snapshots)
        for p in range(partitions):
            # The state at ``since`` as the sandbox group's checkpoint at raw offset 0.
            checkpoint = Checkpoint(p, 0, 0, start.stage.snapshot(p), f"replay-{uuid.uuid4().hex[:12]}")
            for key, value, headers in checkpoint_records(checkpoint_key(replay_group, sandbox.raw, p), checkpoint, instance_id="replay"):
                producer.produce(sandbox.snapshots, value, key, partition=p % snapshot_partitions, headers=headers)
            tp = TopicPartition(live.raw, p)
            low, end = reader.watermarks(tp)
            for record in read_range(reader, tp, low, end):
                decoded = message_or_dead_letter(record)
                if isinstance(decoded, AgentMessage) and since_ms < to_ms(decoded.timestamp) <= until_ms:
                    producer.produce(sandbox.raw, record.value, record.key, partition=p, timestamp_ms=record.timestamp_ms)
                    copied += 1
        if producer.flush(60):
            raise TopicError(f"could not write every record to {sandbox.raw}")
    finally:
        producer.close()
        reader.close()
    committer = bus.consumer(replay_group)
    try:
        committer.assign({TopicPartition(t, p): 0 for t in (sandbox.raw, sandbox.signals) for p in range(partitions)})
        committer.commit({TopicPartition(t, p): 0 for t in (sandbox.raw, sandbox.signals) for p in range(partitions)})
    finally:
        committer.close()
    processor = StreamProcessor(
        bus, replay_group, "replay", topics=sandbox, engine_config=engine_config,
        settings=ProcessorSettings(create_topics=False, partitions=partitions, snapshot_interval_s=3600.0),
    )
    stats = processor.run_until_caught_up(timeout) if copied else processor.stats
    return ReplayRun(prefix, copied, start.events, stats)


def _partitions(bus: Bus, topic: str) -> int:
    description = bus.admin().describe(topic)
    if description is None:
        raise TopicError(f"topic {topic} does not exist on {bus.url}")
    return description.partitions


__all__ = ["DEFAULT_LATENESS_MS", "ReplayRun", "SystemState", "replay_into", "replay_outputs", "state_at"]
