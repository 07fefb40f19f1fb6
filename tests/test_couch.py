"""couch.py against the real server: documents, conflicts, attachments, changes, _local docs."""

from __future__ import annotations

import base64
import threading
import time
import uuid

import pytest
from conftest import CouchServer, free_port
from httpd import Recorder

from dirt.couch import Couch, _lines, inline_attachment, safe_url
from dirt.errors import Conflict, DatabaseError, DatabaseUnavailable, Forbidden, NotFound


def record(name: str) -> dict:
    return {"_id": f"record:{name}", "type": "record", "name": name,
            "created": "2026-01-01T00:00:00.000Z", "meta": {}}


def test_put_get_and_stale_rev_conflict(couch):
    doc = record("r1")
    rev = couch.put(doc)
    assert doc["_rev"] == rev and rev.startswith("1-")
    stale = dict(doc)
    doc["description"] = "first"
    couch.put(doc)
    assert couch.get("record:r1")["description"] == "first"
    stale["description"] = "second"
    with pytest.raises(Conflict) as caught:
        couch.put(stale)
    assert caught.value.status == 409
    assert couch.get("record:r1")["description"] == "first"


def test_missing_document(couch):
    assert couch.get_or_none("record:nope") is None
    with pytest.raises(NotFound):
        couch.get("record:nope")


def test_validate_doc_update_refuses_malformed_documents(couch):
    with pytest.raises(Forbidden, match="unknown document type"):
        couch.put({"_id": "thing", "type": "gizmo"})
    with pytest.raises(Forbidden, match="a record id is record:<name>"):
        couch.put({**record("r1"), "_id": "record:other"})
    assert couch.get_or_none("thing") is None


def test_no_writer_can_store_a_file_a_browser_would_run(couch):
    """The database serves files from its own origin: HTML or SVG there could write
    everything, so validate_doc_update refuses them from anyone, inline or on their own."""
    doc = record("r1")
    couch.put(doc)
    for name, kind in [("x.html", "text/html"), ("x.svg", "image/svg+xml"),
                       ("x.bin", "unknown/unknown"), ("x", "Text/HTML; charset=utf-8")]:
        with pytest.raises(Forbidden, match=f"file {name!r}".replace("'", '"')):
            couch.put_attachment(doc["_id"], doc["_rev"], name, b"<script>1</script>", kind)
        with pytest.raises(Forbidden, match="could run in a browser"):
            couch.put({**doc, "_attachments": {name: inline_attachment(b"<b>", kind)}})
    assert "_attachments" not in couch.get(doc["_id"])
    rev = couch.put_attachment(doc["_id"], doc["_rev"], "x.html", b"<script>1</script>",
                               "text/plain")
    kept = couch.get(doc["_id"])  # its stub is written back unchanged with other changes
    kept["description"] = "still there"
    couch.put(kept)
    assert kept["_rev"] != rev and couch.get_attachment(doc["_id"], "x.html")


def test_bulk_docs_answers_per_document(couch):
    first = record("a")
    couch.put(first)
    stale = {**first, "description": "x"}
    first_rev = first["_rev"]
    couch.put(first)  # somebody else wrote it since `stale` was read
    fresh = record("b")
    answers = couch.bulk_docs([stale, fresh])
    assert answers[0]["error"] == "conflict"
    assert "error" not in answers[1]
    assert fresh["_rev"] == answers[1]["rev"]
    assert stale["_rev"] == first_rev  # a lost write keeps the rev it had
    assert couch.get("record:a").get("description") is None
    assert couch.get("record:b")["_rev"] == fresh["_rev"]
    assert couch.bulk_docs([]) == []


def test_insert_writes_a_new_document_only(couch):
    doc = record("n1")
    rev = couch.insert(doc)
    assert doc["_rev"] == rev and couch.get("record:n1")["_rev"] == rev
    again = record("n1")
    with pytest.raises(Conflict) as caught:
        couch.insert(again)
    assert caught.value.status == 409 and "record%3An1" in str(caught.value)
    assert "_rev" not in again
    with pytest.raises(Forbidden, match="unknown document type"):
        couch.insert({"_id": "thing", "type": "gizmo"})
    assert couch.get_or_none("thing") is None


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_document_that_is_not_json_is_refused_alone(couch, value):
    bad, good = {**record("bad"), "meta": {"x": value}}, record("good")
    answers = couch.bulk_docs([bad, good])
    assert answers[0]["error"] == "bad_request" and "JSON" in answers[0]["reason"]
    assert answers[0]["id"] == "record:bad" and "_rev" not in bad
    assert "error" not in answers[1] and couch.get("record:good")["_rev"] == good["_rev"]
    assert couch.get_or_none("record:bad") is None
    with pytest.raises(DatabaseError, match="record%3Abad: cannot be sent as JSON") as caught:
        couch.put(bad)
    assert not isinstance(caught.value, DatabaseUnavailable)
    with pytest.raises(DatabaseError, match="cannot be sent as JSON"):
        couch.insert(bad)
    assert couch.bulk_docs([bad])[0]["error"] == "bad_request"


def test_compressed_answers_only_across_a_network():
    def encoding(url: str) -> str:
        recorder = Recorder(lambda request: (201, [{"id": "record:a", "rev": "1-x"}]))
        try:
            port = recorder.url.rsplit(":", 1)[1]
            Couch(url.replace("PORT", port), "dirt").bulk_docs([record("a")])
        finally:
            recorder.close()
        (request,) = recorder.requests
        return {k.lower(): v for k, v in request.headers.items()}["accept-encoding"]

    assert encoding("http://127.0.0.1:PORT") == "identity"
    assert encoding("http://localhost:PORT") == "identity"
    assert Couch("http://couch.example.org:5984", "d")._headers["Accept-Encoding"] == (
        "gzip, deflate")
    assert Couch("https://10.1.2.3", "d")._headers["Accept-Encoding"] == "gzip, deflate"


def test_bulk_docs_answers_follow_the_order_of_the_documents(couch):
    taken = [record(f"t{i}") for i in range(0, 10, 3)]
    couch.bulk_docs(taken)
    stale = {d["_id"]: d["_rev"] for d in taken}
    couch.bulk_docs(taken)  # a second writer moves them on
    docs = [record(f"t{i}") for i in range(10)]
    for doc in docs:
        if doc["_id"] in stale:
            doc["_rev"] = stale[doc["_id"]]
    answers = couch.bulk_docs(docs)
    assert [a["id"] for a in answers] == [d["_id"] for d in docs]
    lost = [a["id"] for a in answers if a.get("error") == "conflict"]
    assert lost == ["record:t0", "record:t3", "record:t6", "record:t9"]


def test_docs_by_prefix_in_id_order(couch):
    couch.bulk_docs([record("b"), record("a"), {**record("c"), "_id": "record:c"}])
    couch.put({"_id": "host:x", "type": "host", "name": "x", "platform": "linux",
               "ssh": None, "local": {}})
    assert [d["name"] for d in couch.docs_by_prefix("record:")] == ["a", "b", "c"]
    assert [d["_id"] for d in couch.docs_by_prefix("host:")] == ["host:x"]


def test_attachments_are_binary_exact(couch):
    doc = record("r1")
    couch.put(doc)
    body = bytes(range(256)) * 40
    rev = couch.put_attachment(doc["_id"], doc["_rev"], "blob name.bin", body,
                               "application/octet-stream")
    assert rev.startswith("2-")
    assert couch.get_attachment(doc["_id"], "blob name.bin") == body
    stub = couch.get(doc["_id"])["_attachments"]["blob name.bin"]
    assert stub["stub"] is True and stub["length"] == len(body)
    with pytest.raises(Conflict):
        couch.put_attachment(doc["_id"], doc["_rev"], "late.txt", b"x", "text/plain")
    with pytest.raises(NotFound):
        couch.get_attachment(doc["_id"], "missing.txt")


def test_inline_attachment_is_written_with_the_document(couch):
    doc = {**record("r1"), "_attachments": {
        "log.txt": inline_attachment("héllo\n".encode(), "text/plain; charset=utf-8")}}
    couch.put(doc)
    assert couch.get_attachment("record:r1", "log.txt") == "héllo\n".encode()


def test_changes_since(couch):
    start = couch.info()["update_seq"]
    couch.put(record("a"))
    couch.put(record("b"))
    batch = couch.changes(since=start, include_docs=True)
    assert [c["id"] for c in batch["results"]] == ["record:a", "record:b"]
    assert batch["results"][0]["doc"]["name"] == "a"
    again = couch.changes(since=batch["last_seq"])
    assert again["results"] == []


def test_follow_streams_changes_as_they_happen(couch):
    seen: list[str] = []
    got_two = threading.Event()

    def reader():
        for change in couch.follow(since="now", heartbeat_ms=500, include_docs=True):
            seen.append(change["doc"]["name"])
            if len(seen) == 2:
                got_two.set()
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    time.sleep(0.5)  # the feed is open before the writes
    writer = Couch(couch.url, couch.database)
    writer.put(record("live1"))
    writer.put(record("live2"))
    assert got_two.wait(10), f"only {seen} arrived over the continuous feed"
    assert seen == ["live1", "live2"]
    thread.join(5)


def test_follow_raises_when_the_server_goes_away(tmp_path):
    server = CouchServer(tmp_path / "gone")
    server.start()
    db = Couch(server.url, "feed")
    errors: list[Exception] = []
    seen: list[str] = []

    def reader():
        try:
            for change in db.follow(since=0, heartbeat_ms=300):
                seen.append(change["id"])
        except DatabaseUnavailable as exc:
            errors.append(exc)

    try:
        db.create()
        db.put(record("x"))
        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            time.sleep(0.05)
        assert seen == ["record:x"]
    finally:
        server.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert len(errors) == 1
    assert f"CouchDB at {server.url}: changes feed broke" in str(errors[0])


def test_feed_lines_are_cut_where_they_end_not_where_chunks_do():
    chunks = [b'{"a":', b' 1}\n\n{"b": 2}\n{"c"', b': 3}\n', b"\n", b'{"d": 4}']
    assert list(_lines(iter(chunks))) == [
        b'{"a": 1}', b"", b'{"b": 2}', b'{"c": 3}', b"", b'{"d": 4}']


def test_local_documents(couch):
    assert couch.get_local("checkpoint") is None
    couch.put_local("checkpoint", {"seq": "1-abc"})
    couch.put_local("checkpoint", {"seq": "2-def"})
    assert couch.get_local("checkpoint")["seq"] == "2-def"
    changes = couch.changes(since=0)["results"]
    assert all(not c["id"].startswith("_local/") for c in changes)


def test_closed_port_names_the_url_without_credentials():
    port = free_port()
    db = Couch(f"http://admin:s3cret@127.0.0.1:{port}", "dirt")
    with pytest.raises(DatabaseUnavailable) as caught:
        db.ping()
    message = str(caught.value)
    assert f"http://127.0.0.1:{port}" in message
    assert "s3cret" not in message and "admin" not in message
    with pytest.raises(DatabaseUnavailable, match=f"127.0.0.1:{port}"):
        db.get("record:x")
    assert "s3cret" not in repr(db)


def test_credentials_are_sent_as_basic_auth_only():
    recorder = Recorder(lambda request: (201, [{"id": "record:a", "rev": "1-x"}]))
    try:
        host = recorder.url.removeprefix("http://")
        Couch(f"http://ad%40min:s3c:ret@{host}", "dirt").bulk_docs([record("a")])
    finally:
        recorder.close()
    (request,) = recorder.requests
    headers = {name.lower(): value for name, value in request.headers.items()}
    assert request.path == "/dirt/_bulk_docs"
    assert headers["authorization"] == f"Basic {base64.b64encode(b'ad@min:s3c:ret').decode()}"
    assert headers["accept"] == "application/json"
    assert headers["content-type"] == "application/json"
    assert request.json()["docs"][0]["_id"] == "record:a"


def test_safe_url():
    assert safe_url("http://u:p@h:5984/db") == "http://h:5984/db"
    assert safe_url("https://h/db") == "https://h/db"
    assert safe_url("http://u:p@[::1]:5984") == "http://[::1]:5984"


def test_create_exists_drop(couch_server):
    db = Couch(couch_server.url, f"test-{uuid.uuid4().hex[:12]}")
    assert not db.exists()
    assert db.create() is True
    assert db.create() is False
    assert db.exists()
    db.drop()
    assert not db.exists()
