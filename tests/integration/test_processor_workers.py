"""Stage 1 deciding in worker processes (``decide_workers``) commits what one thread commits."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from chorus_lab.bus import Bus, open_bus
from chorus_lab.processor import ProcessorSettings, StreamProcessor, Topics
from chorus_lab.schema import AgentMessage, encode
from chorus_lab.stage1_deciders import WorkerError
from tests.integration.test_processor_harness import PARTITIONS, ChaosPredictor, Reader
from tests.integration.test_processor_recovery import T0, comparable, fleet, step_until


def _inputs() -> list[tuple[bytes, bytes]]:
    """(key, value) records: a simulated fleet with conflicts and hoarding, plus input of every kind that fails."""
    records = [(m.agent_id.encode(), encode(m)) for m in fleet(agents=30, messages=900, seed=9)]
    bad = [
        (b"a-1", b"{not json"),  # decode
        (b"someone-else", encode(AgentMessage("a-2", T0, "broadcast", {}, [], "c", {}, message_id="m-miskeyed"))),  # validate
        (b"a-3", encode(AgentMessage("a-3", T0, "request", {"chaos": "raise"}, [], "c", {}, message_id="m-raise"))),  # process
        (b"a-4", encode(AgentMessage("a-4", T0 + timedelta(seconds=1), "request", {"chaos": "sleep"}, [], "c", {}, message_id="m-slow"))),  # time-out
    ]
    for index, item in enumerate(bad):
        records.insert(200 + 150 * index, item)
    return records


def _decide(bus: Bus, workers: int) -> tuple[dict[str, object], dict[str, tuple[str, str]], list[tuple[str, list[str]]]]:
    """Run the inputs through a fresh instance to the end; return decisions, dead letters and alerts as committed."""
    topics = Topics(f"w{uuid.uuid4().hex[:8]}-")
    bus.admin().create_topics(topics.specs(PARTITIONS))
    producer = bus.producer()
    for key, value in _inputs():
        producer.produce(topics.raw, value, key)
    assert producer.flush(60) == 0
    producer.close()
    settings = ProcessorSettings(batch_size=100, snapshot_every=250, message_timeout_s=0.3, decide_workers=workers)
    processor = StreamProcessor(bus, f"g-{uuid.uuid4().hex[:6]}", "same-instance", topics=topics, settings=settings, predictor=ChaosPredictor(sleep_s=30))
    processor.run_until_caught_up(240)  # on the test's main thread: a local decider is interrupted by SIGALRM too
    reader = Reader(bus, topics)
    reader.until(lambda: reader.count >= len(_inputs()), 60)
    reader.poll(0.3)
    decisions = {d.original_message.message_id: comparable(d) for ds in reader.seen.decisions.values() for _, _, d in ds}
    letters = {source.split("/", 1)[1]: (letter.stage, letter.error_type) for source, (letter, *_) in reader.seen.errors.items()}
    alerts = sorted((json.loads(r.value)["pattern"], json.loads(r.value)["affected_agents"]) for r in reader.seen.alerts)
    assert sum(len(ds) for ds in reader.seen.decisions.values()) == len(decisions), "a message was decided twice"
    reader.close()
    return decisions, letters, alerts


def test_two_decide_workers_commit_exactly_what_one_thread_commits(any_bus: Bus) -> None:
    """Same decisions (trust, conflicts, interventions), the same dead letters with the same
    stages, the same quarantine alerts: only where the CPU work runs differs."""
    in_thread = _decide(any_bus, 0)
    in_workers = _decide(any_bus, 2)
    decisions, letters, alerts = in_thread
    assert len(decisions) == len(_inputs()) - 4
    assert sorted(letters.values()) == sorted([("decode", "SchemaError"), ("validate", "SchemaError"), ("process", "RuntimeError"), ("process", "ProcessingTimeout")])
    assert in_workers[1] == letters
    assert in_workers[2] == alerts
    differing = [mid for mid in decisions if in_workers[0].get(mid) != decisions[mid]]
    assert not differing and len(in_workers[0]) == len(decisions), f"{len(differing)} decisions differ, e.g. {differing[:3]}"


def test_a_worker_that_dies_stops_the_processor_with_a_clear_error(tmp_path: Path) -> None:
    bus = open_bus(f"embedded://{tmp_path}/bus")
    topics = Topics("dies-")
    processor = StreamProcessor(bus, "g", "i", topics=topics, settings=ProcessorSettings(partitions=2, decide_workers=1))
    processor.start()
    step_until(processor, lambda: len(processor.owned_partitions) == 2)
    processor._decider._processes[0].kill()  # type: ignore[union-attr]
    producer = bus.producer()
    producer.produce(topics.raw, encode(AgentMessage("a-1", T0, "broadcast", {}, [], "c", {}, message_id="m-1")), b"a-1")
    assert producer.flush(10) == 0
    with pytest.raises(WorkerError, match=r"decide worker 0 is gone \(exit code -9\)"):
        step_until(processor, lambda: False, timeout=30)
    processor.close()


def test_decide_workers_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="decide_workers must be 0"):
        ProcessorSettings(decide_workers=-1)


def test_a_predictor_that_cannot_be_pickled_is_refused_by_name() -> None:
    from chorus_lab.engine import EngineConfig, LedgerPredictor
    from chorus_lab.stage1_deciders import DecideSettings, WorkerDecider

    class Local(LedgerPredictor):  # defined in a function: pickle cannot find it again
        pass

    settings = DecideSettings("raw", "decisions", "alerts", 6, 2.0, "i", EngineConfig(), predictor=Local())
    with pytest.raises(ValueError, match="must be picklable"):
        WorkerDecider(settings, 1)
