"""Faults lose nothing: the master killed, the database restarted, two masters on one farm, a
task printing 50 MB. Every test ends with every task in a final state and a check, from a file
each run appends to, that no task ran to its end twice. Each prints how long recovery took.
"""

from __future__ import annotations

import signal
import time

import pytest
from conftest import CouchServer
from farm import (
    MasterProcess,
    all_final,
    assert_exactly_once,
    make_farm,
    runs,
    submit,
    task_docs,
    wait_for,
)


def test_master_killed_mid_run_then_restarted(tmp_path, couch_server):
    settings, couch = make_farm(tmp_path, couch_server.url)
    runs_file = tmp_path / "runs.txt"
    submit(settings, couch, 12, runs_file, seconds=2)
    first = MasterProcess(settings.project, tmp_path / "m1.log")
    try:
        # kill it while the first batch has just started (far from ending: see farm.py)
        wait_for(lambda: sum(runs(runs_file)[0].values()) >= 4, 60, "four tasks to start")
        first.kill()
        killed = time.monotonic()
    finally:
        first.kill()
    second = MasterProcess(settings.project, tmp_path / "m2.log", "--drain")
    assert second.wait(180) == 0, second.log()
    print(f"\nmaster killed -9: all 12 tasks done {time.monotonic() - killed:.1f} s later")
    docs = assert_exactly_once(couch, runs_file, 12)
    lost = [a for d in docs for a in d["attempts"] if a["outcome"] == "lost"]
    assert len(lost) >= 4
    assert all("lease expired" in a["reason"] for a in lost)


def test_database_restarted_mid_run(tmp_path):
    server = CouchServer(tmp_path / "couch")
    server.start()
    try:
        settings, couch = make_farm(tmp_path, server.url)
        runs_file = tmp_path / "runs.txt"
        submit(settings, couch, 16, runs_file, seconds=1)
        master = MasterProcess(settings.project, tmp_path / "master.log", "--drain")
        try:
            wait_for(lambda: sum(runs(runs_file)[0].values()) >= 4, 60, "tasks to start")
            server.stop()
            time.sleep(3)  # results come in while the database is away
            server.start()
            restarted = time.monotonic()
            assert master.wait(180) == 0, master.log()
        finally:
            master.kill()
        print(f"\ndatabase down 3 s: all tasks done {time.monotonic() - restarted:.1f} s "
              "after it came back")
        assert "writes held" in master.log() or "cannot claim" in master.log()
        assert_exactly_once(couch, runs_file, 16)
    finally:
        server.stop()


def test_a_result_that_outlived_its_master_is_recorded_not_run_again(tmp_path):
    """The master dies after its tasks ended on the host but before it could write their
    results (the database was down): the next master takes the results the host kept."""
    server = CouchServer(tmp_path / "couch")
    server.start()
    try:
        settings, couch = make_farm(tmp_path, server.url, hosts=1, slots=2)
        runs_file = tmp_path / "runs.txt"
        submit(settings, couch, 2, runs_file, seconds=1)
        first = MasterProcess(settings.project, tmp_path / "m1.log")
        try:
            wait_for(lambda: sum(runs(runs_file)[0].values()) == 2, 60, "both tasks to start")
            server.stop()  # the results cannot be written now
            wait_for(lambda: sum(runs(runs_file)[1].values()) == 2, 60, "both tasks to end")
            time.sleep(0.5)  # the results reach the master, which holds them
        finally:
            first.kill()
        server.start()
        second = MasterProcess(settings.project, tmp_path / "m2.log", "--drain")
        assert second.wait(120) == 0, second.log()
        docs = assert_exactly_once(couch, runs_file, 2)
        for doc in docs:
            (attempt,) = doc["attempts"]
            assert attempt["outcome"] == "success"
            assert attempt["note"] == "result kept by the host after its master stopped"
    finally:
        server.stop()


def test_two_masters_share_200_tasks_over_4_hosts(tmp_path, couch_server):
    settings, couch = make_farm(tmp_path, couch_server.url, hosts=4, slots=2)
    runs_file = tmp_path / "runs.txt"
    submit(settings, couch, 200, runs_file)
    started = time.monotonic()
    masters = [MasterProcess(settings.project, tmp_path / f"m{i}.log", "--drain")
               for i in range(2)]
    try:
        for master in masters:
            assert master.wait(300) == 0, master.log()
    finally:
        for master in masters:
            master.kill()
    print(f"\ntwo masters: 200 tasks in {time.monotonic() - started:.1f} s")
    docs = assert_exactly_once(couch, runs_file, 200)
    by_master = {d["attempts"][-1]["master"] for d in docs}
    assert len(by_master) == 2, "both masters should have run tasks"


def test_fifty_megabytes_of_log_are_stored_truncated_in_bounded_memory(tmp_path, couch_server):
    settings, couch = make_farm(tmp_path, couch_server.url, hosts=1, slots=1)
    runs_file = tmp_path / "runs.txt"
    submit(settings, couch, 1, runs_file, lines=500_000)  # 500,000 lines of 100 bytes
    master = MasterProcess(settings.project, tmp_path / "master.log")
    try:
        wait_for(lambda: all_final(couch), 240, "the task to end")
        peak = master.peak_rss_mb()
    finally:
        master.terminate()
    (doc,) = task_docs(couch)
    assert doc["state"] == "success", doc
    log = couch.get_attachment(doc["_id"], "log.txt")
    assert 512 * 1024 < len(log) <= settings.master.log_limit_bytes + 200
    assert b"bytes of log omitted here" in log
    assert log.endswith(b"x" * 99 + b"\n")
    print(f"\n50 MB log: stored {len(log)} bytes, master peak RSS {peak:.0f} MB")
    assert peak < 300, f"master peak RSS {peak:.0f} MB"


@pytest.mark.parametrize("signals", [["SIGTERM"], ["SIGTERM", "SIGINT"]])
def test_sigterm_lets_running_tasks_finish_or_releases_them(tmp_path, couch_server, signals):
    settings, couch = make_farm(tmp_path, couch_server.url, hosts=1, slots=2)
    runs_file = tmp_path / "runs.txt"
    submit(settings, couch, 4, runs_file, seconds=2)
    master = MasterProcess(settings.project, tmp_path / "master.log")
    try:
        wait_for(lambda: sum(runs(runs_file)[0].values()) >= 2, 60, "two tasks to start")
        for name in signals:
            master.process.send_signal(getattr(signal, name))
            time.sleep(0.3)
        assert master.wait(60) == 0, master.log()
    finally:
        master.kill()
    docs = {d["_id"]: d for d in task_docs(couch)}
    states = sorted(d["state"] for d in docs.values())
    said = master.log()
    # the master says which signal came, by name, and what it does with the running tasks
    assert ("master: got SIGTERM: stopping; taking no new tasks, letting 2 running tasks "
            "finish for up to 5 s (a second signal releases them at once)") in said, said
    if len(signals) == 1:  # warm stop: the two running tasks finish, the others wait
        assert states == ["pending", "pending", "success", "success"], states
        assert "master: stopped; no running task was left to release" in said, said
    else:  # a second signal: stop at once, the running tasks go back to pending
        assert states == ["pending"] * 4, states
        released = [a for d in docs.values() for a in d["attempts"]]
        assert len(released) == 2 and all(a["outcome"] == "released" for a in released)
        assert "master: got SIGINT again: stopping at once, releasing 2 running tasks" in said
        assert "master: stopped; released 2 running tasks back to pending" in said, said
    # whatever was left pending runs to the end under the next master, exactly once
    again = MasterProcess(settings.project, tmp_path / "again.log", "--drain")
    assert again.wait(120) == 0, again.log()
    assert_exactly_once(couch, runs_file, 4)
