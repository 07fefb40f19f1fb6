"""`dirt hosts check` keeps what it finds on the host documents and `dirt hosts list` shows it:
the command as a user runs it, against a local host, a real sshd host and a closed port."""

from __future__ import annotations

import json
import os
import platform
import re

import pytest
from conftest import free_port


def table(text: str) -> dict[str, dict[str, str]]:
    """`dirt hosts list`'s table as {host: {column: cell}}; cells may hold single spaces,
    columns are cut where their headers start."""
    head, *lines = text.rstrip("\n").splitlines()
    starts = [m.start() for m in re.finditer(r"\S+", head)]
    names = head.split()
    rows = {}
    for line in lines:
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        rows[cells[0]] = dict(zip(names, cells, strict=True))
    return rows


@pytest.mark.ssh
def test_hosts_check_keeps_alive_facts_and_reason_that_hosts_list_shows(project, dirt, sshd):
    def run(*args: str, **kw):
        return dirt(*args, project=project, **kw)

    closed = free_port()
    run("hosts", "add", "local", "--platform=linux", "--local", check=True)
    run("hosts", "add", "box", "--platform=linux", f"--ssh={sshd.destination}",
        f"--port={sshd.port}", f"--key={sshd.key}", "--slots=3", check=True)
    run("hosts", "add", "gone", "--platform=linux", "--ssh=root@127.0.0.1", f"--port={closed}",
        check=True)

    before = table(run("hosts", "list", check=True).stdout)
    assert {n: (h["slots"], h["alive"], h["facts"]) for n, h in before.items()} == {
        "box": ("3", "?", ""), "gone": ("?", "?", ""), "local": ("?", "?", "")}

    checked = run("hosts", "check")
    assert checked.returncode == 1, checked.stderr  # one host fails
    assert f"gone: FAILED: root@127.0.0.1:{closed}: connection refused" in checked.stdout
    assert "local: ok: " in checked.stdout and "box: ok: " in checked.stdout

    after = table(run("hosts", "list", check=True).stdout)
    cpus = os.cpu_count()
    assert after["local"]["slots"] == f"{cpus} (cpus)"
    assert after["box"]["slots"] == "3"  # given with --slots: not the CPU count
    assert after["gone"]["slots"] == "?"
    assert [after[n]["alive"] for n in ("local", "box", "gone")] == ["yes", "yes", "no"]
    python = platform.python_version()
    assert after["local"]["facts"].startswith(f"linux {platform.machine()}, Python ")
    assert after["local"]["facts"].endswith(f", {cpus} CPUs")
    assert after["box"]["facts"].startswith("linux ")
    assert after["gone"]["facts"] == ""
    assert after["gone"]["reason"].startswith(f"root@127.0.0.1:{closed}: connection refused")
    assert after["local"]["reason"] == ""

    hosts = {h["name"]: h for h in json.loads(run("hosts", "list", "--json", check=True).stdout)}
    assert hosts["local"]["alive"] is True and hosts["local"]["last_seen"]
    assert hosts["local"]["facts"]["cpus"] == cpus
    assert hosts["local"]["facts"]["python"] == python  # a local host runs this Python
    assert hosts["box"]["facts"]["os"] == "linux" and hosts["box"]["last_seen"]
    assert hosts["gone"]["alive"] is False and hosts["gone"]["last_seen"] is None
    assert "connection refused" in hosts["gone"]["reason"]

