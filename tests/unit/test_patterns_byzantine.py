"""Byzantine behaviour: equivocation, contradictions, phantom replies, identity; and honest change."""

from __future__ import annotations

import pytest

from chorus_lab.patterns.byzantine import ByzantineConfig, ByzantineDetector
from chorus_lab.patterns.common import observe_message
from chorus_lab.schema import AgentMessage
from chorus_lab.stage2 import Stage2Config
from tests.properties.fleet import Pipeline, decide, msg


class Agent:
    def __init__(self, detector: ByzantineDetector | None = None) -> None:
        self.detector = detector or ByzantineDetector()
        self.n = 0
        self.findings: list = []

    def send(self, m: AgentMessage) -> list:
        found = self.detector.observe(observe_message(m))
        self.findings += found
        return found

    def claim(self, value: str, targets: list[str], seconds: float, sender: str = "x", key: str = "region") -> list:
        self.n += 1
        return self.send(msg(sender, targets, f"c{self.n}", seconds, "broadcast", corr=f"k{self.n}", action="claim", claim={"key": key, "value": value}))


def test_two_stories_to_two_groups_is_equivocation() -> None:
    agent = Agent()
    agent.claim("eu", ["a1"], 0.0)
    (first,) = agent.claim("us", ["b1", "b2"], 1.0)
    assert first.details["kinds"] == ["contradiction"] and first.confidence == pytest.approx(0.6)
    assert first.details["not_told"] == ["a1"]
    (second,) = agent.claim("eu", ["a2"], 2.0)
    assert second.details["kinds"] == ["equivocation"]
    assert second.confidence == pytest.approx(0.9)
    assert second.severity == "critical"
    assert "tells different peers different values for 'region'" in second.description
    (third,) = agent.claim("us", ["b3"], 3.0)
    assert third.confidence == pytest.approx(0.95)


def test_an_honest_change_told_to_everyone_at_once_is_not_evidence() -> None:
    agent = Agent()
    agent.claim("eu", ["a", "b"], 0.0)
    agent.claim("eu", ["c"], 1.0)
    assert agent.claim("us", ["a", "b", "c", "d"], 2.0) == []
    assert agent.claim("us", ["a"], 3.0) == []
    assert agent.claim("ap", ["a", "b", "c", "d"], 4.0) == []  # and another honest change
    assert agent.findings == []


def test_repeating_the_same_value_is_consistent() -> None:
    agent = Agent()
    for i in range(10):
        agent.claim("eu", [f"p{i}"], float(i))
    assert agent.findings == []


def test_claims_outside_the_window_are_forgotten() -> None:
    agent = Agent(ByzantineDetector(ByzantineConfig(window_s=10.0)))
    agent.claim("eu", ["a"], 0.0)
    assert agent.claim("us", ["b"], 100.0) == []


def test_keys_and_agents_are_judged_separately() -> None:
    agent = Agent()
    agent.claim("eu", ["a"], 0.0, key="region")
    agent.claim("ok", ["b"], 1.0, key="health")
    agent.claim("us", ["c"], 2.0, sender="y")
    assert agent.findings == []


def test_a_reply_to_nothing_is_a_phantom_reply() -> None:
    agent = Agent()
    (finding,) = agent.send(msg("x", ["a"], "r1", 0.0, "response", corr="fresh", action="result", task_id="t"))
    assert finding.details["kinds"] == ["phantom_reply"]
    assert finding.confidence == pytest.approx(0.7)
    (again,) = agent.send(msg("x", ["b"], "r2", 1.0, "response", corr="fresh-2", action="result"))
    assert again.confidence == pytest.approx(0.85)


def test_replies_to_real_requests_are_fine() -> None:
    agent = Agent()
    agent.send(msg("a", ["x"], "q1", 0.0, corr="c1", topic="t"))
    assert agent.send(msg("x", ["a"], "r1", 1.0, "response", corr="c1", cause="q1")) == []
    assert agent.send(msg("x", ["a"], "r2", 2.0, "response", corr="c1")) == []  # no causation, known conversation
    assert agent.send(msg("x", ["a"], "r3", 3.0, "response", corr="c9", cause="forgotten")) == []


def test_answering_a_request_sent_to_someone_else_is_a_phantom_reply() -> None:
    agent = Agent()
    agent.send(msg("a", ["s"], "q1", 0.0, corr="c1", action="request_resource", resource="gpu"))
    (finding,) = agent.send(msg("x", ["a"], "g1", 1.0, "response", corr="c1", cause="q1", action="grant", resource="gpu"))
    assert "not sent to it" in finding.details["phantom_reason"]


def test_identity_fields_that_disagree_with_the_sender() -> None:
    agent = Agent()
    m = AgentMessage("x", msg("x", [], "i", 0.0).timestamp, "broadcast", {}, ["a"], "c", {"sender": "admin"}, message_id="i1")
    (finding,) = agent.send(m)
    assert finding.details["kinds"] == ["identity"] and finding.confidence == pytest.approx(0.95)
    ok = AgentMessage("x", m.timestamp, "broadcast", {}, ["a"], "c", {"sender": "x", "source": "sim"}, message_id="i2")
    assert agent.send(ok) == []


def test_kinds_combine_into_one_incident_per_agent() -> None:
    agent = Agent()
    agent.send(msg("x", ["a"], "r1", 0.0, "response", corr="fresh", action="result"))
    agent.claim("eu", ["a1"], 1.0)
    (finding,) = agent.claim("us", ["b1"], 2.0)
    assert finding.key == "x"
    assert finding.details["kinds"] == ["contradiction", "phantom_reply"]
    assert finding.confidence == pytest.approx(1 - 0.3 * 0.4)


def test_stage2_signal_quarantines_an_equivocating_agent() -> None:
    pipeline = Pipeline(Stage2Config(quarantine_alerts=True))
    claims = [
        msg("liar", [f"{'ab'[i % 2]}{i}"], f"c{i}", float(i), "broadcast", corr=f"k{i}", action="claim", claim={"key": "region", "value": ["eu", "us"][i % 2]})
        for i in range(6)
    ]
    alerts = pipeline.feed(claims)
    assert {a.pattern for a in alerts} >= {"byzantine"}
    assert pipeline.engine.state.quarantine.is_quarantined("liar")
    after = pipeline.feed([msg("liar", ["z"], "late", 10.0, "broadcast", action="status")])
    assert any(a.pattern == "quarantine" for a in after) or any(a.pattern == "quarantine" for a in pipeline.alerts)
    assert "liar" in pipeline.stage2.graph.quarantined


def test_decisions_with_identity_flag_count() -> None:
    detector = ByzantineDetector()
    decision = decide(msg("x", ["a"], "m1", 0.0, "broadcast", action="status"))
    decision.processing_metadata.flags.append("identity_mismatch")
    from chorus_lab.patterns.common import observe_decision

    (finding,) = detector.observe(observe_decision(decision))
    assert finding.details["identity_flag"] is True
