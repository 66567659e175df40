"""The ``chorus-lab`` command: a thin layer over the Python API.

Every command that touches the bus takes ``--bus URL`` (default ``$CHORUS_BUS``, else the
embedded bus under ``.chorus/bus``). Errors are printed as one line naming what is wrong,
with exit status 1 (2 for a wrong command line).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from chorus_lab import config
from chorus_lab.bus import Bus, BusError, TopicPartition, open_bus, resolve_bus_url
from chorus_lab.schema import AgentMessage, SchemaError, decode_agent_message

Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # librdkafka repeats each connection problem while it retries; our errors name it once.
        logging.getLogger("chorus_lab.librdkafka").setLevel(logging.CRITICAL)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except (BusError, SchemaError, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"chorus-lab: error: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chorus-lab", description="Watch a fleet of autonomous agents in real time.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    def bus_option(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--bus", help=f"bus URL (default: ${'{'}CHORUS_BUS{'}'} or {resolve_bus_url(None)})")

    topics = command("topics", _topics, "create or describe chorus-lab's topics")
    topics.add_argument("action", choices=["create", "describe"])
    bus_option(topics)
    topics.add_argument("--partitions", type=int, default=config.DEFAULT_PARTITIONS, help="partitions per topic (default %(default)s)")
    topics.add_argument("--retention", action="append", default=[], metavar="TOPIC=DURATION", help="retention of a topic, e.g. system-alerts=365d or forever")

    produce = command("produce", _produce, "send agent messages from a JSON-lines file to agent-messages-raw")
    produce.add_argument("file", type=Path, help="one AgentMessage JSON object per line ('-' for standard input)")
    bus_option(produce)
    produce.add_argument("--spool-dir", type=Path, default=Path(".chorus/spool"), help="local spool for undelivered messages (default %(default)s)")
    produce.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for delivery at the end (default %(default)s)")

    tail = command("tail", _tail, "print agent messages as they are consumed")
    bus_option(tail)
    tail.add_argument("--topic", default=config.RAW)
    tail.add_argument("--max", type=int, default=0, help="stop after this many records (default: run until Ctrl-C)")
    tail.add_argument("--from-beginning", action="store_true", help="start at the oldest record, not the newest")

    simulate = command("simulate", _simulate, "generate a labelled agent fleet's messages into a file or onto the bus")
    simulate.add_argument("--agents", type=int, default=50)
    simulate.add_argument("--messages", type=int, default=10_000, help="benign messages to generate")
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("--scenarios", default="", help="e.g. routing_loop=2,byzantine=1 (default: none)")
    simulate.add_argument("--out", type=Path, help="write messages to this JSON-lines file")
    simulate.add_argument("--labels", type=Path, help="write ground-truth labels to this JSON-lines file")
    bus_option(simulate)
    simulate.add_argument("--rate", type=float, default=0.0, help="messages per second onto the bus (0: as fast as possible)")

    demo = command("demo", _demo, "simulate a fleet, send it through the bus and show it live")
    bus_option(demo)
    demo.add_argument("--agents", type=int, default=50)
    demo.add_argument("--rate", type=float, default=100.0, help="messages per second (default %(default)s)")
    demo.add_argument("--messages", type=int, default=30_000, help="benign messages in the simulated fleet (default %(default)s)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--scenarios", default="all", help="incidents mixed into the fleet, e.g. routing_loop=2,byzantine=1 (default %(default)s)")
    demo.add_argument("--once", action="store_true", help="stop by itself once the whole fleet is sent and stage 1 decided it (for scripts and tests)")
    _dashboard_options(demo)

    dashboard = command("dashboard", _dashboard, "serve the operator dashboard (Voila) on 127.0.0.1")
    bus_option(dashboard)
    _dashboard_options(dashboard)

    broker = command("broker", _broker, "install, start, stop or inspect a local Apache Kafka broker")
    broker.add_argument("action", choices=["install", "start", "stop", "status"])
    broker.add_argument("--home", type=Path, default=Path(".chorus/broker"), help="state and data directory (default %(default)s)")
    broker.add_argument("--port", type=int, default=9092, help="PLAINTEXT port on 127.0.0.1 (default %(default)s)")
    broker.add_argument("--sasl", action="store_true", help="also open a SASL_SSL/PLAIN listener with a self-signed certificate")
    _add_pipeline_commands(command, bus_option)
    from chorus_lab.history.commands import add_history_commands  # query, replay, audit

    add_history_commands(command, bus_option)
    return parser


# --------------------------------------------------------------------------- topics


def _topics(args: argparse.Namespace) -> int:
    bus = open_bus(args.bus)
    specs = config.topic_specs(args.partitions, config.parse_retention(args.retention))
    admin = bus.admin()
    if args.action == "create":
        created = admin.create_topics(specs)
        print(f"{bus.url}: created {len(created)} topic(s), {len(specs) - len(created)} already matched their spec")
        for name in created:
            print(f"  + {name}")
        return 0
    status = 0
    print(f"{'topic':32} {'partitions':>10} {'retention':>12} {'cleanup':>8}  status")
    for spec in specs:
        description = admin.describe(spec.name)
        if description is None:
            print(f"{spec.name:32} {'-':>10} {'-':>12} {'-':>8}  missing")
            status = 1
            continue
        differences = description.differences(spec)
        retention = description.config.get("retention.ms", "?")
        shown = "forever" if retention == "-1" else _human_ms(int(retention)) if retention.isdigit() else retention
        print(
            f"{spec.name:32} {description.partitions:>10} {shown:>12} {description.config.get('cleanup.policy', '?'):>8}  "
            + ("ok" if not differences else "differs: " + "; ".join(differences))
        )
        status = status or (1 if differences else 0)
    return status


def _human_ms(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


# --------------------------------------------------------------------------- produce


def _produce(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from chorus_lab.client import AgentClient
    from chorus_lab.deadletter import DeadLetter

    bus = open_bus(args.bus)
    bus.admin().create_topics([s for s in config.topic_specs() if s.name in (config.RAW, config.DLQ)])
    stream = sys.stdin.buffer if str(args.file) == "-" else args.file.open("rb")
    accepted = invalid = 0
    first_errors: list[str] = []
    with AgentClient(bus, spool_dir=args.spool_dir) as client, stream:
        batch: list[AgentMessage] = []
        for number, line in enumerate(tqdm(stream, desc="produce", unit=" msg", disable=None), start=1):
            if not line.strip():
                continue
            try:
                batch.append(decode_agent_message(line))
            except SchemaError as exc:
                invalid += 1
                client.send_dead_letter(DeadLetter.from_exception(exc, stage="decode", source=f"file:{args.file}:{number}", value=line.rstrip(b"\r\n")))
                if len(first_errors) < 5:
                    first_errors.append(f"line {number}: {exc}")
            if len(batch) >= 500:
                accepted += len(client.send_many(batch))
                batch = []
        accepted += len(client.send_many(batch))
        left = client.flush(args.timeout)
    print(f"{accepted} message(s) sent to {config.RAW} on {bus.url}; {invalid} invalid line(s) sent to {config.DLQ}")
    for error in first_errors:
        print(f"  {error}")
    if left:
        print(f"{left} record(s) not yet acknowledged stay in the spool {args.spool_dir}; they are sent on the next run", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- tail and demo


def _format_message(message: AgentMessage) -> str:
    content = message.content
    what = " ".join(str(content[k]) for k in ("action", "resource", "amount", "task_id") if k in content)
    targets = ",".join(message.target_agents[:3]) + ("…" if len(message.target_agents) > 3 else "")
    return f"{message.timestamp:%H:%M:%S.%f}"[:-3] + f"  {message.agent_id:>12} → {targets:<28} {message.message_type:<9} {what}"


def _follow(
    bus_url: str | None,
    topic: str,
    *,
    from_beginning: bool,
    stop: threading.Event,
    until: Callable[[int], bool] = lambda shown: False,
    ready: threading.Event | None = None,
) -> int:
    """Print the agent messages on ``topic`` as they arrive, until ``stop`` or ``until(shown)``.

    Undecodable records are shown as errors and go to the dead-letter topic. ``ready`` is
    set once the start offsets are fixed, so a producer started after it is seen whole.
    """
    from chorus_lab.ingest import MessageReader

    bus = open_bus(bus_url)
    description = bus.admin().describe(topic)
    if description is None:
        raise BusError(f"topic {topic} does not exist on {bus.url}; run `chorus-lab topics create`")
    consumer = bus.consumer(None)
    partitions = [TopicPartition(topic, p) for p in range(description.partitions)]
    consumer.assign({tp: (consumer.watermarks(tp)[0 if from_beginning else 1]) for tp in partitions})
    if ready is not None:
        ready.set()
    reader = MessageReader(bus, consumer)
    shown = 0
    try:
        while not stop.is_set() and not until(shown):
            batch = reader.read(500, timeout=0.5)
            for decoded in batch.messages:
                print(_format_message(decoded.message), flush=True)
            for letter in batch.dead_letters:
                print(f"!! {letter.source}: {letter.message} (sent to {reader.dlq_topic})", flush=True)
            shown += len(batch.messages) + len(batch.dead_letters)
    finally:
        reader.close()
    return shown


def _tail(args: argparse.Namespace) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    _follow(args.bus, args.topic, from_beginning=args.from_beginning, stop=stop, until=lambda shown: 0 < args.max <= shown)
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from chorus_lab import simulate

    scenarios = simulate.parse_scenarios(args.scenarios)
    if args.out:
        simulation = simulate.simulate(simulate.SimulationConfig(agents=args.agents, messages=args.messages, seed=args.seed, scenarios=scenarios))
        labels = args.labels or args.out.with_suffix(".labels.jsonl")
        simulate.write_jsonl(simulation, args.out, labels)
        print(f"{len(simulation.messages)} messages → {args.out}; {len(simulation.labels)} labels → {labels}")
        return 0
    sent = _send_paced(args.bus, simulate.iter_messages(_live_fleet(args, scenarios)), args.rate, threading.Event())
    print(f"{sent} messages sent to {config.RAW} on {resolve_bus_url(args.bus)}")
    return 0


def _live_fleet(args: argparse.Namespace, scenarios: dict[str, int]) -> SimulationConfig:  # noqa: F821 (imported lazily)
    """The fleet of ``simulate`` and ``demo`` on a bus: it runs in the present, at ``--rate``.

    The simulator sends about one message per ``mean_interval`` of event time (50 ms by
    default). Left at that, a fleet sent at 1,000 messages/s ran 50 times faster than the
    wall clock, minutes into the future within seconds, and a live view (which keeps the
    newest events) dropped every other sender's present ones (docs/benchmarks.md, "Operator
    dashboard"); so with ``--rate`` the event clock keeps the wall clock's pace.
    """
    from chorus_lab import simulate

    pace = {"mean_interval": timedelta(seconds=1 / args.rate)} if args.rate > 0 else {}
    return simulate.SimulationConfig(
        agents=args.agents, messages=args.messages, seed=args.seed, scenarios=scenarios, start=datetime.now(UTC), **pace
    )


def _send_paced(bus_url: str | None, messages: Iterable[AgentMessage], rate: float, stop: threading.Event) -> int:
    """Send ``messages`` through an ``AgentClient`` at ``rate`` per second (0: at once).

    In small groups, one spool write and one wake-up each: one by one, a simulator sharing
    a loaded 2-core machine fell short of 1,000 messages/s. A group is what is due in
    ~10 ms, so the pace stays smooth.
    """
    from chorus_lab import simulate
    from chorus_lab.client import AgentClient

    bus = open_bus(bus_url)
    bus.admin().create_topics([s for s in config.topic_specs() if s.name in (config.RAW, config.DLQ)])
    size = max(1, min(500, int(rate / 100))) if rate > 0 else 500
    remaining = iter(messages)
    groups = iter(lambda: list(itertools.islice(remaining, size)), [])
    timed = simulate.paced(groups, rate / size, sleep=stop.wait) if rate > 0 else groups
    sent = 0
    with AgentClient(bus, spool_dir=Path(".chorus/spool")) as client:
        for group in timed:
            if stop.is_set():
                break
            client.send_many(group)
            sent += len(group)
    return sent


def _dashboard_options(sub: argparse.ArgumentParser) -> None:
    from chorus_lab.dashboard_server import DEFAULT_PORT

    sub.add_argument("--port", type=int, default=DEFAULT_PORT, help="port of the dashboard on 127.0.0.1 (default %(default)s)")
    sub.add_argument("--no-token", action="store_true", help="serve without token authentication (anyone on this machine can open it)")


def _start_dashboard(args: argparse.Namespace, bus_url: str) -> DashboardServer:  # noqa: F821 (imported lazily)
    """Start Voila on the dashboard notebook and print its URL (with the token)."""
    from chorus_lab.dashboard_server import DashboardServer, DashboardSettings, absolute_bus_url, new_token

    settings = DashboardSettings(absolute_bus_url(bus_url), port=args.port, token=None if args.no_token else new_token())
    server = DashboardServer(settings)
    server.start()
    print(f"dashboard: {server.url}", flush=True)
    return server


def _dashboard(args: argparse.Namespace) -> int:
    from chorus_lab.dashboard_server import DashboardError

    stop = _stop_on_signals()
    server = _start_dashboard(args, resolve_bus_url(args.bus))
    try:
        print("Ctrl-C to stop.", flush=True)
        while not stop.wait(1.0):
            if not server.alive:
                raise DashboardError("the Voila server stopped unexpectedly")
    finally:
        server.stop()
    print("dashboard stopped", flush=True)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from chorus_lab import simulate
    from chorus_lab.processor import default_instance_id, run_pipeline

    fleet = _live_fleet(args, simulate.parse_scenarios(args.scenarios))
    bus = open_bus(args.bus)
    created = bus.admin().create_topics(config.topic_specs())
    stop = _stop_on_signals()
    print(f"chorus-lab demo on {bus.url} ({len(created)} topics created): {args.agents} agents, {args.rate:g} msg/s, scenarios {args.scenarios or 'none'}", flush=True)
    server = _start_dashboard(args, bus.url)
    sent: list[int] = []

    def send() -> None:
        sent.append(_send_paced(bus.url, simulate.iter_messages(fleet), args.rate, stop))
        if args.once:
            _stop_when_decided(bus, stop)

    sender = threading.Thread(target=send, name="demo-sender", daemon=True)
    try:
        sender.start()
        print("the simulated fleet → agent-messages-raw → pipeline → dashboard. Ctrl-C to stop.", flush=True)
        # The pipeline runs here, in the main thread, so its per-message time budget (SIGALRM) works.
        stats = run_pipeline(bus, stop=stop, instance_id=default_instance_id())
    finally:
        stop.set()
        sender.join(timeout=15)
        server.stop()
    print(f"stopped: {sent[0] if sent else 'some'} message(s) sent; pipeline {stats.summary()}", flush=True)
    return 0


def _stop_when_decided(bus: Bus, stop: threading.Event) -> None:
    """Set ``stop`` once stage 1's group has committed every raw message (the demo's ``--once``)."""
    from chorus_lab.autoscale import group_lag
    from chorus_lab.processor import DEFAULT_GROUP

    while not stop.wait(0.5):
        if group_lag(bus, DEFAULT_GROUP, config.RAW)[0] == 0:
            stop.set()


# --------------------------------------------------------------------------- broker


def _broker(args: argparse.Namespace) -> int:
    from chorus_lab import broker

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    if args.action == "install":
        libs = broker.install(progress=progress)
        print(f"Apache Kafka {broker.KAFKA_VERSION} installed in {libs}")
        return 0
    if args.action == "start":
        info = broker.start_detached(args.home, sasl=args.sasl, port=args.port, progress=progress)
        print(f"Kafka {broker.KAFKA_VERSION} running (pid {info.pid}): --bus {info.bus_url}")
        if info.sasl_bootstrap:
            print(f"SASL_SSL listener: {info.sasl_bootstrap} user {info.sasl_username}, CA {info.ca_file}, password in {args.home / 'sasl-password'}")
        return 0
    if args.action == "stop":
        stopped = broker.stop_detached(args.home)
        print("broker stopped" if stopped else f"no broker running from {args.home}")
        return 0
    info = broker.status(args.home)
    if info is None:
        print(f"no broker running from {args.home}")
        return 1
    print(f"running (pid {info.pid}): --bus {info.bus_url}; log {info.log_file}")
    return 0


# --------------------------------------------------------------------------- the pipeline: process, analyze, run


def _add_pipeline_commands(
    command: Callable[[str, Handler, str], argparse.ArgumentParser], bus_option: Callable[[argparse.ArgumentParser], None]
) -> None:
    from chorus_lab.processor import DEFAULT_GROUP

    def stage1_options(sub: argparse.ArgumentParser) -> None:
        bus_option(sub)
        sub.add_argument("--group", default=DEFAULT_GROUP, help="consumer group of the stage-1 instances (default %(default)s)")
        sub.add_argument("--instance", help="this instance's id; give a stable one so a restart fences its predecessor (default: host-pid)")
        sub.add_argument("--batch-size", type=int, default=500, help="most records per transaction (default %(default)s)")
        sub.add_argument("--message-timeout", type=float, default=2.0, help="per-message processing budget in seconds (default %(default)s)")
        sub.add_argument("--snapshot-every", type=int, default=5000, help="checkpoint a partition after this many records (default %(default)s)")
        sub.add_argument("--session-timeout", type=float, default=10.0, help="seconds before a silent instance's partitions move (default %(default)s; Kafka allows 6 or more)")
        sub.add_argument("--partitions", type=int, default=config.DEFAULT_PARTITIONS, help="partitions of topics created when missing (default %(default)s)")
        sub.add_argument("--topic-prefix", default="", help="read and write a sandbox copy of the topics named <prefix><topic>")
        sub.add_argument("--decide-workers", type=int, default=0,
                         help="processes that decide the records, each owning some partitions (default %(default)s: decide in the processor's own thread)")

    process = command("process", _process, "run stage 1 (conflict prediction, trust, quarantine) as a consumer-group member")
    stage1_options(process)
    process.add_argument("--autoscale", action="store_true", help="supervise local processor processes, started and stopped from consumer lag")
    process.add_argument("--max", type=int, default=config.DEFAULT_PARTITIONS, help="with --autoscale: most instances (default %(default)s; never more than partitions)")
    process.add_argument("--lag-threshold", type=int, default=5000, help="with --autoscale: lag one instance absorbs (default %(default)s)")
    process.add_argument("--cooldown", type=float, default=30.0, help="with --autoscale: seconds of low lag before an instance stops (default %(default)s)")
    process.add_argument("--stage", type=int, choices=(1, 2), default=1,
                         help="1: conflict prediction, trust, quarantine (default); 2: causal graph, detectors, metrics (single active: a newer instance fences the older; group default chorus-stage2)")

    analyze = command("analyze", _analyze, "run the pipeline over a JSON-lines file and write every output topic to a directory")
    analyze.add_argument("input", type=Path, help="one AgentMessage JSON object per line")
    analyze.add_argument("--out", type=Path, required=True, help="directory for <topic>.jsonl files")
    analyze.add_argument("--partitions", type=int, default=1, help="partitions of the scratch bus (default 1: the predictor sees the whole fleet)")

    run = command("run", _run, "run the whole pipeline in one process on the bus (stage 1 and stage 2)")
    stage1_options(run)


def _stage1_settings(args: argparse.Namespace) -> ProcessorSettings:  # noqa: F821 (imported lazily, like every command's modules)
    from chorus_lab.processor import ProcessorSettings

    return ProcessorSettings(
        batch_size=args.batch_size,
        message_timeout_s=args.message_timeout,
        snapshot_every=args.snapshot_every,
        session_timeout_s=args.session_timeout,
        partitions=args.partitions,
        decide_workers=args.decide_workers,
    )


def _stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT, so the loop finishes its batch and leaves the group."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return stop


def _process(args: argparse.Namespace) -> int:
    from chorus_lab.processor import StreamProcessor, Topics, default_instance_id

    if args.autoscale:
        if args.stage == 2:
            raise ValueError("--autoscale scales stage 1; stage 2 runs single-active (start a standby with --stage 2 instead)")
        return _autoscale(args)
    if args.stage == 2:
        return _process_stage2(args)
    bus = open_bus(args.bus)
    instance = args.instance or default_instance_id()
    processor = StreamProcessor(bus, args.group, instance, topics=Topics(args.topic_prefix), settings=_stage1_settings(args))
    stop = _stop_on_signals()
    print(f"stage 1 instance {instance} of group {args.group} on {bus.url}; Ctrl-C or SIGTERM to stop", flush=True)
    stats = processor.run(stop)
    print(f"stopped: {stats.summary()}", flush=True)
    return 0


def _process_stage2(args: argparse.Namespace) -> int:
    from chorus_lab.processor import DEFAULT_GROUP, Topics, default_instance_id
    from chorus_lab.stage2_processor import DEFAULT_STAGE2_GROUP, Stage2Processor, Stage2Settings

    bus = open_bus(args.bus)
    instance = args.instance or default_instance_id()
    group = DEFAULT_STAGE2_GROUP if args.group == DEFAULT_GROUP else args.group
    settings = Stage2Settings(batch_size=args.batch_size, snapshot_every=args.snapshot_every, partitions=args.partitions)
    processor = Stage2Processor(bus, group, instance, topics=Topics(args.topic_prefix), settings=settings)
    stop = _stop_on_signals()
    print(f"stage 2 instance {instance} of group {group} on {bus.url} (fences any older instance of the group); Ctrl-C or SIGTERM to stop", flush=True)
    stats = processor.run(stop)
    print(f"stopped: {stats.summary()}", flush=True)
    return 0


def _autoscale(args: argparse.Namespace) -> int:
    from chorus_lab.autoscale import ScalePolicy, Supervisor, group_lag, process_command
    from chorus_lab.processor import Topics, default_instance_id

    bus = open_bus(args.bus)
    topics = Topics(args.topic_prefix)
    bus.admin().create_topics(topics.specs(args.partitions))
    policy = ScalePolicy(max_instances=args.max, lag_threshold=args.lag_threshold, cooldown_s=args.cooldown)
    base = args.instance or default_instance_id()
    extra = ["--batch-size", str(args.batch_size), "--message-timeout", str(args.message_timeout), "--snapshot-every", str(args.snapshot_every),
             "--session-timeout", str(args.session_timeout), "--partitions", str(args.partitions), "--topic-prefix", args.topic_prefix,
             "--decide-workers", str(args.decide_workers)]
    supervisor = Supervisor(
        lambda slot: process_command(bus.url, args.group, f"{base}-{slot}", extra),
        lambda: group_lag(bus, args.group, topics.raw),
        policy,
        report=lambda text: print(text, flush=True),
    )
    stop = _stop_on_signals()
    print(f"autoscaling stage 1 (group {args.group}) on {bus.url}: up to {args.max} instance(s), {args.lag_threshold} lag each", flush=True)
    supervisor.run(stop)
    print("supervisor stopped; every instance left the group", flush=True)
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from chorus_lab.processor import analyze_file

    if not args.input.is_file():
        raise FileNotFoundError(f"input file {args.input} does not exist")
    summary = analyze_file(args.input, args.out, partitions=args.partitions)
    print(f"{summary.lines} line(s): {summary.sent} message(s) analysed, {summary.invalid} invalid (see {config.DLQ}.jsonl)")
    for topic, count in summary.written.items():
        print(f"  {args.out / (topic + '.jsonl')}: {count} record(s)")
    return 0


def _run(args: argparse.Namespace) -> int:
    from chorus_lab.processor import Topics, default_instance_id, run_pipeline

    bus = open_bus(args.bus)
    instance = args.instance or default_instance_id()
    stop = _stop_on_signals()
    print(f"chorus-lab pipeline on {bus.url} (stages 1 and 2, instance {instance}); Ctrl-C or SIGTERM to stop", flush=True)
    stats = run_pipeline(bus, stop=stop, group_id=args.group, instance_id=instance, topics=Topics(args.topic_prefix), settings=_stage1_settings(args))
    print(f"stopped: {stats.summary()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
