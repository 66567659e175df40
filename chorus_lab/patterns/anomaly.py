"""Statistical anomalies: an agent behaving unlike its own past.

DESIGN.md: a statistically significant change in an agent's own communication pattern
(rate, fan-out, message-type mix, payload size) against its own baseline, with a
configurable sensitivity. Busy agents are not anomalous for being busy: each agent is
compared only with itself.

**Rate** — a burst is judged by how improbable it is at the agent's usual rate λ (an
exponentially weighted mean of its intervals): for each ``k`` in ``rate_windows``, the
last ``k`` messages took time T, and under a Poisson process of rate λ the chance of
``k`` messages that fast is ``P(N(T) ≥ k)`` with ``N(T) ~ Poisson(λT)``. The rate alarms
when that is at most ``rate_p_value × sensitivity``. (A per-message interval is too
noisy for a busy agent: its intervals already spread over orders of magnitude.)

**Fan-out and payload size** — on a log scale (``log(1 + targets)``, ``log(bytes)`` of
the content as JSON), where "twice as much" is the same step whatever the agent's usual
level. Each has a **robust baseline**: an exponentially weighted location and scale where
a deviation enters clipped at ``clip`` scales (a Huber-type EWMA). A message's **robust
z-score** is its deviation over that scale (at least ``min_scale``, so an agent that always
sends one target can still show a change). A one-sided **CUSUM**
``S ← max(0, S + min(z, z_clip) − k)`` accumulates sustained increases and alarms at
``S ≥ h / sensitivity``: one outlier (z clipped at 6) cannot reach ``h`` = 14, a run of
them does within a few messages, and ordinary variation drains ``S`` by ``k`` (1.5) per
message.

**Type mix** (``message_type:action``) — a long (baseline) and a short (last ~10
messages) exponentially weighted distribution; it alarms when their total-variation
distance reaches ``mix_threshold``.

Values far out (``suspect_z`` scales, or a significant rate) are learnt at
``suspect_weight`` of the usual weight once the baseline is warm, so a sustained shift
does not become the baseline before it is seen. No alarm before ``min_baseline`` messages.
Confidence is ``1 − exp(−strength)`` with strength = S/h for the CUSUMs, distance/threshold
for the mix, and 1 + (decades below the p-value threshold)/3 for the rate: 0.63 at the
threshold.

Cost per message: O(Σ rate_windows + categories); memory O(1) per agent, at most
``max_agents`` agents.

>>> from datetime import datetime, timedelta, UTC
>>> from chorus_lab.schema import AgentMessage
>>> from chorus_lab.patterns.common import observe_message
>>> t0, detector = datetime(2026, 1, 1, tzinfo=UTC), AnomalyDetector()
>>> def send(agent, i, seconds, targets):
...     m = AgentMessage(agent, t0 + timedelta(seconds=seconds), "broadcast", {"action": "status"},
...                      [f"p{j}" for j in range(targets)], "c", {}, message_id=f"{agent}{i}")
...     return detector.observe(observe_message(m))
>>> quiet = [send(a, i, 10.0 * i + (i % 3), 2 + i % 3) for i in range(40) for a in "ab"]
>>> any(quiet)
False
>>> wide = [f for i in range(40, 50) for f in send("a", i, 10.0 * i, 60)]
>>> wide[0].details["features"], wide[0].agents
(['fan_out'], ('a',))
>>> burst = [f for i in range(40, 60) for f in send("b", i, 400.0 + i / 10, 3)]
>>> burst[0].details["features"], burst[0].agents
(['rate'], ('b',))
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from chorus_lab.patterns.alerts import Finding
from chorus_lab.patterns.common import BoundedDict, Observation, poisson_tail

FEATURES = ("fan_out", "payload")
"""The features with a robust baseline and a CUSUM (rate and type mix have their own tests)."""


@dataclass(frozen=True, slots=True)
class AnomalyConfig:
    """Sensitivity and memory of the anomaly detector."""

    sensitivity: float = 1.0
    """Scales every alarm threshold: 2.0 alarms on half the evidence, 0.5 needs twice as much."""
    rate_windows: tuple[int, ...] = (10, 40)
    """Message counts over which a burst is tested (short bursts and longer, milder ones)."""
    rate_p_value: float = 1e-12
    """A burst at most this probable at the agent's usual rate alarms (at sensitivity 1)."""
    cusum_k: float = 1.5
    """Allowance: z-scores below this drain the CUSUM."""
    cusum_h: float = 14.0
    """Decision interval at sensitivity 1."""
    z_clip: float = 6.0
    """Largest z one message can add, so one outlier alone never alarms."""
    alpha: float = 0.03
    """Weight of a new message in a baseline once warmed up (about the last 33 messages)."""
    clip: float = 3.0
    """Deviations enter the baseline clipped at this many scales."""
    min_scale: tuple[float, float] = (0.5, 0.25)
    """Smallest scale of fan_out and payload, in log units."""
    suspect_z: float = 3.0
    suspect_weight: float = 0.3
    """Weight (relative) with which far-out values are learnt once the baseline is warm."""
    min_baseline: int = 20
    """Messages from an agent before it can alarm."""
    mix_alpha_long: float = 0.002
    mix_alpha_short: float = 0.2
    mix_threshold: float = 0.9
    """Total-variation distance between short and long type mix that alarms."""
    mix_min_messages: int = 300
    """Messages from an agent before its type mix can alarm."""
    max_categories: int = 16
    """Message-type categories per agent; more are pooled as ``other``."""
    max_agents: int = 100_000
    """Agents with a baseline at once; the least recently active is forgotten first."""
    max_gap_factor: float = 10.0
    """An interval enters the usual-rate baseline capped at this many times the mean."""

    def __post_init__(self) -> None:
        if self.sensitivity <= 0:
            raise ValueError(f"sensitivity must be positive, got {self.sensitivity}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be within (0, 1), got {self.alpha}")
        if len(self.min_scale) != len(FEATURES):
            raise ValueError(f"min_scale needs one value per feature {FEATURES}")
        if not self.rate_windows or min(self.rate_windows) < 2:
            raise ValueError(f"rate_windows need at least one window of 2 or more messages, got {self.rate_windows}")

    @property
    def threshold(self) -> float:
        return self.cusum_h / self.sensitivity


@dataclass(slots=True)
class Baseline:
    """One agent's baseline and CUSUM state."""

    count: int = 0
    times: list[float] = field(default_factory=list)
    """Times of its last max(rate_windows) + 1 messages."""
    mean_interval: float = 0.0
    intervals: int = 0
    location: list[float] = field(default_factory=lambda: [0.0, 0.0])
    scale: list[float] = field(default_factory=lambda: [0.0, 0.0])
    seen: list[int] = field(default_factory=lambda: [0, 0])
    cusum: list[float] = field(default_factory=lambda: [0.0, 0.0])
    mix_long: dict[str, float] = field(default_factory=dict)
    mix_short: dict[str, float] = field(default_factory=dict)


class AnomalyDetector:
    """Per-agent baselines: a Poisson burst test for rate, robust CUSUMs, a type-mix distance."""

    pattern = "anomaly"

    def __init__(self, config: AnomalyConfig | None = None) -> None:
        self.config = config or AnomalyConfig()
        self.baselines: BoundedDict[str, Baseline] = BoundedDict(self.config.max_agents)

    def observe(self, obs: Observation) -> list[Finding]:
        """Update the sender's baseline; a finding while it is out of its normal range."""
        config = self.config
        agent = obs.message.agent_id
        base = self.baselines.get(agent)
        if base is None:
            base = self.baselines[agent] = Baseline()
        else:
            self.baselines.touch(agent)
        base.count += 1
        ready = base.count > config.min_baseline
        alarms: dict[str, dict[str, float]] = {}
        rate = self._rate(base, obs.seconds, ready)
        if rate is not None:
            alarms["rate"] = rate
        for i, value in enumerate(self._features(obs)):
            z = self._score(base, i, value)
            if z is not None and ready:
                base.cusum[i] = min(3 * config.threshold, max(0.0, base.cusum[i] + min(z, config.z_clip) - config.cusum_k))
                if base.cusum[i] >= config.threshold:
                    alarms[FEATURES[i]] = self._describe_feature(base, i, value, z)
            warm = base.seen[i] * config.alpha >= 1.0
            self._learn(base, i, value, config.suspect_weight if warm and z is not None and z >= config.suspect_z else 1.0)
        mix = self._mix(base, obs)
        if mix is not None:
            alarms["type_mix"] = mix
        if not alarms:
            return []
        return [self._finding(obs, base, alarms)]

    # ------------------------------------------------------------------ rate

    def _rate(self, base: Baseline, now: float, ready: bool) -> dict[str, float] | None:
        """The most significant burst over ``rate_windows``, if it alarms; learns the usual rate."""
        config = self.config
        times = base.times
        if times and now < times[-1]:
            now = times[-1]  # a late message: no negative interval
        best: tuple[float, int, float] | None = None
        if ready and base.mean_interval > 0:
            usual = 1.0 / base.mean_interval
            for k in config.rate_windows:
                if len(times) >= k:
                    span = now - times[-k]  # k intervals, k + 1 messages including this one
                    p = poisson_tail(k, usual * span)
                    if best is None or p < best[0]:
                        best = (p, k, span)
        if times:
            interval = now - times[-1]
            significant = best is not None and best[0] <= math.sqrt(config.rate_p_value)
            self._learn_interval(base, interval, config.suspect_weight if significant else 1.0)
        times.append(now)
        del times[: -(max(config.rate_windows) + 1)]
        if best is None or best[0] > config.rate_p_value * config.sensitivity:
            return None
        p, k, span = best
        return {
            "p_value": p,
            "messages": k + 1,
            "seconds": round(span, 6),
            "value": round(k / max(span, 1e-9), 4),
            "baseline": round(1.0 / base.mean_interval, 4),
            "decades": round(math.log10(config.rate_p_value * config.sensitivity / max(p, 1e-300)), 2),
        }

    def _learn_interval(self, base: Baseline, interval: float, weight: float) -> None:
        config = self.config
        base.intervals += 1
        if base.intervals == 1:
            base.mean_interval = interval
            return
        capped = min(interval, config.max_gap_factor * base.mean_interval) if base.mean_interval > 0 else interval
        alpha = max(config.alpha, 1.0 / base.intervals)
        if base.intervals * config.alpha >= 1.0:
            alpha *= weight
        base.mean_interval += alpha * (capped - base.mean_interval)

    # ------------------------------------------------------------------ fan-out, payload

    def _features(self, obs: Observation) -> tuple[float, float]:
        message = obs.message
        return math.log1p(len(message.target_agents)), math.log(max(1, payload_size(message.content)))

    def _score(self, base: Baseline, i: int, value: float) -> float | None:
        if base.seen[i] < 2:
            return None
        # 1.25 × mean absolute deviation estimates a standard deviation for normal data.
        scale = max(1.25 * base.scale[i], self.config.min_scale[i])
        return (value - base.location[i]) / scale

    def _learn(self, base: Baseline, i: int, value: float, weight: float = 1.0) -> None:
        config = self.config
        base.seen[i] += 1
        n = base.seen[i]
        alpha = max(config.alpha, 1.0 / n) * weight  # a plain mean while warming up
        if n == 1:
            base.location[i] = value
            return
        limit = config.clip * max(1.25 * base.scale[i], config.min_scale[i])
        deviation = max(-limit, min(limit, value - base.location[i]))
        base.location[i] += alpha * deviation
        base.scale[i] += alpha * (abs(deviation) - base.scale[i])

    def _describe_feature(self, base: Baseline, i: int, value: float, z: float) -> dict[str, float]:
        return {
            "z": round(z, 2),
            "cusum": round(base.cusum[i], 2),
            "threshold": round(self.config.threshold, 2),
            "value": round(natural(FEATURES[i], value), 4),
            "baseline": round(natural(FEATURES[i], base.location[i]), 4),
        }

    # ------------------------------------------------------------------ type mix

    def _mix(self, base: Baseline, obs: Observation) -> dict[str, float] | None:
        config = self.config
        category = f"{obs.message.message_type}:{obs.facts.action or '-'}"
        if category not in base.mix_long and len(base.mix_long) >= config.max_categories:
            category = "other"
        for mix, alpha in ((base.mix_long, max(config.mix_alpha_long, 1.0 / base.count)), (base.mix_short, config.mix_alpha_short)):
            for key in mix:
                mix[key] *= 1.0 - alpha
            mix[category] = mix.get(category, 0.0) + alpha
        if base.count < config.mix_min_messages:
            return None
        keys = base.mix_long.keys() | base.mix_short.keys()
        distance = 0.5 * sum(abs(base.mix_long.get(k, 0.0) - base.mix_short.get(k, 0.0)) for k in keys)
        threshold = min(1.0, config.mix_threshold / config.sensitivity)
        if distance < threshold:
            return None
        return {"distance": round(distance, 3), "threshold": round(threshold, 3)}

    # ------------------------------------------------------------------ finding

    def _finding(self, obs: Observation, base: Baseline, alarms: dict[str, dict[str, float]]) -> Finding:
        strength = 0.0
        for name, info in alarms.items():
            if name == "rate":
                strength = max(strength, 1.0 + info["decades"] / 3.0)
            elif name == "type_mix":
                strength = max(strength, info["distance"] / info["threshold"])
            else:
                strength = max(strength, info["cusum"] / info["threshold"])
        confidence = 1.0 - math.exp(-strength)
        agent = obs.message.agent_id
        parts = [_SENTENCE[name](info) for name, info in alarms.items()]
        return Finding(
            pattern="anomaly",
            key=agent,
            agents=(agent,),
            confidence=min(0.99, confidence),
            severity="medium" if confidence >= 0.8 else "low",
            description=f"{agent} departs from its own baseline: {'; '.join(parts)}.",
            evidence=(obs.message.message_id,),
            detected_at=obs.message.timestamp,
            details={"features": sorted(alarms), **alarms, "messages_seen": base.count},
        )


def payload_size(content: object) -> int:
    """Bytes of ``content`` as compact JSON (what the wire carries). O(size)."""
    try:
        return len(json.dumps(content, separators=(",", ":"), default=str, ensure_ascii=False).encode())
    except (TypeError, ValueError, RecursionError):
        return 0


def natural(feature: str, value: float) -> float:
    """A feature value back in natural units: targets or bytes.

    >>> [round(natural(f, v), 6) for f, v in (("fan_out", math.log1p(4)), ("payload", math.log(80)))]
    [4.0, 80.0]
    """
    return math.expm1(value) if feature == "fan_out" else math.exp(value)


_SENTENCE = {
    "rate": lambda i: (
        f"it sent {i['messages']:.0f} messages in {i['seconds']:.2f} s ({i['value']:.1f}/s) against its usual "
        f"{i['baseline']:.2f}/s (p = {i['p_value']:.1g})"
    ),
    "fan_out": lambda i: f"it addresses {i['value']:.0f} agents per message against its usual {i['baseline']:.1f} (z {i['z']})",
    "payload": lambda i: f"its messages carry {i['value']:.0f} bytes against its usual {i['baseline']:.0f} (z {i['z']})",
    "type_mix": lambda i: f"its mix of message types shifted (distance {i['distance']} ≥ {i['threshold']})",
}


__all__ = ["AnomalyConfig", "AnomalyDetector", "Baseline", "FEATURES", "natural", "payload_size"]
