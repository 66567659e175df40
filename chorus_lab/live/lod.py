"""Level of detail: which agents the graph shows when the fleet is larger than the screen.

The browser stays responsive only with a few hundred visible nodes (STACK-NOTES.md), so
:func:`select_visible` picks at most ``max_visible`` agents by relevance, in this order:

1. the selected agent and its neighbourhood (what the operator is looking at),
2. quarantined agents and the neighbours their quarantine cuts off,
3. agents in routing loops,
4. agents named by alerts (most alerts first),
5. the busiest agents (most messages, then most connections; ``graph_model`` passes their
   orders of magnitude, see ``graph_model.magnitude``),

ties broken by agent id, so the choice is deterministic. Everything else is summarized
by :func:`summary_line`.

>>> facts = {
...     "a": NodeFacts(messages=5), "b": NodeFacts(messages=50), "c": NodeFacts(quarantined=True),
...     "d": NodeFacts(in_loop=True), "e": NodeFacts(alerts=2),
... }
>>> select_visible(facts, {}, max_visible=3)
['c', 'd', 'e']
>>> select_visible(facts, {"a": ["b"]}, max_visible=3, selected="a")
['a', 'b', 'c']
"""

from __future__ import annotations

import heapq

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

DEFAULT_MAX_VISIBLE = 300


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What relevance is judged on, per agent."""

    quarantined: bool = False
    in_loop: bool = False
    alerts: int = 0
    messages: int = 0
    degree: int = 0


def relevance(agent: str, facts: NodeFacts, *, selected: str | None = None, near_selected: bool = False,
              near_quarantine: bool = False) -> tuple[int, int, int, str]:
    """Sort key of one agent: smaller is more relevant (tier, then activity, then id).

    >>> relevance("x", NodeFacts(quarantined=True)) < relevance("y", NodeFacts(messages=999))
    True
    """
    if agent == selected:
        tier = 0
    elif near_selected:
        tier = 1
    elif facts.quarantined:
        tier = 2
    elif near_quarantine:
        tier = 3
    elif facts.in_loop:
        tier = 4
    elif facts.alerts:
        tier = 5
    else:
        tier = 6
    return (tier, -(facts.alerts if tier == 5 else facts.messages), -facts.degree, agent)


def select_visible(
    facts: Mapping[str, NodeFacts],
    neighbours: Mapping[str, Iterable[str]],
    *,
    max_visible: int = DEFAULT_MAX_VISIBLE,
    selected: str | None = None,
    neighbourhood_share: float = 0.25,
) -> list[str]:
    """The at most ``max_visible`` most relevant agents of ``facts``, most relevant first.

    ``neighbours`` maps an agent to the agents it is connected to (either direction);
    at most ``neighbourhood_share`` of the budget goes to the selected agent's neighbours,
    and the same share to the neighbours of quarantined agents (their affected paths).
    O(n log n) in the number of agents.
    """
    if max_visible < 1:
        raise ValueError(f"max_visible must be at least 1, got {max_visible}")
    share = max(1, int(max_visible * neighbourhood_share))
    near_selected: set[str] = set()
    if selected is not None and selected in facts:
        near_selected = set(sorted(n for n in neighbours.get(selected, ()) if n in facts and n != selected)[:share])
    near_quarantine: set[str] = set()
    for agent in sorted(a for a, f in facts.items() if f.quarantined):
        for n in sorted(neighbours.get(agent, ())):
            if len(near_quarantine) >= share:
                break
            if n in facts and not facts[n].quarantined:
                near_quarantine.add(n)
    # Keys end with the agent id (unique): the n smallest are the first n of a full sort.
    return heapq.nsmallest(
        max_visible,
        facts,
        key=lambda a: relevance(a, facts[a], selected=selected, near_selected=a in near_selected, near_quarantine=a in near_quarantine),
    )


def summary_line(total_agents: int, visible: int, hidden_quarantined: int = 0, hidden_edges: int = 0) -> str:
    """One line saying what the level of detail left out.

    >>> summary_line(1000, 300, hidden_edges=2500)
    'showing 300 of 1000 agents; 700 less active agents and 2500 edges summarized'
    >>> summary_line(10, 10)
    'showing all 10 agents'
    """
    if visible >= total_agents:
        return f"showing all {total_agents} agents"
    text = f"showing {visible} of {total_agents} agents; {total_agents - visible} less active agents"
    if hidden_quarantined:
        text += f" ({hidden_quarantined} quarantined)"
    return text + f" and {hidden_edges} edges summarized"
