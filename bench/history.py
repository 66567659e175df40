"""History queries and state reconstruction over a large log, each against a full scan in the same run.

Usage:
    .venv/bin/python bench/history.py [--events 1000000] [--agents 200] [--hours 24] [--dir DIR]

Builds (or, with ``--dir`` pointing at an earlier run, reuses) an embedded bus holding
``--events`` simulated agent messages spread over ``--hours`` of event time and their
stage-1 decisions (the real ``StreamProcessor``, checkpoints on, audit-stamped, records
stamped with event time), then measures:

- **query**: one agent, one hour in the middle of the log, through
  ``chorus_lab.history.query_all`` (the agent's partition only, from ``offsets_for_time``),
  against a full scan of both event topics that keeps the same rows (key and timestamp
  compared on every record, JSON parsed only for the matches). Both must return the same
  rows; the ratio is full-scan time / query time (goal ≥ 20).
- **reconstruction**: ``chorus_lab.history.state_at`` at the middle of the log from the
  log start (no checkpoint), in events per second, against a plain read of the same raw
  records (no processing) — the ceiling a replay can reach; and at the end of the log,
  from the processor's latest checkpoints versus from the log start.

The causal graph is rebuilt from the last two hours of decisions (``graph_window_ms``):
edges decay with a 10-minute half-life, so older decisions only add nodes.

The machine is shared and noisy: read the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from chorus_lab import config, simulate
from chorus_lab.bus import TopicPartition
from chorus_lab.bus.embedded import EmbeddedBus
from chorus_lab.history import query_all, state_at
from chorus_lab.history.eventtime import to_ms
from chorus_lab.history.queries import row_of
from chorus_lab.processor import ProcessorSettings, StreamProcessor, Topics, read_range
from chorus_lab.schema import encode

PARTITIONS = 6
GROUP = "bench-history"


def build(bus: EmbeddedBus, events: int, agents: int, hours: float) -> tuple[datetime, datetime]:
    """Load ``events`` simulated messages and run stage 1 over them; return the event-time span."""
    topics = Topics()
    bus.admin().create_topics(topics.specs(PARTITIONS))
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=hours + 1)
    interval = timedelta(seconds=hours * 3600 / events)
    fleet = simulate.SimulationConfig(agents=agents, messages=events, seed=7, start=start, mean_interval=interval, scenarios={})
    producer = bus.producer()
    began = time.perf_counter()
    sent = 0
    last = start
    for message in simulate.iter_messages(fleet):
        if sent >= events:
            break
        producer.produce(topics.raw, encode(message), message.agent_id.encode(), timestamp_ms=to_ms(message.timestamp))
        sent += 1
        last = message.timestamp
        if sent % 50_000 == 0:
            producer.flush(120)
            print(f"  {sent:,} messages loaded ({time.perf_counter() - began:.0f} s)", flush=True)
    producer.flush(120)
    producer.close()
    began = time.perf_counter()
    processor = StreamProcessor(bus, GROUP, "bench", settings=ProcessorSettings(batch_size=5000, partitions=PARTITIONS, snapshot_every=100_000, snapshot_interval_s=3600.0, create_topics=False))
    stats = processor.run_until_caught_up(7200)
    print(f"  stage 1: {stats.summary()} in {time.perf_counter() - began:.0f} s", flush=True)
    return start, last


def full_scan_query(bus: EmbeddedBus, agent: str, since_ms: int, until_ms: int) -> int:
    """The same rows as the query, by reading every record of both event topics."""
    key = agent.encode()
    consumer = bus.consumer(None)
    rows = 0
    try:
        for topic in (config.DECISIONS, config.ALERTS):
            for p in range(PARTITIONS):
                tp = TopicPartition(topic, p)
                for record in read_range(consumer, tp, *consumer.watermarks(tp)):
                    if record.key == key and since_ms <= record.timestamp_ms < until_ms and row_of(record) is not None:
                        rows += 1
    finally:
        consumer.close()
    return rows


def plain_read(bus: EmbeddedBus, until_ms: int) -> int:
    """Read the raw records up to event time ``until_ms`` without processing them."""
    consumer = bus.consumer(None)
    count = 0
    try:
        for p in range(PARTITIONS):
            tp = TopicPartition(config.RAW, p)
            for record in read_range(consumer, tp, *consumer.watermarks(tp)):
                if record.timestamp_ms > until_ms:
                    break
                count += 1
    finally:
        consumer.close()
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--dir", type=Path, help="bus directory to build in, or to reuse when it holds a finished build")
    args = parser.parse_args()
    directory = args.dir or Path(tempfile.mkdtemp(prefix="chorus-bench-history-"))
    marker = directory / "built.txt"
    bus = EmbeddedBus(str(directory), maintenance_interval=None)
    if marker.is_file():
        start_text, end_text = marker.read_text().split()
        start, end = datetime.fromisoformat(start_text), datetime.fromisoformat(end_text)
        print(f"reusing the log in {directory}")
    else:
        print(f"building a log of {args.events:,} events in {directory}", flush=True)
        start, end = build(bus, args.events, args.agents, args.hours)
        marker.write_text(f"{start.isoformat()} {end.isoformat()}")

    middle = start + (end - start) / 2
    agent = "agent-007"
    since, until = middle, middle + timedelta(hours=1)

    began = time.perf_counter()
    frame = query_all(bus, agent=agent, since=since, until=until, limit=None)
    query_s = time.perf_counter() - began
    began = time.perf_counter()
    scanned = full_scan_query(bus, agent, to_ms(since), to_ms(until))
    scan_s = time.perf_counter() - began
    assert scanned == len(frame), f"the query returned {len(frame)} rows, the full scan {scanned}"
    print(f"query, one agent, one hour: {len(frame)} rows in {query_s * 1000:.0f} ms; full scan {scan_s * 1000:.0f} ms; ratio {scan_s / query_s:.1f}x (goal >= 20)")

    window = 2 * 3600 * 1000
    began = time.perf_counter()
    state = state_at(bus, middle, group_id=GROUP, use_checkpoints=False, graph_window_ms=window)
    replay_s = time.perf_counter() - began
    began = time.perf_counter()
    read = plain_read(bus, to_ms(middle))
    read_s = time.perf_counter() - began
    print(f"reconstruction at the middle from the log start: {state.events:,} events in {replay_s:.1f} s = {state.events / replay_s:,.0f} events/s;"
          f" plain read of the same raw records {read / read_s:,.0f} records/s; replay/read {(state.events / replay_s) / (read / read_s):.2f}")

    began = time.perf_counter()
    latest = state_at(bus, end, group_id=GROUP, graph_window_ms=window)
    checkpoint_s = time.perf_counter() - began
    began = time.perf_counter()
    whole = state_at(bus, end, group_id=GROUP, use_checkpoints=False, graph_window_ms=window)
    whole_s = time.perf_counter() - began
    same = latest.trust_scores() == whole.trust_scores() and latest.quarantined() == whole.quarantined() and latest.ledger() == whole.ledger()
    print(f"reconstruction at the end: from checkpoints {checkpoint_s:.1f} s ({latest.events:,} events replayed after {len(latest.checkpoints)} checkpoints);"
          f" from the log start {whole_s:.1f} s ({whole.events:,} events, {whole.events / whole_s:,.0f} events/s); ratio {whole_s / checkpoint_s:.1f}x; same state: {same}")
    bus.close()


if __name__ == "__main__":
    main()
