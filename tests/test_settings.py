"""settings.py: finding the project and reading dirt.toml and DIRT_* in one place."""

from __future__ import annotations

from pathlib import Path

import pytest

from dirt.errors import ConfigError, NotAProject
from dirt.settings import find_project, load


def make_project(folder: Path, body: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dirt.toml").write_text(body)
    return folder.resolve()


CONFIG = """
[couchdb]
url = "http://user:pw@127.0.0.1:5984/"
database = "farm"

[master]
lease_seconds = 12
max_attempts = 5

[web]
port = 9000
threads = 4
"""


def test_explicit_project_wins(tmp_path):
    one = make_project(tmp_path / "one")
    two = make_project(tmp_path / "two")
    found = find_project(str(one), {"DIRT_PROJECT": str(two)}, cwd=two)
    assert found == one


def test_dirt_project_environment(tmp_path):
    two = make_project(tmp_path / "two")
    assert find_project(None, {"DIRT_PROJECT": str(two)}, cwd=tmp_path) == two


def test_current_folder_and_its_parents(tmp_path):
    root = make_project(tmp_path / "proj")
    deep = root / "a" / "b"
    deep.mkdir(parents=True)
    assert find_project(None, {}, cwd=root) == root
    assert find_project(None, {}, cwd=deep) == root


def test_no_project_is_none(tmp_path):
    assert find_project(None, {}, cwd=tmp_path) is None
    settings = load(environ={}, cwd=tmp_path)
    assert settings.project is None
    with pytest.raises(NotAProject, match="no dirt project here"):
        settings.tasks_dir  # noqa: B018


@pytest.mark.parametrize("via", ["explicit", "environ"])
def test_a_folder_without_dirt_toml_is_refused(tmp_path, via):
    folder = tmp_path / "plain"
    folder.mkdir()
    explicit = str(folder) if via == "explicit" else None
    environ = {"DIRT_PROJECT": str(folder)} if via == "environ" else {}
    with pytest.raises(NotAProject, match=f"{folder} is not a dirt project"):
        find_project(explicit, environ, cwd=tmp_path)


def test_reads_dirt_toml(tmp_path):
    root = make_project(tmp_path / "proj", CONFIG)
    settings = load(str(root), environ={"DIRT_HOME": str(tmp_path / "home")}, cwd=tmp_path)
    assert settings.project == root
    assert settings.couch_url == "http://user:pw@127.0.0.1:5984"
    assert settings.database == "farm"
    assert settings.master.lease_seconds == 12.0
    assert settings.master.max_attempts == 5
    assert settings.master.default_timeout == 3600.0  # not in the file: the default
    assert settings.web.port == 9000
    assert settings.web.threads == 4
    assert settings.home == tmp_path / "home"
    assert settings.state_dir == root / ".dirt"
    assert settings.tasks_dir == root / "tasks"


def test_environment_overrides_dirt_toml(tmp_path):
    root = make_project(tmp_path / "proj", CONFIG)
    environ = {"DIRT_COUCHDB_URL": "http://other:5984", "DIRT_COUCHDB_DB": "elsewhere",
               "DIRT_WEB_TOKEN": "t0ken"}
    settings = load(str(root), environ=environ, cwd=tmp_path)
    assert settings.couch_url == "http://other:5984"
    assert settings.database == "elsewhere"
    assert settings.web.token == "t0ken"


def test_empty_url_means_the_embedded_server(tmp_path):
    root = make_project(tmp_path / "proj", '[couchdb]\nurl = ""\n')
    settings = load(str(root), environ={}, cwd=tmp_path)
    assert settings.couch_url is None
    assert settings.database == "dirt"


def test_web_threads_default_to_8(tmp_path):
    assert load(environ={}, cwd=tmp_path).web.threads == 8


def test_settings_are_frozen(tmp_path):
    settings = load(environ={}, cwd=tmp_path)
    with pytest.raises(AttributeError):
        settings.database = "x"  # type: ignore[misc]
    assert settings.with_(database="x").database == "x"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[couchdb\nurl = 1", r"dirt\.toml: "),
        ("[master]\nlease_secs = 3\n", r"unknown setting master\.lease_secs"),
        ("master = 3\n", r"\[master\] must be a table"),
        ("[master]\nmax_attempts = 'many'\n", r"\[master\]: "),
        ("[web]\ncolour = 'red'\n", r"unknown setting web\.colour"),
        ("[web]\nthreads = 0\n", r"web\.threads must be at least 1"),
    ],
)
def test_bad_dirt_toml_is_a_config_error(tmp_path, body, message):
    root = make_project(tmp_path / "proj", body)
    with pytest.raises(ConfigError, match=message):
        load(str(root), environ={}, cwd=tmp_path)


def test_web_host_names_and_body_cap(tmp_path):
    """The names a request's Host may carry: localhost, the listening address, the public
    url's host and [web] allowed_hosts; bodies up to 25 MiB unless set."""
    default = load(environ={}, cwd=tmp_path).web
    assert default.host_names == {"localhost", "127.0.0.1"}
    assert default.max_body_bytes == 25 * 1024 * 1024
    root = make_project(tmp_path / "proj", '[web]\nhost = "0.0.0.0"\n'
                        'url = "https://CI.example.org:8443/dirt"\n'
                        'allowed_hosts = "farm.example.org."\nmax_body_bytes = 4096\n')
    web = load(str(root), environ={}, cwd=tmp_path).web
    assert web.host_names == {"localhost", "0.0.0.0", "ci.example.org", "farm.example.org"}
    assert web.max_body_bytes == 4096


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('allowed_hosts = ["https://farm.example.org"]', r"'https://farm\.example\.org' is not"),
        ('allowed_hosts = ["farm.example.org:443"]', "without scheme or port"),
        ("allowed_hosts = [5]", "5 is not a host name"),
        ("max_body_bytes = 10", r"web\.max_body_bytes must be at least 1024"),
        ('max_body_bytes = "lots"', r"web\.max_body_bytes: not a number"),
    ],
)
def test_bad_web_host_names_and_body_caps_are_config_errors(tmp_path, body, message):
    root = make_project(tmp_path / "proj", f"[web]\n{body}\n")
    with pytest.raises(ConfigError, match=message):
        load(str(root), environ={}, cwd=tmp_path)
