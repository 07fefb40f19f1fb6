"""pending.py: the master's queue of pending tasks in fair order, walked lazily."""

from __future__ import annotations

from itertools import islice

from dirt.pending import SKIP, PendingQueue
from dirt.scheduler import PendingTask


def task(record_created: str, order: int, platform: str = "linux", record: str = "r") -> \
        PendingTask:
    return PendingTask(id=f"task:{record}:{order}:{platform}", record_created=record_created,
                       record=record, order=order, name="t", platform=platform)


def test_fair_order_across_platforms():
    queue = PendingQueue()
    tasks = [task("2026-01-02", 0, "linux", "new"), task("2026-01-01", 1, "macos", "old"),
             task("2026-01-01", 0, "linux", "old"), task("2026-01-02", 1, "macos", "new")]
    for t in tasks:
        queue.add(t)
    known = {t.id: t for t in tasks}
    walked = [t.id for t in queue.in_order(["linux", "macos"], known.get)]
    assert walked == ["task:old:0:linux", "task:old:1:macos", "task:new:0:linux",
                      "task:new:1:macos"]
    assert [t.id for t in queue.in_order(["macos"], known.get)] == [
        "task:old:1:macos", "task:new:1:macos"]


def test_skip_keeps_an_entry_and_none_drops_it():
    queue = PendingQueue()
    a, b, c = task("1", 0), task("1", 1), task("1", 2)
    for t in (a, b, c):
        queue.add(t)
    now = {a.id: SKIP, b.id: None, c.id: c}
    assert [t.id for t in queue.in_order(["linux"], now.get)] == [c.id]
    assert len(queue) == 2 and a.id in queue and b.id not in queue
    now[a.id] = a
    assert [t.id for t in queue.in_order(["linux"], now.get)] == [a.id, c.id]


def test_adding_twice_changes_nothing_and_discard_removes():
    queue = PendingQueue()
    a = task("1", 0)
    queue.add(a)
    queue.add(a)
    assert len(queue) == 1
    assert [t.id for t in queue.in_order(["linux"], {a.id: a}.get)] == [a.id]
    queue.discard(a)
    assert len(queue) == 0
    assert list(queue.in_order(["linux"], {a.id: a}.get)) == []
    queue.add(a)  # pending again later
    assert [t.id for t in queue.in_order(["linux"], {a.id: a}.get)] == [a.id]


def test_a_walk_reads_only_as_far_as_it_is_taken():
    queue = PendingQueue()
    tasks = {}
    for i in range(10_000):
        t = task("2026-01-01", i, "linux" if i % 2 else "macos")
        tasks[t.id] = t
        queue.add(t)
    asked = []

    def current(task_id):
        asked.append(task_id)
        return tasks[task_id]

    first = [t.order for t in islice(queue.in_order(["linux", "macos"], current), 4)]
    assert first == [0, 1, 2, 3]
    assert len(asked) <= 6  # the four taken, and at most one look-ahead per platform
