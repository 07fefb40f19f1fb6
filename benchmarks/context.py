"""What a scenario is given: sizes, a work folder, the process registry and the shared server."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import CouchServer, Processes


@dataclass
class Context:
    workdir: Path
    procs: Processes
    quick: bool = False
    profile: bool = False
    sizes: list[int] = field(default_factory=list)  # scale: tasks in the database
    results: dict[str, Any] = field(default_factory=dict)  # earlier scenarios of this run
    _server: CouchServer | None = None

    @property
    def server(self) -> CouchServer:
        """One PouchDB Server for the scenarios that do not restart theirs."""
        if self._server is None:
            self._server = CouchServer(self.procs, self.workdir / "couch")
            self._server.start()
        return self._server

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full
