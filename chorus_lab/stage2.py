"""Stage 2's pure core: the causal graph, the detectors, the alerts and the metrics.

:class:`Stage2` reads the compact decision stream of the whole fleet
(``agent-decisions-processed``) one :class:`~chorus_lab.schema.ProcessedDecision` at a
time and returns everything stage 2 publishes as a :class:`Stage2Output`:

==========================  =================================  ==========================
field                       topic                              key
==========================  =================================  ==========================
``graph_updates``           ``causal-graph-updates``           :func:`graph_update_key`
``alerts``                  ``system-alerts``                  :func:`alert_key`
``trust_signals``           ``chorus-trust-signals``           ``agent_id``
``ledger_updates``          ``chorus-resource-ledger`` (compacted)  ``resource``
``metrics``                 ``analytics-metrics``              ``"snapshot"``
==========================  =================================  ==========================

Like stage 1's engine (DESIGN.md principle 1) it has no Kafka, no threads and no wall
clock: time is the event time of the decisions, so the stream processor's stage-2 loop,
the offline ``analyze`` command, replays and tests share it, and the same input gives the
same output. :meth:`Stage2.tick` lets the shell close metric windows and notice ignored
requests while no decision arrives (pass the event-time watermark, not the wall clock,
when replaying).

Per decision: duplicates (same ``message_id``) are dropped; metric windows the decision's
time closes are emitted; the graph takes its agents, status, trust and edges; the
resource ledger takes the message (before that, the conflict detector checks whether the
request closes a wait-for cycle); each detector reports findings; the alert builder turns
them into one alert per incident plus updates; each new incident yields a trust signal per
agent to blame, and one more if its confidence later reaches ``escalate_at``.

>>> from datetime import datetime, timedelta, UTC
>>> from chorus_lab.engine import PredictionEngine
>>> from chorus_lab.schema import AgentMessage
>>> engine, stage2 = PredictionEngine(), Stage2()
>>> t0 = datetime(2026, 1, 1, tzinfo=UTC)
>>> hops = [("asker", "a"), ("a", "b"), ("b", "c"), ("c", "a")]
>>> alerts = []
>>> for i, (sender, target) in enumerate(hops):
...     m = AgentMessage(sender, t0 + timedelta(seconds=i), "request",
...                      {"action": "delegate", "task_id": "t-1"}, [target], "c-1", {},
...                      message_id=f"m-{i}", causation_id=f"m-{i - 1}" if i else None)
...     out = stage2.process(decision_from_engine(m, engine.process(m)))
...     alerts += out.alerts
>>> [(a.pattern, a.affected_agents) for a in alerts]
[('routing_loop', ['a', 'b', 'c'])]
>>> [(s.agent_id, s.pattern) for s in out.trust_signals]
[('a', 'routing_loop'), ('b', 'routing_loop'), ('c', 'routing_loop')]
>>> [u.update_type for u in out.graph_updates]
['edge_created', 'loop_detected']
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from chorus_lab.analytics import MetricsAggregator, MetricsConfig
from chorus_lab.engine.config import EngineConfig
from chorus_lab.engine.ledger import ResourceLedger
from chorus_lab.engine.pipeline import EngineResult, PredictionEngine, RecentIds
from chorus_lab.graph import GraphConfig, GraphTopologyManager
from chorus_lab.patterns.alerts import AlertBuilder, AlertConfig, Finding
from chorus_lab.patterns.anomaly import AnomalyConfig, AnomalyDetector
from chorus_lab.patterns.byzantine import ByzantineConfig, ByzantineDetector
from chorus_lab.patterns.cascade import CascadeConfig, CascadeDetector
from chorus_lab.patterns.common import BoundedDict, Observation, observe_decision
from chorus_lab.patterns.conflict import ConflictConfig, ConflictDetector
from chorus_lab.patterns.hoarding import HoardingConfig, HoardingDetector
from chorus_lab.patterns.routing_loop import RoutingLoopConfig, RoutingLoopDetector
from chorus_lab.schema import (
    AgentMessage,
    Alert,
    CausalGraphUpdate,
    ProcessedDecision,
    ProcessingMetadata,
    format_timestamp,
)

PATTERNS = ("routing_loop", "resource_hoarding", "communication_cascade", "byzantine", "anomaly", "conflict")
LEDGER_ACTIONS = frozenset({"request_resource", "grant", "deny", "release", "hold"})


@dataclass(frozen=True, slots=True)
class Stage2Config:
    """Every setting of stage 2, as one value (each part documents its defaults)."""

    graph: GraphConfig = field(default_factory=GraphConfig)
    alerts: AlertConfig = field(default_factory=AlertConfig)
    routing_loop: RoutingLoopConfig = field(default_factory=RoutingLoopConfig)
    hoarding: HoardingConfig = field(default_factory=HoardingConfig)
    cascade: CascadeConfig = field(default_factory=CascadeConfig)
    byzantine: ByzantineConfig = field(default_factory=ByzantineConfig)
    anomaly: AnomalyConfig = field(default_factory=AnomalyConfig)
    conflict: ConflictConfig = field(default_factory=ConflictConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    """Ledger semantics (default capacity, amounts, pending TTL, deadlock search depth)."""
    patterns: tuple[str, ...] = PATTERNS
    """Detectors switched on."""
    graph_metrics_every: int = 6
    """Whole-graph metrics are recomputed every this many metric windows (60 s by default)."""
    quarantine_alerts: bool = False
    """Also raise ``quarantine`` alerts (stage 1 already does, ``pipeline.intervention_alerts``;
    switch this on for an offline run without stage 1's alerts)."""
    signal_min_confidence: float = 0.5
    """Alerts below this confidence send no trust signal."""
    escalate_at: float = 0.9
    """An incident whose confidence reaches this sends a second, stronger trust signal."""
    dedup_window: int = 200_000
    """Message ids remembered to drop redelivered decisions."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.patterns) - set(PATTERNS))
        if unknown:
            raise ValueError(f"patterns: unknown {', '.join(unknown)} (known: {', '.join(PATTERNS)})")
        if self.graph_metrics_every < 1:
            raise ValueError(f"graph_metrics_every must be at least 1, got {self.graph_metrics_every}")


class DetectionSignal(NamedTuple):
    """What stage 2 learned about an agent, for its trust owner in stage 1.

    ``signal.engine_args()`` are the arguments of ``PredictionEngine.apply_signal``;
    ``to_dict()`` is the JSON value on ``chorus-trust-signals`` (key ``agent_id``), the
    form ``chorus_lab.pipeline.DetectionSignal.decode`` reads.
    """

    agent_id: str
    pattern: str
    confidence: float
    evidence: tuple[str, ...]
    timestamp: datetime
    alert_id: str | None = None

    def engine_args(self) -> tuple[str, str, float, tuple[str, ...], datetime]:
        """(agent_id, pattern, confidence, evidence, timestamp) for ``apply_signal``."""
        return self.agent_id, self.pattern, self.confidence, self.evidence, self.timestamp

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for ``chorus-trust-signals``."""
        return {
            "agent_id": self.agent_id,
            "pattern": self.pattern,
            "confidence": self.confidence,
            "evidence": list(self.evidence),
            "detected_at": format_timestamp(self.timestamp),
            "alert_id": self.alert_id,
            "schema_version": 1,
        }


class LedgerRecord(NamedTuple):
    """The current state of one resource, for the compacted ``chorus-resource-ledger``."""

    resource: str
    state: dict[str, Any]
    timestamp: datetime

    def to_dict(self) -> dict[str, Any]:
        return {"resource": self.resource, "state": self.state, "timestamp": format_timestamp(self.timestamp)}


@dataclass(slots=True)
class Stage2Output:
    """Everything one input produced, per output topic."""

    graph_updates: list[CausalGraphUpdate] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    trust_signals: list[DetectionSignal] = field(default_factory=list)
    ledger_updates: list[LedgerRecord] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    duplicate: bool = False

    def extend(self, other: Stage2Output) -> None:
        self.graph_updates += other.graph_updates
        self.alerts += other.alerts
        self.trust_signals += other.trust_signals
        self.ledger_updates += other.ledger_updates
        self.metrics += other.metrics


class Stage2:
    """The causal graph, pattern detectors, alert builder and metrics, composed."""

    def __init__(self, config: Stage2Config | None = None) -> None:
        self.config = config or Stage2Config()
        c = self.config
        self.graph = GraphTopologyManager(c.graph)
        self.ledger = ResourceLedger(c.engine)
        self.alerts = AlertBuilder(c.alerts)
        self.metrics = MetricsAggregator(c.metrics)
        self.routing_loop = RoutingLoopDetector(c.routing_loop)
        self.hoarding = HoardingDetector(c.hoarding)
        self.cascade = CascadeDetector(c.cascade)
        self.byzantine = ByzantineDetector(c.byzantine)
        self.anomaly = AnomalyDetector(c.anomaly)
        self.conflict = ConflictDetector(c.conflict, c.engine)
        self._seen = RecentIds(c.dedup_window)
        self._signalled: BoundedDict[tuple[str, str], float] = BoundedDict(100_000)
        self._windows = 0
        self.duplicates = 0

    # ------------------------------------------------------------------ inputs

    def process(self, decision: ProcessedDecision, stage_ms: dict[str, float] | None = None) -> Stage2Output:
        """Everything stage 2 concludes from one processed decision.

        ``stage_ms`` is the shell's measured time per stage for this message known before
        the core takes it (e.g. ``{"bus": 12.0}``: how long it sat in the decisions topic),
        for the metrics' ``stages`` and bottleneck; the core never times itself (its own
        time goes in afterwards with :meth:`observe_stage_times`).
        """
        message = decision.original_message
        if not self._seen.add(message.message_id):
            self.duplicates += 1
            return Stage2Output(duplicate=True)
        when = message.timestamp
        out = Stage2Output()
        out.extend(self._close_windows(when))
        out.metrics += self.metrics.observe(decision, stage_ms)
        obs = observe_decision(decision)
        findings = self._quarantine_findings(decision)
        out.graph_updates += self.graph.observe(decision)
        findings += self._resources(obs, decision, out)
        enabled = self.config.patterns
        if "routing_loop" in enabled:
            findings += self.routing_loop.observe(obs)
        if "communication_cascade" in enabled:
            findings += self.cascade.observe(obs)
        if "byzantine" in enabled:
            findings += self.byzantine.observe(obs)
        if "anomaly" in enabled:
            findings += self.anomaly.observe(obs)
        self._raise(findings, when, out)
        return out

    def tick(
        self,
        event_time: datetime,
        *,
        consumer_lag: Any = None,
    ) -> Stage2Output:
        """Let event time pass without a decision: close metric windows, notice ignored requests.

        ``consumer_lag`` (as the shell measures it, e.g. ``{"total": 120}``) is recorded in
        the current metrics window.
        """
        out = Stage2Output()
        if consumer_lag is not None:
            self.metrics.set_consumer_lag(consumer_lag)
        out.extend(self._close_windows(event_time))
        findings = self.hoarding.advance(event_time, self.ledger) if "resource_hoarding" in self.config.patterns else []
        self._raise(findings, event_time, out)
        return out

    def observe_stage_times(self, stage_ms: dict[str, float]) -> None:
        """Record times the shell measured once the core had taken a decision (e.g. stage 2's
        own, ``{"stage2": 0.4}``) in the current metrics window: a processing observation,
        like ``processing_metadata``, never read by the analysis."""
        self.metrics.observe_stages(stage_ms)

    def observe_consumer_lag(self, lag: dict[str, Any]) -> None:
        """Record the consumer lag the shell measured (e.g. ``{"total": 120}``), shown by the
        snapshots closed from now on; closes no window (unlike ``tick(consumer_lag=…)``)."""
        self.metrics.set_consumer_lag(lag)

    def observe_error(self, when: datetime, kind: str) -> Stage2Output:
        """Count a message the pipeline could not process (for the error rate)."""
        out = self._close_windows(when)
        out.metrics += self.metrics.observe_error(when, kind)
        return out

    # ------------------------------------------------------------------ parts

    def _resources(self, obs: Observation, decision: ProcessedDecision, out: Stage2Output) -> list[Finding]:
        """Ledger, conflict and hoarding: the parts that read the fleet-wide resource ledger."""
        enabled = self.config.patterns
        findings: list[Finding] = []
        if "resource_hoarding" in enabled:
            # Requests that went unanswered before this message are judged on the ledger
            # as it was then: a release in this very message must not excuse them.
            findings += self.hoarding.advance(obs.message.timestamp, self.ledger)
        if "conflict" in enabled:
            findings += self.conflict.observe(obs, self.ledger)
        # The published ledger must refuse what stage 1 refuses: follow its quarantine, also
        # one caused by a trust signal (seen as the flag on the agent's next message).
        if "quarantined" in decision.processing_metadata.flags:
            self.ledger.set_quarantined(obs.message.agent_id, True)
        action = decision.intervention_action
        if action is not None and action.action in ("quarantine", "release"):
            self.ledger.set_quarantined(action.agent_id, action.action == "quarantine")
        facts = obs.facts
        touches = facts.resource is not None and (facts.action in LEDGER_ACTIONS or facts.capacity is not None)
        update = self.ledger.apply(obs.message, facts) if touches else None
        if "conflict" in enabled:
            findings += self.conflict.after(obs, self.ledger, update)
        if "resource_hoarding" in enabled:
            findings += self.hoarding.observe(obs, self.ledger, update)
        if touches and facts.resource is not None:
            state = resource_state(self.ledger, facts.resource, obs.message.timestamp)
            out.ledger_updates.append(LedgerRecord(facts.resource, state, obs.message.timestamp))
        return findings

    def _quarantine_findings(self, decision: ProcessedDecision) -> list[Finding]:
        """A ``quarantine`` alert when an agent is newly quarantined.

        Either the decision carries the intervention, or (quarantined by a trust signal
        in stage 1, which emits no decision) its next message is flagged ``quarantined``.
        Called before the graph takes the decision, which is how "newly" is known.
        """
        if not self.config.quarantine_alerts:
            return []
        message = decision.original_message
        action = decision.intervention_action
        if action is not None and action.action == "quarantine":
            agent, when, reason = action.agent_id, action.timestamp, action.reason
            trust, evidence = action.trust_score, tuple(action.evidence)
        elif "quarantined" in decision.processing_metadata.flags and message.agent_id not in self.graph.quarantined:
            agent, when = message.agent_id, message.timestamp
            trust, evidence = decision.trust_impact.before, ()
            reason = "stage 1 flags its messages as quarantined (a detection signal took it below the threshold)"
        else:
            return []
        if agent in self.graph.quarantined:
            return []
        return [
            Finding(
                pattern="quarantine",
                key=f"{agent}@{format_timestamp(when)}",
                agents=(agent,),
                confidence=1.0,
                severity="high",
                description=f"{agent} was quarantined (trust {trust:.1f}): {reason}",
                evidence=evidence or (message.message_id,),
                detected_at=message.timestamp,
                details={
                    "until": format_timestamp(action.until) if action is not None and action.until else None,
                    "trust_score": trust,
                },
                culprits=(),
            )
        ]

    def _raise(self, findings: list[Finding], when: datetime, out: Stage2Output) -> None:
        for alert, finding in self.alerts.build_all(findings):
            out.alerts.append(alert)
            self.metrics.observe_alert(alert)
            out.trust_signals += self._signals(alert, finding)
            if alert.pattern == "routing_loop":
                out.graph_updates += self.graph.mark_loop(finding.details["cycle"], when)

    def _signals(self, alert: Alert, finding: Finding) -> list[DetectionSignal]:
        """One signal per blamed agent per incident, one more when it escalates."""
        config = self.config
        if alert.confidence < config.signal_min_confidence:
            return []
        signals = []
        for agent in finding.blamed:
            key = (alert.alert_id, agent)
            before = self._signalled.get(key)
            if before is not None and not (alert.confidence >= config.escalate_at > before):
                continue
            self._signalled[key] = alert.confidence
            signals.append(DetectionSignal(agent, alert.pattern, alert.confidence, tuple(alert.evidence), alert.detected_at, alert.alert_id))
        return signals

    def _close_windows(self, when: datetime) -> Stage2Output:
        """Metric snapshots for windows that ``when`` closes, with a graph snapshot on cadence."""
        out = Stage2Output()
        window = self.metrics.config.interval_s
        watermark = self.metrics.watermark
        current = None if watermark is None else int(watermark // window)
        if current is None or int(when.timestamp() // window) <= current:
            return out
        graph = None
        if self._windows % self.config.graph_metrics_every == 0:
            out.graph_updates += self.graph.expire(when)
            snapshot = self.graph.snapshot(when)
            graph = snapshot.to_dict()
            out.graph_updates.append(CausalGraphUpdate("metrics", [], [], snapshot.metrics, when))
        closed = self.metrics.advance(when, graph=graph)
        self._windows += len(closed)
        out.metrics += closed
        return out


def resource_state(ledger: ResourceLedger, resource: str, now: datetime | None = None) -> dict[str, Any]:
    """One resource of the ledger as JSON-able data (the compacted topic's value).

    What conflict prediction needs: capacity, holders, live pending requests, and the
    denials of the agents involved now (not the resource's whole denial history, which
    grows with the fleet). O(holders + pending).
    """
    state = ledger.resources[resource]
    pending = ledger.pending(resource, now)
    involved = set(state.holders) | set(pending)
    return {
        "capacity": ledger.capacity(resource),
        "capacity_known": state.capacity is not None,
        "held_total": ledger.held_total(resource),
        "holders": dict(sorted(state.holders.items())),
        "held_since": {a: format_timestamp(t) for a, t in sorted(state.held_since.items())},
        "pending": {
            a: {"amount": r.amount, "priority": r.priority, "message_id": r.message_id, "time": format_timestamp(r.time)}
            for a, r in sorted(pending.items())
        },
        "denials": {a: n for a, n in sorted(state.denials.items()) if a in involved},
    }


def alert_key(alert: Alert) -> str:
    """Key of an alert on ``system-alerts``: its first affected agent, else its pattern."""
    return alert.affected_agents[0] if alert.affected_agents else alert.pattern


def graph_update_key(update: CausalGraphUpdate) -> str:
    """Key of a graph update: the node it is about, or the first edge's ``source->target``."""
    if update.affected_nodes:
        return update.affected_nodes[0]
    if update.edge_changes:
        edge = update.edge_changes[0]
        return f"{edge.source_agent}->{edge.target_agent}"
    return update.update_type


def decision_from_engine(message: AgentMessage, result: EngineResult, *, offset: int = 0, topic: str = "agent-messages-raw") -> ProcessedDecision:
    """The decision stage 1 would emit for ``result``, with deterministic processing metadata.

    For offline analysis, tests and benchmarks: received and processed "at" the message's
    own event time, latency 0, so the whole decision is a pure function of the input. The
    stream processor builds its own, with wall-clock metadata.
    """
    return ProcessedDecision(
        original_message=message,
        conflict_analysis=result.conflict,
        trust_impact=result.trust,
        intervention_action=result.intervention,
        processing_metadata=ProcessingMetadata(
            instance_id="offline",
            pipeline_version="offline",
            topic=topic,
            partition=0,
            offset=offset,
            received_at=message.timestamp,
            processed_at=message.timestamp,
            latency_ms=0.0,
            flags=list(result.flags),
        ),
        causal_relationships=list(result.edges),
    )


def decisions_from_engine(messages: Iterable[AgentMessage]) -> list[ProcessedDecision]:
    """Stage 1's decisions for ``messages`` from one fresh engine (duplicates yield none).

    The offsets are the messages' positions in ``messages``.

    >>> from chorus_lab import simulate
    >>> sim = simulate.simulate(simulate.SimulationConfig(agents=8, messages=20, seed=1))
    >>> len(decisions_from_engine(sim.messages)) == len(sim.messages)
    True
    """
    engine = PredictionEngine()
    out = []
    for offset, message in enumerate(messages):
        result = engine.process(message)
        if not result.duplicate:
            out.append(decision_from_engine(message, result, offset=offset))
    return out


__all__ = [
    "DetectionSignal",
    "LedgerRecord",
    "PATTERNS",
    "Stage2",
    "Stage2Config",
    "Stage2Output",
    "alert_key",
    "decision_from_engine",
    "decisions_from_engine",
    "graph_update_key",
    "resource_state",
]
