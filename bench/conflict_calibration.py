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

Two layouts are measured, because the resource ledger the predictor reads is part of the
per-partition state: **1 partition** (``chorus-lab analyze``'s default: the ledger sees the
whole fleet, as the global ledger table of DESIGN.md will give every instance) and
**6 partitions** (a live deployment today: each partition's ledger sees only the messages
of its own agents).
"""

from __future__ import annotations

import argparse
import bisect
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chorus_lab import simulate  # noqa: E402
from chorus_lab.bus.partitioner import partition_for_key  # noqa: E402
from chorus_lab.pipeline import RecordMeta, Stage1  # noqa: E402

BANDS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0000001)


def scored_requests(messages: list, partitions: int) -> list[tuple[float, bool]]:
    """(risk, denied) for every answered request, deciding the fleet through Stage1."""
    stage = Stage1()
    risk: dict[str, float] = {}
    for offset, message in enumerate(messages):
        key = message.agent_id.encode()
        out = stage.decide(RecordMeta("agent-messages-raw", partition_for_key(key, partitions), offset, key=key), message)
        if out.decision is not None and message.content.get("action") == "request_resource":
            risk[message.message_id] = out.decision.conflict_analysis.risk
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
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"simulated fleets: {args.agents} agents, {args.messages} benign messages + all scenarios, seeds {seeds}\n")
    pooled: dict[int, list[tuple[float, bool]]] = {1: [], 6: []}
    print(f"{'seed':>5} {'requests':>9} {'denied':>7}   {'AUC 1 partition':>16} {'AUC 6 partitions':>17}")
    for seed in seeds:
        fleet = simulate.simulate(simulate.SimulationConfig(agents=args.agents, messages=args.messages, seed=seed)).messages
        per_layout = {partitions: scored_requests(fleet, partitions) for partitions in pooled}
        for partitions, scored in per_layout.items():
            pooled[partitions] += scored
        one = per_layout[1]
        print(f"{seed:>5} {len(one):>9} {sum(d for _, d in one):>7}   {roc_auc(one):>16.3f} {roc_auc(per_layout[6]):>17.3f}")
    print()
    for partitions, scored in pooled.items():
        print(f"all seeds, {partitions} partition(s): ROC AUC {roc_auc(scored):.3f}   (goal >= 0.85)")
        for band, count, rate in bands(scored):
            print(f"    risk {band}: {count:>6} requests, {rate:6.1%} denied")
    return 0


if __name__ == "__main__":
    sys.exit(main())
