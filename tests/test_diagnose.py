"""`dirt hosts check`: each cause of a host that cannot run tasks, named, against a real sshd."""

from __future__ import annotations

import pytest
from conftest import free_port
from sshd import keygen

from dirt import client
from dirt.couch import Couch

pytestmark = pytest.mark.ssh


@pytest.fixture
def couch_of(project):
    return Couch(project.couch_url, project.database)


def add(couch, name, sshd, **spec):
    spec = {"ssh": sshd.destination, "port": sshd.port, "key": str(sshd.key), **spec}
    return client.add_host(couch, name, "linux", **spec)


def check(dirt, project, *names):
    done = dirt("hosts", "check", *names, project=project, timeout=60)
    return done.returncode, done.stdout.strip()


def test_a_good_host_reports_its_facts(project, dirt, sshd, couch_of):
    add(couch_of, "box", sshd)
    code, out = check(dirt, project, "box")
    assert code == 0, out
    assert out.startswith("box: ok: linux ")
    assert ", Python 3." in out and "CPUs" in out


def test_connection_refused(project, dirt, sshd, couch_of):
    add(couch_of, "box", sshd, port=free_port(sshd.address))
    code, out = check(dirt, project, "box")
    assert code == 1
    assert out.startswith(f"box: FAILED: {sshd.destination}:")
    assert "connection refused (is sshd running on port" in out


def test_authentication_failed(project, dirt, sshd, couch_of, tmp_path):
    stranger = tmp_path / "stranger_key"
    keygen(stranger)
    add(couch_of, "box", sshd, key=str(stranger))
    code, out = check(dirt, project, "box")
    assert code == 1
    assert f"authentication failed with key {stranger}" in out


def test_no_such_python(project, dirt, sshd, couch_of):
    add(couch_of, "box", sshd, python="python3.99")
    code, out = check(dirt, project, "box")
    assert code == 1
    assert "no such Python: 'python3.99' (exit status 127)" in out


def test_host_key_mismatch(project, dirt, sshd, couch_of, tmp_path):
    add(couch_of, "box", sshd)
    assert check(dirt, project, "box")[0] == 0  # first contact records the host's key
    known = project.state_dir / "known_hosts"
    assert known.read_text().strip()
    other = tmp_path / "other_host_key"
    keygen(other)
    other_key = " ".join(other.with_suffix(".pub").read_text().split()[:2])
    known.write_text(f"[{sshd.address}]:{sshd.port} {other_key}\n")
    code, out = check(dirt, project, "box")
    assert code == 1
    assert "host key mismatch" in out and str(known) in out


def test_every_host_at_once_and_the_exit_status(project, dirt, sshd, couch_of):
    add(couch_of, "good", sshd)
    add(couch_of, "bad", sshd, python="nopython")
    client.add_host(couch_of, "here", "linux", local=True)
    code, out = check(dirt, project)
    lines = out.splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["bad", "good", "here"]
    assert [ln.split(": ")[1] for ln in lines] == ["FAILED", "ok", "ok"]
    assert code == 1
