"""Plain-text renderings for templates: ages, durations, sizes. Pure functions."""

from __future__ import annotations

import time

from dirt.documents import parse_iso


def age(iso: str | None, now: float | None = None) -> str:
    """`5 s ago`, `3 min ago`, `2 h ago`, `4 d ago` for an ISO time; '' when unknown."""
    if not iso:
        return ""
    try:
        seconds = (time.time() if now is None else now) - parse_iso(iso)
    except ValueError:
        return ""
    if seconds < 0:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds)} s ago"


def duration(seconds: float | None) -> str:
    """`0.4 s`, `12 s`, `3 min 5 s`, `2 h 10 min`; '' when unknown."""
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.1f} s"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def size(length: int | None) -> str:
    """`512 B`, `3.2 kB`, `1.5 MB`."""
    length = length or 0
    if length < 1000:
        return f"{length} B"
    if length < 1_000_000:
        return f"{length / 1000:.1f} kB"
    return f"{length / 1_000_000:.1f} MB"


def bar(counts: dict[str, int], order: list[str]) -> list[tuple[str, int, float, float]]:
    """Segments of a summary bar 0..100: (state, count, x, width), in `order`."""
    total = sum(counts.values())
    segments, x = [], 0.0
    for state in order:
        n = counts.get(state, 0)
        if n and total:
            width = 100.0 * n / total
            segments.append((state, n, round(x, 3), round(width, 3)))
            x += width
    return segments
