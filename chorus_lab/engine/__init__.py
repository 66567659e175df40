"""The prediction pipeline: conflict prediction, trust and quarantine, as a pure core.

No Kafka, no threads, no wall clock: everything is a function of the engine's state and
the input event, using the event's own time. ``docs/engine.md`` describes the models.

- :mod:`~chorus_lab.engine.content` — reading the conventions inside ``content``
- :mod:`~chorus_lab.engine.ledger` — :class:`ResourceLedger`
- :mod:`~chorus_lab.engine.conflict` — :class:`Predictor`, :class:`LedgerPredictor`
- :mod:`~chorus_lab.engine.trust` — :class:`TrustModel`
- :mod:`~chorus_lab.engine.quarantine` — :class:`QuarantinePolicy`
- :mod:`~chorus_lab.engine.pipeline` — :class:`PredictionEngine`
- :mod:`~chorus_lab.engine.config` — :class:`EngineConfig`
"""

from chorus_lab.engine.config import EngineConfig
from chorus_lab.engine.conflict import LedgerPredictor, Predictor, RiskFactors
from chorus_lab.engine.content import ContentFacts, parse_content
from chorus_lab.engine.ledger import LedgerUpdate, LedgerView, PendingRequest, ResourceLedger
from chorus_lab.engine.pipeline import EngineResult, EngineState, PredictionEngine, SignalResult
from chorus_lab.engine.quarantine import QuarantinePolicy
from chorus_lab.engine.trust import TrustModel, TrustSignal

__all__ = [
    "ContentFacts",
    "EngineConfig",
    "EngineResult",
    "EngineState",
    "LedgerPredictor",
    "LedgerUpdate",
    "LedgerView",
    "PendingRequest",
    "PredictionEngine",
    "Predictor",
    "QuarantinePolicy",
    "ResourceLedger",
    "RiskFactors",
    "SignalResult",
    "TrustModel",
    "TrustSignal",
    "parse_content",
]
