"""Byzantine behaviour: telling peers different stories, and replies that answer nothing.

DESIGN.md lists four signs; each is a *kind* of evidence here, and an agent's kinds
combine into one incident (noisy-or of their confidences):

- **equivocation** — the same claim key with different values sent to different peers
  within ``window_s``: the agent changes its value without telling everyone who heard
  the old one, and then goes back (two stories at once).
- **contradiction** — a changed value that does not reach everyone who heard the old
  value within the window (one such change; could still be sloppy honesty).
  **An honest change** — sent to (at least) everyone who heard the old value, at once —
  replaces the old value and is not evidence of anything.
- **phantom reply** — a reply (``response``, ``result``, ``grant``, ``deny``) to a
  request that was never made: no ``causation_id`` and a ``correlation_id`` never seen
  before; or a ``causation_id`` naming a known request that was not sent to the replier.
  A ``causation_id`` this detector no longer remembers proves nothing and is ignored.
- **identity** — a provenance field in ``metadata`` (``sender``, ``agent_id``,
  ``origin_agent``, ``producer_agent``) naming a different agent than ``agent_id``, or the
  stage-1 flag ``identity_mismatch`` on the decision.

Cost per message: O(claims of that key in the window) for claims, O(1) otherwise;
memory bounded by ``max_agents`` × ``max_keys`` × ``max_claims`` and ``max_messages``.

>>> from datetime import datetime, timedelta, UTC
>>> from chorus_lab.schema import AgentMessage
>>> from chorus_lab.patterns.common import observe_message
>>> t0, detector = datetime(2026, 1, 1, tzinfo=UTC), ByzantineDetector()
>>> def claim(i, value, targets):
...     m = AgentMessage("x", t0 + timedelta(seconds=i), "broadcast",
...         {"action": "claim", "claim": {"key": "region", "value": value}}, targets, f"c{i}", {},
...         message_id=f"m{i}")
...     return detector.observe(observe_message(m))
>>> claim(1, "eu", ["a"]) + claim(2, "us", ["a", "b"])         # honest change, to everyone
[]
>>> [(f.details["kinds"], round(f.confidence, 2)) for f in claim(3, "eu", ["c"])]
[(['contradiction'], 0.6)]
>>> [(f.details["kinds"], round(f.confidence, 2)) for f in claim(4, "us", ["d"])]
[(['equivocation'], 0.9)]
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from chorus_lab.patterns.alerts import Finding
from chorus_lab.patterns.common import BoundedDict, Observation

PROVENANCE_KEYS = ("sender", "agent_id", "origin_agent", "producer_agent")
"""Metadata fields that, when present, must name the message's own ``agent_id``."""


@dataclass(frozen=True, slots=True)
class ByzantineConfig:
    """Thresholds of the Byzantine detector."""

    window_s: float = 300.0
    """Claims and evidence older than this (event time) are forgotten."""
    contradiction_confidence: float = 0.6
    """One change of value that did not reach everyone who heard the old one."""
    equivocation_confidence: float = 0.9
    """Two stories at once: a second such change, or going back to a value already
    contradicted; each further switch halves the remaining doubt."""
    phantom_confidence: float = 0.7
    """One reply to a request never made; each further one halves the remaining doubt."""
    identity_confidence: float = 0.95
    """Identity fields that disagree with the sender."""
    max_agents: int = 100_000
    max_keys: int = 16
    """Claim keys remembered per agent."""
    max_claims: int = 32
    """Claims remembered per agent and key."""
    max_messages: int = 200_000
    """Recent requests and correlations remembered for the phantom-reply check."""


@dataclass(frozen=True, slots=True)
class _Claim:
    seconds: float
    value: str
    targets: frozenset[str]
    message_id: str


@dataclass(slots=True)
class _Evidence:
    """What one agent has shown within the window, per kind."""

    kinds: dict[str, tuple[float, float]] = field(default_factory=dict)
    """kind -> (confidence, time last seen)"""
    message_ids: list[str] = field(default_factory=list)
    switches: dict[str, int] = field(default_factory=dict)
    """claim key -> suspicious changes of value within the window"""
    phantoms: deque[float] = field(default_factory=deque)
    details: dict[str, object] = field(default_factory=dict)
    """The latest details of each kind, merged."""
    claims: dict[str, deque[_Claim]] = field(default_factory=dict)


class ByzantineDetector:
    """Per-agent consistency of claims, replies and identity."""

    pattern = "byzantine"

    def __init__(self, config: ByzantineConfig | None = None) -> None:
        self.config = config or ByzantineConfig()
        self._agents: BoundedDict[str, _Evidence] = BoundedDict(self.config.max_agents)
        self._requests: BoundedDict[str, frozenset[str]] = BoundedDict(self.config.max_messages)
        self._correlations: BoundedDict[str, None] = BoundedDict(self.config.max_messages)

    def observe(self, obs: Observation) -> list[Finding]:
        """Findings about the sender of ``obs`` (at most one)."""
        message, facts = obs.message, obs.facts
        found: list[tuple[str, float, list[str], dict[str, object]]] = []
        identity = self._identity(obs)
        if identity is not None:
            found.append(identity)
        if obs.is_reply:
            phantom = self._phantom(obs)
            if phantom is not None:
                found.append(phantom)
        elif message.message_type == "request":
            self._requests[message.message_id] = frozenset(message.target_agents)
        if facts.claim is not None:
            claimed = self._claim(obs)
            if claimed is not None:
                found.append(claimed)
        if message.correlation_id:
            self._correlations[message.correlation_id] = None
        if not found:
            return []
        return [self._finding(obs, found)]

    # ------------------------------------------------------------------ kinds

    def _identity(self, obs: Observation) -> tuple[str, float, list[str], dict[str, object]] | None:
        message = obs.message
        claimed = {key: message.metadata.get(key) for key in PROVENANCE_KEYS if isinstance(message.metadata.get(key), str)}
        wrong = {key: value for key, value in claimed.items() if value != message.agent_id}
        flagged = obs.decision is not None and "identity_mismatch" in obs.decision.processing_metadata.flags
        if not wrong and not flagged:
            return None
        detail: dict[str, object] = {"identity_fields": wrong, "identity_flag": flagged}
        return "identity", self.config.identity_confidence, [message.message_id], detail

    def _phantom(self, obs: Observation) -> tuple[str, float, list[str], dict[str, object]] | None:
        message = obs.message
        if message.causation_id is None:
            if message.correlation_id in self._correlations:
                return None
            why = "answers nothing: no causation_id and a conversation never seen before"
        else:
            asked = self._requests.get(message.causation_id)
            if asked is None or message.agent_id in asked or not asked:
                return None  # unknown (forgotten) request proves nothing; asked: fine
            why = f"answers request {message.causation_id}, which was not sent to it"
        evidence = self._evidence(message.agent_id)
        horizon = obs.seconds - self.config.window_s
        while evidence.phantoms and evidence.phantoms[0] < horizon:
            evidence.phantoms.popleft()
        evidence.phantoms.append(obs.seconds)
        confidence = 1.0 - (1.0 - self.config.phantom_confidence) * 0.5 ** (len(evidence.phantoms) - 1)
        return "phantom_reply", confidence, [message.message_id], {"phantom_reason": why, "phantom_replies": len(evidence.phantoms)}

    def _claim(self, obs: Observation) -> tuple[str, float, list[str], dict[str, object]] | None:
        config = self.config
        message, claim = obs.message, obs.facts.claim
        assert claim is not None
        evidence = self._evidence(message.agent_id)
        history = evidence.claims.get(claim.key)
        if history is None:
            if len(evidence.claims) >= config.max_keys:
                evidence.claims.pop(next(iter(evidence.claims)))
            history = evidence.claims[claim.key] = deque(maxlen=config.max_claims)
        horizon = obs.seconds - config.window_s
        while history and history[0].seconds < horizon:
            history.popleft()
        if not history:
            evidence.switches.pop(claim.key, None)
        current = _Claim(obs.seconds, claim.value_json, frozenset(message.target_agents), message.message_id)
        others = [c for c in history if c.value != current.value]
        history.append(current)
        if not others or history[-2].value == current.value:
            return None  # consistent with what it said last
        told_old = frozenset().union(*(c.targets for c in others))
        if told_old <= current.targets:
            # An honest change reaches everyone who heard the old value: the old value is gone.
            for old in others:
                history.remove(old)
            return None
        switches = evidence.switches.get(claim.key, 0) + 1
        evidence.switches[claim.key] = switches
        went_back = any(c.value == current.value for c in history if c is not current)
        detail: dict[str, object] = {
            "claim_key": claim.key,
            "values": sorted({c.value for c in history}),
            "not_told": sorted(told_old - current.targets)[:20],
            "switches": switches,
        }
        ids = [c.message_id for c in history]
        if switches >= 2 or went_back:
            confidence = 1.0 - (1.0 - config.equivocation_confidence) * 0.5 ** max(0, switches - 2)
            return "equivocation", confidence, ids, detail
        return "contradiction", config.contradiction_confidence, ids, detail

    # ------------------------------------------------------------------ finding

    def _evidence(self, agent: str) -> _Evidence:
        evidence = self._agents.get(agent)
        if evidence is None:
            evidence = self._agents[agent] = _Evidence()
        return evidence

    def _finding(self, obs: Observation, found: list[tuple[str, float, list[str], dict[str, object]]]) -> Finding:
        agent = obs.message.agent_id
        evidence = self._evidence(agent)
        horizon = obs.seconds - self.config.window_s
        evidence.kinds = {k: v for k, v in evidence.kinds.items() if v[1] >= horizon}
        for kind, confidence, ids, detail in found:
            previous = evidence.kinds.get(kind, (0.0, 0.0))[0]
            evidence.kinds[kind] = (max(previous, confidence), obs.seconds)
            evidence.message_ids = list(dict.fromkeys([*evidence.message_ids, *ids]))[-50:]
            evidence.details.update(detail)
        if "equivocation" in evidence.kinds:
            evidence.kinds.pop("contradiction", None)  # the stronger reading of the same claims
        doubt = 1.0
        for confidence, _ in evidence.kinds.values():
            doubt *= 1.0 - confidence
        confidence = 1.0 - doubt
        kinds = sorted(evidence.kinds)
        details = {**evidence.details, "kinds": kinds}
        return Finding(
            pattern="byzantine",
            key=agent,
            agents=(agent,),
            confidence=min(0.999, confidence),
            severity="critical" if confidence >= 0.9 else "high",
            description=f"{agent} behaves inconsistently: {describe(kinds, details)}.",
            evidence=tuple(evidence.message_ids),
            detected_at=obs.message.timestamp,
            details=details,
        )


def describe(kinds: list[str], details: dict[str, object]) -> str:
    """One readable clause per kind of evidence."""
    parts = []
    key = details.get("claim_key")
    values = ", ".join(str(v) for v in details.get("values", []))  # type: ignore[union-attr]
    if "equivocation" in kinds:
        parts.append(f"it tells different peers different values for {key!r} ({values})")
    if "contradiction" in kinds:
        parts.append(f"it changed its claim {key!r} ({values}) without telling everyone who heard the old value")
    if "phantom_reply" in kinds:
        parts.append(f"it sent replies to requests never made ({details.get('phantom_reason', 'see evidence')})")
    if "identity" in kinds:
        parts.append(f"its identity fields disagree with the sender ({details.get('identity_fields')})")
    return "; ".join(parts)


__all__ = ["ByzantineConfig", "ByzantineDetector", "PROVENANCE_KEYS", "describe"]
