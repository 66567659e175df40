"""The alert builder: one alert per incident, updates when something changed, bounded."""

from __future__ import annotations

from chorus_lab.patterns.alerts import AlertBuilder, AlertConfig, Finding, alert_id_for, severity_for
from tests.properties.fleet import at


def finding(seconds: float, confidence: float = 0.6, severity: str = "medium", agents: tuple[str, ...] = ("a",), evidence: tuple[str, ...] = ("m1",), key: str = "k") -> Finding:
    return Finding("anomaly", key, agents, confidence, severity, "a changed", evidence, at(seconds), {"x": 1})  # type: ignore[arg-type]


def test_first_finding_is_an_alert_with_all_required_fields() -> None:
    alert = AlertBuilder().build(finding(5.0))
    assert alert is not None
    assert alert.alert_id.startswith("alert-anomaly-")
    assert (alert.pattern, alert.severity, alert.confidence, alert.affected_agents, alert.evidence) == ("anomaly", "medium", 0.6, ["a"], ["m1"])
    assert alert.detected_at == at(5.0) and alert.description == "a changed"
    assert alert.details["update"] == 0 and alert.details["incident_key"] == "k" and alert.details["x"] == 1


def test_repeats_are_silent_and_updates_are_rate_limited() -> None:
    builder = AlertBuilder(AlertConfig(min_update_interval_s=30.0, min_confidence_step=0.05))
    first = builder.build(finding(0.0))
    assert builder.build(finding(1.0)) is None  # nothing new
    assert builder.build(finding(2.0, confidence=0.9)) is None  # too soon after the alert
    update = builder.build(finding(40.0, confidence=0.9))
    assert update is not None and update.alert_id == first.alert_id and update.details["update"] == 1
    assert update.confidence == 0.9


def test_a_severity_rise_is_reported_at_once() -> None:
    builder = AlertBuilder()
    first = builder.build(finding(0.0))
    update = builder.build(finding(1.0, severity="high"))
    assert update is not None and update.alert_id == first.alert_id and update.severity == "high"


def test_new_agents_join_the_incident() -> None:
    builder = AlertBuilder(AlertConfig(min_update_interval_s=0.0))
    builder.build(finding(0.0, agents=("a",)))
    update = builder.build(finding(1.0, agents=("b",), evidence=("m2",)))
    assert update is not None and update.affected_agents == ["a", "b"] and update.evidence == ["m1", "m2"]


def test_a_quiet_incident_closes_and_a_later_one_is_new() -> None:
    builder = AlertBuilder(AlertConfig(incident_ttl_s=100.0))
    first = builder.build(finding(0.0))
    second = builder.build(finding(500.0, evidence=("m9",)))
    assert second is not None and second.alert_id != first.alert_id and second.details["update"] == 0
    assert builder.closed == 1


def test_evidence_and_incidents_are_bounded() -> None:
    builder = AlertBuilder(AlertConfig(max_evidence=4, max_incidents=3, min_update_interval_s=0.0))
    builder.build(finding(0.0, evidence=("m1", "m2", "m3")))
    update = builder.build(finding(1.0, agents=("b",), evidence=("m4", "m5", "m6")))
    assert update is not None and update.evidence == ["m1", "m2", "m5", "m6"]
    for i in range(10):
        builder.build(finding(2.0, key=f"k{i}"))
    assert len(builder.incidents) == 3


def test_ids_are_deterministic() -> None:
    assert alert_id_for("anomaly", "k", ["m1"]) == alert_id_for("anomaly", "k", ["m1"])
    assert alert_id_for("anomaly", "k", ["m1"]) != alert_id_for("anomaly", "k", ["m2"])
    assert severity_for(0.95) == "high" and severity_for(0.5) == "medium" and severity_for(0.99, base="critical") == "critical"
