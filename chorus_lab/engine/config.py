"""Every threshold of the prediction pipeline, as data.

One frozen dataclass, so a run is described by a value that can be logged, compared and
passed around; ``docs/engine.md`` explains each default. Durations are seconds of *event
time* (the messages' own timestamps), never of the wall clock.

>>> EngineConfig().quarantine_threshold
30.0
>>> EngineConfig(quarantine_threshold=20.0).quarantine_threshold
20.0
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any


def _frozen(values: dict[str, float]) -> Mapping[str, float]:
    return MappingProxyType(dict(values))


DEFAULT_NEGATIVE_WEIGHTS: Mapping[str, float] = _frozen(
    {
        "byzantine": 4.0,
        "resource_hoarding": 2.0,
        "routing_loop": 1.0,
        "anomaly": 1.0,
        "communication_cascade": 0.5,
        "conflict": 0.5,
        "denied_while_holding": 0.3,
    }
)
"""Units of negative evidence per unit of detection confidence, by pattern."""

DEFAULT_POSITIVE_WEIGHTS: Mapping[str, float] = _frozen(
    {
        "grant_given": 0.25,
        "timely_release": 0.25,
        "consistent_claim": 0.1,
    }
)
"""Units of positive evidence per observed good act, by kind."""

DEFAULT_EDGE_STRENGTH: Mapping[str, float] = _frozen(
    {
        "request": 0.5,
        "dependency": 0.7,
        "conflict": 0.9,
    }
)
"""Strength of the causal edge a message implies, by relationship type."""


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Thresholds and weights of the ledger, the predictor, trust and quarantine."""

    # --- resource ledger
    default_capacity: float = 10.0
    """Capacity assumed for a resource nobody has announced (content ``capacity``)."""
    default_amount: float = 1.0
    """Amount assumed for a request or grant that names none."""
    default_priority: float = 5.0
    """Priority assumed for a request that names none (the middle of 0–10)."""
    max_amount: float = 1e12
    """Larger amounts or capacities are rejected as bad values (keeps sums finite)."""
    pending_ttl_s: float = 3600.0
    """A request unanswered this long is treated as abandoned and dropped."""
    timely_release_s: float = 300.0
    """A release within this time of the grant counts as good behaviour."""

    # --- conflict prediction (see docs/engine.md for the formula)
    risk_load_slope: float = 16.0
    """k: how sharply risk rises as load crosses capacity."""
    risk_load_center: float = 1.1
    """u0: the load (plus weighted contention) at which risk is 0.5. Just above 1, so a
    request that exactly fills a free resource (a mutex) is low risk, one that overflows it high."""
    risk_deadlock_weight: float = 4.0
    """Added to the logit when the request closes a wait-for cycle."""
    risk_denial_weight: float = 2.0
    """Times ln(1 + earlier denials of this agent for this resource), added to the logit."""
    priority_scale: float = 1.0
    """How many priority steps make a competitor's demand count ~73% instead of 50%."""
    conflict_type_threshold: float = 0.3
    """Below this risk the conflict type is reported as ``none`` (except deadlocks)."""
    deadlock_search_depth: int = 8
    """Longest wait-for cycle (in agents) the deadlock search looks for."""

    # --- trust (beta reputation with ageing)
    trust_prior_strength: float = 2.0
    """Pseudo-count of positive evidence every agent starts with (score 100)."""
    trust_half_life_s: float = 3600.0
    """Evidence loses half its weight per this much event time."""
    trust_max_positive: float = 6.0
    """Cap on banked positive evidence, so routine volume cannot buy immunity."""
    negative_weights: Mapping[str, float] = field(default_factory=lambda: DEFAULT_NEGATIVE_WEIGHTS)
    positive_weights: Mapping[str, float] = field(default_factory=lambda: DEFAULT_POSITIVE_WEIGHTS)
    default_signal_weight: float = 1.0
    """Negative weight of a detection pattern not named in ``negative_weights``."""

    # --- quarantine and other interventions
    quarantine_threshold: float = 30.0
    """Trust below this quarantines the agent."""
    byzantine_quarantine_confidence: float = 0.9
    """A Byzantine finding at least this confident quarantines at once, whatever the score."""
    probation_s: float = 600.0
    """Earliest release after quarantine."""
    release_threshold: float = 50.0
    """After probation, the score must be above this to be released."""
    alert_threshold: float = 60.0
    """A score falling through this level raises an ``alert`` intervention."""
    throttle_max_messages: int = 100
    """More messages than this from one agent within ``throttle_window_s`` throttle it."""
    throttle_window_s: float = 10.0
    throttle_duration_s: float = 60.0
    """How long a throttle lasts; no new throttle is issued meanwhile."""

    # --- pipeline
    dedup_window: int = 1000
    """How many recent message ids (and signal keys) are remembered per agent."""
    claim_memory: int = 100
    """How many claim keys are remembered per agent for the consistency check."""
    edge_strength: Mapping[str, float] = field(default_factory=lambda: DEFAULT_EDGE_STRENGTH)
    conflict_edge_risk: float = 0.7
    """A request at or above this risk yields ``conflict`` edges instead of ``request``."""

    def __reduce__(self) -> tuple[Any, ...]:
        # MappingProxyType does not pickle, and stage 1's decide workers get a copy of the config.
        plain = {f.name: dict(value) if isinstance(value := getattr(self, f.name), MappingProxyType) else value for f in fields(self)}
        return (_config_from_fields, (plain,))

    def __post_init__(self) -> None:
        positive = {
            "default_capacity": self.default_capacity,
            "default_amount": self.default_amount,
            "max_amount": self.max_amount,
            "pending_ttl_s": self.pending_ttl_s,
            "priority_scale": self.priority_scale,
            "risk_load_slope": self.risk_load_slope,
            "trust_prior_strength": self.trust_prior_strength,
            "trust_half_life_s": self.trust_half_life_s,
            "throttle_window_s": self.throttle_window_s,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        if not 0 <= self.default_priority <= 10:
            raise ValueError(f"default_priority must be within 0–10, got {self.default_priority!r}")
        if not 0 <= self.quarantine_threshold <= self.release_threshold <= 100:
            raise ValueError("need 0 <= quarantine_threshold <= release_threshold <= 100")
        for name in ("dedup_window", "claim_memory", "throttle_max_messages", "deadlock_search_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        for kind in ("request", "dependency", "conflict"):
            if not 0 <= self.edge_strength.get(kind, -1) <= 1:
                raise ValueError(f"edge_strength[{kind!r}] must be within 0–1")


def _config_from_fields(values: dict[str, Any]) -> EngineConfig:
    """Unpickles an ``EngineConfig``, its weight tables read-only again."""
    return EngineConfig(**{name: _frozen(value) if isinstance(value, dict) else value for name, value in values.items()})
