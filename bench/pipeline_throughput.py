"""Stage 1 with transactions against a real broker, compared with a bare transactional pass-through.

Usage:
    .venv/bin/python bench/pipeline_throughput.py [--messages 30000] [--rounds 3]
        [--rate 2000] [--seconds 30] [--warm-up 5] [--batch-size 500] [--decide-workers N] [--warm-messages 2000]
        [--broker-warm-passes 12] [--bootstrap HOST:PORT]

Without --bootstrap a local Apache Kafka is started for the run (``chorus_lab.broker.LocalBroker``)
and stopped after. Two measurements, each for both pipelines, in the same run and with the
same batching (``--batch-size`` records per transaction, the same consume wait):

- **Throughput**: ``--messages`` simulated agent messages are loaded into a 6-partition raw
  topic; each pipeline reads all of them as a fresh consumer group, one transaction per
  batch (begin → produce → send_offsets_to_transaction → commit). The pass-through copies
  each record to an output topic; stage 1 is ``StreamProcessor`` (decode, validate, the
  prediction engine, encode the decision, checkpoints). Timed from the first record read to
  the last commit; rounds alternate which goes first; medians are shown, and stage 1 as a
  ratio of the pass-through. Stage 1 runs twice per round: deciding in its own thread, and
  with ``--decide-workers`` processes (default: one per core; ``ProcessorSettings.decide_workers``)
  — the same single group member and transactional producer, the same batches; only the
  CPU work of deciding is spread over more cores. ``--decide-workers 0`` skips that run.
  Next to each rate: the machine's CPU time per message while it ran (every core's busy
  time from ``/proc/stat``, the broker's included), the cores that kept busy, and the
  share the hypervisor gave to other machines (steal): they tell a pipeline that waits
  from one short of cores, and a quiet run from a crowded one. All first run once,
  untimed, over ``--warm-messages`` (2,000), so the broker's internal topics (offsets,
  transaction state) exist before round 1.
- **Broker warm-up**: a fresh broker's JVM compiles its hot paths while it serves the
  first few hundred thousand transactional records (``jstat -compiler``: ~2,000 methods
  during the first pass of 30,000, still ~40–100 per pass after ten), and the pass-through,
  which mostly waits on the broker, speeds up 2–3× meanwhile; stage 1, bound by its own
  Python, much less. Timed rounds on a cold broker would flatter the ratio, so untimed
  pass-through passes over ``--messages`` records run first, until
  ``PLATEAU_PATIENCE`` passes in a row do not beat the best before them by more than
  ``PLATEAU_GAIN`` (at most ``--broker-warm-passes``, 12; 0 skips this). Each pass's rate is printed.
- **Latency** at a fixed offered rate (``--rate`` msg/s for ``--seconds``), for the
  pass-through and both stage-1 configurations: the pipeline runs in its own process; the raw topic stamps records with the broker's append time
  (``LogAppendTime``); a read_committed reader notes when each output record arrives.
  Latency = arrival − the raw record's append time, so it includes batching, processing,
  the commit and the reader's fetch. Records appended in the first ``--warm-up`` seconds
  (default 5) are left out of the steady-state figures: a fresh process first builds its
  connections, transaction partitions and per-agent state, and catches up the backlog that
  builds meanwhile; the p99 over the whole run is printed too.

The machines are shared and noisy (2 cores, the broker on the same machine): read the
ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chorus_lab import simulate  # noqa: E402
from chorus_lab.broker import BrokerConfig, LocalBroker, install  # noqa: E402
from chorus_lab.bus import Consumer, Record, TopicPartition, TopicSpec  # noqa: E402
from chorus_lab.bus.kafka import KafkaBus  # noqa: E402
from chorus_lab.processor import ProcessorSettings, StreamProcessor, Topics, consume_batch, read_range  # noqa: E402
from chorus_lab.schema import AgentMessage, encode  # noqa: E402

PARTITIONS = 6
PASS_OUT = "bench-passthrough-out"
PLATEAU_GAIN = 0.10
PLATEAU_PATIENCE = 3


def fleet(count: int, seed: int = 7) -> list[AgentMessage]:
    """Realistic traffic: the simulator's fleet of 200 agents (requests, grants, delegations, claims...)."""
    config = simulate.SimulationConfig(agents=200, messages=count, seed=seed, scenarios={})
    return simulate.simulate(config).messages[:count]


def make_topics(bus: KafkaBus, prefix: str, *, append_time: bool = False) -> Topics:
    topics = Topics(prefix)
    specs = topics.specs(PARTITIONS)
    if append_time:  # the broker stamps each raw record when it appends it
        specs = [replace(s, config={"message.timestamp.type": "LogAppendTime"}) if s.name == topics.raw else s for s in specs]
    bus.admin().create_topics(specs)
    bus.admin().create_topics([TopicSpec(topics.name(PASS_OUT), partitions=PARTITIONS)])
    return topics


def load(bus: KafkaBus, topic: str, messages: list[AgentMessage]) -> None:
    producer = bus.producer()
    for message in messages:
        while True:
            try:
                producer.produce(topic, encode(message), message.agent_id.encode())
                break
            except BufferError:
                producer.poll(0.01)
    assert producer.flush(120) == 0
    producer.close()


# --------------------------------------------------------------------------- the two pipelines


def machine_cpu_s() -> tuple[float, float]:
    """``(busy, stolen)``: CPU seconds since boot that this machine's cores were busy (Linux
    ``/proc/stat``: user, nice, system, irq, softirq; every process counted: the broker, the
    bench, its workers and anything else running), and that the hypervisor gave to other
    machines while this one wanted them (steal). NaNs where there is no ``/proc/stat``."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(value) for value in stat.readline().split()[1:9]]
    except OSError:
        return math.nan, math.nan
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


class FirstRead:
    """Wraps a consumer to note when the first records arrive (the group join is not timed)."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.at: float | None = None
        self.cpu_at = (math.nan, math.nan)
        self.original = consumer.consume

    def __call__(self, max_messages: int = 500, timeout: float = 1.0) -> list[Record]:
        records = self.original(max_messages, timeout)
        if records and self.at is None:
            self.at = time.perf_counter()
            self.cpu_at = machine_cpu_s()
        return records


@dataclass(frozen=True)
class Throughput:
    """One timed run: messages per second, and the machine's CPU time per message meanwhile."""

    rate: float
    cpu_us: float
    stolen: float
    """The share of the run's cores × seconds that the hypervisor gave to other machines."""


def timed_run(count: int, first: FirstRead) -> Throughput:
    """The run that ``first`` saw begin, ending now, over ``count`` messages."""
    elapsed = time.perf_counter() - (first.at or 0)
    busy, stolen = (now - then for now, then in zip(machine_cpu_s(), first.cpu_at, strict=True))
    return Throughput(count / elapsed, busy / count * 1e6, stolen / (elapsed * (os.cpu_count() or 1)))


class PassThrough:
    """Consume → produce the same record → commit, in one transaction per batch (the baseline)."""

    def __init__(self, bus: KafkaBus, topics: Topics, group: str, settings: ProcessorSettings) -> None:
        self.topics, self.settings = topics, settings
        self.out = topics.name(PASS_OUT)
        self.producer = bus.producer(transactional_id=f"bench-pass.{group}", **{"transaction.timeout.ms": int(settings.transaction_timeout_s * 1000)})
        self.producer.init_transactions()
        self.consumer = bus.consumer(group, **{"session.timeout.ms": int(settings.session_timeout_s * 1000), "queued.max.messages.kbytes": 16384})
        self.consumer.subscribe([topics.raw])
        self.records = 0

    def step(self) -> int:
        records = consume_batch(self.consumer, self.settings.batch_size, self.settings.poll_timeout_s)  # as stage 1 does
        if not records:
            return 0
        self.producer.begin_transaction()
        offsets: dict[TopicPartition, int] = {}
        for record in records:
            while True:
                try:
                    self.producer.produce(self.out, record.value, record.key)
                    break
                except BufferError:
                    self.producer.poll(0.01)
            offsets[record.topic_partition] = record.offset + 1
        self.producer.send_offsets_to_transaction(offsets, self.consumer)
        self.producer.commit_transaction()
        self.records += len(records)
        return len(records)

    def owned(self) -> int:
        return len(self.consumer.assignment())

    def close(self) -> None:
        self.consumer.close()
        self.producer.close()


def throughput_passthrough(bus: KafkaBus, topics: Topics, count: int, settings: ProcessorSettings) -> Throughput:
    pipe = PassThrough(bus, topics, f"pass-{uuid.uuid4().hex[:6]}", settings)
    first = FirstRead(pipe.consumer)
    pipe.consumer.consume = first  # type: ignore[method-assign]
    while pipe.records < count:
        pipe.step()
    result = timed_run(count, first)
    pipe.close()
    return result


def throughput_stage1(bus: KafkaBus, topics: Topics, count: int, settings: ProcessorSettings) -> Throughput:
    processor = StreamProcessor(bus, f"stage1-{uuid.uuid4().hex[:6]}", "bench", topics=topics, settings=settings)
    processor.start()
    first = FirstRead(processor._consumer)  # type: ignore[arg-type]
    processor._consumer.consume = first  # type: ignore[union-attr, method-assign]
    while processor.stats.records < count:
        processor.step()
    result = timed_run(count, first)
    processor.close()
    return result


# --------------------------------------------------------------------------- latency


def serve(kind: str, bootstrap: str, prefix: str, settings: ProcessorSettings) -> None:
    """Child process: run one pipeline until SIGTERM; print 'ready' once it owns every partition."""
    bus = KafkaBus(bootstrap, properties={})
    topics = Topics(prefix)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if kind == "stage1":
        pipe: PassThrough | StreamProcessor = StreamProcessor(bus, f"lat-{uuid.uuid4().hex[:6]}", "bench", topics=topics, settings=settings)
        pipe.start()
        owned = lambda: len(pipe.owned_partitions)  # type: ignore[union-attr]  # noqa: E731
    else:
        pipe = PassThrough(bus, topics, f"lat-{uuid.uuid4().hex[:6]}", settings)
        owned = pipe.owned  # noqa: E731
    announced = False
    while not stop.is_set():
        pipe.step()
        if not announced and owned() >= PARTITIONS:
            print("ready", flush=True)
            announced = True
    pipe.close()


def latency(
    kind: str, bus: KafkaBus, bootstrap: str, messages: list[AgentMessage], rate: float, seconds: float, settings: ProcessorSettings, warm_up: float
) -> dict[str, float]:
    """p50/p99 ms from a raw record's append time to its committed output's arrival."""
    prefix = f"lat{uuid.uuid4().hex[:6]}-"
    topics = make_topics(bus, prefix, append_time=True)
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, "--bootstrap", bootstrap, "--prefix", prefix, "--batch-size", str(settings.batch_size),
         "--decide-workers", str(settings.decide_workers)]
        + ([] if settings.global_ledger else ["--no-global-ledger"]),
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready", "the pipeline did not start"
        out_topic = topics.decisions if kind == "stage1" else topics.name(PASS_OUT)
        reader = bus.consumer(None)
        reader.assign({TopicPartition(out_topic, p): 0 for p in range(PARTITIONS)})
        total = int(rate * seconds)
        batch = messages[:total]
        arrived: dict[str, float] = {}
        began = time.time()

        def send() -> None:
            producer = bus.producer()
            for message in simulate.paced(batch, rate):
                producer.produce(topics.raw, encode(message), message.agent_id.encode())
                producer.poll(0)
            producer.flush(60)
            producer.close()

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        deadline = time.monotonic() + seconds + 60
        while len(arrived) < total and time.monotonic() < deadline:
            for record in reader.consume(1000, 0.05):
                now_ms = time.time() * 1000
                data = json.loads(record.value or b"{}")
                message_id = data["original_message"]["message_id"] if kind == "stage1" else data["message_id"]
                arrived[message_id] = now_ms
        sender.join(10)
        reader.close()
    finally:
        child.send_signal(signal.SIGTERM)
        child.wait(60)
    appended = raw_append_times(bus, topics.raw)
    steady_from_ms = (began + warm_up) * 1000
    everything = sorted(arrived[mid] - appended[mid] for mid in arrived if mid in appended)
    samples = sorted(arrived[mid] - appended[mid] for mid in arrived if mid in appended and appended[mid] >= steady_from_ms)
    return {
        "received": len(arrived) / total,
        "p50": statistics.median(samples),
        "p99": percentile(samples, 0.99),
        "p99_all": percentile(everything, 0.99),
    }


def percentile(ordered: list[float], share: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def raw_append_times(bus: KafkaBus, topic: str) -> dict[str, float]:
    reader = bus.consumer(None)
    times: dict[str, float] = {}
    for partition in range(PARTITIONS):
        tp = TopicPartition(topic, partition)
        low, high = reader.watermarks(tp)
        for record in read_range(reader, tp, low, high):
            times[json.loads(record.value or b"{}")["message_id"]] = float(record.timestamp_ms)
    reader.close()
    return times


# --------------------------------------------------------------------------- the run


def run(
    bootstrap: str, count: int, rounds: int, rate: float, seconds: float, batch_size: int, warm_up: float, global_ledger: bool = True, workers: int = 0,
    warm_messages: int = 2000, broker_warm_passes: int = 12,
) -> None:
    bus = KafkaBus(bootstrap, properties={})
    settings = ProcessorSettings(batch_size=batch_size, snapshot_every=5000, global_ledger=global_ledger)
    # name -> (kind, settings): the pass-through, stage 1 in its own thread, stage 1 with decide workers
    pipelines = {"pass-through": ("passthrough", settings), "stage 1": ("stage1", settings)}
    if workers:
        pipelines[f"stage 1, {workers} workers"] = ("stage1", replace(settings, decide_workers=workers))
    messages = fleet(max(count, int(rate * seconds), warm_messages))
    size = sum(len(encode(m)) for m in messages[:1000]) / 1000
    print(f"stage 1 vs a transactional pass-through; {os.cpu_count()} cores; batch {batch_size} records per transaction\n")
    print(f"throughput: {count} messages of ~{size:.0f} bytes, {PARTITIONS} partitions, {rounds} rounds (median)")
    results: dict[str, list[Throughput]] = {name: [] for name in pipelines}
    # Untimed: a fresh broker creates its offsets and transaction-state topics on first use,
    # which slowed whichever pipeline ran first in round 1 (always the pass-through).
    warm = make_topics(bus, f"warm{uuid.uuid4().hex[:6]}-")
    load(bus, warm.raw, messages[:warm_messages])
    for kind, with_settings in pipelines.values():
        throughput(kind, bus, warm, warm_messages, with_settings)
    if broker_warm_passes:
        rates = warm_broker(bus, messages[:count], settings, broker_warm_passes)
        state = "levelled off" if plateaued(rates) else f"not levelled off within {len(rates)} passes (--broker-warm-passes)"
        print(f"broker warm-up: {len(rates)} untimed pass-through passes, first {rates[0]:,.0f}, best {max(rates):,.0f} msg/s; {state}")
    for round_number in range(rounds):
        topics = make_topics(bus, f"tp{uuid.uuid4().hex[:6]}-")
        load(bus, topics.raw, messages[:count])
        order = list(pipelines) if round_number % 2 == 0 else list(reversed(pipelines))
        for name in order:
            kind, with_settings = pipelines[name]
            results[name].append(throughput(kind, bus, topics, count, with_settings))
        round_rates = ", ".join(f"{name} {results[name][-1].rate:,.0f}" for name in pipelines)
        print(f"  round {round_number + 1} (msg/s): {round_rates}", file=sys.stderr)
    median = {name: statistics.median(run.rate for run in runs) for name, runs in results.items()}
    cpu = {name: statistics.median(run.cpu_us for run in runs) for name, runs in results.items()}
    stolen = {name: max(run.stolen for run in runs) for name, runs in results.items()}
    for name, value in median.items():
        ratio = "" if name == "pass-through" else f"   ratio {value / median['pass-through']:.2f}  (goal >= 0.5)"
        cores = cpu[name] * value / 1e6
        print(f"  {name:22} {value:>10,.0f} msg/s   CPU {cpu[name]:4.0f} us/msg, {cores:.1f} of {os.cpu_count()} cores, stolen <= {stolen[name]:.0%}{ratio}")
    print("  (CPU: every core's busy time while the pipeline ran, the broker's included; stolen: the")
    print("  most of the cores' time the hypervisor gave elsewhere in any round)")

    print(f"\nlatency at {rate:,.0f} msg/s offered for {seconds:.0f} s (append time -> committed output seen by a reader;")
    print(f"steady state after {warm_up:.0f} s of warm-up)")
    lat = {name: latency(kind, bus, bootstrap, messages, rate, seconds, with_settings, warm_up) for name, (kind, with_settings) in pipelines.items()}
    for name, figures in lat.items():
        ratio = "" if name == "pass-through" else f"   p99 ratio {figures['p99'] / lat['pass-through']['p99']:.2f}  (goal <= 2)"
        print(
            f"  {name:22} p50 {figures['p50']:7.1f} ms   p99 {figures['p99']:7.1f} ms   "
            f"(whole run: p99 {figures['p99_all']:.0f} ms; {figures['received']:.0%} received){ratio}"
        )


def plateaued(rates: list[float], gain: float = PLATEAU_GAIN, patience: int = PLATEAU_PATIENCE) -> bool:
    """True when none of the last ``patience`` rates beat the best before them by more than ``gain``.

    >>> plateaued([7_700, 11_100, 11_800, 13_400]), plateaued([20_700, 19_000, 19_100, 21_000])
    (False, True)
    """
    if len(rates) <= patience:
        return False
    best_before = max(rates[:-patience])
    return all(rate <= best_before * (1 + gain) for rate in rates[-patience:])


def warm_broker(bus: KafkaBus, messages: list[AgentMessage], settings: ProcessorSettings, max_passes: int) -> list[float]:
    """Untimed pass-through passes over ``messages`` (each a fresh group on one loaded topic)
    until their rate levels off or ``max_passes`` ran; the rates, in order."""
    topics = make_topics(bus, f"broker-warm{uuid.uuid4().hex[:6]}-")
    load(bus, topics.raw, messages)
    rates: list[float] = []
    while len(rates) < max_passes and not plateaued(rates):
        rates.append(throughput_passthrough(bus, topics, len(messages), settings).rate)
        print(f"  broker warm-up pass {len(rates)}: pass-through {rates[-1]:,.0f} msg/s", file=sys.stderr)
    return rates


def throughput(kind: str, bus: KafkaBus, topics: Topics, count: int, settings: ProcessorSettings) -> Throughput:
    return (throughput_passthrough if kind == "passthrough" else throughput_stage1)(bus, topics, count, settings)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--warm-up", type=float, default=5.0, help="seconds left out of the steady-state latency figures")
    parser.add_argument("--warm-messages", type=int, default=2000, help="messages each pipeline reads, untimed, before round 1")
    parser.add_argument("--broker-warm-passes", type=int, default=12,
                        help="at most this many untimed pass-through passes until the broker's rate levels off (0: none)")
    parser.add_argument("--bootstrap", help="an existing broker (default: start a local one for the run)")
    parser.add_argument("--serve", choices=["stage1", "passthrough"], help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--no-global-ledger", action="store_true", help="stage 1 without the global ledger table reader (for comparison)")
    parser.add_argument("--decide-workers", type=int, default=os.cpu_count() or 1,
                        help="also run stage 1 with this many decide worker processes (default: one per core; 0: only the in-thread run)")
    args = parser.parse_args()
    if args.broker_warm_passes < 0:
        parser.error(f"--broker-warm-passes must be 0 or more, got {args.broker_warm_passes}")
    if args.serve:
        settings = ProcessorSettings(batch_size=args.batch_size, global_ledger=not args.no_global_ledger, decide_workers=args.decide_workers)
        serve(args.serve, args.bootstrap, args.prefix, settings)
        return 0
    figures = (args.messages, args.rounds, args.rate, args.seconds, args.batch_size, args.warm_up, not args.no_global_ledger, args.decide_workers, args.warm_messages,
               args.broker_warm_passes)
    if args.bootstrap:
        run(args.bootstrap, *figures)
        return 0
    install(progress=lambda text: print(text, file=sys.stderr))
    with tempfile.TemporaryDirectory() as folder, LocalBroker(BrokerConfig(data_dir=Path(folder))) as broker:
        run(broker.info.bootstrap, *figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
