"""The CouchDB client: a pool of keep-alive connections, errors mapped to dirt's, the changes feed.

urllib3 rather than requests: requests' per-request machinery (preparing the request, merging
environment settings, cookies) cost half the client's CPU and 1-2 ms of each request.

Only the documented CouchDB 3.x HTTP API is used, so Apache CouchDB and PouchDB Server both work.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterator
from typing import Any, NoReturn
from urllib.parse import SplitResult, quote, unquote, urlencode, urlsplit, urlunsplit
from urllib.request import getproxies, proxy_bypass

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    MaxRetryError,
    NewConnectionError,
    ProxyError,
    ReadTimeoutError,
    SSLError,
)

from dirt.errors import (
    Conflict,
    DatabaseError,
    DatabaseUnavailable,
    Forbidden,
    NotFound,
)

log = logging.getLogger("dirt.couch")

TIMEOUT = (5.0, 60.0)  # connect, read
INDEX_TIMEOUT = 1800.0  # reading a view whose index is being built (100,000 tasks: minutes)
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# never send a request twice (a write may have been applied), but follow redirects
RETRIES = urllib3.Retry(
    total=None, connect=0, read=False, status=0, other=0, redirect=30,
    respect_retry_after_header=False,
)
JSON = {"Content-Type": "application/json"}
IDENTITY = {"Accept-Encoding": "identity"}  # a compressed feed is buffered and never arrives
# the names requests gave these failures, which messages (and scripts reading them) show
FAILURES = (
    (ProxyError, "ProxyError"),
    (SSLError, "SSLError"),
    (NewConnectionError, "ConnectionError"),
    (ConnectTimeoutError, "ConnectTimeout"),
    (ReadTimeoutError, "ReadTimeout"),
)


def safe_url(url: str) -> str:
    """`url` without its user name and password, for messages and pages."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _quote_id(doc_id: str) -> str:
    if doc_id.startswith("_design/"):
        return "_design/" + quote(doc_id[8:], safe="")
    if doc_id.startswith("_local/"):
        return "_local/" + quote(doc_id[7:], safe="")
    return quote(doc_id, safe="")


def _encoding(parts: SplitResult) -> str:
    """Compressed answers only from a server across a network: on this machine gzip costs
    both sides CPU and saves nothing (0.3-0.7 ms on a 2-4 KB answer from PouchDB Server)."""
    host = (parts.hostname or "").lower()
    local = host == "localhost" or host == "::1" or host.startswith("127.")
    return "identity" if local else "gzip, deflate"


class Couch:
    """One database on one CouchDB server."""

    def __init__(self, url: str, database: str) -> None:
        self.url = url.rstrip("/")
        self.database = database
        self.db_url = f"{self.url}/{quote(database, safe='')}"
        self.pool = _pool_for(self.url)  # thread-safe: the feed and view warmers share it
        parts = urlsplit(self.url)
        self._headers = {"Accept": "application/json", "Accept-Encoding": _encoding(parts)}
        if parts.username or parts.password:
            user, password = unquote(parts.username or ""), unquote(parts.password or "")
            basic = urllib3.make_headers(basic_auth=f"{user}:{password}")["authorization"]
            self._headers["Authorization"] = basic
        self._server_url = safe_url(self.url)  # credentials go in the header only
        self._db_url = safe_url(self.db_url)
        # a URL that cannot work fails on each request, as a server that does not answer
        self._url_error = "" if parts.scheme in ("http", "https") else (
            "InvalidSchema" if parts.scheme else "MissingSchema")

    def __repr__(self) -> str:
        return f"Couch({safe_url(self.db_url)!r})"

    # -- plumbing -----------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        server: bool = False,
        params: dict[str, Any] | None = None,
        json: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: tuple[float, float] | float = TIMEOUT,
        stream: bool = False,
    ) -> Any:
        """One HTTP request; JSON answer (the body's bytes when it is not JSON), or with
        `stream` the response itself, its body unread; a DirtError naming what went wrong.
        `json` is sent JSON-encoded, `data` as it is."""
        if self._url_error:
            raise self._unavailable(self._url_error)
        if json is not None:
            try:
                data = _json_body(json)
            except ValueError as exc:  # NaN or infinity: the caller's mistake, not an outage
                where = f"{safe_url(self.db_url)}/{path}".rstrip("/")
                raise DatabaseError(f"{where}: cannot be sent as JSON: {exc}", None,
                                    str(exc)) from None
            headers = {**JSON, **(headers or {})}
        connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        try:
            response = self.pool.urlopen(
                method,
                self._url(path, server, params),
                body=data,
                headers={**self._headers, **headers} if headers else self._headers,
                timeout=urllib3.Timeout(connect=connect, read=read),
                retries=RETRIES,
                preload_content=not stream,
            )
            self._raise_for(response, path)
        except HTTPError as exc:
            raise self._unavailable(_failure_name(exc)) from None
        if stream:
            return response
        if response.headers.get("Content-Type", "").startswith("application/json"):
            return _json_answer(response.data)
        return response.data

    def _url(self, path: str, server: bool, params: dict[str, Any] | None) -> str:
        base = self._server_url if server else self._db_url
        url = f"{base}/{path}" if path else base
        return f"{url}?{urlencode(params, doseq=True)}" if params else url

    def _unavailable(self, failure: str) -> DatabaseUnavailable:
        return DatabaseUnavailable(f"CouchDB at {safe_url(self.url)} does not answer ({failure})")

    def _raise_for(self, response: urllib3.BaseHTTPResponse, path: str) -> None:
        if response.status < 400:
            return
        try:
            body = json.loads(response.data)
        except ValueError:
            text = response.data.decode("utf-8", "replace")
            body = {"error": response.reason, "reason": text[:200]}
        self._raise(path, response.status, body.get("error", ""), body.get("reason", ""))

    def _raise(self, path: str, status: int, error: str, reason: str) -> NoReturn:
        where = f"{safe_url(self.db_url)}/{path}".rstrip("/")
        message = f"{where}: {error}: {reason}" if reason else f"{where}: {error}"
        if status == 409:
            raise Conflict(message, status, reason)
        if status == 404:
            raise NotFound(message, status, reason)
        if status in (401, 403):
            raise Forbidden(message, status, reason)
        if status >= 500:
            failed = DatabaseUnavailable(f"CouchDB at {safe_url(self.url)} failed: {message}")
            failed.status = status  # it answered: the request may be what it cannot take
            raise failed
        raise DatabaseError(message, status, reason)

    # -- server and database ------------------------------------------------------------------

    def ping(self) -> dict[str, Any]:
        """The server's welcome document; DatabaseUnavailable when it does not answer."""
        return self.request("GET", "", server=True, timeout=(3.0, 10.0))

    def exists(self) -> bool:
        try:
            self.request("GET", "")
        except NotFound:
            return False
        return True

    def create(self) -> bool:
        """Create the database; False when it already exists."""
        try:
            self.request("PUT", "")
        except DatabaseError as exc:
            if exc.status == 412:
                return False
            raise
        return True

    def drop(self) -> None:
        self.request("DELETE", "")

    def info(self) -> dict[str, Any]:
        return self.request("GET", "")

    # -- documents ----------------------------------------------------------------------------

    def get(self, doc_id: str, **params: Any) -> dict[str, Any]:
        return self.request("GET", _quote_id(doc_id), params=_encode(params))

    def get_or_none(self, doc_id: str) -> dict[str, Any] | None:
        try:
            return self.get(doc_id)
        except NotFound:
            return None

    def put(self, doc: dict[str, Any]) -> str:
        """Write `doc` with the `_rev` it carries and set its new `_rev`.

        This is how work is claimed: a write with a stale `_rev` raises Conflict, which means
        somebody else (another master, a user cancelling) wrote the document first.
        """
        answer = self.request("PUT", _quote_id(doc["_id"]), json=doc)
        doc["_rev"] = answer["rev"]
        return answer["rev"]

    def insert(self, doc: dict[str, Any]) -> str:
        """Write a new document and set its `_rev`; Conflict if one with its id exists.

        One `_bulk_docs` of one document, which is a millisecond cheaper than a PUT on PouchDB
        Server; the same check on `_rev` (none) and the same validation."""
        (answer,) = self.bulk_docs([doc])
        error = answer.get("error")
        if not error:
            return doc["_rev"]
        status = {"conflict": 409, "forbidden": 403, "unauthorized": 401}.get(error, 400)
        self._raise(_quote_id(doc["_id"]), status, error, answer.get("reason") or "")

    def delete(self, doc_id: str, rev: str) -> None:
        self.request("DELETE", _quote_id(doc_id), params={"rev": rev})

    def bulk_docs(self, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Write many documents at once; one answer per document, in order.

        Each write is checked on its own `_rev` (no all_or_nothing): an answer with
        `"error": "conflict"` is a lost claim, exactly as a 409 from `put`. Successful writes
        get their new `_rev` set on the document passed in. A document that cannot be sent
        as JSON (NaN, infinity) is answered `bad_request` and the others are written."""
        if not docs:
            return []
        bodies, refused = [], {}
        for index, doc in enumerate(docs):
            try:
                bodies.append(_json_body(doc))
            except ValueError as exc:  # NaN or infinity: that document alone is refused
                refused[index] = {"id": doc.get("_id"), "error": "bad_request",
                                  "reason": f"cannot be sent as JSON: {exc}"}
        sent = [doc for index, doc in enumerate(docs) if index not in refused]
        written = iter(_in_order_of(sent, self.request(
            "POST", "_bulk_docs", data=b'{"docs":[' + b",".join(bodies) + b"]}",
            headers=JSON) if sent else []))
        answers = [refused.get(index) or next(written) for index in range(len(docs))]
        for doc, answer in zip(docs, answers, strict=True):
            if "rev" in answer and "error" not in answer:
                doc["_rev"] = answer["rev"]
        return answers

    def all_docs(self, **params: Any) -> list[dict[str, Any]]:
        return self.request("GET", "_all_docs", params=_encode(params))["rows"]

    def revs(self, ids: list[str]) -> dict[str, str]:
        """The current `_rev` of each of `ids` that exists (deleted ones are left out)."""
        rows = self.request("POST", "_all_docs", json={"keys": ids})["rows"]
        return {row["id"]: row["value"]["rev"] for row in rows
                if row.get("value") and not row["value"].get("deleted")}

    def docs_by_prefix(self, prefix: str) -> list[dict[str, Any]]:
        """Every document whose id starts with `prefix`, in id order."""
        rows = self.all_docs(startkey=prefix, endkey=prefix + "\ufff0", include_docs=True)
        return [row["doc"] for row in rows if row.get("doc")]

    def view(
        self, design: str, name: str, *, read_timeout: float | None = None, **params: Any
    ) -> dict[str, Any]:
        """Query a view; `keys` goes in the body, other parameters are JSON-encoded.

        The first query of a view builds its index, which takes minutes on a large database:
        callers that may be first (start-up, warming) pass a longer `read_timeout`."""
        path = f"_design/{design}/_view/{name}"
        timeout = (TIMEOUT[0], read_timeout) if read_timeout else TIMEOUT
        keys = params.pop("keys", None)
        if keys is not None:
            return self.request("POST", path, params=_encode(params), json={"keys": keys},
                                timeout=timeout)
        return self.request("GET", path, params=_encode(params), timeout=timeout)

    def put_attachment(
        self, doc_id: str, rev: str, name: str, body: bytes, content_type: str
    ) -> str:
        answer = self.request(
            "PUT",
            f"{_quote_id(doc_id)}/{quote(name, safe='')}",
            params={"rev": rev},
            data=body,
            headers={"Content-Type": content_type},
        )
        return answer["rev"]

    def get_attachment(self, doc_id: str, name: str) -> bytes:
        """The attachment's bytes, whatever its content type (JSON is not decoded)."""
        response = self.request(
            "GET", f"{_quote_id(doc_id)}/{quote(name, safe='')}", stream=True
        )
        try:
            return response.data
        except HTTPError as exc:
            raise self._unavailable(_failure_name(exc)) from None

    # -- _local documents (checkpoints) -------------------------------------------------------

    def get_local(self, name: str) -> dict[str, Any] | None:
        return self.get_or_none(f"_local/{name}")

    def put_local(self, name: str, body: dict[str, Any]) -> None:
        current = self.get_local(name) or {}
        doc = {**body, "_id": f"_local/{name}"}
        if "_rev" in current:
            doc["_rev"] = current["_rev"]
        self.put(doc)

    # -- changes ------------------------------------------------------------------------------

    def changes(self, since: str | int = 0, **params: Any) -> dict[str, Any]:
        """One batch of the changes feed (feed=normal): `results` and `last_seq`."""
        return self.request(
            "GET",
            "_changes",
            params=_encode({"since": since, **params}),
            headers=IDENTITY,
        )

    def follow(
        self, since: str | int = "now", heartbeat_ms: int = 5000, **params: Any
    ) -> Iterator[dict[str, Any]]:
        """The continuous changes feed, one change at a time, until the connection breaks.

        Sends `Accept-Encoding: identity` (a compressed feed is buffered and never arrives)
        and relies on heartbeats plus a read deadline, since `timeout=` is not honoured by
        every server. Raises DatabaseUnavailable when the server goes away.
        """
        query = {"feed": "continuous", "since": since, "heartbeat": heartbeat_ms, **params}
        response = self.request(
            "GET",
            "_changes",
            params=_encode(query),
            headers=IDENTITY,
            stream=True,
            timeout=(5.0, heartbeat_ms / 1000 * 3),
        )
        try:
            # chunked responses are read chunk by chunk as they arrive, so a large read
            # size costs no latency (one byte at a time cost most of the master's CPU)
            for line in _lines(response.stream(65536)):
                if line.strip():  # a heartbeat is an empty line
                    yield json.loads(line)
        except (HTTPError, ValueError) as exc:
            raise DatabaseUnavailable(
                f"CouchDB at {safe_url(self.url)}: changes feed broke ({_failure_name(exc)})"
            ) from None
        finally:
            response.close()  # the feed never ends by itself: drop the connection
            response.release_conn()


def _pool_for(url: str) -> urllib3.PoolManager:
    """Keep-alive connections to the server at `url`, through the proxy the environment names
    (HTTP_PROXY, HTTPS_PROXY, NO_PROXY) unless the server is on this machine."""
    parts = urlsplit(url)
    options: dict[str, Any] = {"maxsize": 10, "block": False, "retries": RETRIES}
    host = parts.netloc.rpartition("@")[2]
    if parts.hostname in LOOPBACK or proxy_bypass(host):
        return urllib3.PoolManager(**options)
    proxies = getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy:
        return urllib3.PoolManager(**options)
    proxy = proxy if "://" in proxy else f"http://{proxy}"
    proxy_parts = urlsplit(proxy)
    if proxy_parts.scheme not in ("http", "https"):
        log.warning("couch: %s proxies are not supported; connecting to %s directly",
                    proxy_parts.scheme, safe_url(url))
        return urllib3.PoolManager(**options)
    if proxy_parts.username:
        options["proxy_headers"] = urllib3.make_headers(proxy_basic_auth=(
            f"{unquote(proxy_parts.username)}:{unquote(proxy_parts.password or '')}"))
    return urllib3.ProxyManager(safe_url(proxy), **options)


def _failure_name(exc: Exception) -> str:
    """How a failed request is named in messages: requests' names for urllib3's errors."""
    if isinstance(exc, MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    if not isinstance(exc, HTTPError):
        return type(exc).__name__
    return next((name for kind, name in FAILURES if isinstance(exc, kind)), "ConnectionError")


def _lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The complete lines in a stream of chunks, each as soon as its end arrives."""
    parts: list[bytes] = []
    for chunk in chunks:
        if b"\n" not in chunk:
            parts.append(chunk)
            continue
        first, *lines = chunk.split(b"\n")
        yield b"".join([*parts, first])
        parts = [lines.pop()]
        yield from lines
    if any(parts):
        yield b"".join(parts)


# two helpers, since `Couch.request`'s argument `json` (named as requests names it) hides
# the module there
def _json_body(value: Any) -> bytes:
    return json.dumps(value, allow_nan=False).encode("utf-8")


def _json_answer(body: bytes) -> Any:
    return json.loads(body)


def _in_order_of(docs: list[dict[str, Any]], answers: list[dict[str, Any]]) -> list[dict]:
    """The _bulk_docs answers matched to `docs` by id: PouchDB Server may answer out of order
    (seen when a database with validate_doc_update gets a conflict in the batch)."""
    ids = [doc.get("_id") for doc in docs]
    by_id = {answer.get("id"): answer for answer in answers}
    if None in ids or len(set(ids)) != len(ids) or set(by_id) != set(ids):
        return answers
    return [by_id[i] for i in ids]


def _encode(params: dict[str, Any]) -> dict[str, str]:
    """CouchDB wants JSON for keys and booleans in the query string."""
    out = {}
    for key, value in params.items():
        if value is None:
            continue
        if key in ("since", "feed", "filter", "style", "stale", "update", "rev", "heartbeat",
                   "startkey_docid", "endkey_docid"):
            out[key] = str(value)
        else:
            out[key] = json.dumps(value)
    return out


def inline_attachment(body: bytes, content_type: str) -> dict[str, str]:
    """An attachment written inside the document itself (atomic with the document)."""
    return {"content_type": content_type, "data": base64.b64encode(body).decode("ascii")}


def wait_until_up(couch: Couch, deadline: float) -> None:
    """Wait for the server to answer, up to `deadline` (time.monotonic)."""
    while True:
        try:
            couch.ping()
            return
        except DatabaseUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
