"""`dirt hosts check`: why a host cannot run tasks, in words a user can act on.

For an SSH host it walks the path a gateway takes with paramiko, one step at a time, so the
first failing step names the cause: unreachable, connection refused, host key mismatch,
authentication failed, no such Python. Then it asks the host for its facts through a real
execnet gateway, as the master would.
"""

from __future__ import annotations

import shlex
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import execnet
import paramiko

from dirt.documents import facts_text
from dirt.errors import HostUnreachable, Malformed
from dirt.remote import Gateway, gateway_spec
from dirt.shapes import parse_facts, parse_host

TIMEOUT = 10.0


@dataclass
class Diagnosis:
    host: str
    ok: bool
    message: str
    facts: dict[str, Any] = field(default_factory=dict)


def check_host(host: dict[str, Any], known_hosts: Path) -> Diagnosis:
    """Diagnose one host document; never raises for a host fault."""
    name = host["name"]
    try:
        shape = parse_host(host)
    except Malformed as exc:
        return Diagnosis(name, False, f"host {name}: {exc}")
    if host.get("ssh"):
        try:
            check_ssh(host["ssh"], known_hosts)
        except HostUnreachable as exc:
            return Diagnosis(name, False, str(exc))
    gateway = Gateway(name, gateway_spec(shape, known_hosts), execnet.Group())
    try:
        facts = parse_facts(gateway.facts(timeout=TIMEOUT))
    except (HostUnreachable, Malformed) as exc:
        return Diagnosis(name, False, f"host {name}: {exc}" if isinstance(exc, Malformed)
                         else str(exc))
    finally:
        gateway.close()
    summary = f"{facts_text(facts)}, hostname {facts['hostname']}"
    return Diagnosis(name, True, summary, facts)


def split_destination(destination: str) -> tuple[str, str]:
    user, _, address = destination.rpartition("@")
    return (user or _default_user()), address


def _default_user() -> str:
    import getpass

    return getpass.getuser()


def check_ssh(ssh: dict[str, Any], known_hosts: Path) -> None:
    """Each step of an SSH connection; HostUnreachable names the first that fails."""
    user, address = split_destination(ssh["destination"])
    port = int(ssh.get("port") or 22)
    where = f"{user}@{address}:{port}"
    try:
        sock = socket.create_connection((address, port), timeout=TIMEOUT)
    except ConnectionRefusedError:
        raise HostUnreachable(
            f"{where}: connection refused (is sshd running on port {port}?)"
        ) from None
    except TimeoutError:
        raise HostUnreachable(f"{where}: unreachable (no answer in {TIMEOUT:g} s)") from None
    except OSError as exc:
        raise HostUnreachable(f"{where}: unreachable ({exc.strerror or exc})") from None
    transport = paramiko.Transport(sock)
    try:
        try:
            transport.start_client(timeout=TIMEOUT)
        except paramiko.SSHException as exc:
            raise HostUnreachable(f"{where}: no SSH server answers there ({exc})") from None
        check_host_key(transport, address, port, known_hosts, where)
        authenticate(transport, user, ssh.get("key"), where)
        check_python(transport, ssh.get("python") or "python3", where)
    finally:
        transport.close()


def check_host_key(
    transport: paramiko.Transport, address: str, port: int, known_hosts: Path, where: str
) -> None:
    key = transport.get_remote_server_key()
    entry = address if port == 22 else f"[{address}]:{port}"
    known = paramiko.HostKeys()
    if known_hosts.is_file():
        known.load(str(known_hosts))
    recorded = known.lookup(entry)
    if recorded is None or key.get_name() not in recorded:
        return  # first contact: the gateway records it (StrictHostKeyChecking=accept-new)
    if recorded[key.get_name()] != key:
        raise HostUnreachable(
            f"{where}: host key mismatch: the host now shows a different "
            f"{key.get_name()} key than {known_hosts} records (remove the line for {entry} "
            "there if the host was reinstalled)"
        )


def authenticate(
    transport: paramiko.Transport, user: str, key_file: str | None, where: str
) -> None:
    if key_file:
        try:
            key = paramiko.PKey.from_path(key_file)
        except (OSError, paramiko.SSHException) as exc:
            raise HostUnreachable(f"{where}: cannot read key {key_file}: {exc}") from None
        try:
            transport.auth_publickey(user, key)
        except paramiko.AuthenticationException:
            raise HostUnreachable(
                f"{where}: authentication failed with key {key_file} "
                f"(is its public key in ~{user}/.ssh/authorized_keys?)"
            ) from None
        return
    agent_keys = paramiko.Agent().get_keys()
    default_keys = [p for p in (Path.home() / ".ssh").glob("id_*") if p.suffix != ".pub"]
    for candidate in [*agent_keys, *default_keys]:
        try:
            key = candidate if isinstance(candidate, paramiko.PKey) else \
                paramiko.PKey.from_path(candidate)
            transport.auth_publickey(user, key)
            return
        except (OSError, paramiko.SSHException):
            continue
    raise HostUnreachable(f"{where}: authentication failed (no key given, and neither the "
                          "agent's keys nor ~/.ssh/id_* were accepted)")


def check_python(transport: paramiko.Transport, python: str, where: str) -> None:
    channel = transport.open_session(timeout=TIMEOUT)
    channel.settimeout(TIMEOUT)
    channel.exec_command(f"{shlex.quote(python)} -c 'import sys; print(sys.version_info[0])'")
    output = channel.makefile("rb").read().decode("utf-8", "replace").strip()
    status = channel.recv_exit_status()
    if status != 0:
        raise HostUnreachable(f"{where}: no such Python: {python!r} (exit status {status})")
    if output != "3":
        raise HostUnreachable(f"{where}: {python!r} is not Python 3 (it says {output!r})")


def explain(host: dict[str, Any], known_hosts: Path, error: Exception) -> str:
    """A clear cause for a gateway that would not open or stopped answering: the first SSH
    step that fails (execnet itself only says HostNotFound with the ssh command line)."""
    if not host.get("ssh"):
        return str(error)
    try:
        check_ssh(host["ssh"], known_hosts)
    except HostUnreachable as exc:
        return f"host {host['name']}: {exc}"
    return str(error)
