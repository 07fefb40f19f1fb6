"""The one place that reads dirt.toml and the DIRT_* environment variables.

`load()` returns one frozen `Settings`; nothing else in dirt reads os.environ or the config file.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dirt.errors import ConfigError, NotAProject

CONFIG_NAME = "dirt.toml"


@dataclass(frozen=True)
class MasterSettings:
    lease_seconds: float = 60.0
    max_attempts: int = 3
    default_timeout: float = 3600.0
    log_limit_bytes: int = 1_048_576
    log_flush_seconds: float = 1.0
    health_interval: float = 10.0
    grace_seconds: float = 30.0
    tick_seconds: float = 0.5


@dataclass(frozen=True)
class WebSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    token: str = ""


@dataclass(frozen=True)
class Settings:
    project: Path | None
    couch_url: str | None  # None: the embedded server
    database: str
    home: Path  # per-user folder: the npm install of the embedded server, data outside a project
    master: MasterSettings = field(default_factory=MasterSettings)
    web: WebSettings = field(default_factory=WebSettings)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        """Where this project (or, outside one, this user) keeps its local state."""
        return self.project / ".dirt" if self.project else self.home

    @property
    def tasks_dir(self) -> Path:
        if self.project is None:
            raise NotAProject("no dirt project here: run `dirt create <path>` or pass --project")
        return self.project / "tasks"

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)


def find_project(explicit: str | None, environ: dict[str, str], cwd: Path) -> Path | None:
    """The project folder: --project, DIRT_PROJECT, else the current folder or a parent."""
    given = explicit or environ.get("DIRT_PROJECT")
    if given:
        path = Path(given).expanduser().resolve()
        if not (path / CONFIG_NAME).is_file():
            raise NotAProject(f"{path} is not a dirt project (no {CONFIG_NAME})")
        return path
    for folder in [cwd, *cwd.parents]:
        if (folder / CONFIG_NAME).is_file():
            return folder
    return None


def read_config(project: Path | None) -> dict[str, Any]:
    if project is None:
        return {}
    path = project / CONFIG_NAME
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None


def _section(config: dict[str, Any], name: str, cls: type) -> Any:
    values = config.get(name, {})
    if not isinstance(values, dict):
        raise ConfigError(f"{CONFIG_NAME}: [{name}] must be a table")
    known = cls.__dataclass_fields__
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{CONFIG_NAME}: unknown setting {name}.{unknown[0]}")
    try:
        return cls(**{k: type(getattr(cls(), k))(v) for k, v in values.items()})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{CONFIG_NAME}: [{name}]: {exc}") from None


def load(
    project: str | None = None,
    environ: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Read the settings of the project found from `project`, the environment and `cwd`."""
    environ = dict(os.environ) if environ is None else environ
    folder = find_project(project, environ, cwd or Path.cwd())
    config = read_config(folder)
    couch = config.get("couchdb", {})
    url = environ.get("DIRT_COUCHDB_URL") or couch.get("url") or None
    database = environ.get("DIRT_COUCHDB_DB") or couch.get("database") or "dirt"
    home = Path(environ.get("DIRT_HOME") or Path.home() / ".local" / "share" / "dirt")
    master = _section(config, "master", MasterSettings)
    web = _section(config, "web", WebSettings)
    if environ.get("DIRT_WEB_TOKEN"):
        web = replace(web, token=environ["DIRT_WEB_TOKEN"])
    return Settings(
        project=folder,
        couch_url=url.rstrip("/") if url else None,
        database=database,
        home=home,
        master=master,
        web=web,
        raw=config,
    )
