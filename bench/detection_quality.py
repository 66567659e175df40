"""Detection quality against the simulator's labelled scenarios.

Runs labelled fleets (several seeds, 50 and 1,000 agents) through stage 1's engine and
:class:`~chorus_lab.stage2.Stage2`, with the trust signals fed back as the real pipeline
does, and prints per pattern: precision, recall, F1, alerts per incident, the median
delay from a label's onset to its first alert, and false alerts per 10,000 benign
messages on benign-only runs. It also prints the precision of all alerts by confidence
band (does a 0.9 mean more than a 0.6?).

The analysis step is :func:`analyze_with_command`: what ``chorus-lab analyze`` runs
(``processor.analyze_file``: both stage shells, transactions, trust signals fed back to
stage 1 a batch later). ``--in-process`` scores :func:`analyze_in_process` instead (the
pure cores in one loop, signals fed back at once), for comparison.

Matching: an alert (its first emission; updates share its ``alert_id``) *detects* a label
when the pattern is the same, it names at least one of the label's agents, and it was
raised between the incident's first message and ``GRACE_S`` after its last. An alert that
matches no label of its own pattern but names an agent of another incident while that
incident runs is counted as *related* (for example an anomaly alert on a cascade's
amplifier), not as a false alert; every other alert is a false alert.

    .venv/bin/python bench/detection_quality.py              # full: seeds 1-4, 50 and 1,000 agents
    .venv/bin/python bench/detection_quality.py --quick      # seeds 1-2, 50 agents
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chorus_lab.engine import PredictionEngine  # noqa: E402
from chorus_lab.schema import AgentMessage, Alert, parse_timestamp  # noqa: E402
from chorus_lab.simulate import SCENARIO_KINDS, Label, SimulationConfig, simulate  # noqa: E402
from chorus_lab.stage2 import Stage2, Stage2Config, decision_from_engine  # noqa: E402

GRACE_S = 30.0
"""An alert up to this long after an incident's last message still counts for it."""

Analyze = Callable[[Sequence[AgentMessage]], list[Alert]]


def analyze_in_process(messages: Sequence[AgentMessage], config: Stage2Config | None = None) -> list[Alert]:
    """Engine + stage 2 in one process, trust signals fed back; every alert emitted."""
    engine = PredictionEngine()
    stage2 = Stage2(config)
    alerts: list[Alert] = []
    for offset, message in enumerate(messages):
        result = engine.process(message)
        if result.duplicate:
            continue
        out = stage2.process(decision_from_engine(message, result, offset=offset))
        alerts += out.alerts
        for signal in out.trust_signals:
            engine.apply_signal(*signal.engine_args())
    if messages:
        alerts += stage2.tick(messages[-1].timestamp + timedelta(hours=1)).alerts
    return alerts


def analyze_with_command(messages: Sequence[AgentMessage]) -> list[Alert]:
    """What ``chorus-lab analyze`` does (``processor.analyze_file``): the messages as a JSONL
    file, through both stage shells on a fresh embedded bus; the alerts it writes."""
    import tempfile

    from chorus_lab.processor import analyze_file
    from chorus_lab.schema import decode, encode

    with tempfile.TemporaryDirectory(prefix="chorus-bench-") as scratch:
        source = Path(scratch) / "input.jsonl"
        source.write_bytes(b"".join(encode(m) + b"\n" for m in messages))
        analyze_file(source, Path(scratch) / "out")
        lines = (Path(scratch) / "out" / "system-alerts.jsonl").read_bytes().splitlines()
    return [decode(Alert, line) for line in lines]


ANALYZE: Analyze = analyze_with_command


@dataclass
class PatternScore:
    incidents: int = 0
    detected: int = 0
    matched_alerts: int = 0
    false_alerts: int = 0
    related_alerts: int = 0
    delays_s: list[float] = field(default_factory=list)
    benign_alerts: int = 0

    @property
    def precision(self) -> float | None:
        total = self.matched_alerts + self.false_alerts
        return self.matched_alerts / total if total else None

    @property
    def recall(self) -> float | None:
        return self.detected / self.incidents if self.incidents else None

    @property
    def f1(self) -> float | None:
        p, r = self.precision, self.recall
        if p is None or r is None or p + r == 0:
            return None
        return 2 * p * r / (p + r)


@dataclass
class Report:
    scores: dict[str, PatternScore] = field(default_factory=lambda: {k: PatternScore() for k in SCENARIO_KINDS})
    benign_messages: int = 0
    labelled_messages: int = 0
    bands: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    """confidence band -> [matched, false]"""
    seconds: float = 0.0
    variants: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    """pattern/variant -> [incidents, detected]"""
    misses: list[str] = field(default_factory=list)
    false: list[str] = field(default_factory=list)


def first_emissions(alerts: Iterable[Alert]) -> list[Alert]:
    """One alert per ``alert_id`` (its first emission), agents merged over its updates."""
    first: dict[str, Alert] = {}
    agents: dict[str, list[str]] = defaultdict(list)
    for alert in alerts:
        first.setdefault(alert.alert_id, alert)
        agents[alert.alert_id] += [a for a in alert.affected_agents if a not in agents[alert.alert_id]]
    return [
        Alert(a.alert_id, a.pattern, a.severity, a.confidence, a.description, agents[a.alert_id], a.evidence, a.detected_at, a.details)
        for a in first.values()
    ]


def score_run(labels: list[Label], alerts: list[Alert], report: Report) -> None:
    """Add one labelled run's matches, misses and false alerts to ``report``."""
    grace = timedelta(seconds=GRACE_S)

    def window(label: Label) -> tuple[datetime, datetime]:
        start = label.details.get("start_time")
        begin = parse_timestamp(start) if isinstance(start, str) else label.onset_time
        return min(begin, label.onset_time), label.end_time + grace

    detected: dict[str, datetime] = {}
    for alert in first_emissions(alerts):
        if alert.pattern not in report.scores:
            continue  # quarantine alerts are interventions, not detections
        score = report.scores[alert.pattern]
        matches = [
            label
            for label in labels
            if label.pattern == alert.pattern
            and set(label.agents) & set(alert.affected_agents)
            and window(label)[0] <= alert.detected_at <= window(label)[1]
        ]
        band = confidence_band(alert.confidence)
        if matches:
            score.matched_alerts += 1
            report.bands[band][0] += 1
            for label in matches:
                if label.incident_id not in detected or alert.detected_at < detected[label.incident_id]:
                    detected[label.incident_id] = alert.detected_at
            continue
        related = any(
            set(label.agents) & set(alert.affected_agents) and window(label)[0] <= alert.detected_at <= window(label)[1]
            for label in labels
        )
        if related:
            score.related_alerts += 1
        else:
            score.false_alerts += 1
            report.bands[band][1] += 1
            report.false.append(f"{alert.pattern} {alert.detected_at.isoformat()} {alert.affected_agents[:4]} {alert.description[:140]}")
    for label in labels:
        score = report.scores[label.pattern]
        score.incidents += 1
        variant = report.variants[f"{label.pattern}/{label.details.get('variant', '-')}"]
        variant[0] += 1
        variant[1] += label.incident_id in detected
        if label.incident_id in detected:
            score.detected += 1
            score.delays_s.append((detected[label.incident_id] - label.onset_time).total_seconds())
        else:
            report.misses.append(f"{label.incident_id} {label.details.get('variant', '')} {label.agents}")


def confidence_band(confidence: float) -> str:
    for low in (0.9, 0.7, 0.5):
        if confidence >= low:
            return f">= {low}"
    return "< 0.5"


def evaluate(
    fleets: Sequence[int],
    seeds: Sequence[int],
    messages: int,
    scenarios_per_kind: int = 2,
    analyze: Analyze | None = None,
    verbose: bool = False,
) -> Report:
    """Labelled and benign-only runs for every fleet size and seed, scored."""
    analyze = analyze or ANALYZE
    report = Report()
    started = time.perf_counter()
    for agents in fleets:
        for seed in seeds:
            scenarios = dict.fromkeys(SCENARIO_KINDS, scenarios_per_kind)
            sim = simulate(SimulationConfig(agents=agents, messages=messages, seed=seed, scenarios=scenarios))
            report.labelled_messages += len(sim.messages)
            score_run(sim.labels, analyze(sim.messages), report)
            benign = simulate(SimulationConfig(agents=agents, messages=messages, seed=1000 + seed, scenarios={}))
            report.benign_messages += len(benign.messages)
            for alert in first_emissions(analyze(benign.messages)):
                if alert.pattern in report.scores:
                    report.scores[alert.pattern].benign_alerts += 1
                    report.false.append(f"BENIGN {alert.pattern} {alert.affected_agents[:4]} {alert.description[:140]}")
            if verbose:
                print(f"  fleet {agents} seed {seed}: done at {time.perf_counter() - started:.0f} s", file=sys.stderr)
    report.seconds = time.perf_counter() - started
    return report


def render(report: Report, title: str) -> str:
    """The report as Markdown tables."""
    lines = [f"### {title}", ""]
    lines.append("| pattern | incidents | precision | recall | F1 | alerts/incident | median delay (s) | related | false alerts / 10k benign |")
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for pattern, s in report.scores.items():
        per_incident = s.matched_alerts / s.detected if s.detected else None
        delay = statistics.median(s.delays_s) if s.delays_s else None
        benign = 10_000 * s.benign_alerts / report.benign_messages if report.benign_messages else None
        lines.append(
            f"| {pattern} | {s.incidents} | {_f(s.precision)} | {_f(s.recall)} | {_f(s.f1)} | {_f(per_incident)} | "
            f"{_f(delay)} | {s.related_alerts} | {_f(benign)} |"
        )
    total_benign = sum(s.benign_alerts for s in report.scores.values())
    lines.append("")
    lines.append(
        f"Benign-only messages: {report.benign_messages:,}; false alerts there: {total_benign} "
        f"({10_000 * total_benign / max(1, report.benign_messages):.2f} per 10k, all patterns). "
        f"Labelled messages: {report.labelled_messages:,}. Wall time: {report.seconds:.0f} s."
    )
    lines.append("")
    lines.append("Recall by variant: " + ", ".join(f"{name} {hit}/{total}" for name, (total, hit) in sorted(report.variants.items())) + ".")
    lines.append("")
    lines.append("| confidence | alerts matching an incident | false alerts | precision |")
    lines.append("| --- | ---: | ---: | ---: |")
    for band in (">= 0.9", ">= 0.7", ">= 0.5", "< 0.5"):
        matched, false = report.bands.get(band, [0, 0])
        lines.append(f"| {band} | {matched} | {false} | {_f(matched / (matched + false) if matched + false else None)} |")
    return "\n".join(lines)


def _f(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fleets", default="50,1000", help="fleet sizes, comma-separated (default 50,1000)")
    parser.add_argument("--seeds", default="1,2,3,4", help="seeds, comma-separated (default 1,2,3,4)")
    parser.add_argument("--messages", type=int, default=20_000, help="benign messages per run (default 20000)")
    parser.add_argument("--per-kind", type=int, default=2, help="scenarios of each kind per labelled run (default 2)")
    parser.add_argument("--quick", action="store_true", help="seeds 1,2 and a fleet of 50 only")
    parser.add_argument("--show", type=int, default=0, help="print up to N misses and false alerts")
    parser.add_argument("--in-process", action="store_true", help="score the pure cores in one loop instead of chorus-lab analyze")
    args = parser.parse_args(argv)
    fleets = [50] if args.quick else [int(x) for x in args.fleets.split(",")]
    seeds = [1, 2] if args.quick else [int(x) for x in args.seeds.split(",")]
    for agents in fleets:
        report = evaluate([agents], seeds, args.messages, args.per_kind, analyze=analyze_in_process if args.in_process else analyze_with_command, verbose=True)
        print(render(report, f"{agents} agents, seeds {','.join(map(str, seeds))}, {args.messages:,} benign messages per run"))
        print()
        if args.show:
            for line in report.misses[: args.show]:
                print("MISS", line)
            for line in report.false[: args.show]:
                print("FALSE", line)
            print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
