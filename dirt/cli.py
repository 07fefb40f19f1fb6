"""dirt: a CouchDB-backed test farm.

Usage:
  dirt create <path> [--db=<name>] [--couch=<url>] [options]
  dirt couch (start|stop|status|url) [options]
  dirt hosts add <name> [--platform=<p>] [--local] [--ssh=<dest>] [--port=<n>] [--key=<file>] [--python=<exe>] [--slots=<n>] [--label=<l>]... [options]
  dirt hosts list [--json] [options]
  dirt hosts (remove|enable|disable) <name> [options]
  dirt hosts check [<name>] [options]
  dirt tasks [--json] [options]
  dirt submit <record> [<task>...] [--file=<path>] [--meta=<kv>]... [--description=<text>] [--submitter=<who>] [--wait] [--timeout=<s>] [options]
  dirt wait <record> [--timeout=<s>] [options]
  dirt status [<record>] [--json] [--limit=<n>] [options]
  dirt cancel <record> [<task>] [options]
  dirt rerun <record> [<task>] [--failed] [--as=<new>] [options]
  dirt log <record> <task> [--follow] [options]
  dirt artifacts <record> [<task>] [--get=<name>] [--output=<dir>] [--json] [options]
  dirt serve [--drain] [--platform=<p>]... [--hosts=<names>] [--metrics-port=<n>] [options]
  dirt web [--host=<h>] [--port=<n>] [options]
  dirt replicate (<url> [--continuous] [--pull] | --list [--json] | --cancel=<id>) [options]
  dirt (-h | --help)
  dirt --version

Commands:
  create    Make a project folder (dirt.toml, tasks/, README) and its database.
  couch     The embedded CouchDB-compatible server: start, stop, status, or print its URL.
  hosts     Register, list, remove, enable and disable execution hosts.
  tasks     The registered task modules of the project, with their platforms.
  submit    Create a record with its tasks (name[@platform][:key], or --file).
  wait      Wait until a record's tasks have ended; exit with their verdict.
  status    Records with counts by state; one record's tasks with state, host, reason.
  cancel    Cancel a record's pending and running tasks (or some).
  rerun     Run a record's ended tasks again (or some, or the failed), or as a new record.
  log       A task's log; --follow follows a running task to its end.
  artifacts A record's artifacts (or one task's); --get writes them to files.
  serve     Run the master: claim pending tasks and run them on the hosts.
  web       Serve the results web page.
  replicate Replicate the database to or from another CouchDB (kept across restarts).

Options:
  --project=<dir>   The project folder (default: $DIRT_PROJECT, else this folder or a parent).
  -v --verbose      Log more (debug level).
  --log-format=<f>  Log lines as text, or json (one object a line) [default: text].
  -o --output=<dir>  Where `dirt artifacts --get` writes.
  -h --help         Show this help (`dirt <command> --help` for one command).

Exit status: 0 all tasks passed (or the command did what it was asked), 1 some task failed,
2 some task ended error, cancelled or unschedulable, 3 dirt could not do it (the database does
not answer, a wait ran out of time, an internal error), 4 bad usage or input (nothing written).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import getpass
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from docopt import DocoptExit, docopt

from dirt import __version__, client, couchapp, embedded, logs
from dirt.couch import safe_url
from dirt.documents import FINAL, State, attention_order, effective_slots, facts_text, task_spec
from dirt.errors import (
    BAD_INPUT,
    NOT_DONE,
    DatabaseUnavailable,
    DirtError,
    Forbidden,
    InvalidHost,
    InvalidRecord,
    NotAProject,
    UsageError,
    WaitTimeout,
)
from dirt.printable import printable
from dirt.settings import Settings, load
from dirt.shapes import readable_host

HELP = {
    "create": """Usage: dirt create <path> [--db=<name>] [--couch=<url>]

Make a new project folder: dirt.toml (database URL and name, master settings), tasks/ with
example task modules (echo, sleep, shell, pytest_run) and a README; then create the database
and push the design document. Refuses a folder that exists and is not empty.

  --db=<name>     The database name [default: dirt].
  --couch=<url>   A CouchDB server (http://user:pass@host:5984). Without it the project uses
                  the embedded server, started on demand, with its data under .dirt/couch.
""",
    "couch": """Usage: dirt couch (start|stop|status|url)

The embedded CouchDB-compatible server (PouchDB Server, installed once with npm). Its data
lives under the project's .dirt/couch, or under $DIRT_HOME/couch outside a project. With
DIRT_COUCHDB_URL or couchdb.url in dirt.toml, dirt uses that server and never starts its own:
`url` prints it (without credentials) and start/stop say so.
""",
    "hosts": """Usage:
  dirt hosts add <name> --platform=<p> (--local | --ssh=<user@host>) [--port=<n>]
                 [--key=<file>] [--python=<exe>] [--slots=<n>] [--label=<l>]...
  dirt hosts list [--json]
  dirt hosts (remove|enable|disable) <name>
  dirt hosts check [<name>]

A host runs tasks of its platform. --local runs them on this machine (an execnet popen
gateway); --ssh runs them over SSH (only Python is needed there). --slots is how many tasks it
runs at once (default: its CPU count); --label adds labels that tasks can require.
`check` connects to each host (or one) and prints what it is, or the cause when it cannot run
tasks: unreachable, connection refused, host key mismatch, authentication failed, no such
Python. It keeps what it found on the host (alive, facts, last seen, reason), as the master's
own checks do, and exits 1 when a host fails. `list` shows them; its slots column says `4
(cpus)` when the number is the host's CPU count, `?` before any check found it.
""",
    "tasks": """Usage: dirt tasks [--json]

The task modules in the project's tasks/ folder, with their PLATFORMS and TIMEOUT.
""",
    "submit": """Usage: dirt submit <record> [<task>...] [--file=<path>] [--meta=<k=v>]...
                   [--description=<text>] [--submitter=<who>] [--wait]

Create the record <record> and one task per task name and platform. A task is named
`name[@platform][:key]`: `@platform` picks a platform (a bare name runs on the module's
PLATFORMS, else on every registered platform); `:key` tells several runs of one module apart.
--file reads the record from JSON or YAML (description, submitter, meta, tasks with args,
requires and key; see docs/records.md). Nothing is written when anything is wrong (exit 4).

--wait shows progress until every task the record was submitted with has ended, then exits
like `dirt wait`: 0 all passed, 1 some failed, 2 some ended error, unschedulable or
cancelled, 3 not all ended within --timeout seconds (default: no limit) or dirt could not
tell.
""",
    "wait": """Usage: dirt wait <record> [--timeout=<s>]

Wait until every task the record was submitted with is seen in a final state, showing
progress, then print its tasks. Exits 0 when all passed, 1 when some failed, 2 when some
ended error, unschedulable or cancelled, 3 when --timeout seconds ran out first (or the
database stayed away that long: a blip is waited out). A record whose tasks are not all in
the database is never passed.
""",
    "status": """Usage: dirt status [<record>] [--json] [--limit=<n>]

Without <record>: the newest records with their counts by state. With it: the record's tasks
with state, host, duration, attempts and reason, failed and error tasks first. --json prints the documented JSON shape
(docs/cli.md). --limit is how many records [default: 20].
""",
    "cancel": """Usage: dirt cancel <record> [<task>]

Cancel the record's pending and running tasks, or those <task> names: name[@platform][:key],
where a name without a key names the task without one and `name:*` every key. A running
task's process is ended on its host.
""",
    "rerun": """Usage: dirt rerun <record> [<task>] [--failed] [--as=<new>]

Make the record's ended tasks (or those <task> names, as for cancel) pending again. Each task
keeps its earlier run (state, reason, result, host) under "Earlier runs" and its attempts.

  --failed     Only the tasks that did not pass: failed, error, cancelled, unschedulable.
  --as=<new>   Leave the record as it is and submit its tasks (same names, platforms, keys,
               args and requirements) as the new record <new>, so the history keeps both.
""",
    "log": """Usage: dirt log <record> <task> [--follow]

Print a task's log (<task> as for cancel: name[@platform][:key]). --follow keeps printing
what a running task writes until it ends, and then exits like `dirt wait` for that task.
""",
    "artifacts": """Usage: dirt artifacts <record> [<task>] [--get=<name>] [--output=<dir>] [--json]

List the artifacts of a record's tasks (or of those <task> names): task, name, type, size.
--get writes the artifacts of that name (a pattern: --get='*.xml', --get='*') to files in
--output (default: this folder); with more than one task each goes to <dir>/<task>/<name>.
--output=- writes one artifact to standard output.
""",
    "serve": """Usage: dirt serve [--drain] [--platform=<p>]... [--hosts=<names>] [--metrics-port=<n>]

Run the master: follow the database, claim pending tasks, run them on the hosts, write the
results. SIGTERM or Ctrl-C stops taking tasks and lets running ones finish for grace_seconds;
a second one stops at once (unfinished tasks go back to pending). The log names the signal,
what happens to the running tasks and how many went back to pending.

  --drain              Exit 0 once nothing is pending or running.
  --platform=<p>       Only tasks and hosts of this platform (repeatable).
  --hosts=<names>      Only these hosts (comma-separated), to share a farm between masters.
  --metrics-port=<n>   Serve this master's Prometheus metrics on 127.0.0.1:<n>/metrics.

Notifications ([notify] mail and webhooks, [github] commit statuses in dirt.toml) are sent by
the master from a thread of their own; see docs/ecosystem.md.
""",
    "web": """Usage: dirt web [--host=<h>] [--port=<n>]

Serve the results web page (defaults from dirt.toml [web]).
""",
    "replicate": """Usage:
  dirt replicate <url> [--continuous] [--pull]
  dirt replicate --list [--json]
  dirt replicate --cancel=<id>

Replicate the project's database to another CouchDB (or from it, with --pull), through a
document in the server's _replicator database: the server keeps replicating across restarts.
<url> is a database URL (http://user:pass@host:5984/farm); a bare server URL means the same
database name there. Credentials are stored on the server and never printed.

  --continuous     Keep replicating new changes (else replicate once).
  --pull           Replicate from <url> into this project's database.
  --list           The replications of this database: id, direction, remote, state.
  --cancel=<id>    Stop a replication and remove its document.
""",
}

log = logging.getLogger("dirt.cli")


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit status is the table in the module's usage (docs/cli.md)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in HELP and ("-h" in argv or "--help" in argv):
        print(HELP[argv[0]].rstrip())
        return 0
    try:
        args = docopt(__doc__, argv=argv, version=f"dirt {__version__}")
    except DocoptExit as exc:
        print(str(exc).strip(), file=sys.stderr)
        return BAD_INPUT
    try:
        logs.setup(logging.DEBUG if args["--verbose"] else logging.INFO, args["--log-format"])
    except ValueError as exc:
        print(f"dirt: error: {exc}", file=sys.stderr)
        return BAD_INPUT
    if not args["--verbose"]:
        for noisy in ("urllib3", "paramiko"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        code = dispatch(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except DirtError as exc:  # one line, whatever the message quotes (a server's reason, a name)
        print(f"dirt: error: {printable(str(exc), ERROR_LIMIT)}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `dirt status | head`: the reader has gone, nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return PIPE_CLOSED
    except Exception:
        log.exception("dirt: internal error (a bug: please report it with this trace)")
        return NOT_DONE


PIPE_CLOSED = 141  # as a shell reports a command ended by SIGPIPE
ERROR_LIMIT = 1000  # characters of an error line
REASON_WIDTH = 70  # characters of a reason in a table (`--json` has all of it)


def dispatch(args: dict[str, Any]) -> int:
    if args["create"]:
        return cmd_create(args)
    settings = load(args["--project"])
    for name, command in COMMANDS.items():
        if args[name]:
            return command(args, settings)
    raise AssertionError("docopt let through an unknown command")


def needs_project(settings: Settings) -> None:
    if settings.project is None:
        raise NotAProject(
            "not in a dirt project (no dirt.toml here or above): "
            "run `dirt create <path>`, cd into a project, or pass --project"
        )


def cmd_create(args: dict[str, Any]) -> int:
    from dirt import scaffold

    settings = scaffold.create(args["<path>"], args["--db"] or "dirt", args["--couch"])
    couch_url = embedded.server_url(settings, start_server=False)
    print(f"created project {settings.project} (database {settings.database} at "
          f"{safe_url(couch_url)})")
    print(f"next: cd {settings.project} && dirt hosts add local --platform=linux --local")
    return 0


def cmd_couch(args: dict[str, Any], settings: Settings) -> int:
    if settings.couch_url:
        url = safe_url(settings.couch_url)
        if args["url"]:
            print(url)
        elif args["status"]:
            client.Couch(settings.couch_url, settings.database).ping()
            print(f"configured server {url}: answering")
        else:
            print(f"dirt uses the configured server {url}; it does not start or stop it")
        return 0
    if args["start"]:
        status = embedded.start(settings)
        print(f"embedded server running at {status.url} (pid {status.pid}, data "
              f"{status.data_dir})")
        print("stop it with: dirt couch stop")
    elif args["stop"]:
        print("embedded server stopped" if embedded.stop(settings) else "it was not running")
    elif args["status"]:
        status = embedded.status(settings)
        if status.running:
            print(f"running at {status.url} (pid {status.pid}, data {status.data_dir})")
        else:
            print(f"not running (data {status.data_dir})")
            return 1
    else:
        status = embedded.status(settings)
        if not status.running:
            raise DatabaseUnavailable("the embedded server is not running: dirt couch start")
        print(status.url)
    return 0


def cmd_hosts(args: dict[str, Any], settings: Settings) -> int:
    couch = client.connect(settings=settings)
    name = args["<name>"]
    if args["add"]:
        try:
            slots = int(args["--slots"]) if args["--slots"] else None
            port = int(args["--port"]) if args["--port"] else None
        except ValueError:
            raise InvalidHost(f"host {name}: --slots and --port take whole numbers") from None
        doc = client.add_host(
            couch, name, single(args["--platform"], "--platform"), local=args["--local"],
            ssh=args["--ssh"],
            port=port, key=args["--key"], python=args["--python"], slots=slots,
            labels=args["--label"],
        )
        print(f"host {doc['name']} added ({doc['platform']}, "
              f"{'local' if doc['local'] is not None else doc['ssh']['destination']})")
    elif args["list"]:
        hosts = [readable_host(h) for h in client.list_hosts(couch)]
        if args["--json"]:
            print(json.dumps([host_json(h) for h in hosts], indent=2))
        else:
            print(table(
                ["name", "platform", "where", "slots", "labels", "enabled", "alive", "facts",
                 "reason"],
                [[h["name"], h["platform"], where(h), slots_text(h),
                  ",".join(h.get("labels") or []), yes(h.get("enabled")), yes(h.get("alive")),
                  facts_text(h.get("facts") or {}), h.get("reason") or h.get("malformed") or ""]
                 for h in hosts],
            ))
    elif args["check"]:
        return check_hosts(couch, settings, name)
    elif args["remove"]:
        client.remove_host(couch, name)
        print(f"host {name} removed")
    else:
        doc = client.enable_host(couch, name, bool(args["enable"]))
        print(f"host {name} {'enabled' if doc['enabled'] else 'disabled'}")
    return 0


def check_hosts(couch: Any, settings: Settings, name: str | None) -> int:
    names = [name] if name else [h["name"] for h in client.list_hosts(couch)]
    failed = 0
    for host in names:
        diagnosis = client.check_host(couch, host, settings.state_dir / "known_hosts")
        failed += not diagnosis.ok
        print(printable(f"{host}: {'ok' if diagnosis.ok else 'FAILED'}: {diagnosis.message}"),
              flush=True)
    return 1 if failed else 0


def single(values: list[str], option: str) -> str:
    """An option that docopt collects as a list (it is repeatable for another command)."""
    if len(values) > 1:
        raise UsageError(f"{option} is given {len(values)} times; give it once")
    return values[0] if values else ""


def host_json(doc: dict[str, Any]) -> dict[str, Any]:
    keys = ("name", "platform", "labels", "slots", "enabled", "alive", "last_seen", "reason",
            "facts", "ssh", "local")
    return {k: doc.get(k) for k in keys}


def slots_text(host: dict[str, Any]) -> str:
    """`2`, `4 (cpus)` when the number comes from the host's CPU count, `?` until checked."""
    count, source = effective_slots(host)
    return "?" if count is None else f"{count} (cpus)" if source == "cpus" else str(count)


def where(host: dict[str, Any]) -> str:
    if host.get("local") is not None:
        return "local"
    ssh = host.get("ssh") or {}
    return ssh.get("destination", "") + (f":{ssh['port']}" if ssh.get("port") else "")


def yes(value: Any) -> str:
    return {True: "yes", False: "no"}.get(value, "?")


def cmd_tasks(args: dict[str, Any], settings: Settings) -> int:
    needs_project(settings)
    modules = client.Registry(settings.tasks_dir).all()
    if args["--json"]:
        print(json.dumps([{"name": m.name, "platforms": m.platforms, "timeout": m.timeout,
                           "doc": m.doc} for m in modules], indent=2))
        return 0
    print(table(["task", "platforms", "timeout", "what"],
                [[m.name, ",".join(m.platforms) if m.platforms else "any",
                  f"{m.timeout:g} s" if m.timeout else "default", m.doc] for m in modules]))
    return 0


def parse_meta(pairs: list[str]) -> dict[str, str]:
    meta = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidRecord(f"--meta takes key=value, not {pair!r}")
        meta[key] = value
    return meta


def cmd_submit(args: dict[str, Any], settings: Settings) -> int:
    needs_project(settings)
    spec: dict[str, Any] = {}
    if args["--file"]:
        spec = client.load_record_file(args["--file"])
    meta = {**(spec.get("meta") or {}), **parse_meta(args["--meta"])}
    tasks = [*(spec.get("tasks") or []), *args["<task>"]]
    couch = client.connect(settings=settings)
    record, docs = client.submit(
        couch,
        client.Registry(settings.tasks_dir),
        args["<record>"],
        tasks,
        description=args["--description"] or spec.get("description") or "",
        submitter=args["--submitter"] or spec.get("submitter") or getpass.getuser(),
        meta=meta,
    )
    print(submitted(record, docs))
    if not args["--wait"]:
        return 0
    return wait_and_show(couch, record["name"], args)


def submitted(record: dict[str, Any], docs: list[dict[str, Any]]) -> str:
    return (f"record {record['name']}: {len(docs)} tasks submitted "
            f"({', '.join(task_spec(d) for d in docs)})")


def wait_and_show(couch: Any, name: str, args: dict[str, Any]) -> int:
    """Wait for the record, show its tasks, exit with their verdict (3: no verdict)."""
    timeout = seconds(args["--timeout"], "--timeout") if args["--timeout"] else None
    try:
        status = client.wait(couch, name, timeout=timeout, on_progress=print_progress)
    except WaitTimeout:
        print(status_table(client.record_status(couch, name)))
        raise
    print(status_table(status))
    return client.exit_code(status)


def seconds(value: str, option: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number >= 0:
        raise UsageError(f"{option} takes a number of seconds, not {value!r}")
    return number


def print_progress(status: dict[str, Any]) -> None:
    record = status["record"]
    counts = ", ".join(f"{n} {s}" for s, n in sorted(record["counts"].items()))
    missing = len(record["missing"])
    print(printable(f"{record['name']}: {counts or 'no tasks seen'}"
                    + (f", {missing} not in the database yet" if missing else "")), flush=True)


def cmd_wait(args: dict[str, Any], settings: Settings) -> int:
    return wait_and_show(client.connect(settings=settings), args["<record>"], args)


def cmd_status(args: dict[str, Any], settings: Settings) -> int:
    couch = client.connect(settings=settings)
    if args["<record>"]:
        status = client.record_status(couch, args["<record>"])
        print(json.dumps(status, indent=2) if args["--json"] else status_table(status))
        return 0
    limit = whole_number(args["--limit"] or "20", "--limit")
    records = client.list_records(couch, limit=limit)
    if args["--json"]:
        print(json.dumps({"records": records}, indent=2))
        return 0
    states = [s.value for s in State]
    print(table(["record", "created", "state", "tasks", *states],
                [[r["name"], r["created"][:19].replace("T", " "), r["state"], r["total"],
                  *[r["counts"].get(s, "") for s in states]] for r in records]))
    return 0


def status_table(status: dict[str, Any]) -> str:
    """A record's tasks, failed and error first, and the tasks it lacks."""
    record = status["record"]
    head = printable(f"record {record['name']}: {record['state']} ({record['total']} tasks)")
    rows = [[t["spec"], t["state"], t.get("host") or "",
             f"{t['duration']:.1f} s" if t.get("duration") is not None else "",
             t.get("attempts") or 0, printable(t.get("reason") or "")[:REASON_WIDTH]]
            for t in attention_order(status["tasks"])]
    rows += [[task_id, "missing", "", "", "", "submitted with the record, not in the database"]
             for task_id in record.get("missing") or []]
    return head + "\n" + table(["task", "state", "host", "duration", "attempts", "reason"], rows)


def one_task(args: dict[str, Any]) -> str | None:
    """<task> is a list for docopt (submit takes several); the other commands take one."""
    tasks = args["<task>"]
    if len(tasks) > 1:
        raise UsageError(f"give one task spec, not {len(tasks)} ({' '.join(tasks)})")
    return tasks[0] if tasks else None


def cmd_cancel(args: dict[str, Any], settings: Settings) -> int:
    couch = client.connect(settings=settings)
    count = client.cancel(couch, args["<record>"], one_task(args))
    print(f"record {args['<record>']}: {count} tasks cancelled")
    return 0


def cmd_rerun(args: dict[str, Any], settings: Settings) -> int:
    couch = client.connect(settings=settings)
    if args["--as"]:
        needs_project(settings)
        record, docs = client.rerun_as(
            couch, client.Registry(settings.tasks_dir), args["<record>"], args["--as"],
            one_task(args), failed=args["--failed"], submitter=getpass.getuser(),
        )
        print(submitted(record, docs) + f", a re-run of {args['<record>']}")
        return 0
    count = client.rerun(couch, args["<record>"], one_task(args), failed=args["--failed"])
    print(f"record {args['<record>']}: {count} tasks pending again")
    return 0


VERDICT = {State.SUCCESS: 0, State.FAILED: 1}  # any other final state: 2


def cmd_log(args: dict[str, Any], settings: Settings) -> int:
    couch = client.connect(settings=settings)
    record, task = args["<record>"], one_task(args) or ""
    if not args["--follow"]:
        sys.stdout.write(client.task_log(couch, record, task)["text"])
        return 0
    part: dict[str, Any] = {}
    for part in client.follow_log(couch, record, task):
        if part["reset"] and part["offset"] == 0 and part["size"]:
            print(f"[dirt: the log of {part['spec']} started again]", file=sys.stderr)
        sys.stdout.write(part["text"])
        sys.stdout.flush()
    state = State(part["state"])
    print(f"[dirt: {part['spec']} {state}]", file=sys.stderr)
    return VERDICT.get(state, 2) if state in FINAL else NOT_DONE


def cmd_artifacts(args: dict[str, Any], settings: Settings) -> int:
    couch = client.connect(settings=settings)
    record, task = args["<record>"], one_task(args)
    files = client.artifacts(couch, record, task)
    if args["--get"]:
        return get_artifacts(couch, record, files, args["--get"], args["--output"] or ".")
    if args["--json"]:
        print(json.dumps(files, indent=2))
    else:
        print(table(["task", "name", "type", "size"],
                    [[f["task"], f["name"], f["content_type"], f["length"]] for f in files]))
    return 0


def get_artifacts(couch: Any, record: str, files: list[dict[str, Any]], pattern: str,
                  output: str) -> int:
    """Write the artifacts whose name matches `pattern` under `output` (`-`: stdout)."""
    chosen = [f for f in files if fnmatch.fnmatchcase(f["name"], pattern)]
    if not chosen:
        raise InvalidRecord(f"record {record}: no artifact named {pattern!r}"
                            + (f" (there are: {', '.join(sorted({f['name'] for f in files})[:8])})"
                               if files else " (it has none)"))
    if output == "-":
        if len(chosen) > 1:
            raise UsageError(f"--output=- writes one artifact; {pattern!r} names {len(chosen)}")
        sys.stdout.buffer.write(client.get_artifact(couch, record, chosen[0]["task"],
                                                    chosen[0]["name"]))
        sys.stdout.flush()
        return 0
    several_tasks = len({f["task"] for f in chosen}) > 1
    targets = [(f, Path(output) / (Path(f["task"]) if several_tasks else Path())
                / client.safe_path(f["name"])) for f in chosen]  # all checked before writing
    for file, target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(client.get_artifact(couch, record, file["task"], file["name"]))
        print(printable(f"{target} ({file['length']} bytes, {file['task']})"))
    return 0


def cmd_serve(args: dict[str, Any], settings: Settings) -> int:
    from dirt import notify
    from dirt.master import Master

    needs_project(settings)
    couch = client.connect(settings=settings)
    hosts = [h for h in (args["--hosts"] or "").split(",") if h]
    listeners: list[Any] = []
    server = metrics = None
    if args["--metrics-port"]:
        from dirt.metrics import MasterMetrics

        metrics = MasterMetrics()
        listeners.append(metrics)
        server = metrics.serve(whole_number(args["--metrics-port"], "--metrics-port"))
        log.info("master: metrics at %s", server.url)
    counted = metrics.notified if metrics else None
    notifier = notify.Notifier(couch, settings, on_outcome=counted) \
        if notify.enabled(settings) else None
    if notifier:
        listeners.append(notifier)
        notifier.start()
    master = Master(couch, settings, platforms=args["--platform"] or None,
                    host_names=hosts or None, listeners=listeners)
    try:
        return master.run(drain=args["--drain"])
    finally:
        if notifier:
            notifier.stop()
        if server:
            server.close()


def whole_number(value: str, option: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"{option} takes a whole number, not {value!r}") from None


def cmd_web(args: dict[str, Any], settings: Settings) -> int:
    from dirt.web import create_app, server

    host = args["--host"] or settings.web.host
    port = whole_number(args["--port"], "--port") if args["--port"] else settings.web.port
    sock = server.bind(host, port)  # a port in use fails here, before any URL is printed
    couch = client.connect(settings=settings)
    try:
        couchapp.push(couch)
    except Forbidden as exc:  # a read-only replica: show what is there
        log.warning("web: the design document cannot be updated here: %s", exc)
    couchapp.warm(couch)
    web = dataclasses.replace(settings.web, host=host)  # --host is a name of this server
    app = create_app(settings.with_(web=web), couch)
    print(f"dirt web page at {server.url(host, sock)}", flush=True)
    server.serve(app, sock, threads=web.threads, max_body=web.max_body_bytes)
    return 0


def cmd_replicate(args: dict[str, Any], settings: Settings) -> int:
    from dirt import replication

    couch = client.connect(settings=settings)
    if args["--cancel"]:
        done = replication.cancel(couch, args["--cancel"])
        print(f"replication {done.id} cancelled ({done.direction} {done.remote})")
        return 0
    if args["--list"]:
        found = replication.listing(couch)
        if args["--json"]:
            print(json.dumps([r.to_json() for r in found], indent=2))
            return 0
        print(table(["id", "direction", "remote", "continuous", "state", "reason"],
                    [[r.id, r.direction, r.remote, yes(r.continuous), r.state, r.reason[:60]]
                     for r in found]))
        return 0
    started = replication.start(couch, args["<url>"], continuous=args["--continuous"],
                                pull=args["--pull"])
    how = "continuous" if started.continuous else "one-shot"
    way = "from" if started.direction == "pull" else "to"
    print(f"replication {started.id}: {how} {started.direction} {way} {started.remote} "
          f"({started.state})")
    print(f"follow it with: dirt replicate --list; stop it with: dirt replicate --cancel "
          f"{started.id}")
    return 0


COMMANDS = {
    "couch": cmd_couch,
    "hosts": cmd_hosts,
    "tasks": cmd_tasks,
    "submit": cmd_submit,
    "status": cmd_status,
    "cancel": cmd_cancel,
    "rerun": cmd_rerun,
    "wait": cmd_wait,
    "log": cmd_log,
    "artifacts": cmd_artifacts,
    "serve": cmd_serve,
    "web": cmd_web,
    "replicate": cmd_replicate,
}


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain text table, columns as wide as their widest cell; what a cell holds is shown
    with its control characters escaped (it may come from a task, a host or a document)."""
    cells = [[str(c) for c in headers]] + [[printable(str(c)) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    return "\n".join(lines) if rows else lines[0] + "\n(none)"


if __name__ == "__main__":
    sys.exit(main())
