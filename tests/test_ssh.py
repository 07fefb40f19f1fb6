"""Tasks over SSH: a real private sshd on a loopback address is the host."""

from __future__ import annotations

import json
import time

import pytest
from conftest import free_port
from test_master import Farm

from dirt import client
from dirt.couch import Couch

pytestmark = pytest.mark.ssh

WHERE = '''
import os, sys


def execute(ctx):
    ctx.log("running under " + sys.executable)
    return {"success": True, "reason": "over ssh",
            "ssh": os.environ.get("SSH_CONNECTION", ""), "user": os.environ.get("USER", "")}
'''


def test_the_sshd_lets_the_generated_key_in(sshd):
    done = sshd.ssh("echo hello from $SSH_CONNECTION")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("hello from ")
    assert done.stdout.split()[-2:] == [sshd.address, str(sshd.port)]


def test_a_task_runs_on_an_ssh_host_through_the_master(project, dirt, sshd):
    (project.tasks_dir / "where.py").write_text(WHERE)
    added = dirt("hosts", "add", "box", "--platform=linux", f"--ssh={sshd.destination}",
                 f"--port={sshd.port}", f"--key={sshd.key}", project=project, check=True)
    assert added.stdout.strip() == f"host box added (linux, {sshd.destination})"
    dirt("submit", "r1", "where", "echo", project=project, check=True)
    served = dirt("serve", "--drain", project=project, timeout=90)
    assert served.returncode == 0, served.stderr

    status = json.loads(dirt("status", "r1", "--json", project=project, check=True).stdout)
    assert status["record"]["state"] == "success", status
    assert [(t["name"], t["host"]) for t in status["tasks"]] == [("where", "box"),
                                                                  ("echo", "box")]
    couch = Couch(project.couch_url, project.database)
    result = couch.get("task:r1:where:linux")["result"]
    assert result["ssh"].split()[2:] == [sshd.address, str(sshd.port)]
    assert result["user"] == "root"
    log = couch.get_attachment("task:r1:where:linux", "log.txt").decode()
    assert "running under " in log
    host = couch.get("host:box")
    assert host["alive"] is True
    assert host["facts"]["os"] == "linux"
    # the host key ssh accepted is kept, so a changed key is refused next time
    host_key = (sshd.folder / "host_ed25519_key.pub").read_text().split()[1]
    known = (project.state_dir / "known_hosts").read_text().splitlines()
    assert [line.split()[-1] for line in known] == [host_key]


def test_an_unreachable_ssh_host_is_not_alive_and_says_why(project, sshd):
    farm = Farm(project)
    try:
        client.add_host(farm.couch, "closed", "linux", ssh=sshd.destination,
                        port=free_port(sshd.address), key=str(sshd.key))
        farm.submit("r1", "echo")
        master = farm.master()
        farm.run_until(master, lambda: farm.couch.get("host:closed")["alive"] is False,
                       timeout=30, what="the host to be marked not alive")
        host = farm.couch.get("host:closed")
        assert host["reason"].startswith(f"host closed: {sshd.destination}:")
        assert host["reason"].endswith("connection refused (is sshd running on port "
                                       f"{host['ssh']['port']}?)")
        for _ in range(5):
            master.loop_once(wait=0.05)
        task = farm.doc("task:r1:echo:linux")
        assert task["state"] == "pending"  # a dead host may come back: the task waits
        assert task["attempts"] == []
    finally:
        farm.close()


def test_a_key_the_host_does_not_accept(project, sshd, tmp_path):
    from sshd import keygen

    stranger = tmp_path / "stranger_key"
    keygen(stranger)
    farm = Farm(project)
    try:
        client.add_host(farm.couch, "locked", "linux", ssh=sshd.destination, port=sshd.port,
                        key=str(stranger))
        master = farm.master()
        started = time.monotonic()
        farm.run_until(master, lambda: farm.couch.get("host:locked")["alive"] is False,
                       timeout=30, what="the host to be marked not alive")
        assert time.monotonic() - started < 20
        assert farm.couch.get("host:locked")["reason"].startswith("host locked: ")
    finally:
        farm.close()
