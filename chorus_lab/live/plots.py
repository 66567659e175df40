"""Metric plots as small inline SVG: no JavaScript, nothing fetched, renders offline anywhere.

>>> svg = sparkline_svg([1.0, 3.0, 2.0], title="throughput")
>>> svg.startswith("<svg") and "polyline" in svg and "throughput" in svg
True
>>> "no data" in sparkline_svg([], title="lag")
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if isinstance(v, int | float) and math.isfinite(v)]


def format_value(value: float) -> str:
    """Short human form of a plotted value.

    >>> format_value(1234.5), format_value(0.0425), format_value(7.0)
    ('1.2k', '0.0425', '7')
    """
    if not math.isfinite(value):
        return "–"
    if abs(value) >= 1000:
        return f"{value / 1000:.1f}k"
    if value == int(value):
        return str(int(value))
    return f"{value:.3g}"


def sparkline_svg(values: Sequence[float], *, title: str, unit: str = "", width: int = 220, height: int = 64) -> str:
    """A line plot of ``values`` (oldest first) with its title and latest value."""
    points = list(values)
    finite = _finite(points)
    label = f"{escape(title)}"
    if not finite:
        body = f'<text x="6" y="{height // 2 + 12}" font-size="11" fill="#888">no data yet</text>'
        latest = ""
    else:
        low, high = min(finite), max(finite)
        span = high - low or 1.0
        top, bottom = 18, height - 4
        step = (width - 8) / max(1, len(points) - 1)
        coords = []
        for i, v in enumerate(points):
            if not (isinstance(v, int | float) and math.isfinite(v)):
                continue
            x = 4 + i * step
            y = bottom - (v - low) / span * (bottom - top)
            coords.append(f"{x:.1f},{y:.1f}")
        body = f'<polyline fill="none" stroke="#2b6cb0" stroke-width="1.5" points="{" ".join(coords)}"/>'
        latest = f"{format_value(finite[-1])}{escape(unit)}"
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="{label}">'
        f'<rect width="{width}" height="{height}" fill="#fafafa" stroke="#ddd"/>'
        f'<text x="6" y="13" font-size="11" fill="#333">{label}</text>'
        f'<text x="{width - 6}" y="13" font-size="11" fill="#333" text-anchor="end">{latest}</text>'
        f"{body}</svg>"
    )
