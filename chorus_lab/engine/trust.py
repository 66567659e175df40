"""Trust: a score 0–100 per agent, from a beta-reputation model with ageing.

Each agent has positive evidence ``r`` and negative evidence ``s`` (real numbers, not
counts, so a detection can weigh in proportion to its confidence). The score is the
expected value of Beta(α, β), scaled to 0–100::

    α = prior + r,   β = s,   score = 100 · α / (α + β)

The prior is ``trust_prior_strength`` pseudo-observations of good behaviour and none of
bad, so an agent nobody has seen anything about scores 100 ("start at 100"), and the
prior's strength sets how much the first detection costs. Evidence ages: between two
events ``Δt`` apart both ``r`` and ``s`` are multiplied by ``2^(−Δt / half_life)``, so old
evidence fades and the score drifts back toward the prior (no evidence, 100). Positive
evidence is capped (``trust_max_positive``) so that the sheer volume of routine good
behaviour of a busy agent cannot make it immune to detections.

Every change is a :class:`~chorus_lab.schema.TrustScoreUpdate` whose ``before`` is the
score last reported for the agent, so consecutive updates chain (one's ``after`` is the
next one's ``before``), and whose reason names each piece of evidence and the ageing.

>>> from datetime import datetime, UTC
>>> model = TrustModel()
>>> t = datetime(2026, 1, 1, tzinfo=UTC)
>>> update = model.penalize("a", "anomaly", 1.0, ["m-1"], t)
>>> round(update.before, 2), round(update.after, 2)
(100.0, 66.67)
>>> round(model.score("a", at=datetime(2026, 1, 1, 1, tzinfo=UTC)), 2)   # one half-life later
80.0
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from chorus_lab.engine.config import EngineConfig
from chorus_lab.schema import TrustScoreUpdate, format_timestamp, parse_timestamp

MAX_SCORE = 100.0

PATTERN_ALIASES: Mapping[str, str] = {
    "hoarding": "resource_hoarding",
    "loop": "routing_loop",
    "cascade": "communication_cascade",
    "equivocation": "byzantine",
}
"""Short names accepted for detection patterns."""


def canonical_kind(kind: str) -> str:
    """Normalise a signal kind: lower case, ``-`` → ``_``, aliases resolved.

    >>> canonical_kind("Denied-While-Holding"), canonical_kind("hoarding")
    ('denied_while_holding', 'resource_hoarding')
    """
    name = kind.strip().lower().replace("-", "_").replace(" ", "_")
    return PATTERN_ALIASES.get(name, name)


@dataclass(frozen=True, slots=True)
class TrustSignal:
    """One piece of evidence about an agent.

    ``kind`` is a positive kind (``grant_given``, ``timely_release``, ``consistent_claim``)
    or a detection pattern (``byzantine``, ``resource_hoarding``, ...); ``confidence``
    (0–1) scales its weight.
    """

    kind: str
    confidence: float = 1.0
    evidence: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not (isinstance(self.confidence, int | float) and 0.0 <= self.confidence <= 1.0):
            raise ValueError(f"confidence must be within 0–1, got {self.confidence!r}")


@dataclass(slots=True)
class AgentTrust:
    """The evidence held about one agent, as of ``updated_at``."""

    positive: float = 0.0
    negative: float = 0.0
    updated_at: datetime | None = None
    score: float = MAX_SCORE
    """The score last reported (equals the score of the evidence above)."""


def beta_score(positive: float, negative: float, prior: float) -> float:
    """100 × the expected value of Beta(prior + positive, negative).

    >>> beta_score(0.0, 0.0, 2.0), beta_score(0.0, 2.0, 2.0), beta_score(2.0, 2.0, 2.0)
    (100.0, 50.0, 66.66666666666666)
    """
    alpha = prior + positive
    # The ratio first: 100·α/α is not always exactly 100 in floating point.
    return min(MAX_SCORE, max(0.0, MAX_SCORE * (alpha / (alpha + negative))))


def decay_factor(seconds: float, half_life_s: float) -> float:
    """How much evidence is left after ``seconds`` of event time (1 for none or negative)."""
    if seconds <= 0:
        return 1.0
    return math.pow(0.5, seconds / half_life_s)


class TrustModel:
    """Trust scores of all agents; deterministic, driven by event time only."""

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.agents: dict[str, AgentTrust] = {}

    # ------------------------------------------------------------------ queries

    def score(self, agent_id: str, at: datetime | None = None) -> float:
        """The agent's score; with ``at``, aged to that event time (without storing it)."""
        state = self.agents.get(agent_id)
        if state is None:
            return MAX_SCORE
        if at is None:
            return state.score
        positive, negative = self._aged(state, at)
        return beta_score(positive, negative, self.config.trust_prior_strength)

    def weight(self, kind: str) -> tuple[float, bool]:
        """The evidence weight of a signal kind and whether it is positive."""
        return self._weight(canonical_kind(kind))

    def _weight(self, name: str) -> tuple[float, bool]:
        """:meth:`weight` of a kind already through :func:`canonical_kind`."""
        if name in self.config.positive_weights:
            return self.config.positive_weights[name], True
        return self.config.negative_weights.get(name, self.config.default_signal_weight), False

    def unchanged(self, agent_id: str, timestamp: datetime, reason: str, evidence: Sequence[str] = ()) -> TrustScoreUpdate:
        """A zero update that touches no state (e.g. for a duplicate message)."""
        score = self.score(agent_id)
        return TrustScoreUpdate(agent_id, score, score, 0.0, reason, timestamp, list(evidence))

    # ------------------------------------------------------------------ updates

    def observe(self, agent_id: str, signals: Iterable[TrustSignal], timestamp: datetime) -> TrustScoreUpdate:
        """Age the agent's evidence to ``timestamp``, add ``signals``, report the change.

        Always returns an update (its delta may be zero), because the pipeline reports a
        trust impact for every message.
        """
        config = self.config
        now = timestamp.astimezone(UTC)
        state = self.agents.get(agent_id)
        if state is None:
            state = self.agents[agent_id] = AgentTrust()
        before = state.score
        parts: list[str] = []

        if state.updated_at is not None and now > state.updated_at:
            elapsed = (now - state.updated_at).total_seconds()
            factor = decay_factor(elapsed, config.trust_half_life_s)  # as _aged, without recomputing elapsed
            positive, negative = state.positive * factor, state.negative * factor
            if positive != state.positive or negative != state.negative:
                parts.append(f"evidence aged {_duration(elapsed)}")
            state.positive, state.negative = positive, negative
        if state.updated_at is None or now > state.updated_at:
            # Out-of-order events (signals stamped earlier) do not wind the clock back.
            state.updated_at = now

        evidence: list[str] = []
        for signal in signals:
            label = canonical_kind(signal.kind)
            weight, is_positive = self._weight(label)
            amount = weight * signal.confidence
            if is_positive:
                state.positive = min(config.trust_max_positive, state.positive + amount)
            else:
                state.negative += amount
            parts.append(label if signal.confidence == 1.0 else f"{label} (confidence {signal.confidence:.2f})")
            evidence.extend(signal.evidence)

        after = beta_score(state.positive, state.negative, config.trust_prior_strength)
        state.score = after
        reason = ", ".join(parts) if parts else "no trust evidence"
        reason = f"{reason}: {before:.1f} → {after:.1f}"
        return TrustScoreUpdate(
            agent_id=agent_id,
            before=before,
            after=after,
            delta=after - before,
            reason=reason,
            timestamp=timestamp,
            evidence=list(dict.fromkeys(evidence)),
        )

    def penalize(
        self, agent_id: str, pattern: str, confidence: float, evidence: Sequence[str], timestamp: datetime
    ) -> TrustScoreUpdate:
        """Lower trust for a detection, in proportion to its confidence (0–1)."""
        return self.observe(agent_id, [TrustSignal(pattern, confidence, tuple(evidence))], timestamp)

    def reward(self, agent_id: str, kind: str, evidence: Sequence[str], timestamp: datetime) -> TrustScoreUpdate:
        """Raise trust for one good act (``grant_given``, ``timely_release``, ``consistent_claim``)."""
        return self.observe(agent_id, [TrustSignal(kind, 1.0, tuple(evidence))], timestamp)

    def _aged(self, state: AgentTrust, at: datetime) -> tuple[float, float]:
        if state.updated_at is None:
            return state.positive, state.negative
        elapsed = (at.astimezone(UTC) - state.updated_at).total_seconds()
        factor = decay_factor(elapsed, self.config.trust_half_life_s)
        return state.positive * factor, state.negative * factor

    # ------------------------------------------------------------------ snapshot

    def to_dict(self) -> dict[str, Any]:
        return {
            agent: {
                "positive": s.positive,
                "negative": s.negative,
                "updated_at": format_timestamp(s.updated_at) if s.updated_at else None,
                "score": s.score,
            }
            for agent, s in self.agents.items()
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], config: EngineConfig | None = None) -> TrustModel:
        model = cls(config)
        for agent, raw in data.items():
            model.agents[agent] = AgentTrust(
                positive=float(raw["positive"]),
                negative=float(raw["negative"]),
                updated_at=parse_timestamp(raw["updated_at"]) if raw["updated_at"] else None,
                score=float(raw["score"]),
            )
        return model


def _duration(seconds: float) -> str:
    """Short human form: ``42s``, ``10m``, ``2h05m``."""
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes}m"
    return f"{minutes // 60}h{minutes % 60:02d}m"
