"""Pattern detectors, one module each, and the alert builder.

Each detector follows its definition in DESIGN.md ("Detection — definitions the tests
hold") and reports :class:`~chorus_lab.patterns.alerts.Finding` s; the
:class:`~chorus_lab.patterns.alerts.AlertBuilder` turns them into one alert per incident
plus updates. All are pure: state + one observed message → findings, in event time.

- :mod:`~chorus_lab.patterns.routing_loop` — hand-off chains that come back around (3+ agents)
- :mod:`~chorus_lab.patterns.hoarding` — holding long and refusing, against the fleet's normal
- :mod:`~chorus_lab.patterns.cascade` — causal trees that grow, and their amplification points
- :mod:`~chorus_lab.patterns.byzantine` — equivocation, contradictions, phantom replies, identity
- :mod:`~chorus_lab.patterns.anomaly` — robust baselines and CUSUM per agent
- :mod:`~chorus_lab.patterns.conflict` — contention bursts and deadlocks that happen
- :mod:`~chorus_lab.patterns.alerts` — findings → alerts (dedup, updates)
- :mod:`~chorus_lab.patterns.common` — the observation every detector reads, bounded maps
"""

from chorus_lab.patterns.alerts import AlertBuilder, AlertConfig, Finding
from chorus_lab.patterns.anomaly import AnomalyConfig, AnomalyDetector
from chorus_lab.patterns.byzantine import ByzantineConfig, ByzantineDetector
from chorus_lab.patterns.cascade import CascadeConfig, CascadeDetector
from chorus_lab.patterns.common import Observation, observe_decision, observe_message
from chorus_lab.patterns.conflict import ConflictConfig, ConflictDetector
from chorus_lab.patterns.hoarding import HoardingConfig, HoardingDetector
from chorus_lab.patterns.routing_loop import RoutingLoopConfig, RoutingLoopDetector

__all__ = [
    "AlertBuilder",
    "AlertConfig",
    "AnomalyConfig",
    "AnomalyDetector",
    "ByzantineConfig",
    "ByzantineDetector",
    "CascadeConfig",
    "CascadeDetector",
    "ConflictConfig",
    "ConflictDetector",
    "Finding",
    "HoardingConfig",
    "HoardingDetector",
    "Observation",
    "RoutingLoopConfig",
    "RoutingLoopDetector",
    "observe_decision",
    "observe_message",
]
