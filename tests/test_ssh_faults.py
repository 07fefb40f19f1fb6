"""Hosts that die under running tasks, with real sshd hosts on 127.x loopback addresses: the
task's process killed, the host's gateway killed, the host's whole sshd killed and started
again. Every test ends with every task final and each run to its end exactly once.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from conftest import CouchServer
from farm import (
    MasterProcess,
    assert_exactly_once,
    make_farm,
    runs,
    submit,
    task_docs,
    wait_for,
)
from sshd import Sshd, SshdError

from dirt import client

pytestmark = pytest.mark.ssh


@pytest.fixture
def ssh_hosts(tmp_path):
    """Two private sshds on 127.0.0.3 and 127.0.0.4."""
    servers = [Sshd(tmp_path / f"sshd{i}", address=f"127.0.0.{3 + i}") for i in range(2)]
    try:
        for server in servers:
            server.start()
    except SshdError as exc:
        pytest.fail(f"the test sshd cannot start: {exc}", pytrace=False)
    yield servers
    for server in servers:
        server.stop()


def ssh_farm(tmp_path, couch_url, servers, slots=1):
    settings, couch = make_farm(tmp_path, couch_url, hosts=0)
    for i, server in enumerate(servers):
        client.add_host(couch, f"s{i}", "linux", ssh=server.destination, port=server.port,
                        key=str(server.key), slots=slots)
    return settings, couch


def started_runs(runs_file):
    """(task id, pid) of each run that started, in order."""
    lines = runs_file.read_text().splitlines() if runs_file.exists() else []
    return [(ln.split()[0], int(ln.split()[2])) for ln in lines if ln.split()[1] == "start"]


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.parametrize("victim", ["task process", "gateway python"])
def test_remote_python_killed_requeues_on_the_other_host(tmp_path, couch_server, ssh_hosts,
                                                        victim):
    settings, couch = ssh_farm(tmp_path, couch_server.url, ssh_hosts)
    runs_file = tmp_path / "runs.txt"
    submit(settings, couch, 1, runs_file, seconds=5)
    master = MasterProcess(settings.project, tmp_path / "master.log", "--drain")
    try:
        (_, pid), = wait_for(lambda: started_runs(runs_file), 60, "the task to start")
        first_host = wait_for(lambda: task_docs(couch)[0]["host"], 10, "its host")
        wait_for(lambda: all(h["alive"] for h in client.list_hosts(couch)), 30,
                 "the other host to be up too")
        # the gateway: the parent of the task process's keeper (remote_keeper.py)
        target = pid if victim == "task process" else parent_of(parent_of(pid))
        if victim == "gateway python":
            assert "python" in Path(f"/proc/{target}/cmdline").read_text()
        os.kill(target, signal.SIGKILL)
        killed = time.monotonic()
        assert master.wait(120) == 0, master.log()
    finally:
        master.kill()
    print(f"\n{victim} killed: task done on the other host {time.monotonic() - killed:.1f} s later")
    (doc,) = assert_exactly_once(couch, runs_file, 1)
    # (an attempt the master could not start, outcome "released", would not count)
    lost, final = [a for a in doc["attempts"] if a["outcome"] != "released"]
    assert (lost["host"], lost["outcome"]) == (first_host, "lost")
    assert ("SIGKILL" in lost["reason"]) if victim == "task process" else \
        ("connection" in lost["reason"])
    assert final["host"] != first_host and final["outcome"] == "success"


def test_host_sshd_killed_marks_it_dead_then_it_comes_back(tmp_path, couch_server, ssh_hosts):
    settings, couch = ssh_farm(tmp_path, couch_server.url, ssh_hosts, slots=2)
    runs_file = tmp_path / "runs.txt"
    submit(settings, couch, 6, runs_file, seconds=3)
    master = MasterProcess(settings.project, tmp_path / "master.log")
    try:
        wait_for(lambda: len(started_runs(runs_file)) >= 4, 60, "both hosts to run tasks")
        running = {d["host"] for d in task_docs(couch) if d["state"] == "running"}
        assert running == {"s0", "s1"}
        ssh_hosts[0].kill_all()  # the host dies: sshd, sessions, gateway, task processes
        died = time.monotonic()
        dead = wait_for(lambda: (h := couch.get("host:s0"))["alive"] is False and h, 60,
                        "host s0 to be marked not alive")
        marked = time.monotonic() - died
        assert "refused" in dead["reason"] or "connection" in dead["reason"], dead["reason"]
        wait_for(lambda: all(d["state"] == "success" for d in task_docs(couch)), 120,
                 "every task to succeed on the other host")
        recovered = time.monotonic() - died
        ssh_hosts[0].start()  # same address, port and host key
        restarted = time.monotonic()
        wait_for(lambda: couch.get("host:s0")["alive"] is True, 60, "host s0 alive again")
        back = time.monotonic() - restarted
        client.enable_host(couch, "s1", False)
        submit(settings, couch, 1, tmp_path / "runs-after.txt")
        wait_for(lambda: all(d["state"] == "success" for d in task_docs(couch)), 60,
                 "a new task to run on s0")
    finally:
        master.terminate()
    print(f"\nsshd killed: marked not alive in {marked:.1f} s, its tasks done elsewhere in "
          f"{recovered:.1f} s; started again: alive in {back:.1f} s")
    docs = task_docs(couch)
    newest = max(docs, key=lambda d: d["record_created"])
    first = [d for d in docs if d["record"] != newest["record"]]
    assert len(first) == 6
    assert_exactly_once_in(first, runs_file)
    assert newest["host"] == "s0" and newest["state"] == "success"
    lost = [a for d in docs for a in d["attempts"] if a["outcome"] == "lost"]
    assert lost and all(a["host"] == "s0" for a in lost)


def assert_exactly_once_in(docs, runs_file):
    assert all(d["state"] == "success" for d in docs)
    ends = runs(runs_file)[1]
    assert sorted(ends.values()) == [1] * len(docs), ends


def test_a_kept_result_is_read_once_its_host_is_back(tmp_path, ssh_hosts):
    """The master dies after the task ended, before it could write the result (the database
    was down), and the host's sshd is down when the next master takes over the lease: that
    master waits for the host (up to HOST_GRACE_SECONDS), then reads the kept result instead
    of running the task again."""
    server = CouchServer(tmp_path / "couch")
    server.start()
    try:
        settings, couch = ssh_farm(tmp_path, server.url, ssh_hosts[:1])
        runs_file = tmp_path / "runs.txt"
        submit(settings, couch, 1, runs_file, seconds=0.5)
        first = MasterProcess(settings.project, tmp_path / "m1.log")
        try:
            wait_for(lambda: started_runs(runs_file), 60, "the task to start")
            server.stop()  # the result cannot be written now
            wait_for(lambda: sum(runs(runs_file)[1].values()) == 1, 60, "the task to end")
            time.sleep(0.5)  # the result reaches the master, which holds it
        finally:
            first.kill()
        ssh_hosts[0].kill_all()
        server.start()
        second = MasterProcess(settings.project, tmp_path / "m2.log", "--drain")
        try:
            time.sleep(8)  # past the lease (4 s): the host does not answer, the master waits
            assert task_docs(couch)[0]["state"] == "running"
            ssh_hosts[0].start()
            assert second.wait(120) == 0, second.log()
        finally:
            second.kill()
        (doc,) = assert_exactly_once(couch, runs_file, 1)
        (attempt,) = doc["attempts"]
        assert attempt["outcome"] == "success"
        assert attempt["note"] == "result kept by the host after its master stopped"
    finally:
        server.stop()
