"""Communication cascades and their amplification points, against broadcasts and chains."""

from __future__ import annotations

import pytest

from chorus_lab.patterns.cascade import CascadeConfig, CascadeDetector, branching_ratio
from chorus_lab.patterns.common import observe_message
from chorus_lab.schema import AgentMessage
from tests.properties.fleet import Pipeline, msg


class Tree:
    def __init__(self, detector: CascadeDetector | None = None) -> None:
        self.detector = detector or CascadeDetector()
        self.n = 0
        self.findings: list = []

    def send(self, sender: str, targets: list[str], parent: AgentMessage | None = None, kind: str = "broadcast") -> AgentMessage:
        self.n += 1
        m = msg(sender, targets, f"m{self.n}", self.n * 0.1, kind, cause=parent.message_id if parent else None, action="status")  # type: ignore[arg-type]
        self.findings += self.detector.observe(observe_message(m))
        return m


AMPLIFIERS = ("a", "b", "c")


def amplify(tree: Tree, generations: int) -> None:
    """Amplifiers a, b, c re-broadcast every copy they get, each to the other two and three more."""
    frontier = [tree.send("root", ["a", "b", "x"])]
    for _ in range(generations - 1):
        following = []
        for parent in frontier:
            for target in parent.target_agents:
                if target in AMPLIFIERS:
                    others = [a for a in AMPLIFIERS if a != target]
                    following.append(tree.send(target, [*others, "x", "y", "z"], parent))
        frontier = following


def test_a_doubling_tree_is_a_cascade_with_its_amplifiers() -> None:
    tree = Tree()
    amplify(tree, 4)  # generations of 1, 2, 4, 8 messages
    first = tree.findings[0]
    assert first.pattern == "communication_cascade" and first.key == "m1"
    assert first.details["generations"] == [1, 2, 4]
    assert first.details["branching_ratio"] == pytest.approx(2.0)
    assert first.confidence == pytest.approx(0.75)
    assert first.agents[0] == "root" and set(first.agents[1:]) <= set(AMPLIFIERS)
    assert set(first.culprits) == set(first.agents[1:])
    assert "amplification points" in first.description
    last = tree.findings[-1]
    assert last.agents[0] == "root" and set(last.agents[1:]) == set(AMPLIFIERS)
    assert "x" not in last.agents  # receives copies, sends nothing: not an amplifier


def test_reports_repeat_only_when_the_tree_doubles_or_gains_amplifiers() -> None:
    tree = Tree(CascadeDetector(CascadeConfig(size_threshold=1000)))
    amplify(tree, 8)
    sizes = [f.details["size"] for f in tree.findings]
    assert all(b >= 2 * a for a, b in zip(sizes, sizes[1:]))


def test_a_delegation_chain_is_not_a_cascade() -> None:
    tree = Tree()
    parent = None
    for i in range(30):
        parent = tree.send(f"a{i}", [f"a{i + 1}"], parent, kind="request")
    assert tree.findings == []


def test_broadcasts_not_caused_by_anything_are_not_a_cascade() -> None:
    tree = Tree()
    for i in range(50):
        tree.send(f"a{i % 7}", [f"p{j}" for j in range(8)])
    assert tree.findings == []


def test_replies_neither_join_nor_start_trees() -> None:
    tree = Tree()
    root = tree.send("root", [f"p{i}" for i in range(10)])
    for i in range(10):  # everybody acknowledges; the acks cause follow-ups
        ack = tree.send(f"p{i}", ["root"], root, kind="response")
        tree.send("root", [f"p{i}"], ack, kind="request")
    assert tree.findings == []


def test_a_very_large_tree_is_a_cascade_whatever_its_shape() -> None:
    tree = Tree(CascadeDetector(CascadeConfig(size_threshold=20)))
    root = tree.send("root", ["x"])
    for i in range(25):
        tree.send(f"a{i}", ["y"], root)  # one generation of 25: wide, not deep
    assert tree.findings and tree.findings[0].details["size"] == 20


def test_branching_ratio_is_harris_estimate() -> None:
    assert branching_ratio([1, 2, 4, 8]) == pytest.approx(14 / 7)
    assert branching_ratio([1, 3, 3]) == pytest.approx(6 / 4)


def test_stage2_raises_one_alert_for_a_cascade() -> None:
    pipeline = Pipeline()
    messages, frontier, n = [], [], 0
    root = msg("root", ["a", "b", "x"], "c0", 0.0, "broadcast", corr="k", action="status", status="alert")
    messages.append(root)
    frontier = [root]
    for _ in range(4):
        following = []
        for parent in frontier:
            for target in parent.target_agents:
                if target in AMPLIFIERS:
                    n += 1
                    others = [a for a in AMPLIFIERS if a != target]
                    child = msg(target, [*others, "x", "y"], f"c{n}", 0.1 * n, "broadcast", corr="k", cause=parent.message_id, action="status", status="alert")
                    messages.append(child)
                    following.append(child)
        frontier = following
    alerts = [a for a in pipeline.feed(messages) if a.pattern == "communication_cascade"]
    assert len({a.alert_id for a in alerts}) == 1
    assert alerts[0].affected_agents[0] == "root"
    signalled = {s.agent_id for out in pipeline.outputs for s in out.trust_signals}
    assert signalled == set(AMPLIFIERS)  # the amplifiers, not the root
