"""notify.py: mail over a real SMTP server (aiosmtpd), JSON webhooks to a real HTTP server,
retries, outcomes on the record, one sender among several notifiers, and a master that never
waits for any of it.
"""

from __future__ import annotations

import datetime
import email
import email.policy
import ipaddress
import re
import ssl
import time
from dataclasses import replace
from textwrap import dedent

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from conftest import free_port
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from httpd import Recorder

from dirt import client, documents, hooks
from dirt.errors import ConfigError, NotificationFailed
from dirt.master import Master
from dirt.notify import Email, Message, Notifier
from dirt.settings import (
    EmailSettings,
    MasterSettings,
    NotifySettings,
    WebhookSettings,
    WebSettings,
    load,
)
from dirt.web import create_app

FAIL_TASK = '''"""Fail on purpose."""


def execute(ctx):
    return {"success": False, "reason": "2 tests failed"}
'''


class Mailbox:
    """A real SMTP server on a free loopback port; `messages` are parsed mails."""

    def __init__(self) -> None:
        self.envelopes: list = []
        self.controller = Controller(self, hostname="127.0.0.1", port=free_port())
        self.controller.start()
        self.port = self.controller.port

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
        self.envelopes.append(envelope)
        return "250 OK"

    @property
    def messages(self) -> list[email.message.EmailMessage]:
        return [email.message_from_bytes(e.content, policy=email.policy.default)
                for e in self.envelopes]

    def close(self) -> None:
        self.controller.stop()


@pytest.fixture
def mailbox():
    box = Mailbox()
    yield box
    box.close()


@pytest.fixture
def receiver():
    server = Recorder()
    yield server
    server.close()


class Bench:
    """A project with notifications configured, its masters and notifiers (stopped after)."""

    def __init__(self, settings, mailbox: Mailbox, receiver: Recorder) -> None:
        self.mailbox = mailbox
        self.receiver = receiver
        self.settings = settings.with_(
            master=MasterSettings(tick_seconds=0.05, log_flush_seconds=0.2,
                                  health_interval=5.0),
            web=WebSettings(url="https://dirt.example.org"),
            notify=NotifySettings(
                email=EmailSettings(to=("team@example.org", "lead@example.org"),
                                    sender="dirt@example.org", smtp_host="127.0.0.1",
                                    smtp_port=mailbox.port),
                webhooks=(WebhookSettings(url=f"{receiver.url}/hooks/T0/B0/tok3n",
                                          secret="whsec"),),
                attempts=3, backoff_seconds=0.05, timeout_seconds=5.0,
            ),
        )
        self.couch = client.connect(settings=self.settings)
        self.registry = client.Registry(self.settings.tasks_dir)
        (self.settings.tasks_dir / "fail.py").write_text(FAIL_TASK)
        client.add_host(self.couch, "local", "linux", local=True)
        self.notifiers: list[Notifier] = []
        self.masters: list[Master] = []

    def configure(self, **notify) -> None:
        self.settings = self.settings.with_(notify=replace(self.settings.notify, **notify))

    def submit(self, name: str, *tasks: str, **record) -> None:
        client.submit(self.couch, self.registry, name, list(tasks), **record)

    def notifier(self) -> Notifier:
        notifier = Notifier(self.couch, self.settings, poll_seconds=0.1)
        notifier.start()
        self.notifiers.append(notifier)
        return notifier

    def master(self, *listeners) -> Master:
        master = Master(self.couch, self.settings, self.registry, listeners=list(listeners))
        self.masters.append(master)
        master.start()
        return master

    def drain(self, master: Master, timeout: float = 30.0) -> float:
        """Run the master until idle; the longest pass of its loop, in seconds."""
        deadline, longest = time.monotonic() + timeout, 0.0
        while not master.idle():
            assert time.monotonic() < deadline, "the master never became idle"
            start = time.monotonic()
            master.loop_once(wait=0.05)
            longest = max(longest, time.monotonic() - start)
        return longest

    def notifications(self, record: str, count: int, timeout: float = 20.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            found = client.get_record(self.couch, record).get("notifications") or []
            if len(found) >= count:
                return found
            assert time.monotonic() < deadline, f"{record}: {len(found)} notifications"
            time.sleep(0.05)

    def close(self) -> None:
        for notifier in self.notifiers:
            notifier.stop(timeout=10)
        for master in self.masters:
            master.teardown()


@pytest.fixture
def bench(project, mailbox, receiver):
    bench = Bench(project, mailbox, receiver)
    yield bench
    bench.close()


def test_record_end_sends_mail_and_webhook(bench):
    bench.submit("rev-1", "echo@linux", "fail@linux", meta={"revision": "abc123"})
    notifier = bench.notifier()
    master = bench.master(notifier)
    bench.drain(master)
    entries = bench.notifications("rev-1", 2)
    assert [(e["kind"], e["ok"], e["attempts"], e["event"]) for e in entries] == [
        ("email", True, 1, "ended"), ("webhook", True, 1, "ended")]
    assert entries[0]["target"] == "team@example.org, lead@example.org"
    assert entries[1]["target"] == bench.receiver.url  # the token in the path is not kept

    (mail,) = bench.mailbox.messages
    assert mail["Subject"] == "[dirt] rev-1: failed (1 failed, 1 success)"
    assert mail["From"] == "dirt@example.org"
    assert mail["To"] == "team@example.org, lead@example.org"
    assert bench.mailbox.envelopes[0].rcpt_tos == ["team@example.org", "lead@example.org"]
    text = mail.get_content()
    assert "Record rev-1 ended: failed" in text
    assert "echo@linux  success" in text
    assert "fail@linux  failed         2 tests failed" in text
    assert "revision: abc123" in text
    assert "https://dirt.example.org/records/rev-1" in text

    (post,) = bench.receiver.requests
    assert post.path == "/hooks/T0/B0/tok3n"
    assert post.headers["Content-Type"] == "application/json"
    assert post.headers["X-Dirt-Event"] == "record.ended"
    assert hooks.signature_ok("whsec", post.body, post.headers["X-Dirt-Signature-256"])
    payload = post.json()
    assert payload["event"] == "record.ended"
    assert payload["url"] == "https://dirt.example.org/records/rev-1"
    assert payload["record"]["name"] == "rev-1" and payload["record"]["state"] == "failed"
    assert payload["record"]["counts"] == {"success": 1, "failed": 1}
    assert [(t["task"], t["state"]) for t in payload["tasks"]] == [
        ("echo@linux", "success"), ("fail@linux", "failed")]


def test_on_failure_only_and_nothing_configured(bench):
    bench.configure(webhooks=(WebhookSettings(url=bench.receiver.url, on="failure"),))
    bench.submit("green", "echo@linux")
    master = bench.master(bench.notifier())
    bench.drain(master)
    entries = bench.notifications("green", 1)
    time.sleep(0.5)
    assert [e["kind"] for e in client.get_record(bench.couch, "green")["notifications"]] == [
        "email"]
    assert bench.mailbox.messages[0]["Subject"] == "[dirt] green: success (1 success)"
    assert bench.receiver.requests == [] and entries[0]["ok"]


def test_a_cancel_by_a_user_is_noticed_without_a_master(bench):
    bench.submit("stopped", "echo@linux", "fail@linux")
    bench.notifier()
    assert client.cancel(bench.couch, "stopped") == 2
    bench.notifications("stopped", 2)
    assert bench.mailbox.messages[0]["Subject"] == "[dirt] stopped: cancelled (2 cancelled)"


def test_retries_with_backoff_then_records_the_failure(bench):
    calls = {"flaky": 0}

    def respond(request):
        if request.path == "/flaky":
            calls["flaky"] += 1
            return (500, {}) if calls["flaky"] < 3 else (204, {})
        if request.path == "/gone":
            return 404, {"message": "no such hook"}
        return 503, {}

    bench.receiver.respond = respond
    url = bench.receiver.url
    bench.configure(webhooks=tuple(WebhookSettings(url=f"{url}/{p}")
                                   for p in ("flaky", "down", "gone")),
                    email=replace(bench.settings.notify.email, smtp_port=free_port()))
    bench.submit("r", "echo@linux")
    bench.notifier()
    client.cancel(bench.couch, "r")
    entries = {e["target"] + e["kind"]: e for e in bench.notifications("r", 4)}
    mail = entries["team@example.org, lead@example.orgemail"]
    assert (mail["ok"], mail["attempts"]) == (False, 3)
    assert "ConnectionRefusedError" in mail["error"]
    hooks_sent = [e for e in bench.notifications("r", 4) if e["kind"] == "webhook"]
    assert [(e["ok"], e["attempts"]) for e in hooks_sent] == [(True, 3), (False, 3), (False, 1)]
    assert hooks_sent[1]["error"] == f"{url} answered 503 Service Unavailable"
    assert hooks_sent[2]["error"] == f"{url} answered 404 Not Found"
    flaky = [r.at for r in bench.receiver.requests if r.path == "/flaky"]
    assert flaky[2] - flaky[1] >= flaky[1] - flaky[0] >= 0.04  # 0.05 s, then 0.1 s


def test_the_master_never_waits_for_a_slow_receiver(bench):
    def slow(request):
        time.sleep(3)
        return 200, {}

    bench.receiver.respond = slow
    bench.submit("slow", "echo@linux")
    master = bench.master(bench.notifier())
    started = time.monotonic()
    longest = bench.drain(master)
    assert longest < 1.0
    bench.receiver.wait_for(1)
    assert time.monotonic() - started < 3.0
    assert len(client.get_record(bench.couch, "slow").get("notifications") or []) < 2
    entries = bench.notifications("slow", 2)
    assert all(e["ok"] for e in entries)


def test_several_notifiers_send_once(bench):
    bench.submit("once", "echo@linux")
    first, second = bench.notifier(), bench.notifier()
    client.cancel(bench.couch, "once")
    bench.notifications("once", 2)
    time.sleep(1.0)  # both have seen the record end by now
    assert len(bench.mailbox.messages) == 1 and len(bench.receiver.requests) == 1
    assert client.get_record(bench.couch, "once")["notify"]["by"] in (first.id, second.id)


def test_what_ended_while_no_notifier_ran_is_sent_later(bench):
    bench.submit("late", "echo@linux")
    bench.notifier().stop()
    client.cancel(bench.couch, "late")
    time.sleep(0.3)
    assert bench.mailbox.messages == []
    bench.notifier()
    bench.notifications("late", 2)
    assert len(bench.mailbox.messages) == 1


def test_a_rerun_that_ends_again_is_sent_again(bench):
    bench.submit("again", "echo@linux")
    bench.notifier()
    client.cancel(bench.couch, "again")
    bench.notifications("again", 2)
    client.rerun(bench.couch, "again")
    client.cancel(bench.couch, "again")
    bench.notifications("again", 4)
    assert len(bench.mailbox.messages) == 2


def test_notify_settings_are_read_and_checked(tmp_path):
    def config(body: str, environ=None):
        (tmp_path / "dirt.toml").write_text(dedent(body))
        return load(str(tmp_path), environ=environ or {})

    settings = config("""
        [notify]
        attempts = 4
        [notify.email]
        to = "team@example.org"
        smtp_port = 2525
        security = "starttls"
        username = "dirt"
        [[notify.webhook]]
        url = "https://chat.example.org/hooks/x"
        on = "failure"
        """, {"DIRT_SMTP_PASSWORD": "pw-from-env"})
    notify = settings.notify
    assert notify.attempts == 4
    assert notify.email.to == ("team@example.org",) and notify.email.smtp_port == 2525
    assert notify.email.password == "pw-from-env" and "pw-from-env" not in repr(settings)
    assert notify.webhooks[0].on == "failure"
    with pytest.raises(ConfigError, match="notify.email.security must be one of"):
        config('[notify.email]\nto = ["a@b"]\nsecurity = "tls"\n')
    with pytest.raises(ConfigError, match="notify.email.to: give at least one address"):
        config("[notify.email]\nsender = 'a@b'\n")
    with pytest.raises(ConfigError, match=r"notify.webhook\[0\].url must be an http"):
        config('[[notify.webhook]]\nurl = "chat.example.org"\n')
    with pytest.raises(ConfigError, match="notify.email.smtp_port: not a number"):
        config('[notify.email]\nto = ["a@b"]\nsmtp_port = "twenty-five"\n')


# -- mail over TLS, with a login ------------------------------------------------------------


def certificates(folder):
    """A CA of the test's own and a certificate it signs for 127.0.0.1 (PEM files)."""

    def name(text):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    def cert(subject, key, issuer, issuer_key, ca, extra=()):
        now = datetime.datetime.now(datetime.UTC)
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                                  critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       issuer_key.public_key()), critical=False))
        for extension in extra:
            builder = builder.add_extension(extension, critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = cert(name("dirt test CA"), ca_key, name("dirt test CA"), ca_key, True,
              [x509.KeyUsage(False, False, False, False, False, True, True, False, False)])
    server = cert(name("127.0.0.1"), key, ca.subject, ca_key, False, [
        x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                     x509.DNSName("localhost")])])
    paths = {n: folder / f"{n}.pem" for n in ("ca", "cert", "key")}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return paths


class SecureMailbox(Mailbox):
    """A real SMTP server that speaks TLS (STARTTLS, or TLS from the first byte) and wants a
    login over it."""

    def __init__(self, certs, security: str) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(certs["cert"], certs["key"])
        self.logins: list[tuple[bytes, bool]] = []

        def authenticator(server, session, envelope, mechanism, auth):
            ok = (auth.login, auth.password) == (b"dirt", b"s3cret")
            self.logins.append((auth.login, ok))
            return AuthResult(success=ok, handled=False)

        self.envelopes = []
        tls = {"tls_context": context, "require_starttls": True} if security == "starttls" \
            else {"ssl_context": context}
        self.controller = Controller(self, hostname="127.0.0.1", port=free_port(),
                                     authenticator=authenticator,
                                     auth_require_tls=security == "starttls", **tls)
        self.controller.start()
        self.port = self.controller.port


def ended(name: str) -> Message:
    return Message("ended", {"name": name, "description": "", "submitter": "", "meta": {},
                             "created": "2026-11-23T08:00:00.000000Z"},
                   {"counts": {"success": 1}, "total": 1, "state": "success"}, [],
                   f"https://dirt.example.org/records/{name}")


@pytest.mark.parametrize("security", ["starttls", "ssl"])
def test_mail_over_tls_with_a_login(tmp_path, monkeypatch, security):
    certs = certificates(tmp_path)
    box = SecureMailbox(certs, security)
    try:
        config = EmailSettings(to=("team@example.org",), sender="dirt@example.org",
                               smtp_host="127.0.0.1", smtp_port=box.port, security=security,
                               username="dirt", password="s3cret")
        # the server's certificate is checked: not trusted, nothing is sent, and it says why
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "nothing-trusted.pem"))
        with pytest.raises(NotificationFailed, match="CERTIFICATE_VERIFY_FAILED") as caught:
            Email(config).send(ended("rev-1"), timeout=10)
        assert not caught.value.permanent and box.envelopes == []

        monkeypatch.setenv("SSL_CERT_FILE", str(certs["ca"]))  # our CA: trusted
        Email(config).send(ended("rev-2"), timeout=10)
        (mail,) = box.messages
        assert mail["Subject"] == "[dirt] rev-2: success (1 success)"
        assert box.logins == [(b"dirt", True)]

        wrong = replace(config, password="wrong")
        with pytest.raises(NotificationFailed, match="SMTP: 535") as caught:
            Email(wrong).send(ended("rev-3"), timeout=10)
        assert caught.value.permanent and len(box.envelopes) == 1
    finally:
        box.close()


def test_outcomes_are_shown_on_the_record_page_and_in_its_api(bench):
    closed = free_port()
    bench.configure(webhooks=(*bench.settings.notify.webhooks,
                              WebhookSettings(url=f"http://127.0.0.1:{closed}/hooks/x")))
    bench.couch.put(documents.new_record("quiet"))  # no tasks: nothing is ever sent for it
    bench.submit("shown", "echo@linux", "fail@linux")
    bench.drain(bench.master(bench.notifier()))
    bench.notifications("shown", 3)
    web = create_app(bench.settings, bench.couch).test_client()

    outcomes = web.get("/api/v1/records/shown").get_json()["record"]["notifications"]
    assert [(n["kind"], n["target"], n["event"], n["ok"], n["attempts"]) for n in outcomes] == [
        ("email", "team@example.org, lead@example.org", "ended", True, 1),
        ("webhook", bench.receiver.url, "ended", True, 1),
        ("webhook", f"http://127.0.0.1:{closed}", "ended", False, 3)]
    assert outcomes[2]["error"] == f"http://127.0.0.1:{closed} does not answer (ConnectionError)"
    assert all(n["at"] for n in outcomes)
    assert web.get("/api/v1/records/quiet").get_json()["record"]["notifications"] == []

    page = web.get("/records/shown").get_data(as_text=True)
    assert page.index('<table class="tasks">') < page.index('<section id="notifications">')
    section = page[page.index('<section id="notifications">'):page.index("</section>")]
    body = section[section.index("<tbody>"):]
    rows = [[re.sub(r"<[^>]+>", "", cell).strip()
             for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)]
    assert [row[1:] for row in rows] == [
        ["ended", "email", "team@example.org, lead@example.org", "sent", "1", ""],
        ["ended", "webhook", bench.receiver.url, "sent", "1", ""],
        ["ended", "webhook", f"http://127.0.0.1:{closed}", "failed", "3",
         f"http://127.0.0.1:{closed} does not answer (ConnectionError)"]]
    assert "Notifications" not in web.get("/records/quiet").get_data(as_text=True)
