"""Resource hoarding, against honest stewards and honest long holders."""

from __future__ import annotations

import pytest

from chorus_lab.engine.ledger import ResourceLedger
from chorus_lab.patterns.alerts import Finding
from chorus_lab.patterns.common import observe_message
from chorus_lab.patterns.hoarding import HoardingConfig, HoardingDetector
from chorus_lab.schema import AgentMessage
from tests.properties.fleet import Pipeline, at, msg


class World:
    """A ledger and a hoarding detector fed the same messages, as stage 2 does."""

    def __init__(self, config: HoardingConfig | None = None) -> None:
        self.ledger = ResourceLedger()
        self.detector = HoardingDetector(config or HoardingConfig(default_hold_s=60.0))
        self.findings: list[Finding] = []
        self.n = 0

    def send(self, sender: str, targets: list[str], seconds: float, kind: str = "request", cause: str | None = None, **content: object) -> AgentMessage:
        self.n += 1
        m = msg(sender, targets, f"m{self.n}", seconds, kind, cause=cause, **content)  # type: ignore[arg-type]
        update = self.ledger.apply(m)
        self.findings += self.detector.observe(observe_message(m), self.ledger, update)
        return m

    def hold(self, holder: str, seconds: float, amount: int = 2) -> None:
        self.send("steward", [holder], seconds, "broadcast", action="status", resource="gpu", capacity=amount)
        ask = self.send(holder, ["steward"], seconds, action="request_resource", resource="gpu", amount=amount)
        self.send("steward", [holder], seconds + 0.1, "response", cause=ask.message_id, action="grant", resource="gpu", amount=amount)

    def ask(self, waiter: str, whom: str, seconds: float, answer: str | None) -> None:
        request = self.send(waiter, [whom], seconds, action="request_resource", resource="gpu", amount=1)
        if answer is not None:
            self.send(whom, [waiter], seconds + 0.2, "response", cause=request.message_id, action=answer, resource="gpu", amount=1)


def test_a_long_holder_denying_requests_for_what_it_holds_is_hoarding() -> None:
    world = World()
    world.hold("h", 0.0)
    for i, s in enumerate((100.0, 110.0, 120.0)):
        world.ask(f"w{i}", "h", s, "deny")
    (finding,) = world.findings
    assert finding.agents == ("h",) and finding.key == "h:gpu"
    assert finding.detected_at == at(120.2)
    assert finding.details["refused"] == 3 and finding.details["denied"] == 3
    assert finding.details["waiters"] == ["w0", "w1", "w2"]
    assert finding.confidence == pytest.approx(0.75)
    assert finding.evidence == ("m4", "m6", "m8")  # the refused requests
    assert "h has held 2 of gpu" in finding.description


def test_ignored_requests_count_once_the_answer_is_overdue() -> None:
    world = World()
    world.hold("h", 0.0)
    for i, s in enumerate((100.0, 101.0, 102.0)):
        world.ask(f"w{i}", "h", s, None)
    assert world.findings == []
    world.send("x", ["y"], 112.5, action="status")  # event time passes the 10 s deadlines
    (finding,) = world.findings
    assert finding.details["ignored"] == 3
    assert finding.detected_at == at(112.5)


def test_ticks_advance_event_time_for_ignored_requests() -> None:
    world = World()
    world.hold("h", 0.0)
    for i, s in enumerate((100.0, 101.0, 102.0)):
        world.ask(f"w{i}", "h", s, None)
    found = world.detector.advance(at(200.0), world.ledger)
    assert len(found) == 1 and found[0].detected_at == at(200.0)


def test_a_steward_denying_because_it_is_full_is_not_hoarding() -> None:
    world = World()
    world.hold("h", 0.0)  # someone else holds it all
    for i in range(10):
        world.ask(f"w{i}", "steward", 100.0 + i, "deny")
    assert world.findings == []


def test_a_short_hold_with_refusals_is_not_hoarding() -> None:
    world = World()
    world.hold("h", 0.0)
    for i in range(5):
        world.ask(f"w{i}", "h", 10.0 + i, "deny")  # held for 10-14 s, normal is 60 s
    assert world.findings == []


def test_a_holder_that_mostly_shares_is_not_hoarding() -> None:
    world = World()
    world.hold("h", 0.0, amount=8)
    answers = ["grant", "deny", "grant", "grant", "deny", "grant", "deny", "grant"]
    for i, answer in enumerate(answers):
        world.ask(f"w{i}", "h", 100.0 + i, answer)
    assert world.findings == []


def test_one_refusal_is_not_a_pattern() -> None:
    world = World()
    world.hold("h", 0.0)
    world.ask("w", "h", 100.0, "deny")
    world.ask("w", "h", 101.0, "grant")
    assert world.findings == []


def test_after_releasing_an_agent_is_no_longer_a_holder() -> None:
    world = World()
    world.hold("h", 0.0)
    world.send("h", ["steward"], 90.0, action="release", resource="gpu")
    for i in range(4):
        world.ask(f"w{i}", "h", 100.0 + i, "deny")
    assert world.findings == []


def test_the_normal_hold_follows_the_fleet() -> None:
    detector = HoardingDetector(HoardingConfig(min_hold_samples=5, hold_factor=2.0, hold_quantile=1.0))
    assert detector.normal_hold_s() == 60.0
    world = World(detector.config)
    world.detector = detector
    for i in range(5):
        world.hold(f"a{i}", 0.0, amount=100)
        world.send(f"a{i}", ["steward"], 300.0, action="release", resource="gpu")
    assert detector.normal_hold_s() == pytest.approx(2 * 299.9)


def test_a_hoarding_steward_announcing_a_hold_is_found() -> None:
    world = World()
    world.send("s", ["p1", "p2"], 0.0, "broadcast", action="hold", resource="gpu", amount=4)
    for i in range(3):
        world.ask(f"w{i}", "s", 100.0 + 5 * i, "deny")
    assert [f.agents for f in world.findings] == [("s",)]


def test_stage2_raises_one_alert_and_signals_the_hoarder() -> None:
    pipeline = Pipeline()
    messages = [
        msg("s", ["p"], "m0", 0.0, "broadcast", action="status", resource="gpu", capacity=2),
        msg("h", ["s"], "m1", 0.5, action="request_resource", resource="gpu", amount=2),
        msg("s", ["h"], "m2", 0.6, "response", cause="m1", action="grant", resource="gpu", amount=2),
    ]
    for i in range(8):
        messages.append(msg(f"w{i}", ["h"], f"r{i}", 100.0 + 5 * i, action="request_resource", resource="gpu", amount=1))
        messages.append(msg("h", [f"w{i}"], f"d{i}", 100.5 + 5 * i, "response", cause=f"r{i}", action="deny", resource="gpu"))
    alerts = [a for a in pipeline.feed(messages) if a.pattern == "resource_hoarding"]
    assert len({a.alert_id for a in alerts}) == 1
    assert alerts[0].affected_agents == ["h"] and alerts[0].evidence == ["r0", "r1", "r2"]
    signals = [s for out in pipeline.outputs for s in out.trust_signals]
    assert {(s.agent_id, s.pattern) for s in signals} == {("h", "resource_hoarding")}
    assert pipeline.engine.state.trust.score("h") < 100.0
