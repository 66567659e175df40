"""Preset node positions, computed incrementally in Python.

ipycytoscape re-runs its layout on every structural change, which cannot keep up with a
live fleet (STACK-NOTES.md). So the graph uses cytoscape's ``preset`` layout with
positions decided here, once per node: a node keeps its place while it stays visible, and
only newcomers are placed.

- A newcomer with an already placed neighbour goes on a ring around that neighbour, at an
  angle derived from its id (stable, spreads siblings apart), moving outwards until it
  finds a grid cell no other node occupies.
- Otherwise it takes the next free slot of a golden-angle spiral around the origin.
- Quarantined agents are moved to a column of their own on the left, shown isolated from
  the fleet (R3.3); their cut connections stay drawn as affected paths.

>>> positions = place({}, ["a", "b"], {"b": ["a"]})
>>> positions["a"]
(0.0, 0.0)
>>> RING - 0.01 < distance(positions["a"], positions["b"]) < 5 * RING
True
>>> place(positions, ["b"], {})["b"] == positions["b"]
True
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping, Sequence

Position = tuple[float, float]

RING = 60.0
"""Distance of a newcomer from the neighbour it is placed next to."""
SPIRAL = 45.0
"""Spacing of the spiral that seeds nodes without a placed neighbour."""
CELL = 40.0
"""Side of the grid cells newcomers avoid sharing with a placed node."""
QUARANTINE_X = -1100.0
QUARANTINE_STEP = 70.0
_GOLDEN = math.pi * (3 - math.sqrt(5))


def distance(a: Position, b: Position) -> float:
    return math.hypot(a[0] - b[0], a[1] - b[1])


def _angle(agent: str) -> float:
    return (zlib.crc32(agent.encode()) % 3600) / 3600 * 2 * math.pi


def spiral_slot(index: int) -> Position:
    """The ``index``-th point of the seeding spiral (0 is the origin).

    >>> spiral_slot(0)
    (0.0, 0.0)
    """
    if index == 0:
        return (0.0, 0.0)
    radius = SPIRAL * math.sqrt(index)
    theta = index * _GOLDEN
    return (round(radius * math.cos(theta), 3), round(radius * math.sin(theta), 3))


def place(
    positions: Mapping[str, Position],
    agents: Sequence[str],
    neighbours: Mapping[str, Iterable[str]],
    *,
    quarantined: Iterable[str] = (),
) -> dict[str, Position]:
    """Positions for ``agents``: kept where already placed, newcomers placed as described above.

    Returns a new dict holding the positions of ``agents`` only. Quarantined agents always
    get their slot in the quarantine column (sorted by id), wherever they were before.
    O(len(agents) · degree).
    """
    isolated = sorted(set(quarantined) & set(agents))
    result: dict[str, Position] = {}
    for i, agent in enumerate(isolated):
        result[agent] = (QUARANTINE_X, round(i * QUARANTINE_STEP, 3))
    occupied = {p for a, p in positions.items() if a not in result}
    cells = {_cell(p) for p in occupied} | {_cell(p) for p in result.values()}
    spiral = len(positions)
    for agent in agents:
        if agent in result:
            continue
        old = positions.get(agent)
        if old is not None and old[0] != QUARANTINE_X:
            result[agent] = old
            continue
        anchor = next((result.get(n) or positions.get(n) for n in sorted(neighbours.get(agent, ()))
                       if (result.get(n) or positions.get(n)) is not None and n not in isolated), None)
        if anchor is not None:
            spot = _free_spot_near(anchor, _angle(agent), cells)
        else:
            spot = spiral_slot(spiral)
            while spot in occupied:
                spiral += 1
                spot = spiral_slot(spiral)
            spiral += 1
        result[agent] = spot
        occupied.add(spot)
        cells.add(_cell(spot))
    return result


def _cell(spot: Position) -> tuple[int, int]:
    """The grid cell of a position; one node per cell keeps labels readable."""
    return (math.floor(spot[0] / CELL), math.floor(spot[1] / CELL))


def _free_spot_near(anchor: Position, theta: float, cells: set[tuple[int, int]]) -> Position:
    """The first point around ``anchor`` (turning by the golden angle, moving outwards) in a free cell."""
    spot = anchor
    for attempt in range(24):
        radius = RING * (1 + attempt / 6)
        angle = theta + attempt * _GOLDEN
        spot = (round(anchor[0] + radius * math.cos(angle), 3), round(anchor[1] + radius * math.sin(angle), 3))
        if _cell(spot) not in cells:
            return spot
    return spot
