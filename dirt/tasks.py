"""The registry of a project's task modules: one Python file per task in `tasks/`.

The master reads each module's source (that is what ships to hosts) and its PLATFORMS,
TIMEOUT and REUSE_PROCESS, which are read as literals without running the module: a task may
import what only its hosts have installed.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from dirt.documents import NAME_RE
from dirt.errors import ConfigError, UnknownTask


@dataclass(frozen=True)
class TaskModule:
    name: str
    path: Path
    source: str
    platforms: tuple[str, ...] | None  # None: any platform
    timeout: float | None
    doc: str
    reuse: int = 1  # REUSE_PROCESS: runs one task process may serve on a host


def read_module(path: Path) -> TaskModule:
    try:
        source = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
                          f"offset {exc.start})") from None
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as exc:
        raise ConfigError(f"{path}: syntax error on line {exc.lineno}: {exc.msg}") from None
    except ValueError as exc:  # a null byte
        raise ConfigError(f"{path}: {exc}") from None
    values: dict[str, object] = {}
    has_execute = False
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "execute":
            has_execute = True
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and target.id in ("PLATFORMS", "TIMEOUT",
                                                                "REUSE_PROCESS"):
                try:
                    values[target.id] = ast.literal_eval(node.value)
                except ValueError:
                    raise ConfigError(f"{path}: {target.id} must be a literal") from None
    if not has_execute:
        raise ConfigError(f"{path}: a task module must define execute(ctx)")
    platforms = values.get("PLATFORMS")
    if platforms is not None:
        if isinstance(platforms, str):
            platforms = [platforms]
        if not all(isinstance(p, str) for p in platforms):  # type: ignore[union-attr]
            raise ConfigError(f"{path}: PLATFORMS must be a list of platform names")
        platforms = tuple(platforms)  # type: ignore[arg-type]
    timeout = values.get("TIMEOUT")
    if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
        raise ConfigError(f"{path}: TIMEOUT must be a positive number of seconds")
    reuse = values.get("REUSE_PROCESS", 1)
    if type(reuse) is not int or reuse < 1:
        raise ConfigError(f"{path}: REUSE_PROCESS must be a whole number of runs, at least 1")
    return TaskModule(
        name=path.stem,
        path=path,
        source=source,
        platforms=platforms,  # type: ignore[arg-type]
        timeout=float(timeout) if timeout is not None else None,
        doc=(ast.get_docstring(tree) or "").strip().split("\n")[0],
        reuse=reuse,
    )


class Registry:
    """The task modules of one project's tasks/ folder, read fresh on every lookup."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._cache: dict[str, tuple[float, TaskModule]] = {}

    def names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(
            p.stem
            for p in self.folder.glob("*.py")
            if not p.name.startswith("_") and NAME_RE.match(p.stem)
        )

    def all(self) -> list[TaskModule]:
        return [self.get(name) for name in self.names()]

    def get(self, name: str) -> TaskModule:
        path = self.folder / f"{name}.py"
        if not NAME_RE.match(name) or not path.is_file():
            known = ", ".join(self.names()) or "none"
            raise UnknownTask(f"unknown task {name!r} (registered: {known})")
        mtime = path.stat().st_mtime
        cached = self._cache.get(name)
        if cached and cached[0] == mtime:
            return cached[1]
        module = read_module(path)
        self._cache[name] = (mtime, module)
        return module

    def find(self, name: str) -> TaskModule | None:
        try:
            return self.get(name)
        except (UnknownTask, ConfigError):
            return None
