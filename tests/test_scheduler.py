"""scheduler.py: pure matching of pending tasks to hosts, tested with plain lists."""

from __future__ import annotations

import pytest

from dirt.errors import InvalidRecord
from dirt.scheduler import (
    HostView,
    PendingTask,
    Requirement,
    assign,
    parse_requirement,
    unschedulable_reason,
)

FACTS = {"os": "linux", "arch": "x86_64", "python": "3.11.2", "cpus": 4, "memory": 8 << 30}


def task(id: str, platform: str = "linux", *, created: str = "2026-01-01T00:00:00Z",
         record: str = "r1", order: int = 0, name: str = "build",
         requires: tuple[str, ...] = ()) -> PendingTask:
    return PendingTask(id=id, record_created=created, record=record, order=order, name=name,
                       platform=platform, requires=requires)


def host(name: str, platform: str = "linux", slots: int = 1, **kw) -> HostView:
    return HostView(name=name, platform=platform, slots=slots, **kw)


# -- requirements -------------------------------------------------------------------------------


def test_parse_label_and_fact_comparison():
    assert parse_requirement("gpu") == Requirement("gpu")
    assert parse_requirement("python>=3.11") == Requirement("python", ">=", "3.11")
    assert parse_requirement(" cpus > 2 ") == Requirement("cpus", ">", "2")
    assert str(parse_requirement("python>=3.11")) == "python>=3.11"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("shoesize>=3", "unknown fact 'shoesize'"),
        ("python=>3", "want a label or e.g. python>=3.11"),
        ("__import__('os')", "want a label"),
        ("", "want a label"),
        (42, "want a label"),
    ],
)
def test_parse_requirement_refuses(text, message):
    with pytest.raises(InvalidRecord, match=message):
        parse_requirement(text)


@pytest.mark.parametrize(
    ("text", "met"),
    [
        ("python>=3.11", True),
        ("python>=3.9", True),  # versions compare as numbers: 3.11 > 3.9
        ("python>=3.12", False),
        ("python<3.12", True),
        ("python==3.11.2", True),
        ("cpus>=4", True),
        ("cpus>4", False),
        ("os==linux", True),
        ("os!=darwin", True),
        ("os>=3", False),  # text against a number: only == and != hold
        ("arch==x86_64", True),
        ("hostname==anything", False),  # a fact the host did not report
        ("gpu", False),
        ("big", True),
    ],
)
def test_requirement_met_by_labels_and_facts(text, met):
    assert parse_requirement(text).met_by(["big"], FACTS) is met


def test_number_against_text_only_equality():
    requirement = parse_requirement("python==abc")
    assert requirement.met_by([], FACTS) is False
    assert parse_requirement("python!=abc").met_by([], FACTS) is True
    assert parse_requirement("python>abc").met_by([], FACTS) is False


# -- matching -----------------------------------------------------------------------------------


def test_platform_must_match():
    pairs = assign([task("t1", "windows"), task("t2", "linux")], [host("box", "linux")])
    assert pairs == [("t2", "box")]


def test_labels_must_all_be_present():
    tasks = [task("t1", requires=("gpu", "big")), task("t2", requires=("gpu",), order=1)]
    hosts = [host("small", labels=("gpu",)), host("large", labels=("big", "gpu"))]
    assert sorted(assign(tasks, hosts)) == [("t1", "large"), ("t2", "small")]


def test_fact_requirements_pick_the_host_that_meets_them():
    old = host("old", facts={**FACTS, "python": "3.9.2"})
    new = host("new", facts=FACTS)
    assert assign([task("t1", requires=("python>=3.11",))], [old, new]) == [("t1", "new")]
    assert assign([task("t1", requires=("python>=3.12",))], [old, new]) == []


def test_slots_bound_the_assignments():
    tasks = [task(f"t{i}", order=i) for i in range(5)]
    pairs = assign(tasks, [host("box", slots=2)])
    assert pairs == [("t0", "box"), ("t1", "box")]
    busy = host("box", slots=2, running=1)
    assert assign(tasks, [busy]) == [("t0", "box")]
    assert assign(tasks, [host("box", slots=2, running=2)]) == []


def test_disabled_or_dead_hosts_get_nothing():
    tasks = [task("t1")]
    assert assign(tasks, [host("box", enabled=False)]) == []
    assert assign(tasks, [host("box", alive=False)]) == []
    assert host("box", slots=3, alive=False).free == 0


def test_fair_oldest_record_first_then_task_order():
    tasks = [
        task("new-0", created="2026-01-02T00:00:00Z", record="new", order=0),
        task("old-1", created="2026-01-01T00:00:00Z", record="old", order=1),
        task("old-0", created="2026-01-01T00:00:00Z", record="old", order=0),
    ]
    assert [t for t, _ in assign(tasks, [host("box", slots=2)])] == ["old-0", "old-1"]
    assert [t for t, _ in assign(tasks, [host("box", slots=3)])] == ["old-0", "old-1", "new-0"]


def test_spreads_over_hosts_by_free_slots():
    tasks = [task(f"t{i}", order=i) for i in range(4)]
    pairs = assign(tasks, [host("a", slots=2), host("b", slots=2)])
    assert len(pairs) == 4
    assert sorted(h for _, h in pairs) == ["a", "a", "b", "b"]


def test_a_task_that_fits_nowhere_does_not_block_later_ones():
    tasks = [task("t0", requires=("gpu",)), task("t1", order=1)]
    assert assign(tasks, [host("box")]) == [("t1", "box")]


# -- unschedulable ------------------------------------------------------------------------------


def test_unregistered_task_is_unschedulable():
    reason = unschedulable_reason(task("t1", name="ghost"), [host("box")], registered=False)
    assert reason == "task 'ghost' is not registered in the project's tasks/ folder"


def test_no_enabled_host_of_the_platform():
    reason = unschedulable_reason(task("t1", "windows"), [host("box")], registered=True)
    assert reason == "no enabled host has platform 'windows'"
    disabled = unschedulable_reason(task("t1"), [host("box", enabled=False)], registered=True)
    assert disabled == "no enabled host has platform 'linux'"


def test_requirements_no_host_meets():
    reason = unschedulable_reason(
        task("t1", requires=("gpu",)), [host("box", labels=("big",))], registered=True
    )
    assert reason == "no enabled host of platform 'linux' meets: gpu"


def test_busy_or_dead_hosts_are_not_a_reason():
    tasks = task("t1")
    assert unschedulable_reason(tasks, [host("box", running=1)], registered=True) is None
    assert unschedulable_reason(tasks, [host("box", alive=False)], registered=True) is None


def test_fact_requirement_waits_for_unknown_facts():
    pending = task("t1", requires=("python>=3.11",))
    unknown = host("box")  # facts not reported yet: it may still fit
    assert unschedulable_reason(pending, [unknown], registered=True) is None
    known_old = host("box", facts={**FACTS, "python": "3.9.0"})
    reason = unschedulable_reason(pending, [known_old], registered=True)
    assert reason == "no enabled host of platform 'linux' meets: python>=3.11"


def test_a_lost_attempt_prefers_another_host():
    lost_on_a = PendingTask(id="t", record_created="2026", record="r", order=0, name="n",
                            platform="linux", avoid=("a",))
    assert assign([lost_on_a], [host("a", slots=4), host("b", slots=1)]) == [("t", "b")]
    # ... but runs on the same host again when it is the only one free
    assert assign([lost_on_a], [host("a", slots=4), host("b", slots=1, running=1)]) == [
        ("t", "a")]
