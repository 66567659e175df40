"""Is conflict prediction calibrated? ROC AUC of predicted risk against real outcomes.

Usage:
    .venv/bin/python bench/conflict_calibration.py [--agents 50] [--messages 15000] [--seeds 3,4,5]

The simulator (``chorus_lab.simulate``) runs labelled fleets whose stewards track real
capacity; every ``request_resource`` is answered by its steward with ``grant`` or ``deny``
(the reply's ``causation_id`` names the request). The outcome of a request is "conflict"
when the answer is ``deny``. Each fleet's messages go through stage 1's pure core
(``chorus_lab.pipeline.Stage1``) in event order, exactly as the processor would feed it,
and the risk in each request's decision is scored against its outcome:

- ROC AUC: the probability that a request that was denied got a higher risk than one that
  was granted (0.5 is chance; goal 0.85 or more);
- the denial rate per risk band, which must rise with the risk.

Four layouts are measured, because the resource ledger the predictor reads is part of the
per-partition state: **1 partition** (``chorus-lab analyze``'s default: the ledger sees the
whole fleet), **6 partitions, local ledgers** (each partition's ledger sees only the
messages of its own agents), and 6 partitions reading stage 2's global ledger table,
which arrives ``--lag`` messages late: **table alone** (the table's record, overlaid only
with newer local requests and holdings; ``GlobalTablePredictor(use_news=False)``) and
**table + local news** (the default: the partition's own events since the record replayed
on it, then carried forward to the request; ``engine.global_ledger``).

    .venv/bin/python bench/conflict_calibration.py --lag 50                # seeds 3,4,5
    .venv/bin/python bench/conflict_calibration.py --lag 50 --seeds 6,7,8  # held out
"""

from __future__ import annotations

import argparse
import bisect
import sys
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chorus_lab import simulate  # noqa: E402
from chorus_lab.bus.partitioner import partition_for_key  # noqa: E402
from chorus_lab.engine import LedgerPredictor  # noqa: E402
from chorus_lab.engine.global_ledger import GlobalLedgerTable, GlobalTablePredictor  # noqa: E402
from chorus_lab.pipeline import RecordMeta, Stage1  # noqa: E402
from chorus_lab.stage2 import Stage2  # noqa: E402

BANDS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0000001)


def scored_requests(messages: list, partitions: int, global_lag: int | None = None, news: bool = True) -> list[tuple[float, bool]]:
    """(risk, denied) for every answered request, deciding the fleet through Stage1.

    ``global_lag``: feed the decisions to stage 2's core as well and let every partition's
    predictor read stage 2's published ledger (``engine.global_ledger``), each record
    arriving ``global_lag`` messages after the decision that produced it (the pipeline's
    latency: stage 1's batch, stage 2's batch, the table consumer's poll). ``news``: each
    partition replays what it saw after the table's record on top of it (the default);
    False reads the table alone.
    """
    table = GlobalLedgerTable()
    stage = Stage1(predictor=GlobalTablePredictor(LedgerPredictor(), table, use_news=news)) if global_lag is not None else Stage1()
    stage2 = Stage2() if global_lag is not None else None
    in_flight: deque[tuple[int, list]] = deque()
    risk: dict[str, float] = {}
    for offset, message in enumerate(messages):
        while in_flight and in_flight[0][0] <= offset:
            for record in in_flight.popleft()[1]:
                table.apply(record.to_dict())
        key = message.agent_id.encode()
        out = stage.decide(RecordMeta("agent-messages-raw", partition_for_key(key, partitions), offset, key=key), message)
        if out.decision is not None and message.content.get("action") == "request_resource":
            risk[message.message_id] = out.decision.conflict_analysis.risk
        if stage2 is not None and out.decision is not None:
            updates = stage2.process(out.decision).ledger_updates
            if updates:
                in_flight.append((offset + max(1, global_lag or 0), updates))
    outcome: dict[str, bool] = {}
    for message in messages:
        if message.causation_id in risk and message.content.get("action") in ("grant", "deny"):
            outcome.setdefault(message.causation_id, message.content["action"] == "deny")
    return [(risk[request], denied) for request, denied in outcome.items()]


def roc_auc(scored: list[tuple[float, bool]]) -> float:
    """P(risk of a denied request > risk of a granted one), ties counting half. O(n log n)."""
    negatives = sorted(r for r, denied in scored if not denied)
    positives = [r for r, denied in scored if denied]
    if not positives or not negatives:
        return float("nan")
    total = 0.0
    for risk in positives:
        below = bisect.bisect_left(negatives, risk)
        ties = bisect.bisect_right(negatives, risk) - below
        total += below + 0.5 * ties
    return total / (len(positives) * len(negatives))


def bands(scored: list[tuple[float, bool]]) -> list[tuple[str, int, float]]:
    rows = []
    for low, high in zip(BANDS, BANDS[1:], strict=False):
        inside = [denied for risk, denied in scored if low <= risk < high]
        if inside:
            rows.append((f"{low:.1f}-{min(high, 1.0):.1f}", len(inside), sum(inside) / len(inside)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--messages", type=int, default=15_000)
    parser.add_argument("--seeds", default="3,4,5")
    parser.add_argument("--lag", type=int, default=500, help="messages between a decision and its ledger record reaching stage 1 (default %(default)s)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"simulated fleets: {args.agents} agents, {args.messages} benign messages + all scenarios, seeds {seeds}\n")
    layouts = {
        "1 partition": (1, None, True),
        "6 partitions, local ledgers": (6, None, True),
        f"6 partitions, table alone (lag {args.lag})": (6, args.lag, False),
        f"6 partitions, table + local news (lag {args.lag})": (6, args.lag, True),  # the default
    }
    pooled: dict[str, list[tuple[float, bool]]] = {name: [] for name in layouts}
    print(f"{'seed':>5} {'requests':>9} {'denied':>7}   " + "   ".join(f"AUC {name}" for name in layouts))
    for seed in seeds:
        fleet = simulate.simulate(simulate.SimulationConfig(agents=args.agents, messages=args.messages, seed=seed)).messages
        per_layout = {name: scored_requests(fleet, partitions, lag, news) for name, (partitions, lag, news) in layouts.items()}
        for name, scored in per_layout.items():
            pooled[name] += scored
        one = per_layout["1 partition"]
        print(f"{seed:>5} {len(one):>9} {sum(d for _, d in one):>7}   " + "   ".join(f"{roc_auc(per_layout[name]):>{4 + len(name)}.3f}" for name in layouts))
    print()
    for name, scored in pooled.items():
        print(f"all seeds, {name}: ROC AUC {roc_auc(scored):.3f}   (goal >= 0.85)")
        for band, count, rate in bands(scored):
            print(f"    risk {band}: {count:>6} requests, {rate:6.1%} denied")
    return 0


if __name__ == "__main__":
    sys.exit(main())
