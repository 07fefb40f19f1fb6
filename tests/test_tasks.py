"""tasks.py: the registry of a project's task modules, read without running them."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from dirt.errors import ConfigError, UnknownTask
from dirt.tasks import Registry, read_module


def write(folder: Path, name: str, source: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(source)
    return path


def test_platforms_and_timeout_read_without_executing(tmp_path):
    marker = tmp_path / "ran"
    path = write(tmp_path / "tasks", "build", f'''"""Build the thing.

More words.
"""
import not_installed_anywhere  # a module only the hosts have
open({str(marker)!r}, "w").write("executed")
PLATFORMS = ["linux", "windows"]
TIMEOUT = 90


def execute(ctx):
    return {{"success": True}}
''')
    module = read_module(path)
    assert module.name == "build"
    assert module.platforms == ("linux", "windows")
    assert module.timeout == 90.0
    assert module.doc == "Build the thing."
    assert module.source == path.read_text()
    assert not marker.exists()


def test_defaults_any_platform_no_timeout(tmp_path):
    module = read_module(write(tmp_path, "echo", "def execute(ctx):\n    return {}\n"))
    assert module.platforms is None
    assert module.timeout is None
    assert module.doc == ""


def test_reuse_process_read_as_a_literal(tmp_path):
    module = read_module(write(tmp_path, "t", "REUSE_PROCESS = 50\ndef execute(ctx): pass\n"))
    assert module.reuse == 50
    assert read_module(write(tmp_path, "u", "def execute(ctx): pass\n")).reuse == 1


def test_platforms_as_one_string(tmp_path):
    module = read_module(write(tmp_path, "t", "PLATFORMS = 'linux'\ndef execute(ctx): pass\n"))
    assert module.platforms == ("linux",)


def test_missing_execute(tmp_path):
    path = write(tmp_path, "broken", "def run(ctx):\n    pass\n")
    with pytest.raises(ConfigError, match=r"broken\.py: a task module must define execute"):
        read_module(path)


def test_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "bad", "def execute(ctx):\n    return {\n\nx = (\n")
    with pytest.raises(ConfigError, match=r"bad\.py: syntax error on line \d+"):
        read_module(path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("PLATFORMS = compute()", "PLATFORMS must be a literal"),
        ("PLATFORMS = [1, 2]", "PLATFORMS must be a list of platform names"),
        ("TIMEOUT = -5", "TIMEOUT must be a positive number"),
        ("TIMEOUT = 'long'", "TIMEOUT must be a positive number"),
        ("REUSE_PROCESS = 0", "REUSE_PROCESS must be a whole number of runs, at least 1"),
        ("REUSE_PROCESS = 2.5", "REUSE_PROCESS must be a whole number"),
        ("REUSE_PROCESS = True", "REUSE_PROCESS must be a whole number"),
    ],
)
def test_bad_constants(tmp_path, line, message):
    path = write(tmp_path, "t", f"{line}\ndef execute(ctx): pass\n")
    with pytest.raises(ConfigError, match=message):
        read_module(path)


def test_registry_names_skip_private_and_invalid(tmp_path):
    folder = tmp_path / "tasks"
    for name in ("b", "a", "_helper", "not valid"):
        write(folder, name, "def execute(ctx): pass\n")
    (folder / "notes.txt").write_text("not a task")
    registry = Registry(folder)
    assert registry.names() == ["a", "b"]
    assert [m.name for m in registry.all()] == ["a", "b"]


def test_unknown_task_lists_the_registered(tmp_path):
    folder = tmp_path / "tasks"
    write(folder, "echo", "def execute(ctx): pass\n")
    registry = Registry(folder)
    with pytest.raises(UnknownTask, match=r"unknown task 'nope' \(registered: echo\)"):
        registry.get("nope")
    with pytest.raises(UnknownTask):
        registry.get("../echo")
    assert registry.find("nope") is None


def test_find_returns_none_for_a_broken_module(tmp_path):
    folder = tmp_path / "tasks"
    write(folder, "broken", "def execute(ctx:\n")
    registry = Registry(folder)
    assert registry.names() == ["broken"]
    assert registry.find("broken") is None
    with pytest.raises(ConfigError, match="syntax error"):
        registry.get("broken")


def test_missing_folder_is_an_empty_registry(tmp_path):
    assert Registry(tmp_path / "nowhere").names() == []


def test_registry_sees_edits(tmp_path):
    folder = tmp_path / "tasks"
    path = write(folder, "t", "TIMEOUT = 5\ndef execute(ctx): pass\n")
    registry = Registry(folder)
    assert registry.get("t").timeout == 5.0
    path.write_text("TIMEOUT = 7\ndef execute(ctx): pass\n")
    later = time.time() + 10
    os.utime(path, (later, later))
    assert registry.get("t").timeout == 7.0
