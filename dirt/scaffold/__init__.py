"""`dirt create`: a new project folder with settings, example tasks and a README, and its
database with the design document."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from dirt import couchapp, embedded
from dirt.couch import Couch
from dirt.errors import ConfigError
from dirt.settings import Settings, load

FOLDER = Path(__file__).parent
DB_NAME_RE = re.compile(r"^[a-z][a-z0-9_$()+/-]*\Z")


def create(path: str | Path, database: str = "dirt", couch_url: str | None = None,
           environ: dict[str, str] | None = None) -> Settings:
    """Scaffold a project at `path` and create its database; refuses a non-empty folder.

    On failure nothing is left behind: the folder is removed again.
    """
    target = Path(path).expanduser().resolve()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(f"{target} exists and is not empty")
    if not DB_NAME_RE.match(database):
        raise ConfigError(
            f"invalid database name {database!r}: lower-case letters, digits and _$()+-/, "
            "starting with a letter"
        )
    if couch_url:
        Couch(couch_url, database).ping()  # a URL that does not answer: say so, write nothing
    made = not target.exists()
    try:
        write_files(target, database, couch_url or "")
        settings = load(str(target), environ=environ)
        couch = embedded.connect(settings)
        couch.create()
        couchapp.push(couch)
    except BaseException:
        if made:
            if (target / "dirt.toml").exists():
                embedded.stop(load(str(target), environ=environ))
            shutil.rmtree(target, ignore_errors=True)
        raise
    return settings


def write_files(target: Path, database: str, url: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    config = (FOLDER / "dirt.toml").read_text()
    config = config.replace("{url}", url.replace('"', '\\"')).replace("{database}", database)
    (target / "dirt.toml").write_text(config)
    shutil.copy(FOLDER / "README.md", target / "README.md")
    shutil.copytree(FOLDER / "tasks", target / "tasks",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (target / ".gitignore").write_text(".dirt/\n")
