"""Cost per interaction and memory of the causal graph (and of all of stage 2) as fleets grow.

For fleets of 1,000, 10,000 and 100,000 agents it feeds ``interactions_per_agent`` × N
processed decisions (a sender, 1-4 targets from its usual peers, stage 1's causal edges)
into :class:`~chorus_lab.graph.GraphTopologyManager` and reports:

- µs per interaction over the whole run and over the last 20,000 (steady state), and the
  ratio to the 1,000-agent run measured in the same process (flat means ≈ 1);
- the snapshot (whole-graph metrics) cost in ms, which runs on a cadence, not per message;
- memory of the graph (tracemalloc, in a second pass) against its configured limits,
  with a run where the edge limit is hit (eviction, graceful degradation);
- µs per decision for the whole stage-2 core (graph, ledger, six detectors, alerts,
  metrics) on a shorter run.

    .venv/bin/python bench/graph_scaling.py                # 1k, 10k, 100k
    .venv/bin/python bench/graph_scaling.py --sizes 1000,10000 --per-agent 2
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import random
import sys
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chorus_lab.graph import GraphConfig, GraphTopologyManager  # noqa: E402
from chorus_lab.schema import (  # noqa: E402
    AgentMessage,
    CausalEdge,
    ConflictAnalysis,
    ProcessedDecision,
    ProcessingMetadata,
    TrustScoreUpdate,
)
from chorus_lab.stage2 import Stage2  # noqa: E402

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NO_CONFLICT = ConflictAnalysis(0.0, 1.0, "none", "not a request")
ACTIONS = [("status", "request"), ("delegate", "dependency"), ("forward", "dependency"), ("claim", "request")]
"""Resource requests are left out: unanswered ones would pile up in the ledger (its cost is
O(pending requests per resource)), which is the simulator's business, not this benchmark's."""


def decisions(agents: int, count: int, seed: int = 0, rate_per_s: float = 1000.0) -> Iterator[ProcessedDecision]:
    """Synthetic decisions: each agent talks mostly to its 8 usual peers, heavy-tailed activity."""
    rng = random.Random(seed)
    weights = [rng.lognormvariate(0, 1) for _ in range(agents)]
    cumulative, total = [], 0.0
    for w in weights:
        total += w
        cumulative.append(total)
    import bisect

    names = [f"agent-{i:06d}" for i in range(agents)]
    for i in range(count):
        sender = min(bisect.bisect(cumulative, rng.random() * total), agents - 1)
        peers = [(sender + 1 + (sender * 7 + k * 131) % 997) % agents for k in range(8)]
        targets = list(dict.fromkeys(rng.sample(peers, rng.randint(1, 4))))
        action, relationship = ACTIONS[rng.randrange(len(ACTIONS))]
        when = T0 + timedelta(seconds=i / rate_per_s)
        message = AgentMessage(
            names[sender], when, "request", {"action": action, "task_id": f"t{i}"},
            [names[t] for t in targets], f"c{i}", {}, message_id=f"m{i}",
        )
        edges = [CausalEdge(names[sender], names[t], relationship, 0.5, when, when) for t in targets if t != sender]  # type: ignore[arg-type]
        yield ProcessedDecision(
            message,
            NO_CONFLICT,
            TrustScoreUpdate(names[sender], 100.0, 100.0, 0.0, "", when),
            None,
            ProcessingMetadata("bench", "bench", "raw", 0, i, when, when, 0.0),
            edges,
        )


def time_graph(agents: int, count: int, config: GraphConfig) -> dict[str, float]:
    """µs per interaction, also split by what it did: reinforce existing edges or create one.

    The split matters for "flat": a small fleet's interactions mostly reinforce edges that
    exist, a large fleet's (with the same interactions per agent) mostly create them, and
    creating costs more. Comparing like with like shows what the graph's size itself costs.
    """
    graph = GraphTopologyManager(config)
    per_call: list[float] = []
    creating: list[float] = []
    reinforcing: list[float] = []
    clock = time.perf_counter
    gc.collect()
    for decision in decisions(agents, count):
        start = clock()
        updates = graph.observe(decision)
        elapsed = clock() - start
        per_call.append(elapsed)
        (creating if any(u.update_type == "edge_created" for u in updates) else reinforcing).append(elapsed)
    when = T0 + timedelta(seconds=count / 1000.0)
    start = clock()
    graph.expire(when)
    snapshot = graph.snapshot(when)
    snapshot_ms = (clock() - start) * 1000
    tail = per_call[-20_000:]

    def mean_us(values: list[float]) -> float:
        values = values[-20_000:]
        return 1e6 * sum(values) / len(values) if values else float("nan")

    return {
        "us_all": 1e6 * sum(per_call) / len(per_call),
        "us_tail": mean_us(per_call),
        "us_p99": 1e6 * sorted(tail)[int(0.99 * len(tail))],
        "us_create": mean_us(creating),
        "us_reinforce": mean_us(reinforcing),
        "share_create": len(creating) / len(per_call),
        "nodes": len(graph.nodes),
        "edges": len(graph.edges),
        "evicted_edges": graph.evictions["edges"],
        "snapshot_ms": snapshot_ms,
        "exact": snapshot.exact,
    }


def memory_of_graph(agents: int, count: int, config: GraphConfig) -> float:
    """MB held by the graph after ``count`` interactions (tracemalloc; decisions not counted)."""
    gc.collect()
    tracemalloc.start()
    graph = GraphTopologyManager(config)
    baseline = 0
    for i, decision in enumerate(decisions(agents, count)):
        if i == 0:
            baseline = tracemalloc.get_traced_memory()[0]
        graph.observe(decision)
    del decision
    gc.collect()
    current = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (current - baseline) / 1e6


def time_stage2(agents: int, count: int) -> dict[str, float]:
    """µs per decision over the last ``count`` decisions, after every agent was seen twice."""
    stage2 = Stage2()
    clock = time.perf_counter
    warm = 2 * agents
    per_call: list[float] = []
    for i, decision in enumerate(decisions(agents, warm + count, seed=1)):
        start = clock()
        stage2.process(decision)
        if i >= warm:
            per_call.append(clock() - start)
    return {"us": 1e6 * sum(per_call) / len(per_call), "p99": 1e6 * sorted(per_call)[int(0.99 * len(per_call))]}


def one_size(agents: int, per_agent: int, stage2_count: int, tight_edges: int | None) -> dict[str, object]:
    """Everything measured for one fleet size (run in a fresh interpreter by :func:`main`)."""
    count = max(30_000, per_agent * agents)
    config = GraphConfig() if tight_edges is None else GraphConfig(max_edges=tight_edges)
    result: dict[str, object] = {"agents": agents, "count": count, **time_graph(agents, count, config)}
    result["memory_mb"] = memory_of_graph(agents, count, config)
    if stage2_count and tight_edges is None:
        result["stage2"] = time_stage2(agents, stage2_count)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--per-agent", type=int, default=3, help="interactions per agent (default 3)")
    parser.add_argument("--stage2", type=int, default=20_000, help="decisions measured for stage 2 after warm-up (default 20000)")
    parser.add_argument("--tight-edges", type=int, default=100_000, help="edge limit of the limit-hit run (default 100000)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:  # the child process: one measurement, as JSON
        agents, tight = args.one.split(":")
        print(json.dumps(one_size(int(agents), args.per_agent, args.stage2, int(tight) or None)))
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    config = GraphConfig()

    def measure(agents: int, tight: int = 0) -> dict:
        # A fresh interpreter per size: no heap, garbage or caches left over from the last one.
        command = [sys.executable, __file__, "--one", f"{agents}:{tight}", "--per-agent", str(args.per_agent), "--stage2", str(args.stage2)]
        return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)

    results = [measure(agents) for agents in sizes]
    print(f"### Causal graph: cost per interaction (limits: {config.max_nodes:,} nodes, {config.max_edges:,} edges)")
    print()
    print(
        "| agents | interactions | µs/interaction (all) | µs (last 20k) | p99 µs | creating an edge: µs (share) | "
        "reinforcing only: µs | vs first (create / reinforce) | nodes | edges | snapshot ms | memory MB |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    base = results[0]
    for r in results:
        print(
            f"| {r['agents']:,} | {r['count']:,} | {r['us_all']:.1f} | {r['us_tail']:.1f} | {r['us_p99']:.1f} | "
            f"{r['us_create']:.1f} ({r['share_create']:.0%}) | {r['us_reinforce']:.1f} | "
            f"{r['us_create'] / base['us_create']:.2f} / {r['us_reinforce'] / base['us_reinforce']:.2f} | "
            f"{r['nodes']:,} | {r['edges']:,} | {r['snapshot_ms']:.0f} | {r['memory_mb']:.0f} |"
        )
    print()
    tight = measure(sizes[-1], args.tight_edges)
    print(
        f"Edge limit hit ({args.tight_edges:,} edges, {tight['agents']:,} agents, {tight['count']:,} interactions): "
        f"{tight['us_tail']:.1f} µs/interaction in the last 20k, {tight['edges']:,} edges kept, "
        f"{tight['evicted_edges']:,} evicted, {tight['memory_mb']:.0f} MB."
    )
    print()
    print("### Stage 2 (graph, ledger, six detectors, alerts, metrics): cost per decision, after warm-up")
    print()
    print("| agents | decisions measured | µs/decision | p99 µs | vs first |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    first = results[0]["stage2"]["us"]
    for r in results:
        s2 = r["stage2"]
        print(f"| {r['agents']:,} | {args.stage2:,} | {s2['us']:.1f} | {s2['p99']:.1f} | {s2['us'] / first:.2f} |")
    print()
    print(f"Python {sys.version.split()[0]}; each size measured in a fresh interpreter.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
