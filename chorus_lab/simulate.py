"""Agent-fleet simulator: ordinary fleet traffic plus labelled incidents (the ground truth).

The simulator is a small discrete-event simulation in event time. Benign *episodes*
(resource requests against stewards that track real capacity, delegation chains whose
results travel back, A<->B conversations, claims, status broadcasts) start at random
moments; injected *scenarios* (routing loops, hoarding, cascades, Byzantine equivocation,
anomalies, conflicts) run inside the same world, against the same stewards, and each one
that completes yields a :class:`Label`. ``docs/simulator.md`` describes the traffic
model and the exact meaning of every label field.

Everything is drawn from ``random.Random`` streams seeded from ``config.seed``, and the
event queue breaks time ties by insertion order, so a seed always gives the same bytes.

>>> sim = simulate(SimulationConfig(agents=20, messages=300, seed=1, scenarios={"routing_loop": 1}))
>>> [label.pattern for label in sim.labels]
['routing_loop']
>>> all(a.timestamp <= b.timestamp for a, b in zip(sim.messages, sim.messages[1:]))
True
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import json
import math
import random
import time
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from chorus_lab.patterns.common import poisson_tail
from chorus_lab.schema import AgentMessage, MessageType, encode, format_timestamp, parse_timestamp, to_dict

SCENARIO_KINDS: tuple[str, ...] = (
    "routing_loop",
    "resource_hoarding",
    "communication_cascade",
    "byzantine",
    "anomaly",
    "conflict",
)
"""Scenario kinds, which are also the ``pattern`` of their labels."""

DEFAULT_START = datetime(2026, 1, 1, tzinfo=UTC)
MIN_AGENTS = 8
"""The smallest fleet in which every scenario finds enough distinct agents."""

# Durations below are in *ticks*: one tick is the configured mean interval between two
# messages fleet-wide, so a faster or slower fleet keeps the same shape.
REPLY_LATENCY = (0.5, 3.0)
HOLD_MEDIAN, HOLD_SIGMA = 40.0, 0.6
HOLD_MIN, HOLD_MAX = 10.0, 400.0
"""Benign holds are clipped to this range, so HOLD_MAX is the fleet's longest normal hold."""
RETRY_BACKOFF = (20.0, 120.0)
HOARD_HOLD = (1500.0, 2500.0)
SCENARIO_WINDOW = (0.1, 0.6)
"""Scenarios start in this fraction of the run, so detectors have a baseline before."""
MIN_SPAN_TICKS = 2000
"""Scenario start times spread over at least this many ticks, even for short runs."""

EPISODE_WEIGHTS = {"resource": 30, "delegation": 15, "conversation": 15, "claim": 15, "status": 25}
RESOURCE_KINDS = ("gpu-pool", "db-pool", "api-quota", "vector-index", "sandbox")
CLAIM_DOMAINS: dict[str, tuple[Any, ...]] = {
    "region": ("eu-west-1", "us-east-1", "us-west-2", "ap-south-1"),
    "model_version": ("v1.0", "v1.1", "v1.2", "v2.0"),
    "health": ("ok", "degraded"),
    "max_batch": (8, 16, 32, 64),
}
HONEST_CHANGE = 0.05
"""Share of benign claims that are an honest change of value (sent to all peers at once)."""
TOPICS = ("deploy", "schema", "backlog", "metrics", "billing", "eval", "retrieval")

T = TypeVar("T")
Reply = Callable[[AgentMessage, AgentMessage], None]
"""Called with (request, reply) when a steward answers."""


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True, slots=True)
class Label:
    """Ground truth for one injected incident. ``docs/simulator.md`` defines each field.

    >>> label = Label("sim0-anomaly-1", "anomaly", ["agent-007"], "sim0-00000042",
    ...               DEFAULT_START, DEFAULT_START, {"kind": "rate"})
    >>> Label.from_dict(label.to_dict()) == label
    True
    """

    incident_id: str
    pattern: str
    agents: list[str]
    onset_message_id: str
    onset_time: datetime
    end_time: datetime
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form (timestamps as UTC ISO-8601 strings)."""
        result: dict[str, Any] = to_dict(self)
        return result

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Label:
        """Read a label back from :meth:`to_dict`'s form."""
        return cls(
            incident_id=data["incident_id"],
            pattern=data["pattern"],
            agents=list(data["agents"]),
            onset_message_id=data["onset_message_id"],
            onset_time=parse_timestamp(data["onset_time"], "onset_time"),
            end_time=parse_timestamp(data["end_time"], "end_time"),
            details=dict(data.get("details", {})),
        )


@dataclass(slots=True)
class SimulationConfig:
    """What to simulate. Invalid values raise ``ValueError`` naming the field.

    ``messages`` is the benign volume: benign episodes keep starting until that many benign
    messages were sent *and* every scenario has finished; episodes in flight then complete,
    so the benign count ends slightly above ``messages``. Scenario traffic comes on top.
    ``resources=None`` means one resource per five agents (at least 4, at most 200), or
    more when the scenarios need them: each hoarding takes a resource for itself, each
    conflict two (a deadlock), and one more stays for everyone else.
    ``scenarios`` maps scenario kinds to counts; ``{}`` is a benign-only run (see
    :func:`parse_scenarios` for the text form).

    >>> SimulationConfig(agents=3)
    Traceback (most recent call last):
    ...
    ValueError: agents: at least 8 are needed, got 3
    """

    agents: int = 50
    messages: int = 10_000
    seed: int = 0
    start: datetime = DEFAULT_START
    mean_interval: timedelta = timedelta(milliseconds=50)
    resources: int | None = None
    capacities: tuple[int, ...] = (2, 4, 8, 16)
    scenarios: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SCENARIO_KINDS, 1))

    def __post_init__(self) -> None:
        if self.agents < MIN_AGENTS:
            raise ValueError(f"agents: at least {MIN_AGENTS} are needed, got {self.agents}")
        if self.messages < 0:
            raise ValueError(f"messages: must not be negative, got {self.messages}")
        if self.start.tzinfo is None or self.start.utcoffset() is None:
            raise ValueError(f"start: needs a time zone (use UTC), got {self.start.isoformat()}")
        if self.mean_interval <= timedelta(0):
            raise ValueError(f"mean_interval: must be positive, got {self.mean_interval}")
        if self.resources is not None and not 1 <= self.resources <= self.agents:
            raise ValueError(f"resources: must be between 1 and agents ({self.agents}), got {self.resources}")
        if not self.capacities or min(self.capacities) < 1:
            raise ValueError(f"capacities: need at least one capacity, each at least 1, got {self.capacities}")
        for kind, count in self.scenarios.items():
            if kind not in SCENARIO_KINDS:
                raise ValueError(f"scenarios: unknown kind {kind!r} (known: {', '.join(SCENARIO_KINDS)})")
            if count < 0:
                raise ValueError(f"scenarios: {kind} count must not be negative, got {count}")
        if self.resource_count < self.resources_needed:
            limit = "" if self.resources is not None else f" (a fleet of {self.agents} agents has at most {self.agents})"
            raise ValueError(
                f"resources: {self.resource_count} are too few{limit} for the scenarios, which need"
                f" {self.resources_needed} (one per resource_hoarding, two per conflict, one to share)"
            )

    @property
    def resource_count(self) -> int:
        """How many resources (and stewards) the fleet has."""
        if self.resources is not None:
            return self.resources
        return min(self.agents, max(4, min(200, self.agents // 5), self.resources_needed))

    @property
    def resources_needed(self) -> int:
        """Resources the scenarios need: hoarding and deadlocks take whole ones for themselves."""
        # Sharing one would let a hoarding steward ignore another scenario's requests forever.
        return self.scenarios.get("resource_hoarding", 0) + 2 * self.scenarios.get("conflict", 0) + 1


@dataclass(slots=True)
class Simulation:
    """A finished run: messages in event-time order and the labels of its incidents."""

    config: SimulationConfig
    messages: list[AgentMessage]
    labels: list[Label]


# --------------------------------------------------------------------------- public functions


def parse_scenarios(text: str) -> dict[str, int]:
    """Parse ``kind=count,kind=count`` (a bare ``kind`` means 1; ``all``; ``none``).

    >>> parse_scenarios("routing_loop=2, byzantine")
    {'routing_loop': 2, 'byzantine': 1}
    >>> parse_scenarios("none")
    {}
    >>> parse_scenarios("loops=2")
    Traceback (most recent call last):
    ...
    ValueError: scenarios: unknown kind 'loops' in 'loops=2' (known: routing_loop, resource_hoarding, communication_cascade, byzantine, anomaly, conflict, or all, none)
    """
    text = text.strip()
    if text in ("", "none"):
        return {}
    if text == "all":
        return dict.fromkeys(SCENARIO_KINDS, 1)
    counts: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            raise ValueError(f"scenarios: empty entry in {text!r}")
        kind, sep, number = (s.strip() for s in part.partition("="))
        if kind not in SCENARIO_KINDS:
            known = ", ".join(SCENARIO_KINDS)
            raise ValueError(f"scenarios: unknown kind {kind!r} in {part!r} (known: {known}, or all, none)")
        if kind in counts:
            raise ValueError(f"scenarios: {kind} is given twice")
        if not sep:
            counts[kind] = 1
        elif number.isdigit():
            counts[kind] = int(number)
        else:
            raise ValueError(f"scenarios: count in {part!r} must be a whole number >= 0, got {number!r}")
    return counts


def iter_messages(config: SimulationConfig) -> Iterator[AgentMessage]:
    """Yield the run's messages in event-time order as they are simulated (no labels).

    >>> messages = iter_messages(SimulationConfig(agents=10, messages=50, scenarios={}))
    >>> next(messages).timestamp.isoformat()
    '2026-01-01T00:00:00+00:00'
    """
    fleet, _ = _prepare(config)
    return fleet.run()


def simulate(config: SimulationConfig) -> Simulation:
    """Run the whole simulation: messages sorted by event time, and the labels.

    Time and memory are linear in the number of messages; 10,000 agents and 100,000
    messages take a few seconds.

    >>> sim = simulate(SimulationConfig(agents=10, messages=200, scenarios={}))
    >>> len(sim.messages) >= 200, sim.labels
    (True, [])
    """
    fleet, scenarios = _prepare(config)
    messages = list(fleet.run())
    labels = [label for label in (s.label() for s in scenarios) if label is not None]
    labels += chance_contention(messages, {r.name: r.capacity for r in fleet.resources}, fleet.scenario_messages, config.seed)
    labels.sort(key=lambda label: (label.onset_time, label.incident_id))
    return Simulation(config, messages, labels)


CHANCE_BURST_S = 1.0
"""Benign requests this close to a denied one form one burst (as ``ConflictConfig.burst_window_s``)."""
CHANCE_MAX_P = 1e-4
"""A benign burst at least this improbable at its resource's true rate is a real contention."""


def chance_contention(
    messages: list[AgentMessage], capacities: dict[str, int], scenario_ids: Collection[str], seed: int
) -> list[Label]:
    """Contention that ordinary traffic created by chance, labelled as the incident it is.

    Benign agents ask independently, so now and then several ask for the same small
    resource at once. When such a burst meets DESIGN.md's definition it *is* contention,
    and a detector that reports it is right: at least 3 distinct agents, demand beyond
    capacity by at least 2, a denial among them, and a burst improbable for the resource
    (Poisson tail at most ``CHANCE_MAX_P`` for that many distinct agents asking). The
    simulator judges with what no detector has: the resource's true rate (all its benign
    requests over the whole run) and the exact burst (requests within ``CHANCE_BURST_S``
    either side of a denied one).
    Overlapping bursts on one resource are one incident, labelled ``variant``
    ``"chance"``; its onset is the first denied request. O(messages + bursts · burst size).

    >>> from chorus_lab.schema import AgentMessage
    >>> def at(i, s, agent, action, cause=None):
    ...     return AgentMessage(agent, DEFAULT_START + timedelta(seconds=s), "request", {"action": action,
    ...         "resource": "r", "amount": 1}, ["st"], "c", {}, message_id=f"m{i}", causation_id=cause)
    >>> quiet = [at(i, 10.0 * i, "q", "request_resource") for i in range(1, 60)]
    >>> burst = [at(100 + i, 600.0 + 0.1 * i, f"a{i}", "request_resource") for i in range(4)]
    >>> denials = [at(200 + i, 600.5, "st", "deny", cause=f"m{100 + i}") for i in (2, 3)]
    >>> found = chance_contention(quiet + burst + denials, {"r": 2}, (), 0)
    >>> [(label.agents, label.onset_message_id, label.details["variant"]) for label in found]
    [(['a0', 'a1', 'a2', 'a3'], 'm102', 'chance')]
    """
    if not messages:
        return []
    requests: dict[str, list[AgentMessage]] = {}
    denials: dict[str, AgentMessage] = {}
    for m in messages:
        if m.message_id in scenario_ids or m.content.get("resource") not in capacities:
            continue
        if m.content.get("action") == "request_resource":
            requests.setdefault(m.content["resource"], []).append(m)
        elif m.content.get("action") == "deny" and m.causation_id is not None:
            denials[m.causation_id] = m
    start = messages[0].timestamp
    duration = max((messages[-1].timestamp - start).total_seconds(), CHANCE_BURST_S)
    labels: list[Label] = []
    for resource in sorted(requests):
        asked = requests[resource]  # in time order
        seconds = [(m.timestamp - start).total_seconds() for m in asked]
        rate = len(asked) / duration
        incidents: list[list[int]] = []  # indexes of requests, per incident
        for i, m in enumerate(asked):
            if m.message_id not in denials:
                continue
            lo = bisect.bisect_left(seconds, seconds[i] - CHANCE_BURST_S)
            hi = bisect.bisect_right(seconds, seconds[i] + CHANCE_BURST_S)
            demand = {asked[j].agent_id: asked[j].content.get("amount", 1) for j in range(lo, hi)}
            if len(demand) < 3 or sum(demand.values()) < capacities[resource] + 2:
                continue
            span = seconds[hi - 1] - seconds[lo] + CHANCE_BURST_S
            # Arrivals per agent, as the detector counts them (an agent asking again is not
            # another independent arrival); the rate is all requests', which is conservative.
            if poisson_tail(len(demand), rate * span) > CHANCE_MAX_P:
                continue
            if incidents and lo <= incidents[-1][-1]:
                incidents[-1].extend(j for j in range(incidents[-1][-1] + 1, hi))
            else:
                incidents.append(list(range(lo, hi)))
        for burst in incidents:
            members = [asked[j] for j in burst]
            denied = [m for m in members if m.message_id in denials]
            onset = denied[0]
            labels.append(
                Label(
                    incident_id=f"sim{seed}-conflict-chance-{resource}-{len(labels) + 1}",
                    pattern="conflict",
                    agents=sorted({m.agent_id for m in members}),
                    onset_message_id=onset.message_id,
                    onset_time=onset.timestamp,
                    end_time=max(denials[m.message_id].timestamp for m in denied),
                    details={
                        "variant": "chance",
                        "kind": "contention",
                        "resource": resource,
                        "capacity": capacities[resource],
                        "demand": sum({m.agent_id: m.content.get("amount", 1) for m in members}.values()),
                        "request_ids": [m.message_id for m in members],
                        "denied": sorted({m.agent_id for m in denied}),
                        "usual_requests_per_s": round(rate, 6),
                    },
                )
            )
    return labels


def write_jsonl(simulation: Simulation, messages_path: str | Path, labels_path: str | Path) -> None:
    """Write messages (``schema.encode``, one per line) and labels (one JSON per line).

    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> sim = simulate(SimulationConfig(agents=10, messages=20, scenarios={}))
    >>> write_jsonl(sim, os.path.join(folder, "m.jsonl"), os.path.join(folder, "l.jsonl"))
    >>> sum(1 for _ in open(os.path.join(folder, "m.jsonl"))) == len(sim.messages)
    True
    """
    with open(messages_path, "wb") as out:
        out.writelines(encode(message) + b"\n" for message in simulation.messages)
    with open(labels_path, "wb") as out:
        for label in simulation.labels:
            out.write(json.dumps(label.to_dict(), separators=(",", ":"), ensure_ascii=False).encode() + b"\n")


def read_labels(path: str | Path) -> list[Label]:
    """Read a labels file written by :func:`write_jsonl`.

    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> sim = simulate(SimulationConfig(agents=12, messages=100, scenarios={"byzantine": 1}))
    >>> write_jsonl(sim, os.path.join(folder, "m.jsonl"), os.path.join(folder, "l.jsonl"))
    >>> read_labels(os.path.join(folder, "l.jsonl")) == sim.labels
    True
    """
    with open(path, encoding="utf-8") as source:
        return [Label.from_dict(json.loads(line)) for line in source if line.strip()]


def paced(
    items: Iterable[T],
    rate: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[T]:
    """Yield items no faster than ``rate`` per second of wall-clock time (for ``--rate``).

    Item ``i`` is due ``i / rate`` seconds after the first, so a slow consumer catches up
    instead of drifting.

    >>> now = [0.0]
    >>> def fake_sleep(seconds): now[0] += seconds
    >>> list(paced("abc", 2.0, clock=lambda: now[0], sleep=fake_sleep)), now[0]
    (['a', 'b', 'c'], 1.0)
    """
    if rate <= 0:
        raise ValueError(f"rate: must be positive, got {rate}")
    began = clock()
    for i, item in enumerate(items):
        delay = began + i / rate - clock()
        if delay > 0:
            sleep(delay)
        yield item


# --------------------------------------------------------------------------- the world


@dataclass(slots=True)
class _Resource:
    name: str
    steward: int
    capacity: int
    rank: int
    """Popularity rank: 0 is the most requested resource."""
    in_use: int = 0
    reply_due: int = 0
    """When the steward's last queued answer goes out: it answers requests in order."""
    hoarder: _Hoarding | None = None
    """Set while the resource's own steward hoards it."""


class _Fleet:
    """The shared world: agents, resources, the event clock, and sending messages."""

    def __init__(self, config: SimulationConfig) -> None:
        self.config = config
        self.n = config.agents
        width = max(3, len(str(config.agents - 1)))
        self.names = [f"agent-{i:0{width}d}" for i in range(config.agents)]
        self.tick_us = config.mean_interval / timedelta(microseconds=1)
        setup = random.Random(f"{config.seed}:fleet")
        # A heavy-tailed but stationary activity per agent: busy agents are normal.
        self.cum_activity = list(itertools.accumulate(setup.lognormvariate(0.0, 1.0) for _ in range(self.n)))
        self.resources = _make_resources(setup, config)
        self.cum_popularity = list(itertools.accumulate(1.0 / (r.rank + 1) for r in self.resources))
        self.now = 0
        self.benign_sent = 0
        self.open_scenarios = 0
        self.culprits: set[int] = set()
        self.reserved: set[str] = set()
        self._peers: dict[int, list[int]] = {}
        self._claims: dict[tuple[int, str], Any] = {}
        self._queue: list[tuple[int, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._message_ids = itertools.count(1)
        self._correlations = itertools.count(1)
        self._outbox: list[AgentMessage] = []
        self.scenario_messages: set[str] = set()
        """Ids of the messages scenarios sent (everything else is benign)."""

    # ---- clock

    def ticks(self, ticks: float) -> int:
        """Microseconds for ``ticks``; at least 1 so an effect always follows its cause."""
        return max(1, round(ticks * self.tick_us))

    def at(self, when: int, action: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (when, next(self._order), action))

    def after(self, ticks: float, action: Callable[[], None]) -> None:
        self.at(self.now + self.ticks(ticks), action)

    def run(self) -> Iterator[AgentMessage]:
        while self._queue:
            self.now, _, action = heapq.heappop(self._queue)
            action()
            if self._outbox:
                yield from self._outbox
                self._outbox = []

    # ---- messages

    def send(
        self,
        owner: _Scenario | None,
        sender: int,
        kind: MessageType,
        content: dict[str, Any],
        targets: Iterable[int],
        correlation_id: str,
        causation_id: str | None = None,
    ) -> AgentMessage:
        """Emit a message now; ``owner`` is the scenario it belongs to (None: benign)."""
        message = AgentMessage(
            agent_id=self.names[sender],
            timestamp=self.config.start + timedelta(microseconds=self.now),
            message_type=kind,
            content=content,
            target_agents=[self.names[t] for t in targets],
            correlation_id=correlation_id,
            metadata={"source": "simulator"},
            message_id=f"sim{self.config.seed}-{next(self._message_ids):08d}",
            causation_id=causation_id,
        )
        self._outbox.append(message)
        if owner is None:
            self.benign_sent += 1
        else:
            self.scenario_messages.add(message.message_id)
            owner.record(message)
        return message

    def new_correlation(self) -> str:
        return f"c{self.config.seed}-{next(self._correlations):07d}"

    def new_task(self) -> str:
        return f"task-{self.config.seed}-{next(self._correlations):07d}"

    # ---- agents

    def pick_agent(self, rng: random.Random, avoid: Collection[int] = ()) -> int:
        """An agent chosen by activity (busy agents more often), not in ``avoid``."""
        total = self.cum_activity[-1]
        while True:
            agent = min(bisect.bisect(self.cum_activity, rng.random() * total), self.n - 1)
            if agent not in avoid:
                return agent

    def sample_agents(self, rng: random.Random, k: int, avoid: Collection[int] = ()) -> list[int]:
        """Up to ``k`` distinct agents outside ``avoid``, uniformly."""
        taken = set(avoid)
        free = self.n - len(taken)
        k = min(k, free)
        if 3 * k >= free:
            return rng.sample([a for a in range(self.n) if a not in taken], k)
        # Rejection sampling stays O(k) when the fleet is much larger than the sample.
        chosen: list[int] = []
        while len(chosen) < k:
            agent = rng.randrange(self.n)
            if agent not in taken:
                taken.add(agent)
                chosen.append(agent)
        return chosen

    def pick_culprits(self, rng: random.Random, k: int, avoid: Collection[int] = ()) -> list[int]:
        """Agents for an incident, preferring ones no other incident uses."""
        chosen = self.sample_agents(rng, k, self.culprits | set(avoid))
        if len(chosen) < k:  # a small fleet with many scenarios: share agents
            chosen += self.sample_agents(rng, k - len(chosen), set(avoid) | set(chosen))
        self.culprits.update(chosen)
        return chosen

    def peers_of(self, agent: int) -> list[int]:
        """The 3-8 agents this one usually talks to; stable for the run."""
        peers = self._peers.get(agent)
        if peers is None:
            # Its own stream, so an agent's peers do not depend on when they are first asked for.
            rng = random.Random(f"{self.config.seed}:peers:{agent}")
            peers = sorted(self.sample_agents(rng, rng.randint(3, 8), (agent,)))
            self._peers[agent] = peers
        return peers

    def claim_value(self, agent: int, key: str) -> Any:
        """What ``agent`` currently (honestly) believes about ``key``."""
        if (agent, key) not in self._claims:
            domain = CLAIM_DOMAINS[key]
            self._claims[agent, key] = domain[zlib.crc32(f"{self.config.seed}:{agent}:{key}".encode()) % len(domain)]
        return self._claims[agent, key]

    def set_claim(self, agent: int, key: str, value: Any) -> None:
        self._claims[agent, key] = value

    # ---- resources

    def pick_resource(self, rng: random.Random) -> _Resource:
        """A resource by popularity (Zipf): a few hot ones, many cold ones."""
        index = bisect.bisect(self.cum_popularity, rng.random() * self.cum_popularity[-1])
        return self.resources[min(index, len(self.resources) - 1)]

    def reserve_idle_resource(self, rng: random.Random, avoid_stewards: Collection[int] = ()) -> _Resource:
        """Reserve an unreserved resource with as little in use as possible, to take it whole."""
        free = self._unreserved()
        candidates = [r for r in free if r.steward not in avoid_stewards] or free
        least = min(r.in_use for r in candidates)
        return self._reserve(rng.choice([r for r in candidates if r.in_use == least]))

    def reserve_scarce_resource(self, rng: random.Random) -> _Resource:
        """Reserve the least popular scarce resource (capacity at most twice the smallest).

        Contention is demand beyond what the resource normally sees: on the fleet's hottest
        resource a burst of a few requests is ordinary traffic, and no detector could (or
        should) tell the incident from it. A scarce resource that is quiet otherwise makes
        the incident what its label says. So the hottest resource (rank 0) is never chosen
        while another is free, and "scarce" is measured among the others: when the other
        small resources are all reserved, a larger quiet one takes the incident (with more
        contenders, since demand must still exceed its capacity by 2). (``rng`` is drawn
        from as before, so the rest of the run does not change.)
        """
        free = self._unreserved()
        smallest = min(r.capacity for r in free)
        rng.choice([r for r in free if r.capacity == smallest])
        quiet = [r for r in free if r.rank > 0] or free
        smallest = min(r.capacity for r in quiet)
        scarce = [r for r in quiet if r.capacity <= 2 * smallest]
        return self._reserve(max(scarce, key=lambda r: r.rank))

    def _unreserved(self) -> list[_Resource]:
        # SimulationConfig checks there are more resources than scenarios can reserve.
        return [r for r in self.resources if r.name not in self.reserved]

    def _reserve(self, resource: _Resource) -> _Resource:
        # Each incident keeps its resources to itself: a hoarding steward that ignores
        # requests must never stall another scenario waiting for an answer.
        self.reserved.add(resource.name)
        return resource

    def request_resource(
        self,
        owner: _Scenario | None,
        rng: random.Random,
        requester: int,
        resource: _Resource,
        amount: int,
        correlation_id: str,
        causation_id: str | None,
        on_grant: Reply,
        on_deny: Reply,
    ) -> AgentMessage:
        """Send a request to the steward; its answer follows in request order."""
        content = {"action": "request_resource", "resource": resource.name, "amount": amount, "priority": rng.randint(0, 10)}
        request = self.send(owner, requester, "request", content, [resource.steward], correlation_id, causation_id)
        due = max(resource.reply_due, self.now + self.ticks(rng.uniform(*REPLY_LATENCY)))
        resource.reply_due = due
        self.at(due, lambda: self._answer(owner, resource, request, requester, amount, on_grant, on_deny))
        return request

    def _answer(
        self,
        owner: _Scenario | None,
        resource: _Resource,
        request: AgentMessage,
        requester: int,
        amount: int,
        on_grant: Reply,
        on_deny: Reply,
    ) -> None:
        if resource.hoarder is not None:
            refusal = resource.hoarder.refuse(request, requester)
            if refusal is not None:
                on_deny(request, refusal)
            return
        free = resource.capacity - resource.in_use
        steward, corr, cause = resource.steward, request.correlation_id, request.message_id
        if amount <= free:
            resource.in_use += amount
            content = {"action": "grant", "resource": resource.name, "amount": amount}
            on_grant(request, self.send(owner, steward, "response", content, [requester], corr, cause))
        else:
            content = {
                "action": "deny",
                "resource": resource.name,
                "amount": amount,
                "reason": "insufficient capacity",
                "available": free,
            }
            on_deny(request, self.send(owner, steward, "response", content, [requester], corr, cause))

    def release(
        self, owner: _Scenario | None, holder: int, resource: _Resource, amount: int, correlation_id: str, causation_id: str
    ) -> AgentMessage:
        resource.in_use -= amount
        content = {"action": "release", "resource": resource.name, "amount": amount}
        return self.send(owner, holder, "request", content, [resource.steward], correlation_id, causation_id)

    def hold_then_release(
        self, owner: _Scenario | None, holder: int, resource: _Resource, amount: int, ticks: float
    ) -> Reply:
        """A grant callback: keep the resource for ``ticks``, then release it."""

        def granted(request: AgentMessage, grant: AgentMessage) -> None:
            corr, cause = request.correlation_id, grant.message_id
            self.after(ticks, lambda: self.release(owner, holder, resource, amount, corr, cause))

        return granted

    def acquire_all(
        self,
        owner: _Scenario,
        rng: random.Random,
        agent: int,
        resource: _Resource,
        then: Callable[[AgentMessage | None], None],
        attempts: int = 300,
    ) -> None:
        """Ask for the whole capacity until granted; ``then(grant)``, or ``then(None)``."""
        correlation_id = self.new_correlation()

        def ask(cause: str | None, left: int) -> None:
            def denied(request: AgentMessage, deny: AgentMessage) -> None:
                if left > 0:
                    self.after(rng.uniform(5, 20), lambda: ask(deny.message_id, left - 1))
                else:
                    then(None)

            self.request_resource(
                owner, rng, agent, resource, resource.capacity, correlation_id, cause, lambda r, grant: then(grant), denied
            )

        ask(None, attempts)


def _make_resources(rng: random.Random, config: SimulationConfig) -> list[_Resource]:
    count = config.resource_count
    stewards = rng.sample(range(config.agents), count)
    resources = []
    for rank in range(count):
        # The hottest resource is also the scarcest, so "deny when full" shows up in any run.
        capacity = min(config.capacities) if rank == 0 else rng.choice(config.capacities)
        kind = RESOURCE_KINDS[rank % len(RESOURCE_KINDS)]
        resources.append(_Resource(f"{kind}-{rank // len(RESOURCE_KINDS) + 1}", stewards[rank], capacity, rank))
    return resources


def _benign_hold(rng: random.Random) -> float:
    return min(max(rng.lognormvariate(math.log(HOLD_MEDIAN), HOLD_SIGMA), HOLD_MIN), HOLD_MAX)


def _status_content(rng: random.Random) -> dict[str, Any]:
    return {
        "action": "status",
        "status": rng.choice(("ok", "ok", "ok", "busy")),
        "load": round(rng.random(), 2),
        "queue": rng.randint(0, 9),
    }


# --------------------------------------------------------------------------- benign traffic


class _Benign:
    """Ordinary fleet traffic, including the honest look-alikes of every pattern."""

    def __init__(self, fleet: _Fleet) -> None:
        self.fleet = fleet
        self.rng = random.Random(f"{fleet.config.seed}:benign")
        self.episodes: dict[str, Callable[[], float]] = {
            "resource": self._resource,
            "delegation": self._delegation,
            "conversation": self._conversation,
            "claim": self._claim,
            "status": self._status,
        }
        self.kinds = list(EPISODE_WEIGHTS)
        self.cum_weights = list(itertools.accumulate(EPISODE_WEIGHTS.values()))

    def start(self) -> None:
        fleet = self.fleet
        fleet.at(0, self._drive)
        for resource in fleet.resources:
            fleet.after(self.rng.uniform(0, 5), lambda r=resource: self._announce(r))

    def _drive(self) -> None:
        fleet = self.fleet
        if fleet.benign_sent >= fleet.config.messages and fleet.open_scenarios == 0:
            return
        kind = self.rng.choices(self.kinds, cum_weights=self.cum_weights)[0]
        expected_messages = self.episodes[kind]()
        # Spacing episodes by their size keeps the fleet-wide mean interval at one tick.
        fleet.after(self.rng.expovariate(1.0 / expected_messages), self._drive)

    def _announce(self, resource: _Resource) -> None:
        content = {"action": "status", "status": "available", "resource": resource.name, "capacity": resource.capacity}
        steward = resource.steward
        self.fleet.send(None, steward, "broadcast", content, self.fleet.peers_of(steward), self.fleet.new_correlation())

    def _resource(self) -> float:
        rng, fleet = self.rng, self.fleet
        resource = fleet.pick_resource(rng)
        requester = fleet.pick_agent(rng, avoid=(resource.steward,))
        amount = min(resource.capacity, rng.choices((1, 2, 3), weights=(6, 3, 1))[0])
        self._ask(requester, resource, amount, fleet.new_correlation(), None, retries=2)
        return 3.0  # request and answer, a release when granted, sometimes a retry

    def _ask(self, requester: int, resource: _Resource, amount: int, corr: str, cause: str | None, retries: int) -> None:
        rng, fleet = self.rng, self.fleet

        def denied(request: AgentMessage, deny: AgentMessage) -> None:
            # Honest agents back off and try again: a grant after a denial is ordinary.
            if retries and rng.random() < 0.6:
                retry = lambda: self._ask(requester, resource, amount, corr, deny.message_id, retries - 1)  # noqa: E731
                fleet.after(rng.uniform(*RETRY_BACKOFF), retry)

        granted = fleet.hold_then_release(None, requester, resource, amount, _benign_hold(rng))
        fleet.request_resource(None, rng, requester, resource, amount, corr, cause, granted, denied)

    def _delegation(self) -> float:
        rng, fleet = self.rng, self.fleet
        chain = [fleet.pick_agent(rng)]
        for _ in range(rng.randint(1, 3)):
            options = [p for p in fleet.peers_of(chain[-1]) if p not in chain]
            chain.append(rng.choice(options) if options else fleet.pick_agent(rng, avoid=chain))
        self._hand_on(chain, [], fleet.new_correlation(), fleet.new_task())
        return 2.0 * (len(chain) - 1)

    def _hand_on(self, chain: list[int], handoffs: list[AgentMessage], corr: str, task: str) -> None:
        rng, fleet = self.rng, self.fleet
        step = len(handoffs)
        cause = handoffs[-1].message_id if handoffs else None
        content = {"action": "forward" if rng.random() < 0.2 else "delegate", "task_id": task, "step": step + 1}
        handoffs.append(fleet.send(None, chain[step], "request", content, [chain[step + 1]], corr, cause))
        if len(handoffs) < len(chain) - 1:
            fleet.after(rng.uniform(2, 20), lambda: self._hand_on(chain, handoffs, corr, task))
        else:
            fleet.after(rng.uniform(5, 50), lambda: self._result(chain, handoffs, len(chain) - 1, corr, task))

    def _result(self, chain: list[int], handoffs: list[AgentMessage], hop: int, corr: str, task: str) -> None:
        # Results travel back hop by hop to whoever handed the task on: replies, not hand-offs.
        content = {"action": "result", "task_id": task, "status": "done"}
        self.fleet.send(None, chain[hop], "response", content, [chain[hop - 1]], corr, handoffs[hop - 1].message_id)
        if hop > 1:
            self.fleet.after(self.rng.uniform(1, 5), lambda: self._result(chain, handoffs, hop - 1, corr, task))

    def _conversation(self) -> float:
        rng, fleet = self.rng, self.fleet
        asker = fleet.pick_agent(rng)
        partner = rng.choice(fleet.peers_of(asker))
        turns = rng.randint(1, 3)
        self._turn(asker, partner, fleet.new_correlation(), rng.choice(TOPICS), 1, turns, None)
        return 2.0 * turns

    def _turn(self, asker: int, partner: int, corr: str, topic: str, turn: int, turns: int, cause: str | None) -> None:
        rng, fleet = self.rng, self.fleet
        question = {"topic": topic, "turn": turn, "text": f"question {turn} about {topic}"}
        asked = fleet.send(None, asker, "request", question, [partner], corr, cause)

        def answer() -> None:
            reply = {"topic": topic, "turn": turn, "text": f"answer {turn} about {topic}"}
            answered = fleet.send(None, partner, "response", reply, [asker], corr, asked.message_id)
            if turn < turns:
                next_turn = lambda: self._turn(asker, partner, corr, topic, turn + 1, turns, answered.message_id)  # noqa: E731
                fleet.after(rng.uniform(2, 10), next_turn)

        fleet.after(rng.uniform(1, 8), answer)

    def _claim(self) -> float:
        rng, fleet = self.rng, self.fleet
        agent = fleet.pick_agent(rng)
        key = rng.choice(sorted(CLAIM_DOMAINS))
        peers = fleet.peers_of(agent)
        value = fleet.claim_value(agent, key)
        if rng.random() < HONEST_CHANGE:
            # An honest change of state goes to every peer at once, never one story per peer.
            value = rng.choice([v for v in CLAIM_DOMAINS[key] if v != value])
            fleet.set_claim(agent, key, value)
            targets = peers
        else:
            targets = sorted(rng.sample(peers, rng.randint(1, len(peers))))
        content = {"action": "claim", "claim": {"key": key, "value": value}}
        fleet.send(None, agent, "broadcast", content, targets, fleet.new_correlation())
        return 1.0

    def _status(self) -> float:
        rng, fleet = self.rng, self.fleet
        agent = fleet.pick_agent(rng)
        peers = fleet.peers_of(agent)
        targets = sorted(rng.sample(peers, rng.randint(min(2, len(peers)), len(peers))))
        fleet.send(None, agent, "broadcast", _status_content(rng), targets, fleet.new_correlation())
        return 1.0


# --------------------------------------------------------------------------- scenarios


class _Scenario:
    """One injected incident: it sends its own messages and knows its ground truth.

    ``onset`` is the first message from which the pattern's definition holds (set by the
    subclass); ``first`` and ``last`` bound everything the scenario sent.
    """

    pattern = ""
    variants: tuple[str, ...] = ("",)

    def __init__(self, fleet: _Fleet, index: int) -> None:
        seed = fleet.config.seed
        self.fleet = fleet
        self.rng = random.Random(f"{seed}:{self.pattern}:{index}")
        self.incident_id = f"sim{seed}-{self.pattern}-{index}"
        # Variants rotate with the index, so asking for several covers each of them.
        self.variant = self.variants[(seed + index - 1) % len(self.variants)]
        self.agents: list[int] = []
        self.first: AgentMessage | None = None
        self.onset: AgentMessage | None = None
        self.last: AgentMessage | None = None
        self.finished = False
        fleet.open_scenarios += 1

    def start(self) -> None:
        raise NotImplementedError

    def details(self) -> dict[str, Any]:
        raise NotImplementedError

    def record(self, message: AgentMessage) -> None:
        if self.first is None:
            self.first = message
        self.last = message

    def mark_onset(self, message: AgentMessage) -> None:
        if self.onset is None:
            self.onset = message

    def finish(self) -> None:
        if not self.finished:
            self.finished = True
            self.fleet.open_scenarios -= 1

    def agent_names(self, agents: Iterable[int]) -> list[str]:
        return sorted(self.fleet.names[a] for a in agents)

    def label(self) -> Label | None:
        """The ground truth, or None when the incident never took shape."""
        if self.onset is None or self.first is None or self.last is None:
            return None
        details = {
            **({"variant": self.variant} if self.variant else {}),
            "start_message_id": self.first.message_id,
            "start_time": format_timestamp(self.first.timestamp),
            **self.details(),
        }
        return Label(
            incident_id=self.incident_id,
            pattern=self.pattern,
            agents=self.agent_names(self.agents),
            onset_message_id=self.onset.message_id,
            onset_time=self.onset.timestamp,
            end_time=self.last.timestamp,
            details=details,
        )


class _RoutingLoop(_Scenario):
    """A task handed around a cycle of 3-6 agents for 2-4 laps."""

    pattern = "routing_loop"

    def start(self) -> None:
        rng, fleet = self.rng, self.fleet
        self.cycle = fleet.pick_culprits(rng, rng.randint(3, min(6, fleet.n - 1)))
        self.agents = self.cycle
        self.asker = fleet.pick_agent(rng, avoid=self.cycle)
        self.laps = rng.randint(2, 4)
        self.corr, self.task = fleet.new_correlation(), fleet.new_task()
        content = {"action": "delegate", "task_id": self.task, "step": 1}
        entry = fleet.send(self, self.asker, "request", content, [self.cycle[0]], self.corr)
        fleet.after(rng.uniform(1, 6), lambda: self._hop(0, entry, set()))

    def _hop(self, hop: int, previous: AgentMessage, handed_on: set[int]) -> None:
        rng, size = self.rng, len(self.cycle)
        sender, receiver = self.cycle[hop % size], self.cycle[(hop + 1) % size]
        content = {"action": "forward" if rng.random() < 0.3 else "delegate", "task_id": self.task, "step": hop + 2}
        message = self.fleet.send(self, sender, "request", content, [receiver], self.corr, previous.message_id)
        handed_on.add(sender)
        if receiver in handed_on:
            self.mark_onset(message)
        if hop + 1 < size * self.laps:
            self.fleet.after(rng.uniform(1, 6), lambda: self._hop(hop + 1, message, handed_on))
        else:
            self.finish()

    def details(self) -> dict[str, Any]:
        return {
            "cycle": [self.fleet.names[a] for a in self.cycle],
            "laps": self.laps,
            "task_id": self.task,
            "correlation_id": self.corr,
            "asker": self.fleet.names[self.asker],
            "hand_offs": len(self.cycle) * self.laps + 1,
        }


class _Hoarding(_Scenario):
    """An agent keeps a whole resource far beyond the fleet's longest hold and refuses it.

    ``holder``: it acquires the capacity from an honest steward, which then denies others
    (honestly, it is full); when they ask the holder directly it denies or ignores them.
    ``steward``: the resource's own steward announces a ``hold`` of its whole capacity and
    then denies or ignores every request for it.
    """

    pattern = "resource_hoarding"
    variants = ("holder", "steward")
    IGNORE_SHARE = 0.4

    def start(self) -> None:
        rng, fleet = self.rng, self.fleet
        # A hoarding steward should be an agent no other incident uses.
        self.resource = fleet.reserve_idle_resource(rng, fleet.culprits if self.variant == "steward" else ())
        steward = self.resource.steward
        self.corr = fleet.new_correlation()
        self.refused: list[str] = []
        self.hold_start: AgentMessage | None = None
        self.hold_ticks = rng.uniform(*HOARD_HOLD)
        if self.variant == "steward":
            self.hoarder = steward
            fleet.culprits.add(steward)
        else:
            self.hoarder = fleet.pick_culprits(rng, 1, avoid=(steward,))[0]
        self.agents = [self.hoarder]
        self.waiters = fleet.sample_agents(rng, rng.randint(4, 10), avoid=(self.hoarder, steward))
        if self.variant == "steward":
            self._hold_as_steward()
        else:
            fleet.acquire_all(self, rng, self.hoarder, self.resource, self._hold_as_holder)

    def _hold_as_steward(self) -> None:
        resource = self.resource
        content = {"action": "hold", "resource": resource.name, "amount": resource.capacity}
        hold = self.fleet.send(self, self.hoarder, "broadcast", content, self.fleet.peers_of(self.hoarder), self.corr)
        resource.hoarder = self
        self._begin(hold, lambda: self._end_as_steward(hold))

    def _end_as_steward(self, hold: AgentMessage) -> None:
        resource = self.resource
        resource.hoarder = None
        content = {"action": "release", "resource": resource.name, "amount": resource.capacity}
        peers = self.fleet.peers_of(self.hoarder)
        self.fleet.send(self, self.hoarder, "broadcast", content, peers, self.corr, hold.message_id)
        self.finish()

    def _hold_as_holder(self, grant: AgentMessage | None) -> None:
        if grant is None:  # the resource never came free: no incident
            self.finish()
            return

        def end() -> None:
            capacity = self.resource.capacity
            self.fleet.release(self, self.hoarder, self.resource, capacity, grant.correlation_id, grant.message_id)
            self.finish()

        self._begin(grant, end)

    def _begin(self, hold_start: AgentMessage, end: Callable[[], None]) -> None:
        fleet = self.fleet
        self.hold_start = hold_start
        # Refusals count as hoarding once the hold is longer than any benign hold.
        self.onset_after = hold_start.timestamp + timedelta(microseconds=fleet.ticks(HOLD_MAX))
        self.asks_until = fleet.now + fleet.ticks(self.hold_ticks - 30)
        fleet.after(HOLD_MAX + self.rng.uniform(0, 50), self._someone_asks)
        fleet.after(self.hold_ticks, end)

    def _someone_asks(self) -> None:
        rng, fleet = self.rng, self.fleet
        if fleet.now >= self.asks_until:
            return
        waiter = rng.choice(self.waiters)
        granted = fleet.hold_then_release(self, waiter, self.resource, 1, _benign_hold(rng))

        def denied(request: AgentMessage, deny: AgentMessage) -> None:
            if self.variant == "holder":  # the steward is full: ask the holder itself
                ask = lambda: self._ask_holder(waiter, request.correlation_id, deny.message_id)  # noqa: E731
                fleet.after(rng.uniform(2, 8), ask)

        fleet.request_resource(self, rng, waiter, self.resource, 1, fleet.new_correlation(), None, granted, denied)
        fleet.after(rng.uniform(40, 160), self._someone_asks)

    def _ask_holder(self, waiter: int, corr: str, cause: str) -> None:
        priority = self.rng.randint(0, 10)
        content = {"action": "request_resource", "resource": self.resource.name, "amount": 1, "priority": priority}
        request = self.fleet.send(self, waiter, "request", content, [self.hoarder], corr, cause)
        self.fleet.after(self.rng.uniform(*REPLY_LATENCY), lambda: self.refuse(request, waiter))

    def refuse(self, request: AgentMessage, requester: int) -> AgentMessage | None:
        """Deny or ignore a request for the hoarded resource; return the denial, if any."""
        reply = None
        if self.rng.random() >= self.IGNORE_SHARE:
            content = {
                "action": "deny",
                "resource": self.resource.name,
                "amount": request.content.get("amount", 1),
                "reason": "in use" if self.variant == "holder" else "insufficient capacity",
                "available": 0,
            }
            corr, cause = request.correlation_id, request.message_id
            reply = self.fleet.send(self, self.hoarder, "response", content, [requester], corr, cause)
        self.refused.append(request.message_id)
        if request.timestamp >= self.onset_after:
            self.mark_onset(request)
        return reply

    def details(self) -> dict[str, Any]:
        assert self.hold_start is not None  # a label exists only after the hold began
        return {
            "resource": self.resource.name,
            "steward": self.fleet.names[self.resource.steward],
            "capacity": self.resource.capacity,
            "hold_start_message_id": self.hold_start.message_id,
            "hold_start": format_timestamp(self.hold_start.timestamp),
            "hold_ticks": round(self.hold_ticks),
            "fleet_max_hold_ticks": HOLD_MAX,
            "waiters": self.agent_names(self.waiters),
            "refused_request_ids": list(self.refused),
        }


class _Cascade(_Scenario):
    """A status alert that amplifiers re-broadcast on every copy they receive."""

    pattern = "communication_cascade"
    MAX_MESSAGES = 200

    def start(self) -> None:
        rng, fleet = self.rng, self.fleet
        count = max(2, min(6, fleet.n // 4))
        self.root, *self.amplifiers = fleet.pick_culprits(rng, count + 1)
        self.agents = [self.root, *self.amplifiers]
        self.max_generation = rng.randint(4, 6)
        self.sizes = [0] * (self.max_generation + 1)
        self.pending = 0
        self.corr = fleet.new_correlation()
        self.topic = f"incident-{rng.randint(100, 999)}"
        self.root_message = self._broadcast(self.root, None, 0)

    def _broadcast(self, sender: int, parent: AgentMessage | None, generation: int) -> AgentMessage:
        rng, fleet = self.rng, self.fleet
        targets = self._targets(sender)
        content = {"action": "status", "status": "alert", "topic": self.topic, "hop": generation}
        cause = parent.message_id if parent else None
        message = fleet.send(self, sender, "broadcast", content, targets, self.corr, cause)
        self.sizes[generation] += 1
        if generation > 0:
            self.mark_onset(message)
        if generation < self.max_generation:
            for target in targets:
                if target in self.amplifiers and sum(self.sizes) + self.pending < self.MAX_MESSAGES:
                    self.pending += 1
                    fleet.after(rng.uniform(0.5, 3), lambda t=target: self._amplify(t, message, generation + 1))
        if self.pending == 0:
            self.finish()
        return message

    def _amplify(self, amplifier: int, parent: AgentMessage, generation: int) -> None:
        self.pending -= 1
        self._broadcast(amplifier, parent, generation)

    def _targets(self, sender: int) -> list[int]:
        # Two amplifiers in every broadcast double the tree each generation (ratio about 2).
        others = [a for a in self.amplifiers if a != sender]
        chosen = self.rng.sample(others, min(2, len(others)))
        fan_out = self.rng.randint(4, 10)
        chosen += self.fleet.sample_agents(self.rng, fan_out - len(chosen), {sender, *self.amplifiers})
        return sorted(chosen)

    def details(self) -> dict[str, Any]:
        sizes = [s for s in self.sizes if s]
        parents = sum(sizes[:-1])
        return {
            "root": self.fleet.names[self.root],
            "root_message_id": self.root_message.message_id,
            "amplifiers": self.agent_names(self.amplifiers),
            "generations": sizes,
            "size": sum(sizes),
            "branching_ratio": round(sum(sizes[1:]) / parents, 3) if parents else 0.0,
            "correlation_id": self.corr,
        }


class _Byzantine(_Scenario):
    """Equivocation: one claim key, two values, told to two disjoint groups of peers."""

    pattern = "byzantine"
    variants = ("equivocation", "equivocation+phantom_replies")

    def start(self) -> None:
        rng, fleet = self.rng, self.fleet
        self.agent = fleet.pick_culprits(rng, 1)[0]
        self.agents = [self.agent]
        self.key = rng.choice(sorted(CLAIM_DOMAINS))
        self.truth = fleet.claim_value(self.agent, self.key)
        self.lie = rng.choice([v for v in CLAIM_DOMAINS[self.key] if v != self.truth])
        peers = fleet.peers_of(self.agent)
        audience = peers + fleet.sample_agents(rng, 4, {self.agent, *peers})
        rng.shuffle(audience)
        half = len(audience) // 2
        self.told_truth, self.told_lie = audience[:half], audience[half:]
        self.claims: list[str] = []
        self.phantoms: list[str] = []
        self.window = rng.uniform(20, 60)
        moments = sorted(rng.uniform(0, self.window) for _ in range(rng.randint(6, 12)))
        for i, moment in enumerate(moments):
            fleet.after(moment, lambda i=i: self._claim(i))
        if self.variant.endswith("phantom_replies"):
            for _ in range(rng.randint(1, 3)):
                fleet.after(rng.uniform(0, self.window), lambda: self._phantom(audience))
        fleet.after(self.window + 1, self.finish)

    def _claim(self, i: int) -> None:
        # Alternating stories, each peer always hearing the same one: a two-faced agent.
        value, group = (self.truth, self.told_truth) if i % 2 == 0 else (self.lie, self.told_lie)
        targets = sorted(self.rng.sample(group, min(len(group), self.rng.randint(1, 2))))
        content = {"action": "claim", "claim": {"key": self.key, "value": value}}
        message = self.fleet.send(self, self.agent, "broadcast", content, targets, self.fleet.new_correlation())
        self.claims.append(message.message_id)
        if value == self.lie:
            self.mark_onset(message)

    def _phantom(self, audience: list[int]) -> None:
        # A reply to a request nobody made: fresh correlation, nothing it answers.
        fleet = self.fleet
        content = {"action": "result", "task_id": fleet.new_task(), "status": "done"}
        message = fleet.send(self, self.agent, "response", content, [self.rng.choice(audience)], fleet.new_correlation())
        self.phantoms.append(message.message_id)

    def details(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "true_value": self.truth,
            "false_value": self.lie,
            "told_true": self.agent_names(self.told_truth),
            "told_false": self.agent_names(self.told_lie),
            "claim_message_ids": list(self.claims),
            "phantom_reply_ids": list(self.phantoms),
            "window_ticks": round(self.window, 1),
        }


class _Anomaly(_Scenario):
    """A baseline of regular status broadcasts, then a strong shift in rate, fan-out or size."""

    pattern = "anomaly"
    variants = ("rate", "fan_out", "payload")
    BASELINE = 20

    def start(self) -> None:
        self.agent = self.fleet.pick_culprits(self.rng, 1)[0]
        self.agents = [self.agent]
        self.shifted = self.rng.randint(40, 80) if self.variant == "rate" else self.rng.randint(10, 20)
        self.sent = 0
        self.baseline_start: AgentMessage | None = None
        self._next()

    def _next(self) -> None:
        rng, fleet = self.rng, self.fleet
        shifted = self.sent >= self.BASELINE
        content = _status_content(rng)
        peers = fleet.peers_of(self.agent)
        targets = sorted(rng.sample(peers, min(len(peers), rng.randint(2, 4))))
        if shifted and self.variant == "fan_out":
            targets = sorted(fleet.sample_agents(rng, rng.randint(30, 80), (self.agent,)))
        if shifted and self.variant == "payload":
            content["report"] = _filler(rng, rng.randint(4000, 16000))
        message = fleet.send(self, self.agent, "broadcast", content, targets, fleet.new_correlation())
        self.sent += 1
        if self.baseline_start is None:
            self.baseline_start = message
        if shifted:
            self.mark_onset(message)
        if self.sent < self.BASELINE + self.shifted:
            bursting = self.variant == "rate" and self.sent >= self.BASELINE
            fleet.after(rng.uniform(0.2, 1.5) if bursting else rng.uniform(20, 60), self._next)
        else:
            self.finish()

    def details(self) -> dict[str, Any]:
        assert self.baseline_start is not None
        return {
            "kind": self.variant,
            "baseline_messages": self.BASELINE,
            "shifted_messages": self.shifted,
            "baseline_start_message_id": self.baseline_start.message_id,
        }


def _filler(rng: random.Random, size: int) -> str:
    words = ("trace", "token", "span", "vector", "cache", "retry", "shard", "batch", "frame", "index")
    text = " ".join(rng.choice(words) for _ in range(size // 5 + 1))
    return text[:size]


class _Conflict(_Scenario):
    """Contention beyond capacity on a scarce resource, or a deadlocked pair."""

    pattern = "conflict"
    variants = ("contention", "deadlock")

    def start(self) -> None:
        self.requests: list[str] = []
        self.granted: list[int] = []
        self.denied: list[int] = []
        if self.variant == "contention":
            self._contend()
        else:
            self._deadlock()

    # ---- contention: demand at least capacity + 2 within a few ticks

    def _contend(self) -> None:
        rng, fleet = self.rng, self.fleet
        resource = self.resource = fleet.reserve_scarce_resource(rng)
        # At least four contenders: three requests within a second are ordinary on a
        # resource that sees a few a minute (Poisson tail ~1e-3), four are not (~1e-5).
        count = min(fleet.n - 1, max(4, math.ceil((resource.capacity + 2) / 1.5)))
        amounts = [rng.randint(1, min(2, resource.capacity)) for _ in range(count)]
        for i in itertools.cycle(range(count)):
            if sum(amounts) >= resource.capacity + 2:
                break
            amounts[i] = min(amounts[i] + 1, resource.capacity)
        self.contenders = fleet.pick_culprits(rng, count, avoid=(resource.steward,))
        self.agents = self.contenders
        self.in_use_at_start = resource.in_use
        self.demand = sum(amounts)
        self.replies = 0
        for agent, amount in zip(self.contenders, amounts):
            fleet.after(rng.uniform(0, 8), lambda a=agent, n=amount: self._request(a, n, None, first_round=True))

    def _request(self, agent: int, amount: int, cause: str | None, first_round: bool) -> None:
        rng, fleet = self.rng, self.fleet
        hold = fleet.hold_then_release(self, agent, self.resource, amount, rng.uniform(40, 200))

        def granted(request: AgentMessage, grant: AgentMessage) -> None:
            if first_round:
                self.granted.append(agent)
                self._replied()
            hold(request, grant)

        def denied(request: AgentMessage, deny: AgentMessage) -> None:
            if not first_round:  # one retry is all a contender tries
                return
            self.denied.append(agent)
            self.mark_onset(request)  # replies come in request order: the first denied request
            self._replied()
            if rng.random() < 0.5:
                retry = lambda: self._request(agent, amount, deny.message_id, first_round=False)  # noqa: E731
                fleet.after(rng.uniform(*RETRY_BACKOFF), retry)

        corr = fleet.new_correlation()
        request = fleet.request_resource(self, rng, agent, self.resource, amount, corr, cause, granted, denied)
        if first_round:
            self.requests.append(request.message_id)

    def _replied(self) -> None:
        self.replies += 1
        if self.replies == len(self.contenders):
            self.finish()

    # ---- deadlock: each holds one resource whole and waits for the other's

    def _deadlock(self) -> None:
        rng, fleet = self.rng, self.fleet
        self.pair = fleet.pick_culprits(rng, 2)
        self.agents = self.pair
        self.holds = [fleet.reserve_idle_resource(rng) for _ in self.pair]
        self.grants: dict[int, AgentMessage] = {}
        self.waiting: set[int] = set()
        self.resolution: AgentMessage | None = None
        for agent, resource in zip(self.pair, self.holds):
            fleet.acquire_all(self, rng, agent, resource, lambda grant, a=agent: self._acquired(a, grant))

    def _acquired(self, agent: int, grant: AgentMessage | None) -> None:
        if self.finished and grant is not None:  # the partner already gave up: hand it back
            self._release_whole(agent, grant)
            return
        if grant is None:  # could not take the resource whole: give everything back, no incident
            for holder, held in self.grants.items():
                self._release_whole(holder, held)
            self.finish()
            return
        self.grants[agent] = grant
        if len(self.grants) == 2:
            first, second = self.pair
            self.fleet.after(self.rng.uniform(2, 10), lambda: self._want(first, attempts=self.rng.randint(3, 5), cause=None))
            self.fleet.after(self.rng.uniform(12, 20), lambda: self._want(second, attempts=12, cause=None))

    def _want(self, agent: int, attempts: int, cause: str | None) -> None:
        """``agent`` asks for the resource the other one holds, while keeping its own."""
        rng, fleet = self.rng, self.fleet
        index = self.pair.index(agent)
        other, wanted = self.pair[1 - index], self.holds[1 - index]
        corr = fleet.new_correlation()

        def granted(request: AgentMessage, grant: AgentMessage) -> None:
            def finish_work() -> None:
                fleet.release(self, agent, wanted, 1, corr, grant.message_id)
                self._release_whole(agent, self.grants[agent])
                self.finish()

            fleet.after(rng.uniform(5, 20), finish_work)

        def denied(request: AgentMessage, deny: AgentMessage) -> None:
            if attempts > 1:
                fleet.after(rng.uniform(10, 40), lambda: self._want(agent, attempts - 1, deny.message_id))
            elif index == 0:  # the first to give up breaks the cycle by letting go
                self.resolution = self._release_whole(agent, self.grants[agent])
            else:
                self._release_whole(agent, self.grants[agent])
                self.finish()

        request = fleet.request_resource(self, rng, agent, wanted, 1, corr, cause, granted, denied)
        if cause is None:
            self.requests.append(request.message_id)
            if other in self.waiting:  # the wait-for cycle just closed
                self.mark_onset(request)
            self.waiting.add(agent)

    def _release_whole(self, agent: int, grant: AgentMessage) -> AgentMessage:
        resource = self.holds[self.pair.index(agent)]
        return self.fleet.release(self, agent, resource, resource.capacity, grant.correlation_id, grant.message_id)

    def details(self) -> dict[str, Any]:
        names = self.fleet.names
        if self.variant == "deadlock":
            return {
                "kind": "deadlock",
                "holds": {names[a]: r.name for a, r in zip(self.pair, self.holds)},
                "wants": {names[a]: r.name for a, r in zip(self.pair, reversed(self.holds))},
                "cross_request_ids": list(self.requests),
                "resolution_message_id": self.resolution.message_id if self.resolution else None,
            }
        return {
            "kind": "contention",
            "resource": self.resource.name,
            "steward": names[self.resource.steward],
            "capacity": self.resource.capacity,
            "in_use_at_start": self.in_use_at_start,
            "demand": self.demand,
            "request_ids": list(self.requests),
            "granted": self.agent_names(self.granted),
            "denied": self.agent_names(self.denied),
        }


_SCENARIOS: dict[str, type[_Scenario]] = {
    "routing_loop": _RoutingLoop,
    "resource_hoarding": _Hoarding,
    "communication_cascade": _Cascade,
    "byzantine": _Byzantine,
    "anomaly": _Anomaly,
    "conflict": _Conflict,
}


def _prepare(config: SimulationConfig) -> tuple[_Fleet, list[_Scenario]]:
    """Build the world and schedule the benign driver and every scenario's start."""
    fleet = _Fleet(config)
    _Benign(fleet).start()
    span = max(config.messages, MIN_SPAN_TICKS)
    scenarios: list[_Scenario] = []
    for kind in SCENARIO_KINDS:
        for index in range(1, config.scenarios.get(kind, 0) + 1):
            scenario = _SCENARIOS[kind](fleet, index)
            fleet.after(scenario.rng.uniform(*SCENARIO_WINDOW) * span, scenario.start)
            scenarios.append(scenario)
    return fleet, scenarios
