"""Pure matching of pending tasks to hosts: plain data in, assignments out (no I/O).

Matching: platform equal, every requirement met by the host (labels, and comparisons on the
facts the host reported), a free slot, host enabled and alive. Fair: oldest record first, then
the task's order in its record. A task whose attempt was lost on a host goes to another host
of its platform when one is free.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from dirt.errors import InvalidRecord

FACTS = ("os", "arch", "python", "cpus", "memory", "hostname")
OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
}
REQUIREMENT_RE = re.compile(r"^\s*([a-z]+)\s*(>=|<=|==|!=|>|<)\s*([A-Za-z0-9._-]+)\s*$")
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


@dataclass(frozen=True)
class Requirement:
    """A label the host must carry, or a comparison on one of its facts (`python>=3.11`)."""

    name: str
    op: str | None = None
    value: str | None = None

    def __str__(self) -> str:
        return self.name if self.op is None else f"{self.name}{self.op}{self.value}"

    def met_by(self, labels: Iterable[str], facts: dict[str, Any]) -> bool:
        if self.op is None:
            return self.name in labels
        have = facts.get(self.name)
        if have is None:
            return False
        left, right = _comparable(have), _comparable(self.value)
        if type(left) is not type(right):
            left, right = str(have), str(self.value)
            if self.op not in ("==", "!="):
                return False
        return OPERATORS[self.op](left, right)


def _comparable(value: Any) -> Any:
    """Numbers and dotted versions compare as tuples of ints; anything else as text."""
    text = str(value)
    if re.fullmatch(r"\d+(\.\d+)*", text):
        return tuple(int(part) for part in text.split("."))
    return text


@lru_cache(maxsize=4096)  # pure, and asked for every task x host on every pass
def parse_requirement(text: str) -> Requirement:
    """Parse `label` or `fact<op>value` (never eval); InvalidRecord names what is wrong."""
    if not isinstance(text, str):
        raise InvalidRecord(f"invalid requirement {text!r}: want a label or e.g. python>=3.11")
    if LABEL_RE.match(text):
        return Requirement(text)
    match = REQUIREMENT_RE.match(text)
    if not match:
        raise InvalidRecord(f"invalid requirement {text!r}: want a label or e.g. python>=3.11")
    name, op, value = match.groups()
    if name not in FACTS:
        raise InvalidRecord(
            f"invalid requirement {text!r}: unknown fact {name!r} (known: {', '.join(FACTS)})"
        )
    return Requirement(name, op, value)


def parse_requirements(texts: Iterable[str]) -> list[Requirement]:
    return [parse_requirement(text) for text in texts]


@dataclass(frozen=True)
class PendingTask:
    id: str
    record_created: str
    record: str
    order: int
    name: str
    platform: str
    requires: tuple[str, ...] = ()
    avoid: tuple[str, ...] = ()  # hosts where an attempt was lost: others are preferred
    sort_key: tuple[str, str, int, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # fair order: oldest record first, then task order; computed once, sorted every pass
        object.__setattr__(self, "sort_key",
                           (self.record_created, self.record, self.order, self.id))


@dataclass
class HostView:
    name: str
    platform: str
    slots: int
    labels: tuple[str, ...] = ()
    facts: dict[str, Any] = field(default_factory=dict)
    enabled: bool = True
    alive: bool = True
    running: int = 0

    @property
    def free(self) -> int:
        return max(0, self.slots - self.running) if self.enabled and self.alive else 0

    def fits(self, task: PendingTask) -> bool:
        """Does this host meet the task's platform and requirements (slots aside)?"""
        if self.platform != task.platform:
            return False
        return all(
            parse_requirement(r).met_by(self.labels, self.facts) for r in task.requires
        )

    def could_fit(self, task: PendingTask) -> bool:
        """Like fits(), but a host whose facts are not known yet may still turn out to fit."""
        if self.platform != task.platform:
            return False
        requirements = parse_requirements(task.requires)
        return all(
            r.met_by(self.labels, self.facts) or (r.op is not None and not self.facts)
            for r in requirements
        )


def assign(pending: Iterable[PendingTask], hosts: Iterable[HostView],
           ordered: bool = False) -> list[tuple[str, str]]:
    """(task id, host name) pairs for as many pending tasks as free slots allow, fairly:
    oldest record first, then task order. With `ordered`, `pending` is in that order already
    and is read only as far as the free slots reach."""
    hosts = list(hosts)
    free = {host.name: host.free for host in hosts}
    candidates = [host for host in hosts if free[host.name] > 0]
    assignments: list[tuple[str, str]] = []
    if not candidates:
        return assignments
    for task in pending if ordered else sorted(pending, key=operator.attrgetter("sort_key")):
        fitting = [h for h in candidates if free[h.name] > 0 and h.fits(task)]
        if not fitting:
            continue
        best = max(
            fitting,
            key=lambda h: (h.name not in task.avoid, free[h.name], -len(h.labels), h.name),
        )
        free[best.name] -= 1
        assignments.append((task.id, best.name))
        if not any(free.values()):
            break
    return assignments


def unschedulable_reason(
    task: PendingTask, hosts: Iterable[HostView], registered: bool
) -> str | None:
    """Why no host can ever run `task`, or None when some host could."""
    if not registered:
        return f"task {task.name!r} is not registered in the project's tasks/ folder"
    hosts = [h for h in hosts if h.enabled]
    same_platform = [h for h in hosts if h.platform == task.platform]
    if not same_platform:
        return f"no enabled host has platform {task.platform!r}"
    if not any(h.could_fit(task) for h in same_platform):
        wanted = ", ".join(task.requires)
        return f"no enabled host of platform {task.platform!r} meets: {wanted}"
    return None
