"""Helpers for stage-2 tests: messages, decisions, and a pure engine + stage-2 pipeline.

Also Hypothesis strategies that build small fleets with an injected pattern or one of its
honest look-alikes (DESIGN.md, "Detection — definitions the tests hold").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import strategies as st

from chorus_lab.engine import PredictionEngine
from chorus_lab.schema import AgentMessage, Alert, CausalGraphUpdate, MessageType, ProcessedDecision
from chorus_lab.stage2 import Stage2, Stage2Config, Stage2Output, decision_from_engine

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def msg(
    sender: str,
    targets: Sequence[str],
    mid: str,
    seconds: float,
    kind: MessageType = "request",
    corr: str = "c",
    cause: str | None = None,
    **content: Any,
) -> AgentMessage:
    """An agent message at ``T0 + seconds``."""
    return AgentMessage(sender, at(seconds), kind, dict(content), list(targets), corr, {}, message_id=mid, causation_id=cause)


def decide(message: AgentMessage, engine: PredictionEngine | None = None) -> ProcessedDecision:
    """The decision stage 1 makes for ``message`` (a fresh engine unless one is given)."""
    engine = engine or PredictionEngine()
    return decision_from_engine(message, engine.process(message))


@dataclass
class Pipeline:
    """Engine + stage 2 in one process, trust signals fed back, outputs collected."""

    config: Stage2Config | None = None
    engine: PredictionEngine = field(default_factory=PredictionEngine)
    stage2: Stage2 = field(init=False)
    alerts: list[Alert] = field(default_factory=list)
    graph_updates: list[CausalGraphUpdate] = field(default_factory=list)
    outputs: list[Stage2Output] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stage2 = Stage2(self.config)

    def feed(self, messages: Iterable[AgentMessage]) -> list[Alert]:
        """Process messages in order; return the alerts they raised."""
        raised: list[Alert] = []
        for message in messages:
            result = self.engine.process(message)
            if result.duplicate:
                continue
            out = self.stage2.process(decision_from_engine(message, result))
            self.outputs.append(out)
            raised += out.alerts
            self.graph_updates += out.graph_updates
            for signal in out.trust_signals:
                self.engine.apply_signal(*signal.engine_args())
        self.alerts += raised
        return raised

    def tick(self, seconds: float) -> list[Alert]:
        out = self.stage2.tick(at(seconds))
        self.outputs.append(out)
        self.alerts += out.alerts
        self.graph_updates += out.graph_updates
        return out.alerts

    def patterns(self) -> set[str]:
        return {a.pattern for a in self.alerts}


# --------------------------------------------------------------------------- fleets


@dataclass
class Script:
    """Messages of one injected pattern (or look-alike) and who should be named."""

    messages: list[AgentMessage]
    pattern: str | None
    """The alert expected, or None for an honest look-alike that must not alert."""
    culprits: list[str]
    kind: str


class Ids:
    """Unique message ids per example."""

    def __init__(self, prefix: str) -> None:
        self.prefix, self.n = prefix, 0

    def __call__(self) -> str:
        self.n += 1
        return f"{self.prefix}-{self.n:05d}"


agent_names = st.lists(st.integers(0, 999), min_size=12, max_size=12, unique=True).map(lambda xs: [f"ag-{x}" for x in xs])


@st.composite
def routing_loop(draw: st.DrawFn, agents: list[str], start: float, ids: Ids) -> Script:
    """A task handed around a cycle of 3-6 distinct agents for 1-3 laps."""
    size = draw(st.integers(3, 6))
    cycle = agents[:size]
    laps = draw(st.integers(1, 3))
    linked = draw(st.booleans())
    asker = agents[size]
    task = ids()
    t = start
    first = msg(asker, [cycle[0]], ids(), t, corr=task, action="delegate", task_id=task)
    out, previous = [first], first
    for hop in range(size * laps):
        t += draw(st.floats(0.01, 2.0))
        sender, receiver = cycle[hop % size], cycle[(hop + 1) % size]
        action = draw(st.sampled_from(["delegate", "forward"]))
        previous = msg(sender, [receiver], ids(), t, corr=task, cause=previous.message_id if linked else None, action=action, task_id=task)
        out.append(previous)
    return Script(out, "routing_loop", cycle, "loop")


@st.composite
def delegation_chain(draw: st.DrawFn, agents: list[str], start: float, ids: Ids) -> Script:
    """Look-alike: a chain of distinct agents, results travelling back hop by hop."""
    size = draw(st.integers(2, 6))
    chain = agents[:size]
    task, t = ids(), start
    hand_offs: list[AgentMessage] = []
    for i in range(size - 1):
        t += draw(st.floats(0.01, 2.0))
        cause = hand_offs[-1].message_id if hand_offs else None
        hand_offs.append(msg(chain[i], [chain[i + 1]], ids(), t, corr=task, cause=cause, action="delegate", task_id=task))
    results = []
    for i in range(size - 1, 0, -1):
        t += draw(st.floats(0.01, 2.0))
        results.append(msg(chain[i], [chain[i - 1]], ids(), t, "response", corr=task, cause=hand_offs[i - 1].message_id, action="result", task_id=task))
    return Script(hand_offs + results, None, [], "chain+results")


@st.composite
def ping_pong(draw: st.DrawFn, agents: list[str], start: float, ids: Ids) -> Script:
    """Look-alike: two agents handing a task back and forth (a cycle of two is no loop)."""
    a, b = agents[:2]
    task, t, previous = ids(), start, None
    out = []
    for i in range(draw(st.integers(2, 8))):
        t += draw(st.floats(0.01, 2.0))
        sender, receiver = (a, b) if i % 2 == 0 else (b, a)
        m = msg(sender, [receiver], ids(), t, corr=task, cause=previous, action=draw(st.sampled_from(["delegate", "forward"])), task_id=task)
        previous = m.message_id
        out.append(m)
    return Script(out, None, [], "ping-pong")


@st.composite
def conversation(draw: st.DrawFn, agents: list[str], start: float, ids: Ids) -> Script:
    """Look-alike: A asks B a few times in one correlation, B answers each time."""
    a, b = agents[:2]
    corr, t, cause = ids(), start, None
    out = []
    for turn in range(draw(st.integers(1, 4))):
        t += draw(st.floats(0.01, 2.0))
        ask = msg(a, [b], ids(), t, corr=corr, cause=cause, topic="x", turn=turn)
        t += draw(st.floats(0.01, 2.0))
        answer = msg(b, [a], ids(), t, "response", corr=corr, cause=ask.message_id, topic="x", turn=turn)
        cause = answer.message_id
        out += [ask, answer]
    return Script(out, None, [], "conversation")


@st.composite
def hoarding(draw: st.DrawFn, agents: list[str], start: float, ids: Ids) -> Script:
    """A holder takes a whole resource, keeps it far beyond normal, and refuses requests for it."""
    steward, holder, *waiters = agents[:8]
    resource = f"res-{ids()}"
    capacity = draw(st.integers(1, 8))
    t = start
    out = [msg(steward, [holder], ids(), t, "broadcast", resource=resource, capacity=capacity, action="status")]
    t += 0.5
    ask = msg(holder, [steward], ids(), t, corr=resource, action="request_resource", resource=resource, amount=capacity)
    out += [ask, msg(steward, [holder], ids(), t + 0.1, "response", corr=resource, cause=ask.message_id, action="grant", resource=resource, amount=capacity)]
    t += draw(st.floats(100.0, 200.0))  # far longer than the default normal hold (60 s)
    for _ in range(draw(st.integers(4, 8))):
        t += draw(st.floats(1.0, 20.0))
        waiter = draw(st.sampled_from(waiters))
        request = msg(waiter, [holder], ids(), t, corr=ids(), action="request_resource", resource=resource, amount=1)
        out.append(request)
        if draw(st.booleans()):  # deny, else ignore
            out.append(msg(holder, [waiter], ids(), t + 0.2, "response", corr=request.correlation_id, cause=request.message_id, action="deny", resource=resource))
    t += 30.0  # past the ignore timeout
    out.append(msg(holder, [steward], ids(), t, corr=resource, action="release", resource=resource))
    return Script(out, "resource_hoarding", [holder], "hoarding")


@st.composite
def steward_full(draw: st.DrawFn, agents: list[str], start: float, ids: Ids) -> Script:
    """Look-alike: a steward denying, repeatedly, because its resource is full (it holds none)."""
    steward, *users = agents[:8]
    resource = f"res-{ids()}"
    t = start
    out = [msg(steward, users, ids(), t, "broadcast", resource=resource, capacity=1, action="status")]
    holder = users[0]
    ask = msg(holder, [steward], ids(), t + 0.5, corr=resource, action="request_resource", resource=resource, amount=1)
    out += [ask, msg(steward, [holder], ids(), t + 0.6, "response", corr=resource, cause=ask.message_id, action="grant", resource=resource, amount=1)]
    t += 1.0
    for _ in range(draw(st.integers(3, 10))):
        t += draw(st.floats(0.5, 5.0))
        waiter = draw(st.sampled_from(users[1:]))
        request = msg(waiter, [steward], ids(), t, corr=ids(), action="request_resource", resource=resource, amount=1)
        out += [request, msg(steward, [waiter], ids(), t + 0.2, "response", corr=request.correlation_id, cause=request.message_id, action="deny", resource=resource)]
    out.append(msg(holder, [steward], ids(), t + 1.0, corr=resource, action="release", resource=resource, amount=1))
    return Script(out, None, [], "steward denies when full")


@st.composite
def cascade(draw: st.DrawFn, agents: list[str], start: float, ids: Ids) -> Script:
    """A broadcast re-broadcast by amplifiers on every copy (branching about 2)."""
    root, *rest = agents
    amplifiers = rest[: draw(st.integers(3, 4))]
    others = rest[len(amplifiers) :]
    generations = draw(st.integers(3, 4))
    corr, t = ids(), start

    def targets(sender: str) -> list[str]:
        amps = [a for a in amplifiers if a != sender][:2]
        return amps + draw(st.lists(st.sampled_from(others), min_size=2, max_size=5, unique=True))

    first = msg(root, targets(root), ids(), t, "broadcast", corr=corr, action="status", status="alert", hop=0)
    out, frontier = [first], [first]
    for generation in range(1, generations):
        following = []
        for parent in frontier:
            for target in parent.target_agents:
                if target in amplifiers and len(out) < 120:
                    t += draw(st.floats(0.01, 0.5))
                    child = msg(target, targets(target), ids(), t, "broadcast", corr=corr, cause=parent.message_id, action="status", status="alert", hop=generation)
                    out.append(child)
                    following.append(child)
        frontier = following
    return Script(out, "communication_cascade", amplifiers, "cascade")


@st.composite
def status_broadcasts(draw: st.DrawFn, agents: list[str], start: float, ids: Ids) -> Script:
    """Look-alike: many status broadcasts to many peers, none caused by another message."""
    t, out = start, []
    for _ in range(draw(st.integers(5, 30))):
        t += draw(st.floats(0.01, 1.0))
        sender = draw(st.sampled_from(agents))
        peers = draw(st.lists(st.sampled_from([a for a in agents if a != sender]), min_size=2, max_size=8, unique=True))
        out.append(msg(sender, peers, ids(), t, "broadcast", corr=ids(), action="status", status="ok"))
    return Script(out, None, [], "status broadcasts")


@st.composite
def equivocation(draw: st.DrawFn, agents: list[str], start: float, ids: Ids) -> Script:
    """One agent tells two disjoint groups two values for the same claim key, alternately."""
    liar, *audience = agents
    half = len(audience) // 2
    group_a, group_b = audience[:half], audience[half:]
    key = draw(st.sampled_from(["region", "health", "model_version"]))
    truth, lie = draw(st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=2, max_size=2, unique=True))
    t, out = start, []
    for i in range(draw(st.integers(3, 8))):
        t += draw(st.floats(0.05, 5.0))
        value, group = (truth, group_a) if i % 2 == 0 else (lie, group_b)
        targets = draw(st.lists(st.sampled_from(group), min_size=1, max_size=2, unique=True))
        out.append(msg(liar, targets, ids(), t, "broadcast", corr=ids(), action="claim", claim={"key": key, "value": value}))
    return Script(out, "byzantine", [liar], "equivocation")


@st.composite
def honest_change(draw: st.DrawFn, agents: list[str], start: float, ids: Ids) -> Script:
    """Look-alike: claims to subsets of peers, then an honest change told to all peers at once."""
    agent, *peers = agents[:9]
    key = draw(st.sampled_from(["region", "health", "model_version"]))
    values = draw(st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=2, max_size=4, unique=True))
    t, out = start, []
    for value in values:
        t += draw(st.floats(0.05, 5.0))
        out.append(msg(agent, peers, ids(), t, "broadcast", corr=ids(), action="claim", claim={"key": key, "value": value}))
        for _ in range(draw(st.integers(0, 3))):
            t += draw(st.floats(0.05, 5.0))
            subset = draw(st.lists(st.sampled_from(peers), min_size=1, max_size=len(peers), unique=True))
            out.append(msg(agent, subset, ids(), t, "broadcast", corr=ids(), action="claim", claim={"key": key, "value": value}))
    return Script(out, None, [], "honest change")


PATTERNS = {"loop": routing_loop, "hoarding": hoarding, "cascade": cascade, "equivocation": equivocation}
LOOK_ALIKES = {
    "chain+results": delegation_chain,
    "ping-pong": ping_pong,
    "conversation": conversation,
    "steward denies when full": steward_full,
    "status broadcasts": status_broadcasts,
    "honest change": honest_change,
}


@st.composite
def fleet_script(draw: st.DrawFn, kinds: dict[str, Any]) -> Script:
    """One pattern or look-alike from ``kinds``, on fresh random agent names."""
    names = draw(agent_names)
    kind = draw(st.sampled_from(sorted(kinds)))
    ids = Ids(f"x{draw(st.integers(0, 10**6))}")
    return draw(kinds[kind](names, draw(st.floats(0.0, 1000.0)), ids))
