"""Routing loops, and the honest look-alikes that must not be called loops."""

from __future__ import annotations

import pytest

from chorus_lab.patterns.common import observe_message
from chorus_lab.patterns.routing_loop import RoutingLoopConfig, RoutingLoopDetector
from chorus_lab.schema import AgentMessage
from tests.properties.fleet import Pipeline, msg


def run(messages: list[AgentMessage], detector: RoutingLoopDetector | None = None) -> list:
    detector = detector or RoutingLoopDetector()
    return [f for m in messages for f in detector.observe(observe_message(m))]


def hops(path: list[str], *, linked: bool = True, action: str = "delegate", task: str = "t-1") -> list[AgentMessage]:
    out: list[AgentMessage] = []
    for i, (a, b) in enumerate(zip(path, path[1:])):
        cause = out[-1].message_id if linked and out else None
        out.append(msg(a, [b], f"h{i}", float(i), corr="c-1", cause=cause, action=action, task_id=task))
    return out


def test_a_task_returning_through_three_agents_is_a_loop() -> None:
    findings = run(hops(["asker", "a", "b", "c", "a"]))
    assert len(findings) == 1
    (finding,) = findings
    assert finding.agents == ("a", "b", "c")
    assert finding.details["path"] == ["a", "b", "c"]
    assert finding.details["linked_by"] == "causation"
    assert finding.evidence == ("h1", "h2", "h3")
    assert finding.confidence == pytest.approx(0.9)
    assert "a → b → c → a" in finding.description


def test_forwarding_without_causation_is_found_by_order_with_less_confidence() -> None:
    (finding,) = run(hops(["a", "b", "c", "a"], linked=False, action="forward"))
    assert finding.details["linked_by"] == "order"
    assert finding.confidence == pytest.approx(0.6)


def test_each_further_return_raises_confidence_and_then_severity() -> None:
    findings = run(hops(["a", "b", "c", "a", "b", "c", "a"]))
    assert [f.details["returns"] for f in findings] == [1, 2, 3, 4]
    assert [round(f.confidence, 3) for f in findings] == [0.9, 0.95, 0.975, 0.988]
    assert [f.severity for f in findings] == ["medium", "medium", "high", "high"]


def test_two_agents_handing_back_and_forth_is_not_a_loop() -> None:
    assert run(hops(["a", "b", "a", "b", "a", "b", "a"])) == []


def test_results_travelling_back_along_a_chain_are_replies_not_hand_offs() -> None:
    chain = hops(["a", "b", "c", "d"])
    results = [
        msg("d", ["c"], "r1", 10.0, "response", corr="c-1", cause="h2", action="result", task_id="t-1"),
        msg("c", ["b"], "r2", 11.0, "response", corr="c-1", cause="h1", action="result", task_id="t-1"),
        msg("b", ["a"], "r3", 12.0, "response", corr="c-1", cause="h0", action="result", task_id="t-1"),
    ]
    assert run(chain + results) == []


def test_a_result_sent_as_a_request_is_still_a_reply() -> None:
    chain = hops(["a", "b", "c"])
    back = [msg("c", ["a"], "r1", 5.0, corr="c-1", cause="h1", action="result", task_id="t-1")]
    assert run(chain + back) == []


def test_free_form_requests_linked_by_causation_form_a_chain() -> None:
    messages = [
        msg("a", ["b"], "q1", 0.0, corr="conv", text="can you look?"),
        msg("b", ["c"], "q2", 1.0, corr="conv", cause="q1", text="can you look?"),
        msg("c", ["a"], "q3", 2.0, corr="conv", cause="q2", text="can you look?"),
    ]
    (finding,) = run(messages)
    assert finding.agents == ("a", "b", "c") and finding.key == "conv"


def test_a_conversation_asking_the_same_peer_repeatedly_is_not_a_loop() -> None:
    messages = []
    cause = None
    for turn in range(4):
        ask = msg("a", ["b"], f"q{turn}", 2.0 * turn, corr="conv", cause=cause, turn=turn)
        answer = msg("b", ["a"], f"a{turn}", 2.0 * turn + 1, "response", corr="conv", cause=ask.message_id, turn=turn)
        cause = answer.message_id
        messages += [ask, answer]
    assert run(messages) == []


def test_resource_requests_are_not_hand_offs() -> None:
    messages = [
        msg("a", ["s"], "r1", 0.0, corr="c", action="request_resource", resource="gpu"),
        msg("s", ["b"], "r2", 1.0, corr="c", cause="r1", action="request_resource", resource="gpu"),
        msg("b", ["a"], "r3", 2.0, corr="c", cause="r2", action="request_resource", resource="gpu"),
    ]
    assert run(messages) == []


def test_different_tasks_do_not_mix() -> None:
    messages = hops(["a", "b"], task="t-1") + hops(["b", "c"], task="t-2") + hops(["c", "a"], task="t-3")
    assert run(messages) == []


def test_a_chain_quiet_for_longer_than_the_window_starts_over() -> None:
    detector = RoutingLoopDetector(RoutingLoopConfig(window_s=10.0))
    first = hops(["a", "b", "c"])
    late = msg("c", ["a"], "late", 100.0, corr="c-1", cause="h1", action="delegate", task_id="t-1")
    assert run([*first, late], detector) == []


def test_memory_is_bounded() -> None:
    detector = RoutingLoopDetector(RoutingLoopConfig(max_chains=10, max_messages=20))
    for i in range(100):
        detector.observe(observe_message(msg("a", ["b"], f"m{i}", float(i), corr=f"c{i}", action="delegate")))
    assert len(detector.chains) == 10 and len(detector.handoffs) == 20
    assert detector.chains.evicted == 90


def test_min_agents_below_three_is_refused() -> None:
    with pytest.raises(ValueError, match="min_agents"):
        RoutingLoopConfig(min_agents=2)


def test_stage2_raises_one_alert_per_looping_task_with_updates() -> None:
    pipeline = Pipeline()
    path = ["asker"] + ["a", "b", "c"] * 5
    messages = [
        msg(a, [b], f"h{i}", 10.0 * i, corr="c-1", cause=f"h{i - 1}" if i else None, action="delegate", task_id="t-9")
        for i, (a, b) in enumerate(zip(path, path[1:]))
    ]
    alerts = [a for a in pipeline.feed(messages) if a.pattern == "routing_loop"]
    assert len({a.alert_id for a in alerts}) == 1
    assert alerts[0].details["update"] == 0 and alerts[0].detected_at == messages[3].timestamp
    assert all(a.details["update"] == i for i, a in enumerate(alerts))
    assert len(alerts) <= 4  # updates only when something changed, at most every 30 s
    loops = [u for u in pipeline.graph_updates if u.update_type == "loop_detected"]
    assert len(loops) == 1 and sorted(loops[0].affected_nodes) == ["a", "b", "c"]
