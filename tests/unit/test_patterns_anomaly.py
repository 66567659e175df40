"""Statistical anomalies against each agent's own baseline; busy agents are not anomalies."""

from __future__ import annotations

import random

import pytest

from chorus_lab.patterns.anomaly import AnomalyConfig, AnomalyDetector, payload_size
from chorus_lab.patterns.common import observe_message
from tests.properties.fleet import msg


class Agent:
    def __init__(self, detector: AnomalyDetector | None = None, name: str = "a", seed: int = 1) -> None:
        self.detector = detector or AnomalyDetector()
        self.name, self.n, self.t = name, 0, 0.0
        self.rng = random.Random(seed)
        self.findings: list = []

    def send(self, gap: float, targets: int = 3, kind: str = "broadcast", action: str = "status", extra: str = "") -> list:
        self.n += 1
        self.t += gap
        content = {"action": action, "load": round(self.rng.random(), 2)}
        if extra:
            content["report"] = extra
        m = msg(self.name, [f"p{i}" for i in range(targets)], f"{self.name}-{self.n}", self.t, kind, **content)  # type: ignore[arg-type]
        found = self.detector.observe(observe_message(m))
        self.findings += found
        return found

    def baseline(self, count: int = 60, mean_gap: float = 2.0) -> None:
        for _ in range(count):
            self.send(self.rng.expovariate(1 / mean_gap), targets=self.rng.randint(1, 5))


def test_a_burst_far_above_the_agents_usual_rate() -> None:
    agent = Agent()
    agent.baseline()
    assert agent.findings == []
    for _ in range(40):
        agent.send(0.02)
    first = agent.findings[0]
    assert first.details["features"] == ["rate"] and first.agents == ("a",)
    assert first.details["rate"]["p_value"] <= 1e-9
    assert first.confidence >= 0.63
    assert "messages in" in first.description


def test_a_busy_agent_that_is_always_busy_is_not_anomalous() -> None:
    agent = Agent()
    agent.baseline(count=2000, mean_gap=0.05)
    assert agent.findings == []


def test_a_fan_out_shift() -> None:
    agent = Agent()
    agent.baseline()
    found = [f for _ in range(10) for f in agent.send(2.0, targets=60)]
    assert found and found[0].details["features"] == ["fan_out"]
    assert found[0].details["fan_out"]["value"] == pytest.approx(60)


def test_a_payload_shift() -> None:
    agent = Agent()
    agent.baseline()
    found = [f for _ in range(10) for f in agent.send(2.0, extra="x" * 8000)]
    assert found and found[0].details["features"] == ["payload"]
    assert found[0].details["payload"]["value"] > 8000


def test_one_outlier_is_not_a_change() -> None:
    agent = Agent()
    agent.baseline()
    agent.send(2.0, targets=80)
    agent.send(2.0, extra="x" * 10_000)
    agent.baseline(count=20)
    assert agent.findings == []


def test_no_alarm_before_the_baseline_exists() -> None:
    agent = Agent()
    for _ in range(15):
        agent.send(0.01, targets=50)
    assert agent.findings == []


def test_sensitivity_trades_evidence_for_speed() -> None:
    def messages_until_alarm(sensitivity: float) -> int:
        agent = Agent(AnomalyDetector(AnomalyConfig(sensitivity=sensitivity)))
        agent.baseline()
        for i in range(1, 50):
            if agent.send(2.0, targets=30):
                return i
        return 99

    assert messages_until_alarm(2.0) < messages_until_alarm(1.0) < messages_until_alarm(0.5)


def test_a_shift_in_the_type_mix() -> None:
    agent = Agent()
    for _ in range(400):
        agent.send(2.0, kind="broadcast", action="status")
    found = [f for _ in range(20) for f in agent.send(2.0, kind="request", action="delegate", targets=3)]
    assert found and "type_mix" in found[0].details["features"]


def test_each_agent_has_its_own_baseline() -> None:
    detector = AnomalyDetector()
    quiet, busy = Agent(detector, "quiet", 1), Agent(detector, "busy", 2)
    for _ in range(60):
        quiet.send(5.0, targets=1)
        busy.send(0.05, targets=8)
    assert quiet.findings == busy.findings == []


def test_memory_is_bounded() -> None:
    detector = AnomalyDetector(AnomalyConfig(max_agents=5))
    for i in range(20):
        Agent(detector, f"a{i}").send(1.0)
    assert len(detector.baselines) == 5


def test_payload_size_is_the_json_size() -> None:
    assert payload_size({"a": 1}) == len('{"a":1}')
    assert payload_size({"t": "é"}) == len('{"t":"é"}'.encode())
