"""dirt replicate between two real PouchDB Servers: push and pull, continuous, kept across a
restart of the server that holds the `_replicator` documents, and never a password printed.

Server A holds the project (and the replications); server B has an admin with a password, so
the remote URL carries credentials.
"""

from __future__ import annotations

import json
import uuid

import pytest
from conftest import CouchServer, run_dirt
from farm import wait_for

from dirt import documents, scaffold
from dirt.couch import Couch
from dirt.errors import NotFound

PASSWORD = "s3cret-Pa55"


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    a = CouchServer(tmp_path_factory.mktemp("couch-a"))
    b = CouchServer(tmp_path_factory.mktemp("couch-b"))
    (b.data / "config.json").write_text(json.dumps({"admins": {"admin": PASSWORD}}))
    started = []
    try:
        for server in (a, b):
            server.start()
            started.append(server)
        yield a, b
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def setup(servers, tmp_path):
    a, b = servers
    database = f"rep-{uuid.uuid4().hex[:10]}"
    settings = scaffold.create(tmp_path / "proj", database, a.url, environ={})
    remote_url = f"http://admin:{PASSWORD}@127.0.0.1:{b.port}/{database}"
    return settings, Couch(a.url, database), Couch(remote_url.rsplit("/", 1)[0], database)


def dirt(settings, *args, check=True):
    done = run_dirt(*args, project=settings, check=check)
    assert PASSWORD not in done.stdout + done.stderr
    return done


def arrived(couch: Couch, doc_id: str) -> bool:
    try:
        couch.get(doc_id)
        return True
    except NotFound:
        return False


def record(couch: Couch, name: str) -> str:
    doc = documents.new_record(name, description="written on " + couch.url)
    couch.put(doc)
    return doc["_id"]


def test_push_and_pull_continuous_both_ways(setup, servers):
    settings, local, remote = setup
    a, _ = servers
    url = remote.db_url
    pushed = dirt(settings, "replicate", url, "--continuous")
    assert "continuous push to http://127.0.0.1:" in pushed.stdout
    record(local, "from-a")
    wait_for(lambda: arrived(remote, "record:from-a"), 20, "a record pushed from A to B")
    assert remote.get("_design/dirt")["dirt_hash"] == local.get("_design/dirt")["dirt_hash"]

    pulled = dirt(settings, "replicate", url, "--continuous", "--pull")
    assert "continuous pull from" in pulled.stdout
    record(remote, "from-b")
    wait_for(lambda: arrived(local, "record:from-b"), 20, "a record pulled from B to A")

    listed = json.loads(dirt(settings, "replicate", "--list", "--json").stdout)
    assert {r["direction"] for r in listed} == {"push", "pull"}
    assert all(r["remote"] == f"http://127.0.0.1:{servers[1].port}/{local.database}"
               for r in listed)
    assert all(r["continuous"] for r in listed)
    text = dirt(settings, "replicate", "--list").stdout
    assert "push" in text and "pull" in text

    # The replications are documents on server A: they survive its restart.
    a.restart()
    record(local, "after-restart")
    wait_for(lambda: arrived(remote, "record:after-restart"), 30,
             "a record written after the restart pushed to B")
    record(remote, "after-restart-b")
    wait_for(lambda: arrived(local, "record:after-restart-b"), 30,
             "a record written on B after A's restart pulled to A")

    for replication in listed:
        done = dirt(settings, "replicate", "--cancel", replication["id"])
        assert f"replication {replication['id']} cancelled" in done.stdout
    assert "(none)" in dirt(settings, "replicate", "--list").stdout


def test_one_shot_push_creates_the_remote_database(setup):
    settings, local, remote = setup
    record(local, "once")
    dirt(settings, "replicate", remote.url)  # a bare server URL: the same database name
    wait_for(lambda: arrived(remote, "record:once"), 20, "a one-shot push")
    wait_for(lambda: json.loads(dirt(settings, "replicate", "--list", "--json").stdout)[0]
             ["state"] == "completed", 20, "the one-shot replication to complete")
    # Done: the same replication may be started again.
    again = dirt(settings, "replicate", remote.url)
    assert "one-shot push" in again.stdout


def test_refusals_name_the_problem_and_never_the_password(setup):
    settings, _, remote = setup
    dirt(settings, "replicate", remote.db_url, "--continuous")
    twice = dirt(settings, "replicate", remote.db_url, "--continuous", check=False)
    assert twice.returncode == 4
    assert "exists already" in twice.stderr and "--cancel dirt-push-" in twice.stderr
    bad = dirt(settings, "replicate", "ftp://admin:" + PASSWORD + "@host/db", check=False)
    assert bad.returncode == 4 and "not a CouchDB URL" in bad.stderr
    missing = dirt(settings, "replicate", "--cancel", "dirt-push-nothing", check=False)
    assert missing.returncode == 4 and "no replication 'dirt-push-nothing'" in missing.stderr
    for replication in json.loads(dirt(settings, "replicate", "--list", "--json").stdout):
        dirt(settings, "replicate", "--cancel", replication["id"])
