"""Conflicts that happen: persistent deadlocks and improbable contention bursts."""

from __future__ import annotations

import pytest

from chorus_lab.engine.ledger import ResourceLedger
from chorus_lab.patterns.common import observe_message, poisson_tail
from chorus_lab.patterns.conflict import ConflictConfig, ConflictDetector
from chorus_lab.schema import AgentMessage
from tests.properties.fleet import msg


class World:
    def __init__(self, config: ConflictConfig | None = None) -> None:
        self.ledger = ResourceLedger()
        self.detector = ConflictDetector(config)
        self.findings: list = []
        self.n = 0

    def send(self, sender: str, targets: list[str], seconds: float, kind: str = "request", cause: str | None = None, **content: object) -> AgentMessage:
        self.n += 1
        m = msg(sender, targets, f"m{self.n}", seconds, kind, cause=cause, **content)  # type: ignore[arg-type]
        obs = observe_message(m)
        self.findings += self.detector.observe(obs, self.ledger)
        self.findings += self.detector.after(obs, self.ledger, self.ledger.apply(m))
        return m

    def request(self, agent: str, resource: str, seconds: float, amount: int, answer: str) -> None:
        ask = self.send(agent, [f"s-{resource}"], seconds, action="request_resource", resource=resource, amount=amount)
        self.send(f"s-{resource}", [agent], seconds + 0.05, "response", cause=ask.message_id, action=answer, resource=resource, amount=amount)

    def announce(self, resource: str, capacity: int) -> None:
        self.send(f"s-{resource}", ["x"], 0.0, "broadcast", action="status", resource=resource, capacity=capacity)


def each_holding_one() -> World:
    """Two resources of capacity 1: ``a`` holds r1 (granted at 1 s), ``b`` holds r2 (at 1.5 s)."""
    world = World()
    world.announce("r1", 1)
    world.announce("r2", 1)
    world.request("a", "r1", 1.0, 1, "grant")
    world.request("b", "r2", 1.5, 1, "grant")
    return world


def deadlocked(retries: int) -> World:
    world = each_holding_one()
    for i in range(retries):
        world.request("a", "r2", 2.0 + 2 * i, 1, "deny")
        world.request("b", "r1", 2.5 + 2 * i, 1, "deny")
    return world


def test_a_persistent_cross_resource_deadlock() -> None:
    world = deadlocked(retries=2)
    (finding,) = world.findings
    assert finding.key == "deadlock:a,b" and finding.agents == ("a", "b")
    assert finding.details["kind"] == "deadlock"
    assert finding.details["resources"] == ["r1", "r2"]
    assert finding.details["wants"] == {"a": "r2", "b": "r1"}
    assert finding.confidence == pytest.approx(0.9) and finding.severity == "high"
    assert "Deadlock over r1, r2" in finding.description


def test_a_cycle_that_closes_once_is_not_yet_a_deadlock() -> None:
    world = deadlocked(retries=1)
    assert world.findings == []


def test_the_cycle_breaks_when_a_holder_lets_go() -> None:
    world = each_holding_one()
    world.request("a", "r2", 2.0, 1, "deny")
    world.send("a", ["s-r1"], 2.2, action="release", resource="r1")
    for i in range(3):
        world.request("b", "r1", 2.5 + i, 1, "grant" if i == 0 else "deny")
    assert world.findings == []


def test_a_denied_want_is_forgotten_after_the_wait_memory() -> None:
    world = World(ConflictConfig(wait_memory_s=1.0))
    world.announce("r1", 1)
    world.announce("r2", 1)
    world.request("a", "r1", 1.0, 1, "grant")
    world.request("b", "r2", 1.5, 1, "grant")
    for i in range(3):
        world.request("a", "r2", 2.0 + 10 * i, 1, "deny")
        world.request("b", "r1", 7.0 + 10 * i, 1, "deny")
    assert world.findings == []


def test_a_burst_on_a_quiet_resource_is_contention() -> None:
    world = World()
    world.announce("r", 2)
    world.request("early", "r", 1.0, 1, "grant")
    world.send("early", ["s-r"], 2.0, action="release", resource="r")
    for i, (agent, amount, answer) in enumerate([("a", 2, "grant"), ("b", 1, "deny"), ("c", 1, "deny")]):
        world.request(agent, "r", 100.0 + 0.1 * i, amount, answer)
    (finding,) = world.findings
    assert finding.details["kind"] == "contention"
    assert finding.agents == ("a", "b", "c")
    assert finding.culprits == ()  # contenders did nothing wrong
    assert finding.details["p_value"] <= 1e-3
    assert 0.6 <= finding.confidence < 1.0


def test_the_same_burst_on_a_busy_resource_is_ordinary() -> None:
    world = World()
    world.announce("r", 2)
    for i in range(200):  # one request every half second for 100 s
        world.request(f"u{i % 9}", "r", 0.5 * i, 1, "grant" if i % 3 else "deny")
    world.findings.clear()
    for i, (agent, amount, answer) in enumerate([("a", 2, "grant"), ("b", 1, "deny"), ("c", 1, "deny")]):
        world.request(agent, "r", 110.0 + 0.1 * i, amount, answer)
    assert world.findings == []


def test_demand_just_over_capacity_is_not_an_incident() -> None:
    world = World()
    world.announce("r", 4)
    for i, (agent, answer) in enumerate([("a", "grant"), ("b", "grant"), ("c", "grant"), ("d", "grant"), ("e", "deny")]):
        world.request(agent, "r", 100.0 + 0.1 * i, 1, answer)
    assert world.findings == []  # demand 5 against 4: beyond, but by less than min_excess


def quick_steward_world(late: list[tuple[str, float]]) -> World:
    """A quiet resource of capacity 2 whose steward denies the third request before others arrive."""
    world = World()
    world.announce("r", 2)
    world.request("early", "r", 1.0, 1, "grant")
    world.send("early", ["s-r"], 2.0, action="release", resource="r")
    world.request("a", "r", 100.0, 1, "grant")
    world.request("b", "r", 100.1, 1, "grant")
    world.request("c", "r", 100.2, 1, "deny")  # demand 3 against 2 when the denial comes: not yet beyond by 2
    for agent, seconds in late:
        world.send(agent, ["s-r"], seconds, action="request_resource", resource="r", amount=1)
    return world


def test_a_burst_that_grows_after_the_denial_is_judged_again() -> None:
    world = quick_steward_world([("d", 100.6)])
    (finding,) = world.findings
    assert finding.details["kind"] == "contention"
    assert finding.agents == ("a", "b", "c", "d")
    assert finding.details["denied"] == ["c"] and finding.details["demand"] == 4


def test_a_request_after_the_burst_window_does_not_join_it() -> None:
    world = quick_steward_world([("d", 101.5)])  # 1.3 s after the denied request: a new burst
    assert world.findings == []


def test_a_burst_judged_again_never_spans_more_than_the_window() -> None:
    # d comes within 1 s of the denied request, but over 1 s after a and b: no 1-s burst holds four.
    world = quick_steward_world([("d", 101.15)])
    assert world.findings == []


def test_no_contention_alert_before_the_rate_is_known() -> None:
    world = World()
    world.announce("r", 1)
    for i, agent in enumerate("abc"):
        world.request(agent, "r", 10.0 + 0.1 * i, 1, "deny")
    assert world.findings == []


def test_poisson_tail() -> None:
    assert poisson_tail(1, 1.0) == pytest.approx(1 - 0.36787944117)
    assert poisson_tail(50, 1.0) == pytest.approx(1.0e-65, rel=0.2)
    assert poisson_tail(0, 0.0) == 1.0 and poisson_tail(3, 0.0) == 0.0


def test_one_agent_retrying_against_a_partner_that_moved_on_is_not_a_deadlock() -> None:
    world = each_holding_one()
    world.request("b", "r1", 2.5, 1, "deny")  # b asks once; a does not want r2 yet: no cycle
    for i in range(3):  # the cycle closes three times, every time by a's request
        world.request("a", "r2", 3.0 + 0.5 * i, 1, "deny")
    assert world.findings == []  # b never asked again: its members do not all keep asking
    world.request("b", "r1", 4.5, 1, "deny")  # now both keep holding and keep asking
    (finding,) = world.findings
    assert finding.agents == ("a", "b") and finding.details["kind"] == "deadlock"


def test_an_ignored_request_stops_being_a_want() -> None:
    world = each_holding_one()
    world.request("a", "r2", 2.0, 1, "deny")
    # b asks for r1 and its steward never answers: pending in the ledger for an hour.
    world.send("b", ["s-r1"], 2.5, action="request_resource", resource="r1", amount=1)  # closes the cycle once
    assert world.ledger.pending("r1").get("b") is not None
    for i in range(2):  # 40 s later: b's request was ignored long ago, b is not shown waiting any more
        world.request("a", "r2", 42.5 + 0.5 * i, 1, "deny")
    assert world.findings == []
    # Within the answer window the same unanswered request is still a want.
    world = each_holding_one()
    world.request("a", "r2", 2.0, 1, "deny")
    world.send("b", ["s-r1"], 2.5, action="request_resource", resource="r1", amount=1)
    for i in range(2):
        world.request("a", "r2", 12.5 + 0.5 * i, 1, "deny")
    (finding,) = world.findings
    assert finding.agents == ("a", "b")


def busy_world() -> World:
    """A resource of capacity 2 that sees a request every 4 s from nine ordinary agents."""
    world = World()
    world.announce("r", 2)
    for i in range(25):
        world.request(f"u{i % 9}", "r", 4.0 * i + 0.5, 1, "grant")
        world.send(f"u{i % 9}", ["s-r"], 4.0 * i + 1.5, action="release", resource="r")
    world.findings.clear()
    return world


def test_an_agent_asking_again_within_a_burst_is_one_arrival() -> None:
    world = busy_world()
    # Six requests in half a second, but from three agents: three arrivals at ~0.23/s is ordinary.
    for i, (agent, amount, answer) in enumerate([("a", 2, "grant"), ("b", 1, "deny"), ("b", 1, "deny"), ("b", 1, "deny"), ("c", 1, "deny"), ("c", 1, "deny")]):
        world.request(agent, "r", 110.0 + 0.1 * i, amount, answer)
    assert world.findings == []
    # Six different agents in the same half second are not.
    world = busy_world()
    for i, (agent, amount, answer) in enumerate([("a", 2, "grant"), ("b", 1, "deny"), ("c", 1, "deny"), ("d", 1, "deny"), ("e", 1, "deny"), ("f", 1, "deny")]):
        world.request(agent, "r", 110.0 + 0.1 * i, amount, answer)
    assert world.findings and world.findings[0].details["kind"] == "contention"
    assert world.findings[-1].details["p_value"] <= 1e-4
