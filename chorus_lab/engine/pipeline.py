"""The prediction pipeline: one message in, one decision's worth of facts out.

:class:`PredictionEngine` is the pure core of stage 1 (DESIGN.md, principle 1): its state
(:class:`EngineState`: ledger, trust, quarantine, recent message ids) changes only through
:meth:`PredictionEngine.process` (an agent message) and
:meth:`PredictionEngine.apply_signal` (a detection fed back by stage 2), and every time it
uses is the event time carried by the input. The same inputs in the same order give the
same outputs; :meth:`~PredictionEngine.snapshot` and :meth:`~PredictionEngine.restore`
checkpoint the state as plain JSON so that a restored engine continues exactly as an
uninterrupted one would.

For each message, in order:

1. a ``message_id`` the agent already sent is a duplicate: reported, nothing changes;
2. the predictor assesses the message against the ledger *as it was before it*;
3. the ledger applies the message (a quarantined agent's request is refused);
4. trust takes the behaviour evidence the message carries (grants given, timely
   releases, repeated consistent claims; denying while holding) and ages;
5. interventions: quarantine or release, throttle, alert;
6. the causal edges the message implies, one per distinct target.

>>> from datetime import datetime, UTC
>>> from chorus_lab.schema import AgentMessage
>>> engine = PredictionEngine()
>>> t = datetime(2026, 1, 1, tzinfo=UTC)
>>> m = AgentMessage("a", t, "request", {"action": "request_resource", "resource": "gpu"},
...                  ["steward"], "c-1", {}, message_id="m-1")
>>> result = engine.process(m)
>>> result.conflict.conflict_type, result.trust.after, [e.relationship_type for e in result.edges]
('none', 100.0, ['request'])
>>> engine.process(m).duplicate
True
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from chorus_lab.engine.config import EngineConfig
from chorus_lab.engine.conflict import LedgerPredictor, Predictor
from chorus_lab.engine.global_ledger import GlobalTablePredictor
from chorus_lab.engine.content import ContentFacts, parse_content
from chorus_lab.engine.ledger import LedgerUpdate, ResourceLedger
from chorus_lab.engine.quarantine import QuarantinePolicy
from chorus_lab.engine.trust import TrustModel, TrustSignal, canonical_kind
from chorus_lab.schema import (
    AgentMessage,
    CausalEdge,
    ConflictAnalysis,
    InterventionAction,
    RelationshipType,
    TrustScoreUpdate,
)

SNAPSHOT_VERSION = 1

_PRIORITY = {"quarantine": 0, "release": 0, "throttle": 1, "alert": 2}
"""Order of interventions in a result: the first one is the decision's intervention."""


@dataclass(frozen=True, slots=True)
class EngineResult:
    """Everything the pipeline concluded about one message."""

    message_id: str
    agent_id: str
    duplicate: bool
    conflict: ConflictAnalysis
    trust: TrustScoreUpdate
    interventions: list[InterventionAction]
    """Most important first (quarantine/release, throttle, alert); usually empty."""
    edges: list[CausalEdge]
    flags: list[str]
    """Of ``duplicate``, ``quarantined`` (the sender was when the message arrived),
    ``throttled``, ``refused`` (the ledger refused a request or grant to a quarantined
    agent), ``content_warning`` (a known content key had a bad value) and
    ``ledger_warning`` (the message disagrees with the ledger, e.g. an unsolicited grant)."""
    warnings: list[str]
    """Content problems (each naming the key at fault), then ledger disagreements."""

    @property
    def intervention(self) -> InterventionAction | None:
        """The one intervention a ``ProcessedDecision`` carries."""
        return self.interventions[0] if self.interventions else None


@dataclass(frozen=True, slots=True)
class SignalResult:
    """The effect of one detection signal on its agent."""

    trust: TrustScoreUpdate
    intervention: InterventionAction | None
    duplicate: bool = False


class RecentIds:
    """The last ``size`` ids, with O(1) membership.

    >>> ids = RecentIds(2)
    >>> ids.add("a"), ids.add("b"), ids.add("a"), ids.add("c"), "a" in ids
    (True, True, False, True, False)
    """

    def __init__(self, size: int, ids: Iterable[str] = ()) -> None:
        self._order: deque[str] = deque(maxlen=size)
        self._set: set[str] = set()
        for item in ids:
            self.add(item)

    def __contains__(self, item: str) -> bool:
        return item in self._set

    def add(self, item: str) -> bool:
        """Remember ``item``; False if it was already remembered."""
        if item in self._set:
            return False
        if len(self._order) == self._order.maxlen:
            self._set.discard(self._order[0])
        self._order.append(item)
        self._set.add(item)
        return True

    def to_list(self) -> list[str]:
        return list(self._order)


@dataclass
class EngineState:
    """All the state of the prediction pipeline (JSON round trip via ``to_dict``)."""

    config: EngineConfig = field(default_factory=EngineConfig)
    ledger: ResourceLedger = field(init=False)
    trust: TrustModel = field(init=False)
    quarantine: QuarantinePolicy = field(init=False)
    seen: dict[str, RecentIds] = field(default_factory=dict)
    """Per agent: recent message ids (duplicates are dropped)."""
    signals: dict[str, RecentIds] = field(default_factory=dict)
    """Per agent: recent detection signals (pattern + evidence), so a re-sent one counts once."""
    claims: dict[str, OrderedDict[str, str]] = field(default_factory=dict)
    """Per agent: the last value (canonical JSON) claimed for each recent claim key."""

    def __post_init__(self) -> None:
        self.ledger = ResourceLedger(self.config)
        self.trust = TrustModel(self.config)
        self.quarantine = QuarantinePolicy(self.config)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": SNAPSHOT_VERSION,
            "ledger": self.ledger.to_dict(),
            "trust": self.trust.to_dict(),
            "quarantine": self.quarantine.to_dict(),
            "seen": {agent: ids.to_list() for agent, ids in self.seen.items()},
            "signals": {agent: ids.to_list() for agent, ids in self.signals.items()},
            "claims": {agent: dict(claims) for agent, claims in self.claims.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], config: EngineConfig | None = None) -> EngineState:
        if data.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported engine snapshot version {data.get('version')!r} (expected {SNAPSHOT_VERSION})")
        state = cls(config or EngineConfig())
        cfg = state.config
        state.ledger = ResourceLedger.from_dict(data["ledger"], cfg)
        state.trust = TrustModel.from_dict(data["trust"], cfg)
        state.quarantine = QuarantinePolicy.from_dict(data["quarantine"], cfg)
        state.seen = {agent: RecentIds(cfg.dedup_window, ids) for agent, ids in data["seen"].items()}
        state.signals = {agent: RecentIds(cfg.dedup_window, ids) for agent, ids in data["signals"].items()}
        state.claims = {agent: OrderedDict(claims) for agent, claims in data["claims"].items()}
        return state


class PredictionEngine:
    """Stage 1's pure core: conflict prediction, trust and interventions."""

    def __init__(self, config: EngineConfig | None = None, predictor: Predictor | None = None) -> None:
        self.config = config or EngineConfig()
        self.predictor: Predictor = predictor or LedgerPredictor(self.config)
        self.state = EngineState(self.config)
        self._assess = _facts_assessor(self.predictor, self.config)

    # ------------------------------------------------------------------ inputs

    def process(self, message: AgentMessage) -> EngineResult:
        """Run one agent message through the pipeline."""
        state, config = self.state, self.config
        agent, now = message.agent_id, message.timestamp
        seen = state.seen.get(agent)
        if seen is None:  # not setdefault: that would build a window per message
            seen = state.seen[agent] = RecentIds(config.dedup_window)
        elif message.message_id in seen:
            return self._duplicate(message)

        facts, content_warnings = parse_content(message.content, max_amount=config.max_amount)
        was_quarantined = state.quarantine.is_quarantined(agent)
        if self._assess is not None:  # the same analysis, without parsing the content twice
            conflict = self._assess(message, facts, state.ledger)
        else:
            conflict = self.predictor.predict(message, state.ledger)
        ledger_update = state.ledger.apply(message, facts)
        warnings = content_warnings + ledger_update.warnings

        signals = behaviour_signals(message, facts, ledger_update, config)
        if self._consistent_claim(agent, facts):
            signals.append(TrustSignal("consistent_claim", 1.0, (message.message_id,)))
        trust = state.trust.observe(agent, signals, now)

        interventions = [
            action
            for action in (
                state.quarantine.evaluate(trust),
                state.quarantine.observe_message(agent, now, trust.after, [message.message_id]),
            )
            if action is not None
        ]
        interventions.sort(key=lambda action: _PRIORITY[action.action])
        self._sync_ledger(agent)
        seen.add(message.message_id)

        flags = []
        if was_quarantined:
            flags.append("quarantined")
        if state.quarantine.is_throttled(agent, now):
            flags.append("throttled")
        if ledger_update.refused:
            flags.append("refused")
        if content_warnings:
            flags.append("content_warning")
        if len(warnings) > len(content_warnings):
            flags.append("ledger_warning")
        return EngineResult(
            message_id=message.message_id,
            agent_id=agent,
            duplicate=False,
            conflict=conflict,
            trust=trust,
            interventions=interventions,
            edges=causal_edges(message, facts, conflict, config),
            flags=flags,
            warnings=warnings,
        )

    def apply_signal(
        self,
        agent_id: str,
        pattern: str,
        confidence: float,
        evidence: Sequence[str],
        timestamp: datetime,
    ) -> SignalResult:
        """Take a detection from stage 2: trust falls in proportion to ``confidence``.

        A Byzantine finding at or above ``byzantine_quarantine_confidence`` quarantines
        at once. The same pattern with the same evidence counts once.
        Raises ``ValueError`` when ``confidence`` is not within 0–1.
        """
        signal = TrustSignal(pattern, confidence, tuple(evidence))  # validates confidence
        kind = canonical_kind(pattern)
        if evidence:
            key = f"{kind}:{','.join(sorted(set(evidence)))}"
            recent = self.state.signals.get(agent_id)
            if recent is None:
                recent = self.state.signals[agent_id] = RecentIds(self.config.dedup_window)
            if not recent.add(key):
                reason = f"{kind} signal already applied for this evidence"
                return SignalResult(self.state.trust.unchanged(agent_id, timestamp, reason, evidence), None, True)
        trust = self.state.trust.observe(agent_id, [signal], timestamp)
        byzantine = confidence if kind == "byzantine" else None
        action = self.state.quarantine.evaluate(trust, byzantine_confidence=byzantine)
        self._sync_ledger(agent_id)
        return SignalResult(trust, action)

    # ------------------------------------------------------------------ checkpoints

    def snapshot(self) -> dict[str, Any]:
        """The whole state as JSON-able data (configuration and predictor excluded)."""
        return self.state.to_dict()

    def restore(self, data: Mapping[str, Any]) -> None:
        """Replace the state with one taken by :meth:`snapshot`."""
        self.state = EngineState.from_dict(data, self.config)

    # ------------------------------------------------------------------ helpers

    def _duplicate(self, message: AgentMessage) -> EngineResult:
        reason = f"duplicate of already processed message {message.message_id}; ignored"
        return EngineResult(
            message_id=message.message_id,
            agent_id=message.agent_id,
            duplicate=True,
            conflict=ConflictAnalysis(0.0, 1.0, "none", "Duplicate message; not assessed again.", None, [], "duplicate"),
            trust=self.state.trust.unchanged(message.agent_id, message.timestamp, reason, [message.message_id]),
            interventions=[],
            edges=[],
            flags=["duplicate"],
            warnings=[],
        )

    def _consistent_claim(self, agent: str, facts: ContentFacts) -> bool:
        """Remember the claim; True if it repeats the agent's last value for that key.

        A changed value is not judged here: contradictions are the Byzantine detector's.
        """
        if facts.claim is None:
            return False
        claims = self.state.claims.get(agent)
        if claims is None:
            claims = self.state.claims[agent] = OrderedDict()
        previous = claims.pop(facts.claim.key, None)
        claims[facts.claim.key] = facts.claim.value_json
        while len(claims) > self.config.claim_memory:
            claims.popitem(last=False)
        return previous == facts.claim.value_json

    def _sync_ledger(self, agent: str) -> None:
        self.state.ledger.set_quarantined(agent, self.state.quarantine.is_quarantined(agent))


def _facts_assessor(predictor: Predictor, config: EngineConfig) -> Callable[[AgentMessage, ContentFacts, Any], ConflictAnalysis] | None:
    """The predictor's ``assess`` when it would parse the content exactly as the engine does.

    ``LedgerPredictor.predict`` is ``parse_content`` then ``assess``; when its content
    limit is the engine's, the engine's parse can be handed over. Any other predictor is
    called through ``predict``.
    """
    inner = predictor.inner if type(predictor) is GlobalTablePredictor else predictor
    if type(inner) is not LedgerPredictor or inner.config.max_amount != config.max_amount:
        return None
    return predictor.assess  # type: ignore[attr-defined]  # both kinds above have it


def behaviour_signals(
    message: AgentMessage, facts: ContentFacts, update: LedgerUpdate, config: EngineConfig
) -> list[TrustSignal]:
    """The trust evidence about the sender that its message's effect on the ledger carries."""
    evidence = (message.message_id,)
    signals: list[TrustSignal] = []
    if update.action == "grant" and update.granted:
        signals.append(TrustSignal("grant_given", 1.0, evidence))
    if update.action == "release" and update.held_for_s is not None and update.held_for_s <= config.timely_release_s:
        signals.append(TrustSignal("timely_release", 1.0, evidence))
    if update.action == "deny" and update.denied and update.sender_held > 0.0:
        signals.append(TrustSignal("denied_while_holding", 1.0, evidence))
    return signals


def relationship_of(facts: ContentFacts, conflict: ConflictAnalysis, config: EngineConfig) -> RelationshipType:
    """``conflict`` for a high-risk request, ``dependency`` for a hand-off, else ``request``.

    The wire type has no generic "interaction" relationship, so replies, grants, claims
    and status messages are ``request`` edges too.
    """
    if facts.action == "request_resource" and conflict.risk >= config.conflict_edge_risk:
        return "conflict"
    if facts.action in ("delegate", "forward"):
        return "dependency"
    return "request"


def causal_edges(
    message: AgentMessage, facts: ContentFacts, conflict: ConflictAnalysis, config: EngineConfig
) -> list[CausalEdge]:
    """One edge per distinct target other than the sender, stamped with the message time."""
    kind = relationship_of(facts, conflict, config)
    strength = config.edge_strength[kind]
    return [
        CausalEdge(message.agent_id, target, kind, strength, message.timestamp, message.timestamp)
        for target in dict.fromkeys(message.target_agents)
        if target != message.agent_id
    ]


__all__ = [
    "EngineResult",
    "EngineState",
    "PredictionEngine",
    "RecentIds",
    "SignalResult",
    "behaviour_signals",
    "causal_edges",
    "relationship_of",
]
