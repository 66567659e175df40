"""Stage 1's in-process decide path, this tree against another checkout, in paired rounds.

Usage:
    git worktree add /tmp/chorus-base <commit>          # the tree to compare with
    .venv/bin/python bench/decide_path.py --baseline /tmp/chorus-base [--pairs 25] [--batch 2000]

The decide path is everything stage 1 does to a raw record between the consumer and the
producer: decode, validate, the prediction engine, encode the decision (``LocalDecider``,
with the per-batch alarm and the global ledger table, as the processor runs it). No broker.

Two worker processes, one per tree, each simulate the same fleet (200 agents, seed 7),
decide 2,000 messages to warm up, and then wait. Each pair of rounds has both decide the
next ``--batch`` messages, the order alternating from pair to pair; the ratio of their
times is taken per pair. The VM's CPU speed drifts by a third within minutes, which makes
separate runs minutes apart useless for a 10 % change; paired rounds seconds apart cancel
the drift. Prints each tree's median µs per message and the median ratio (this / baseline)
with its quartiles.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
FLEET_SEED = 7
WARM_UP = 2000


def worker(batch: int, rounds: int) -> None:
    """Child: decide ``batch`` more messages each time a line arrives on stdin; print µs per message."""
    from datetime import UTC, datetime

    from chorus_lab import simulate
    from chorus_lab.bus import Record
    from chorus_lab.bus.partitioner import partition_for_key
    from chorus_lab.engine import EngineConfig
    from chorus_lab.schema import encode
    from chorus_lab.stage1_deciders import DecideSettings, LocalDecider

    count = WARM_UP + batch * rounds
    messages = simulate.simulate(simulate.SimulationConfig(agents=200, messages=count, seed=FLEET_SEED, scenarios={})).messages
    records, offsets = [], [0] * 6
    for message in messages:
        key = message.agent_id.encode()
        partition = partition_for_key(key, 6)
        records.append(Record("agent-messages-raw", partition, offsets[partition], key, encode(message), 0))
        offsets[partition] += 1
    settings = DecideSettings(
        raw_topic="agent-messages-raw", decisions_topic="agent-decisions-processed", alerts_topic="system-alerts", partitions=6,
        message_timeout_s=2.0, instance_id="bench", engine_config=EngineConfig(), predictor=None, global_ledger=True,
    )
    decider = LocalDecider(settings, alarm=True)
    for start in range(0, WARM_UP, 500):
        decider.decide(records[start : start + 500], datetime.now(UTC))
    at = WARM_UP
    import chorus_lab

    print("ready", Path(chorus_lab.__file__).resolve().parent.parent, flush=True)
    for _ in sys.stdin:
        began = time.perf_counter()
        for start in range(at, at + batch, 500):  # the processor's batch size
            decider.decide(records[start : min(start + 500, at + batch)], datetime.now(UTC))
        at += batch
        print((time.perf_counter() - began) / batch * 1e6, flush=True)


def start(tree: Path, batch: int, rounds: int) -> subprocess.Popen[str]:
    # The child imports chorus_lab from ``tree``: PYTHONPATH comes before the installed package.
    env = {**os.environ, "PYTHONPATH": str(tree)}
    child = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--worker", "--batch", str(batch), "--pairs", str(rounds)],
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=tree,
    )
    assert child.stdout is not None
    ready, _, imported = child.stdout.readline().strip().partition(" ")
    if ready != "ready":
        raise SystemExit(f"the decide path of {tree} did not start")
    if Path(imported) != tree:
        raise SystemExit(f"the worker for {tree} imported chorus_lab from {imported} instead")
    return child


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, help="another checkout of this repository (e.g. a git worktree)")
    parser.add_argument("--pairs", type=int, default=25)
    parser.add_argument("--batch", type=int, default=2000, help="messages each tree decides per round")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.batch, args.pairs)
        return 0
    if args.baseline is None or not (args.baseline / "chorus_lab" / "pipeline.py").is_file():
        parser.error("--baseline must name a checkout of this repository (it has no chorus_lab/pipeline.py)")
    trees = {"this tree": HERE, "baseline": args.baseline.resolve()}
    children = {name: start(tree, args.batch, args.pairs) for name, tree in trees.items()}
    times: dict[str, list[float]] = {name: [] for name in trees}
    for pair in range(args.pairs):
        order = list(children) if pair % 2 == 0 else list(reversed(children))
        for name in order:
            child = children[name]
            assert child.stdin is not None and child.stdout is not None
            child.stdin.write("go\n")
            child.stdin.flush()
            times[name].append(float(child.stdout.readline()))
        print(f"  pair {pair + 1}/{args.pairs}: " + ", ".join(f"{name} {times[name][-1]:.1f} us/msg" for name in trees), file=sys.stderr)
    for child in children.values():
        assert child.stdin is not None
        child.stdin.close()
        child.wait(60)
    ratios = [mine / base for mine, base in zip(times["this tree"], times["baseline"], strict=True)]
    quartiles = statistics.quantiles(ratios, n=4)
    print(f"decide path, {args.pairs} pairs of {args.batch} messages (200 agents, 6 partitions), µs per message:")
    for name, tree in trees.items():
        print(f"  {name:10} {statistics.median(times[name]):6.1f}   ({tree})")
    print(f"  this tree / baseline: median {statistics.median(ratios):.3f} (quartiles {quartiles[0]:.3f}–{quartiles[2]:.3f}); below 1 is faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
