"""Communication cascades: causal trees of messages that grow instead of dying out.

DESIGN.md: a causal tree whose growth exceeds its expected size (an estimated branching
ratio at or above 1, or a size/rate threshold); the amplification points are the agents
whose fan-out per received message drives it.

The **tree**: a message caused (``causation_id``) by an earlier message joins that
message's tree one generation deeper. Only propagation counts: replies (``response``,
``result``, ``grant``, ``deny``) neither join nor start a tree, since an answer going back
to the asker does not spread anything. Benign traffic therefore builds only thin chains
(a delegation handed along, a release after a grant is a reply's child and not tracked).

The **branching ratio** is the Galton–Watson (Harris) estimate
``m = (Z1 + … + Zn) / (Z0 + … + Zn-1)`` over generation sizes ``Z``. A chain has
``m = 1``; a cascade where each message triggers two has ``m ≈ 2``. The tree is reported
when it has at least ``min_generations`` generations and ``min_size`` messages and
``m ≥ min_branching``, or when it reaches ``size_threshold`` messages whatever its shape,
or (if set) when it sends more than ``max_rate_per_s`` messages per second.

**Amplification points** are agents that sent messages in the tree (generation ≥ 1) and
whose targets reached per copy received is at least ``min_amplification``.

Cost per message: O(1) to place it, plus O(targets) for a message that joins a tree and
O(tree agents) when a report is due (at first detection, when the tree doubles, or a new
amplifier shows). Memory is bounded by ``max_messages`` and ``max_trees``.

>>> from datetime import datetime, timedelta, UTC
>>> from chorus_lab.schema import AgentMessage
>>> from chorus_lab.patterns.common import observe_message
>>> t0, n = datetime(2026, 1, 1, tzinfo=UTC), iter(range(1000))
>>> detector = CascadeDetector()
>>> def shout(sender, targets, cause=None):
...     i = next(n)
...     m = AgentMessage(sender, t0 + timedelta(seconds=i), "broadcast", {"action": "status"},
...                      targets, "c", {}, message_id=f"m{i}", causation_id=cause)
...     return m, detector.observe(observe_message(m))
>>> five = ["a", "b", "p", "q", "s"]
>>> root, _ = shout("r", five)
>>> (a1, _), (b1, _) = shout("a", five, root.message_id), shout("b", five, root.message_id)
>>> found = [shout(s, five, p.message_id)[1] for s, p in (("b", a1), ("a", b1), ("a", a1), ("b", b1))]
>>> [(f.agents, f.details["generations"]) for fs in found for f in fs]
[(('r', 'a', 'b'), [1, 2, 4])]
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chorus_lab.patterns.alerts import Finding
from chorus_lab.patterns.common import BoundedDict, Observation


@dataclass(frozen=True, slots=True)
class CascadeConfig:
    """Thresholds of the cascade detector."""

    min_branching: float = 1.5
    """Estimated branching ratio at or above which a growing tree is a cascade."""
    min_generations: int = 3
    """Generations (root included) before the branching ratio is trusted."""
    min_size: int = 7
    """Messages in the tree before the branching ratio is trusted."""
    size_threshold: int = 100
    """A tree this large is a cascade whatever its shape."""
    max_rate_per_s: float | None = None
    """If set: a tree of ``min_size`` or more sending faster than this is a cascade."""
    min_amplification: float = 2.0
    """Targets reached per copy received that make an agent an amplification point."""
    window_s: float = 300.0
    """A tree with no new message for this long is forgotten (event time)."""
    max_messages: int = 200_000
    """Messages remembered as possible parents."""
    max_trees: int = 20_000
    """Trees (messages with children) tracked at once."""

    def __post_init__(self) -> None:
        if self.min_generations < 2:
            raise ValueError(f"min_generations must be at least 2, got {self.min_generations}")
        for name in ("min_size", "size_threshold", "max_messages", "max_trees"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


@dataclass(frozen=True, slots=True)
class _Node:
    root: str
    generation: int
    sender: str
    targets: list[str]


@dataclass(slots=True)
class _Tree:
    root_id: str
    root_sender: str
    correlation_id: str
    started: float
    last_seen: float
    generations: list[int] = field(default_factory=lambda: [1])
    members: list[str] = field(default_factory=list)
    """Message ids, root first (bounded by ``size_threshold`` × 2)."""
    sent: dict[str, int] = field(default_factory=dict)
    reached: dict[str, int] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)
    reported_size: int = 0
    reported_amplifiers: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return sum(self.generations)


class CascadeDetector:
    """Builds causal trees of propagating messages and reports the ones that grow."""

    pattern = "communication_cascade"

    def __init__(self, config: CascadeConfig | None = None) -> None:
        self.config = config or CascadeConfig()
        self._nodes: BoundedDict[str, _Node] = BoundedDict(self.config.max_messages)
        self._trees: BoundedDict[str, _Tree] = BoundedDict(self.config.max_trees)

    def observe(self, obs: Observation) -> list[Finding]:
        """Place the message in its tree; a finding when the tree is (still) a cascade."""
        if obs.is_reply:
            return []
        message = obs.message
        parent = self._nodes.get(message.causation_id) if message.causation_id else None
        if parent is None:
            self._nodes[message.message_id] = _Node(message.message_id, 0, message.agent_id, message.target_agents)
            return []
        tree = self._tree(parent, obs)
        generation = parent.generation + 1
        self._nodes[message.message_id] = _Node(tree.root_id, generation, message.agent_id, message.target_agents)
        if generation >= len(tree.generations):
            tree.generations.extend([0] * (generation + 1 - len(tree.generations)))
        tree.generations[generation] += 1
        tree.last_seen = max(tree.last_seen, obs.seconds)
        if len(tree.members) < 2 * self.config.size_threshold:
            tree.members.append(message.message_id)
        sender = message.agent_id
        tree.sent[sender] = tree.sent.get(sender, 0) + 1
        tree.reached[sender] = tree.reached.get(sender, 0) + len(message.target_agents)
        for target in message.target_agents:
            tree.received[target] = tree.received.get(target, 0) + 1
        return self._check(tree, obs)

    def _tree(self, parent: _Node, obs: Observation) -> _Tree:
        tree = self._trees.get(parent.root)
        if tree is None or obs.seconds - tree.last_seen > self.config.window_s:
            root = self._nodes.get(parent.root)
            root_sender = root.sender if root is not None else parent.sender
            tree = _Tree(parent.root, root_sender, obs.message.correlation_id, obs.seconds, obs.seconds)
            tree.members.append(parent.root)
            if root is not None:
                for target in root.targets:
                    tree.received[target] = tree.received.get(target, 0) + 1
        self._trees[parent.root] = tree
        return tree

    def _check(self, tree: _Tree, obs: Observation) -> list[Finding]:
        config = self.config
        size = tree.size
        if size < config.min_size:
            return []
        branching = branching_ratio(tree.generations)
        depth = len(tree.generations)
        duration = max(tree.last_seen - tree.started, 1e-3)
        rate = size / duration
        grows = depth >= config.min_generations and branching >= config.min_branching
        large = size >= config.size_threshold
        fast = config.max_rate_per_s is not None and rate > config.max_rate_per_s
        if not (grows or large or fast):
            return []
        amplifiers = self.amplifiers(tree)
        if tree.reported_size and size < 2 * tree.reported_size and set(amplifiers) <= set(tree.reported_amplifiers):
            return []
        tree.reported_size = size
        tree.reported_amplifiers = tuple(sorted(set(tree.reported_amplifiers) | set(amplifiers)))
        reasons = []
        if grows:
            reasons.append(f"branching ratio {branching:.2f} over {depth} generations")
        if large:
            reasons.append(f"{size} messages (threshold {config.size_threshold})")
        if fast:
            reasons.append(f"{rate:.1f} messages/s")
        if grows and branching > 1.0:
            confidence = 1.0 - (1.0 / branching) ** (depth - 1)
        else:
            confidence = 0.5 + 0.5 * min(1.0, size / (2.0 * config.size_threshold))
        agents = tuple(dict.fromkeys([tree.root_sender, *amplifiers]))
        amp_text = ", ".join(amplifiers) if amplifiers else "none identified yet"
        return [
            Finding(
                pattern="communication_cascade",
                key=tree.root_id,
                agents=agents,
                confidence=min(0.99, max(0.0, confidence)),
                severity="high" if size >= 50 or depth >= 5 else "medium",
                description=(
                    f"A message from {tree.root_sender} set off a cascade of {size} messages in {depth} "
                    f"generations ({'; '.join(reasons)}); amplification points: {amp_text}."
                ),
                evidence=tuple(tree.members),
                detected_at=obs.message.timestamp,
                details={
                    "root": tree.root_sender,
                    "root_message_id": tree.root_id,
                    "correlation_id": tree.correlation_id,
                    "generations": list(tree.generations),
                    "size": size,
                    "branching_ratio": round(branching, 3),
                    "messages_per_s": round(rate, 3),
                    "amplifiers": {a: round(self._amplification(tree, a), 2) for a in amplifiers},
                },
                culprits=tuple(amplifiers) or (tree.root_sender,),
            )
        ]

    def amplifiers(self, tree: _Tree) -> list[str]:
        """Agents whose fan-out per copy received drives the tree, strongest first."""
        found = [a for a in tree.sent if a != tree.root_sender or tree.received.get(a, 0) > 0]
        found = [a for a in found if self._amplification(tree, a) >= self.config.min_amplification]
        return sorted(found, key=lambda a: (-self._amplification(tree, a), a))

    @staticmethod
    def _amplification(tree: _Tree, agent: str) -> float:
        return tree.reached.get(agent, 0) / max(1, tree.received.get(agent, 0))


def branching_ratio(generations: list[int]) -> float:
    """Harris's estimate of the mean offspring: later generations over earlier ones. O(G).

    >>> branching_ratio([1, 2, 4]), branching_ratio([1, 1, 1, 1]), branching_ratio([1])
    (2.0, 1.0, 0.0)
    """
    parents = sum(generations[:-1])
    return sum(generations[1:]) / parents if parents else 0.0


__all__ = ["CascadeConfig", "CascadeDetector", "branching_ratio"]
