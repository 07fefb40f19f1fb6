"""Refused means nothing written, and one line, never a traceback: what a careless user or a
stranger sends through the CLI (exit 4), the JSON API and the hooks (400, `{"error": one
line}`), against a real database, a real `dirt web` (waitress) and a real master with a local
host. Every refusal compares the database before and after: not a document, not a revision,
not the update sequence may move.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import requests
from conftest import CouchServer, run_dirt
from test_cli import db_of, refused, snapshot
from test_web_server import DirtWeb

from dirt import hooks, scaffold
from dirt.couch import Couch

TOKEN = "bad-input-web-token"
GENERIC = "bad-input-hook-secret"
GITHUB = "bad-input-github-secret"
SETTINGS = f"""
[hooks]
secret = "{GENERIC}"
github_secret = "{GITHUB}"

[[hooks.github]]
repository = "acme/widget"
branch = "main"
tasks = ["echo@linux"]
"""
# A task whose reason tries to clear the screen, retitle the terminal, fake a log line and
# fill the screen.
LOUD_TASK = '''"""Fail with a reason full of terminal escapes and far too long."""


def execute(ctx):
    return {"success": False, "reason": "\\x1b[2J\\x1b]0;pwned\\x07\\u202eevil\\n"
            "2026-01-01 00:00:00 dirt.master INFO all is well " + "A" * 100000}
'''
ESCAPES = ("\x1b", "\x07", "\u202e")


@pytest.fixture(scope="module")
def farm(couch_server, tmp_path_factory):
    """A project with a local linux host, a web token and both hooks configured."""
    folder = tmp_path_factory.mktemp("bad-input")
    settings = scaffold.create(
        folder / "proj", f"test-{uuid.uuid4().hex[:12]}", couch_server.url, environ={}
    )
    config = settings.project / "dirt.toml"
    config.write_text(
        config.read_text().replace("[web]\n", f'[web]\ntoken = "{TOKEN}"\n') + SETTINGS
    )
    (settings.project / "tasks" / "loud.py").write_text(LOUD_TASK)
    run_dirt("hosts", "add", "local", "--platform=linux", "--local", project=settings, check=True)
    yield settings
    db_of(settings).drop()


@pytest.fixture(scope="module")
def web(farm, tmp_path_factory):
    server = DirtWeb(farm, tmp_path_factory.mktemp("web"))
    yield server
    server.stop()


@pytest.fixture
def unchanged(farm):
    """Asserts, after the test, that the farm's database was not written."""
    couch = db_of(farm)
    before = snapshot(couch)
    yield farm
    assert snapshot(couch) == before


def record_file(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


# -- 9. refused means nothing written ---------------------------------------------------------

REFUSED_FILES = [
    (
        "key.json",
        json.dumps({"tasks": [{"name": "echo", "key": "k\n"}]}),
        ["invalid task key name 'k\\n'"],
    ),
    (
        "args-date.yaml",
        "tasks:\n  - {name: echo, args: {d: 2024-01-01}}\n",
        ["args.d: 2024-01-01 is a date", "quote it"],
    ),
    (
        "meta-date.yaml",
        "meta: {built: 2024-01-01}\ntasks: [echo]\n",
        ["meta.built: 2024-01-01 is a date"],
    ),
    (
        "args-nan.yaml",
        "tasks:\n  - {name: echo, args: {x: .nan}}\n",
        ["args.x: nan is not a number JSON can hold"],
    ),
]


@pytest.mark.parametrize(
    ("file", "content", "words"), REFUSED_FILES, ids=[f[0] for f in REFUSED_FILES]
)
def test_a_refused_submit_writes_nothing_and_the_name_stays_free(
    farm, tmp_path, file, content, words
):
    couch = db_of(farm)
    before = snapshot(couch)
    name = f"r9-{Path(file).stem}"
    done = run_dirt("submit", name, f"--file={record_file(tmp_path, file, content)}", project=farm)
    refused(done, *words)
    assert done.returncode == 4
    assert snapshot(couch) == before  # not even a record written and taken back
    run_dirt("submit", name, "echo", project=farm, check=True)  # the name is still free


def test_a_task_key_with_a_trailing_newline_on_the_command_line(unchanged):
    done = run_dirt("submit", "r9-argv", "echo:k\n", project=unchanged)
    refused(done, "invalid task key name 'k\\n'")
    assert done.returncode == 4


def test_tasks_the_database_refuses_take_their_record_back(tmp_path):
    """The checks pass, the record is written, then the server refuses the tasks (larger
    than its max_document_size): the record goes too, so the name can be used again."""
    data = tmp_path / "couch"
    data.mkdir()
    (data / "config.json").write_text(
        json.dumps(
            {
                "log": {"file": str(data / "log.txt"), "level": "warning"},
                "couchdb": {"max_document_size": 65536},
            }
        )
    )
    server = CouchServer(data)
    server.start()
    try:
        settings = scaffold.create(tmp_path / "proj", "small", server.url, environ={})
        run_dirt(
            "hosts", "add", "local", "--platform=linux", "--local", project=settings, check=True
        )
        couch = Couch(server.url, "small")
        before = [row["id"] for row in couch.all_docs()]
        big = record_file(
            tmp_path,
            "big.json",
            json.dumps({"tasks": [{"name": "echo", "args": {"blob": "x" * 100_000}}]}),
        )
        for _ in range(2):  # the second try is refused the same way, not "exists already"
            done = run_dirt("submit", "big", f"--file={big}", project=settings)
            refused(
                done, "record big: the database refused its tasks", "too_large", "nothing was kept"
            )
            assert done.returncode == 4
            assert [row["id"] for row in couch.all_docs()] == before
        run_dirt("submit", "big", "echo", project=settings, check=True)
    finally:
        server.stop()


# -- 10. one line, never a traceback: the CLI ------------------------------------------------

MALFORMED_FILES = [
    (
        "requires.yaml",
        "tasks:\n  - {name: echo, requires: [[docker]]}\n",
        ["requires must be a list of strings", "[['docker']]"],
    ),
    ("name.yaml", "tasks:\n  - {name: 5}\n", ["tasks[0]: invalid task name 5"]),
    ("record-name.yaml", "name: 5\ntasks: [echo]\n", ["name must be a string"]),
    (
        "latin1.yaml",
        "description: caf\xe9\ntasks: [echo]\n".encode("latin-1"),
        ["not UTF-8 text (byte 0xe9 at offset 16)"],
    ),
    ("deep.json", "[" * 100_000 + "]" * 100_000, ["nested too deeply"]),
    (
        "aliases.yaml",
        "tasks: [echo]\nmeta:\n  a: &a [x, x, x, x, x, x, x, x, x, x]\n"  # 10 ** 6 values
        + "".join(
            f"  {chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n"
            for i in range(5)
        ),
        ["more than 100000 values"],
    ),
]


@pytest.mark.parametrize(
    ("file", "content", "words"), MALFORMED_FILES, ids=[f[0] for f in MALFORMED_FILES]
)
def test_malformed_record_files_are_one_line_and_exit_4(unchanged, tmp_path, file, content, words):
    path = record_file(tmp_path, file, content)
    done = run_dirt("submit", "r10", f"--file={path}", project=unchanged)
    refused(done, *words)
    assert done.returncode == 4


def test_a_task_module_that_is_not_utf8(unchanged):
    module = unchanged.project / "tasks" / "latin.py"
    module.write_bytes('"""Caf\xe9."""\n\n\ndef execute(ctx):\n    return {}\n'.encode("latin-1"))
    try:
        done = run_dirt("submit", "r10", "latin", project=unchanged)
        refused(done, f"{module}: not UTF-8 text (byte 0xe9")
        assert done.returncode == 4
    finally:
        module.unlink()


@pytest.mark.parametrize("destination", ["-Jevil", "-oProxyCommand", "root@-Jevil", "-root@box"])
def test_an_ssh_destination_that_ssh_would_read_as_an_option(unchanged, destination):
    done = run_dirt(
        "hosts", "add", "evil", "--platform=linux", f"--ssh={destination}", project=unchanged
    )
    refused(done, "invalid --ssh destination", "starting with '-'")
    assert done.returncode == 4


# -- 10. one line, never a traceback: the API and the hooks ----------------------------------

BAD_BODIES = [
    json.dumps({"tasks": [{"name": 5}]}),
    json.dumps({"name": "r10-api", "tasks": [{"name": 5}]}),
    json.dumps({"name": "r10-api", "tasks": [{"name": "echo", "requires": [["docker"]]}]}),
    '{"name": "r10-api", "tasks": [{"name": "echo", "args": {"x": NaN}}]}',
    json.dumps({"name": "r10-api", "meta": {"n": 2**64}, "tasks": ["echo"]}),
    json.dumps({"name": "r10-api", "tasks": ["echo"], "description": ["a", "list"]}),
    '{"name": "r10-api", "tasks": ' + "[" * 100_000 + "]" * 100_000 + "}",
]


def one_line_error(answer: requests.Response, status: int = 400) -> str:
    assert answer.status_code == status, answer.text[:500]
    assert answer.headers["Content-Type"].startswith("application/json")
    error = answer.json()["error"]
    assert isinstance(error, str) and "\n" not in error and "Traceback" not in error
    return error


def test_the_api_answers_malformed_records_400_in_one_line(web, unchanged):
    for body in BAD_BODIES:
        answer = requests.post(
            f"{web.url}api/v1/records",
            data=body,
            timeout=30,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        one_line_error(answer)


def test_the_generic_hook_answers_malformed_records_400_in_one_line(web, unchanged):
    for body in BAD_BODIES:
        answer = requests.post(
            f"{web.url}api/v1/hooks/generic",
            data=body,
            timeout=30,
            headers={
                "Authorization": f"Bearer {GENERIC}",
                "X-Dirt-Delivery": f"d-{uuid.uuid4().hex[:8]}",
            },
        )
        one_line_error(answer)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"after": 12345}, "after is int"),
        ({"after": "not a commit"}, "is not a commit id"),
        ({"ref": ["refs/heads/main"]}, "ref is list"),
        ({"repository": {"full_name": 7}}, "repository.full_name is int"),
        ({"head_commit": {"message": {"no": "text"}}}, "head_commit.message is dict"),
    ],
)
def test_a_signed_github_push_of_the_wrong_shape_is_400(web, unchanged, change, words):
    payload = {
        "ref": "refs/heads/main",
        "after": "9d2f1c3b7a8e4f6d0c5b2a1e3f4d5c6b7a8e9f01",
        "repository": {"full_name": "acme/widget"},
        "head_commit": {"message": "x"},
        **change,
    }
    body = json.dumps(payload).encode()
    answer = requests.post(
        f"{web.url}api/v1/hooks/github",
        data=body,
        timeout=30,
        headers={
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": hooks.sign(GITHUB, body),
            "Content-Type": "application/json",
        },
    )
    assert words in one_line_error(answer)


# -- 10. what a task or a document says is shown escaped and capped -------------------------


def test_status_and_the_master_log_escape_what_a_task_says_and_cap_it(farm):
    run_dirt("submit", "r10-loud", "loud", project=farm, check=True)
    serve = run_dirt("serve", "--drain", project=farm, timeout=120)
    assert serve.returncode == 0, serve.stderr[-2000:]
    ended = [
        line
        for line in serve.stderr.splitlines()
        if "task:r10-loud:loud:linux:" in line and " failed on " in line
    ]
    assert len(ended) == 1, serve.stderr[-2000:]
    assert "\\x1b[2J\\x1b]0;pwned\\x07\\u202eevil\\n2026-01-01 00:00:00 dirt.master" in ended[0]
    assert ended[0].endswith(" more characters)") and len(ended[0]) < 2200
    assert not any(char in serve.stderr for char in ESCAPES)
    assert not any(line.startswith("2026-01-01") for line in serve.stderr.splitlines())

    status = run_dirt("status", "r10-loud", project=farm, check=True)
    assert not any(char in status.stdout for char in ESCAPES)
    row = next(line for line in status.stdout.splitlines() if line.startswith("loud@linux"))
    assert row.split("  ")[-1].strip().startswith("\\x1b[2J\\x1b]0;pwned\\x07")
    assert len(row) < 200
    as_json = json.loads(run_dirt("status", "r10-loud", "--json", project=farm, check=True).stdout)
    assert as_json["tasks"][0]["reason"].startswith("\x1b[2J")  # the data itself is kept


def test_hosts_list_escapes_what_a_host_document_says(farm):
    couch = db_of(farm)
    host = couch.get("host:local")
    host["reason"] = "\x1b[31mred\x1b[0m\rhidden"
    couch.put(host)
    listing = run_dirt("hosts", "list", project=farm, check=True)
    assert "\x1b" not in listing.stdout and "\r" not in listing.stdout
    assert "\\x1b[31mred\\x1b[0m\\rhidden" in listing.stdout


def test_an_error_line_shows_what_it_quotes_escaped(unchanged, tmp_path):
    missing = tmp_path / "x\x1b[2J\nfake line.json"
    done = run_dirt("submit", "r10", f"--file={missing}", project=unchanged)
    refused(done, "x\\x1b[2J\\nfake line.json: No such file")
    assert "\x1b" not in done.stderr and done.returncode == 4
