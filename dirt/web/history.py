"""The history of one task name across records: pass/fail per series (a platform, and a key
when the record runs the task once per key), duration trend, and which series flip between
pass and fail (flaky). Pure: plain data in, plain data out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dirt.documents import State, TaskSpec

PASS, FAIL = State.SUCCESS.value, State.FAILED.value
FLAKY_FLIPS = 2  # pass -> fail -> pass (or the reverse) within the window is flaky


@dataclass(frozen=True)
class Run:
    """One task of the name in one record on one platform (with one key)."""

    record: str
    created: str
    platform: str
    state: str
    duration: float | None = None
    host: str | None = None
    reason: str = ""
    key: str | None = None


@dataclass
class Series:
    """The runs of one platform and key: a row of the grid."""

    spec: str  # name@platform[:key], what the row's links name
    platform: str
    key: str | None
    runs: list[Run | None]  # one per record of the history, oldest first; None: not run there
    flips: int = 0
    flaky: bool = False
    passed: int = 0
    failed: int = 0

    @property
    def label(self) -> str:
        """The row's label: the platform, and the key if any."""
        return self.platform + (f":{self.key}" if self.key else "")

    @property
    def pass_rate(self) -> float | None:
        decided = self.passed + self.failed
        return self.passed / decided if decided else None


@dataclass
class History:
    name: str
    records: list[tuple[str, str]]  # (record, created), oldest first
    series: list[Series] = field(default_factory=list)

    @property
    def flaky(self) -> list[Series]:
        return [p for p in self.series if p.flaky]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "records": [{"name": r, "created": c} for r, c in self.records],
            "platforms": [  # one per series (platform and key); the name is from v1
                {
                    "platform": p.platform,
                    "key": p.key,
                    "spec": p.spec,
                    "flaky": p.flaky,
                    "flips": p.flips,
                    "passed": p.passed,
                    "failed": p.failed,
                    "runs": [None if r is None else {
                        "record": r.record, "state": r.state, "duration": r.duration,
                        "host": r.host, "reason": r.reason,
                    } for r in p.runs],
                }
                for p in self.series
            ],
            "flaky": [p.label for p in self.flaky],
        }


def flips(states: list[str]) -> int:
    """How often the outcome changes between pass and fail, in order, ignoring every state
    that is neither (error, cancelled, pending, ...)."""
    decided = [s for s in states if s in (PASS, FAIL)]
    return sum(1 for a, b in zip(decided, decided[1:], strict=False) if a != b)


def is_flaky(states: list[str], threshold: int = FLAKY_FLIPS) -> bool:
    """Flaky: the outcome went back and forth at least `threshold` times on one platform."""
    return flips(states) >= threshold


def build(name: str, runs: list[Run], threshold: int = FLAKY_FLIPS) -> History:
    """Arrange runs (any order) as a grid of records (oldest first) by platform and key."""
    records = sorted({(r.created, r.record) for r in runs})
    column = {record: i for i, (_, record) in enumerate(records)}
    grid: dict[tuple[str, str], list[Run | None]] = {}
    for run in runs:
        row = grid.setdefault((run.platform, run.key or ""), [None] * len(records))
        row[column[run.record]] = run
    series = []
    for platform, key in sorted(grid):
        row = grid[platform, key]
        states = [r.state for r in row if r is not None]
        series.append(Series(
            spec=str(TaskSpec(name, platform, key or None)), platform=platform,
            key=key or None, runs=row, flips=flips(states), flaky=is_flaky(states, threshold),
            passed=states.count(PASS), failed=states.count(FAIL),
        ))
    return History(name, [(record, created) for created, record in records], series)


def trend_points(
    durations: list[float | None], width: float, height: float, top: float | None = None
) -> list[tuple[float, float]]:
    """Where each known duration sits on a chart of `width` x `height` (y grows downwards),
    scaled to `top` (default: the largest duration)."""
    known = [d for d in durations if d is not None]
    if not known:
        return []
    top = top or max(known) or 1.0
    step = width / max(len(durations) - 1, 1)
    return [
        (round(i * step, 1), round(height - (d / top) * height, 1))
        for i, d in enumerate(durations)
        if d is not None
    ]
