"""GitHub commit statuses: pending when a record starts, success, failure or error when it
ends, with a link to the record's page.

A record gets statuses when its meta names the commit (the GitHub hook sets both; a CI script
passes them with `--meta`):

    github_repository   owner/name            e.g. acme/widget
    revision            the full commit SHA   e.g. 9d2f1c3b7a8e4f6d0c5b2a1e3f4d5c6b7a8e9f01

and dirt.toml has a token ([github] token, or DIRT_GITHUB_TOKEN) allowed to write statuses.
The API is GitHub's documented `POST /repos/{owner}/{repo}/statuses/{sha}`; `api_url` points
it at GitHub Enterprise (https://HOST/api/v3).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests

from dirt import __version__
from dirt.errors import NotificationFailed
from dirt.settings import GitHubSettings

META_REPOSITORY = "github_repository"
META_REVISION = "revision"
API_VERSION = "2022-11-28"
REPOSITORY_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+\Z")
SHA_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})\Z")
DESCRIPTION_LIMIT = 140  # GitHub refuses longer descriptions


@dataclass(frozen=True)
class CommitStatus:
    """One status to post: `state` is pending, success, failure or error."""

    repository: str
    sha: str
    state: str
    description: str
    target_url: str
    context: str

    def body(self) -> dict[str, str]:
        return {"state": self.state, "target_url": self.target_url,
                "description": self.description[:DESCRIPTION_LIMIT], "context": self.context}


def commit_of(record: dict[str, Any]) -> tuple[str, str] | None:
    """(owner/name, sha) when the record's meta names a GitHub commit, else None."""
    meta = record.get("meta") or {}
    repository, sha = meta.get(META_REPOSITORY), meta.get(META_REVISION)
    if not isinstance(repository, str) or not isinstance(sha, str):
        return None
    if not REPOSITORY_RE.match(repository) or not SHA_RE.match(sha.lower()):
        return None
    return repository, sha.lower()


def state_of(summary: dict[str, Any], ended: bool) -> str:
    """GitHub's state for a record: pending while it runs; success when every task passed,
    failure when the code under test failed, error when dirt could not give an answer."""
    if not ended:
        return "pending"
    state = summary["state"]
    if state == "success":
        return "success"
    return "failure" if state == "failed" else "error"


def describe(summary: dict[str, Any], ended: bool) -> str:
    """One short line: '4 tasks passed', '3 of 4 tasks passed, 1 failed',
    'running: 1 of 4 tasks done'."""
    counts, total = summary["counts"], summary["total"]
    passed = counts.get("success", 0)
    if not ended:
        done = total - counts.get("pending", 0) - counts.get("running", 0)
        return f"running: {done} of {total} tasks done"
    if passed == total:
        return f"{total} task{'' if total == 1 else 's'} passed"
    others = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()) if s != "success")
    return f"{passed} of {total} tasks passed, {others}"


def status_for(
    settings: GitHubSettings,
    record: dict[str, Any],
    summary: dict[str, Any],
    ended: bool,
    target_url: str,
) -> CommitStatus | None:
    """The status to post for a record, or None when it names no commit or no token is set."""
    commit = commit_of(record)
    if commit is None or not settings.token:
        return None
    return CommitStatus(
        repository=commit[0],
        sha=commit[1],
        state=state_of(summary, ended),
        description=describe(summary, ended),
        target_url=target_url,
        context=settings.context,
    )


def post_status(settings: GitHubSettings, status: CommitStatus, timeout: float = 10.0) -> None:
    """POST the status; NotificationFailed (permanent for 4xx other than 429) otherwise."""
    owner, repo = status.repository.split("/")
    url = (f"{settings.api_url}/repos/{quote(owner, safe='')}/{quote(repo, safe='')}"
           f"/statuses/{status.sha}")
    headers = {
        "Accept": "application/vnd.github+json",
        "Authorization": f"Bearer {settings.token}",
        "X-GitHub-Api-Version": API_VERSION,
        "User-Agent": f"dirt/{__version__}",
    }
    try:
        response = requests.post(url, json=status.body(), headers=headers, timeout=timeout)
    except requests.RequestException as exc:
        raise NotificationFailed(f"GitHub API does not answer ({type(exc).__name__})") from None
    if response.status_code in (200, 201):
        return
    try:
        message = response.json().get("message") or response.reason
    except ValueError:
        message = response.reason
    code = response.status_code
    rate_limited = code == 429 or (code == 403 and "rate limit" in str(message).lower())
    permanent = 400 <= code < 500 and not rate_limited
    raise NotificationFailed(f"GitHub API: {response.status_code} {message}", permanent)
