"""The errors a user can act on. The CLI prints their message on one line and exits with the
error's `exit_status` (docs/cli.md): 4 for bad usage or input (refused, nothing written), 3 when
dirt itself could not do it (the database does not answer, a wait ran out of time)."""

BAD_INPUT = 4
NOT_DONE = 3


class DirtError(Exception):
    """Root of every error dirt raises on purpose."""

    exit_status = NOT_DONE


class UsageError(DirtError, ValueError):
    """A command was given options or values it cannot take."""

    exit_status = BAD_INPUT


class ConfigError(DirtError, ValueError):
    """A setting, a config file or a project folder is wrong."""

    exit_status = BAD_INPUT


class NotAProject(ConfigError):
    """The folder is not a dirt project (no dirt.toml)."""


class PortInUse(ConfigError):
    """Another program already listens on the host and port a dirt server was told to use."""


class DatabaseUnavailable(DirtError, ConnectionError):
    """The CouchDB server does not answer (the URL is named, never its credentials), or
    answers a server error: then `status` is its HTTP status, else None."""

    status: int | None = None


class DatabaseError(DirtError):
    """The CouchDB server answered with an error status."""

    def __init__(self, message: str, status: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class Conflict(DatabaseError):
    """A write with a stale _rev: somebody else wrote the document first."""


class NotFound(DatabaseError):
    """No such document or database."""


class Forbidden(DatabaseError):
    """The validate_doc_update function or the server's security refused a write."""


class InvalidRecord(DirtError, ValueError):
    """A submitted record is malformed or already exists, or names a task it does not have."""

    exit_status = BAD_INPUT


class UnknownTask(InvalidRecord):
    """A record names a task that is not registered in the project's tasks/ folder."""


class InvalidHost(DirtError, ValueError):
    """A host specification is malformed or names an unknown host."""

    exit_status = BAD_INPUT


class Malformed(DirtError, ValueError):
    """A document or a host's message has not the shape dirt reads (shapes.py); the message
    names the field and what is wrong with it; `fields` are the names of the wrong fields."""

    def __init__(self, message: str, fields: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.fields = fields


class WaitTimeout(DirtError, TimeoutError):
    """A record's tasks had not all ended when the wait ran out of time."""


class HostUnreachable(DirtError):
    """A host cannot be reached over SSH (or its Python cannot be started)."""


class EmbeddedServerError(DirtError):
    """The embedded CouchDB-compatible server cannot be installed or started."""


class NotificationFailed(DirtError):
    """A notification (mail, webhook, commit status) could not be sent; `permanent` when
    trying again cannot help (refused credentials, a rejected address)."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent
