"""The master's queue of pending tasks, in fair order, one sorted list per platform.

A pass of the master looks at pending tasks only until it has filled its free slots, so its
cost follows the slots, not the length of the queue (100,000 inputs of a data-processing
record cost the same per pass as ten). Pure data: the master says which tasks became pending
(`add`) and, while it walks the queue, what each entry is now (`in_order`'s `current`).
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections.abc import Callable, Iterable, Iterator

from dirt.scheduler import PendingTask

SKIP = object()  # `current` answer: pending, but not to be claimed now; keep the entry


class PendingQueue:
    """Entries (fair order key, task id) per platform. An entry stays until a walk finds its
    task no longer pending; adding a task that is there already changes nothing."""

    def __init__(self) -> None:
        self.lists: dict[str, list[tuple[tuple, str]]] = {}
        self.platform_of: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.platform_of)

    def __contains__(self, task_id: str) -> bool:
        return task_id in self.platform_of

    def add(self, task: PendingTask) -> None:
        if task.id in self.platform_of:
            return
        self.platform_of[task.id] = task.platform
        insort(self.lists.setdefault(task.platform, []), (task.sort_key, task.id))

    def discard(self, task: PendingTask) -> None:
        platform = self.platform_of.pop(task.id, None)
        if platform is None:
            return
        entries = self.lists[platform]
        at = bisect_left(entries, (task.sort_key, task.id))
        if at < len(entries) and entries[at][1] == task.id:
            del entries[at]

    def in_order(self, platforms: Iterable[str],
                 current: Callable[[str], PendingTask | object | None]) -> Iterator[PendingTask]:
        """The pending tasks of `platforms`, oldest first, as `current(task_id)` gives them:
        a PendingTask to offer, SKIP to pass over (kept), None when the task is no longer
        pending (its entry is dropped). Lazy: stop iterating once the slots are full."""
        walks = [self._walk(p, current) for p in platforms if self.lists.get(p)]
        return (task for _key, task in heapq.merge(*walks, key=lambda pair: pair[0]))

    def _walk(self, platform: str, current: Callable[[str], PendingTask | object | None]
              ) -> Iterator[tuple[tuple, PendingTask]]:
        entries = self.lists[platform]
        i = 0
        while i < len(entries):
            key, task_id = entries[i]
            task = current(task_id)
            if task is None:
                del entries[i]
                self.platform_of.pop(task_id, None)
                continue
            i += 1
            if task is not SKIP:
                yield key, task  # type: ignore[misc]
