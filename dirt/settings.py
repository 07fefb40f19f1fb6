"""The one place that reads dirt.toml and the DIRT_* environment variables.

`load()` returns one frozen `Settings`; nothing else in dirt reads os.environ or the config file.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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
    batch_seconds: float = 0.02  # while tasks run: gather results and claims into one write


@dataclass(frozen=True)
class WebSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    threads: int = 8  # requests `dirt web` answers at once (waitress's worker threads)
    token: str = ""
    url: str = ""  # the public address of `dirt web`, for links in notifications
    allowed_hosts: tuple[str, ...] = ()  # names a request's Host may carry besides host_names
    max_body_bytes: int = 26_214_400  # 25 MiB: GitHub's largest webhook delivery

    @property
    def base_url(self) -> str:
        """Where the web pages are, for links sent out (mails, commit statuses)."""
        return (self.url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def host_names(self) -> frozenset[str]:
        """The names a request's Host header may carry (against DNS rebinding): localhost,
        the address `dirt web` listens on, the host of `url`, and `allowed_hosts` ("*": any).
        IP addresses are always allowed: no other site can take one as its name."""
        names = {"localhost", self.host, urlsplit(self.url).hostname or "", *self.allowed_hosts}
        return frozenset(n.lower().rstrip(".") for n in names if n)


@dataclass(frozen=True)
class EmailSettings:
    """[notify.email]: a mail when a record ends."""

    to: tuple[str, ...] = ()
    sender: str = "dirt@localhost"
    smtp_host: str = "localhost"
    smtp_port: int = 25
    security: str = "none"  # none | starttls | ssl
    username: str = ""
    password: str = field(default="", repr=False)  # DIRT_SMTP_PASSWORD
    on: str = "always"  # always | failure


@dataclass(frozen=True)
class WebhookSettings:
    """One [[notify.webhook]]: a JSON POST when a record ends."""

    url: str = ""
    on: str = "always"  # always | failure
    secret: str = field(default="", repr=False)  # signs the body (X-Dirt-Signature-256)


@dataclass(frozen=True)
class NotifySettings:
    """[notify]: what is sent when a record ends, and how hard dirt tries."""

    email: EmailSettings | None = None
    webhooks: tuple[WebhookSettings, ...] = ()
    attempts: int = 5
    backoff_seconds: float = 2.0
    max_backoff_seconds: float = 60.0
    timeout_seconds: float = 10.0


@dataclass(frozen=True)
class GitHubSettings:
    """[github]: commit statuses for records whose meta names a repository and revision."""

    token: str = field(default="", repr=False)  # DIRT_GITHUB_TOKEN; empty: no statuses
    api_url: str = "https://api.github.com"  # GitHub Enterprise: https://HOST/api/v3
    context: str = "dirt"


@dataclass(frozen=True)
class GitHubHook:
    """One [[hooks.github]]: a push to `repository` on a branch matching `branch` submits a
    record with `tasks` (entries as in a record file)."""

    repository: str = ""  # owner/name
    branch: str = "*"  # a glob: main, release/*, *
    tasks: tuple[Any, ...] = ()
    record: str = "{repo}-{branch}-{sha}"
    secret: str = field(default="", repr=False)  # default: hooks.github_secret


@dataclass(frozen=True)
class HooksSettings:
    """[hooks]: records submitted by webhooks (GitHub pushes, or a generic JSON POST)."""

    secret: str = field(default="", repr=False)  # DIRT_HOOKS_SECRET (generic hook)
    github_secret: str = field(default="", repr=False)  # DIRT_GITHUB_WEBHOOK_SECRET
    github: tuple[GitHubHook, ...] = ()


@dataclass(frozen=True)
class Settings:
    project: Path | None
    couch_url: str | None  # None: the embedded server
    database: str
    home: Path  # per-user folder: the npm install of the embedded server, data outside a project
    master: MasterSettings = field(default_factory=MasterSettings)
    web: WebSettings = field(default_factory=WebSettings)
    notify: NotifySettings = field(default_factory=NotifySettings)
    github: GitHubSettings = field(default_factory=GitHubSettings)
    hooks: HooksSettings = field(default_factory=HooksSettings)
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


def _table(values: Any, name: str, cls: type, nested: tuple[str, ...] = ()) -> Any:
    """A table read into `cls`, values checked against the defaults' types; `nested` names
    keys that hold sub-tables (the caller reads them)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{CONFIG_NAME}: [{name}] must be a table")
    defaults = cls()
    unknown = sorted(set(values) - set(cls.__dataclass_fields__) - set(nested))
    if unknown:
        raise ConfigError(f"{CONFIG_NAME}: unknown setting {name}.{unknown[0]}")
    out = {}
    for key, value in values.items():
        if key in nested:
            continue
        default = getattr(defaults, key)
        if isinstance(default, tuple):
            value = (value,) if isinstance(value, str) else value
            if not isinstance(value, list | tuple):
                raise ConfigError(f"{CONFIG_NAME}: {name}.{key} must be a list")
            out[key] = tuple(value)
        elif isinstance(default, bool | str) and not isinstance(value, type(default)):
            raise ConfigError(f"{CONFIG_NAME}: {name}.{key} must be a {type(default).__name__}")
        else:
            try:
                out[key] = type(default)(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{CONFIG_NAME}: {name}.{key}: not a number: {value!r}") from None
    return cls(**out)


def _choice(value: str, where: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{CONFIG_NAME}: {where} must be one of {', '.join(allowed)}")


def _tables(values: Any, name: str) -> list[dict[str, Any]]:
    """An array of tables ([[name]]); a single table is taken as a list of one."""
    values = [values] if isinstance(values, dict) else values
    if not isinstance(values, list) or not all(isinstance(v, dict) for v in values):
        raise ConfigError(f"{CONFIG_NAME}: [[{name}]] must be tables")
    return values


def read_notify(config: dict[str, Any], environ: dict[str, str]) -> NotifySettings:
    section = config.get("notify", {})
    notify = _table(section, "notify", NotifySettings, nested=("email", "webhook"))
    email = None
    if "email" in section:
        email = _table(section["email"], "notify.email", EmailSettings)
        _choice(email.security, "notify.email.security", ("none", "starttls", "ssl"))
        _choice(email.on, "notify.email.on", ("always", "failure"))
        if not email.to:
            raise ConfigError(f"{CONFIG_NAME}: notify.email.to: give at least one address")
    if environ.get("DIRT_SMTP_PASSWORD") and email is not None:
        email = replace(email, password=environ["DIRT_SMTP_PASSWORD"])
    webhooks = []
    for i, table in enumerate(_tables(section.get("webhook", []), "notify.webhook")):
        hook = _table(table, f"notify.webhook[{i}]", WebhookSettings)
        _choice(hook.on, f"notify.webhook[{i}].on", ("always", "failure"))
        if not hook.url.startswith(("http://", "https://")):
            raise ConfigError(f"{CONFIG_NAME}: notify.webhook[{i}].url must be an http(s) URL")
        webhooks.append(hook)
    return replace(notify, email=email, webhooks=tuple(webhooks))


def read_github(config: dict[str, Any], environ: dict[str, str]) -> GitHubSettings:
    github = _table(config.get("github", {}), "github", GitHubSettings)
    if environ.get("DIRT_GITHUB_TOKEN"):
        github = replace(github, token=environ["DIRT_GITHUB_TOKEN"])
    return replace(github, api_url=github.api_url.rstrip("/"))


def read_hooks(config: dict[str, Any], environ: dict[str, str]) -> HooksSettings:
    section = config.get("hooks", {})
    hooks = _table(section, "hooks", HooksSettings, nested=("github",))
    entries = []
    for i, table in enumerate(_tables(section.get("github", []), "hooks.github")):
        entry = _table(table, f"hooks.github[{i}]", GitHubHook)
        if entry.repository.count("/") != 1:
            raise ConfigError(f"{CONFIG_NAME}: hooks.github[{i}].repository: want owner/name")
        if not entry.tasks:
            raise ConfigError(f"{CONFIG_NAME}: hooks.github[{i}].tasks: give the tasks to run")
        entries.append(entry)
    return replace(
        hooks,
        secret=environ.get("DIRT_HOOKS_SECRET") or hooks.secret,
        github_secret=environ.get("DIRT_GITHUB_WEBHOOK_SECRET") or hooks.github_secret,
        github=tuple(entries),
    )


HOST_NAME = re.compile(r"\*|[a-z0-9_][a-z0-9_.-]{0,252}")  # no scheme, port, path or spaces


def read_web(config: dict[str, Any]) -> WebSettings:
    web = _table(config.get("web", {}), "web", WebSettings)
    if web.threads < 1:
        raise ConfigError(f"{CONFIG_NAME}: web.threads must be at least 1")
    if web.max_body_bytes < 1024:
        raise ConfigError(f"{CONFIG_NAME}: web.max_body_bytes must be at least 1024")
    for name in web.allowed_hosts:
        if not isinstance(name, str) or not HOST_NAME.fullmatch(name.lower()):
            raise ConfigError(f"{CONFIG_NAME}: web.allowed_hosts: {name!r} is not a host name "
                              "(give names without scheme or port: \"farm.example.org\")")
    return web


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
    web = read_web(config)
    if environ.get("DIRT_WEB_TOKEN"):
        web = replace(web, token=environ["DIRT_WEB_TOKEN"])
    return Settings(
        project=folder,
        couch_url=url.rstrip("/") if url else None,
        database=database,
        home=home,
        master=master,
        web=web,
        notify=read_notify(config, environ),
        github=read_github(config, environ),
        hooks=read_hooks(config, environ),
        raw=config,
    )
