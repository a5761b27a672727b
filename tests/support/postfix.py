"""A private Postfix instance for integration tests: a real policy client.

Each instance has its own ``config_directory``, ``queue_directory`` and
``data_directory`` under a fresh directory in the system temp dir (not under
pytest's ``tmp_path``: Postfix's daemons run as user ``postfix`` and the
delivery agent as ``nobody``, and they cannot enter pytest's 0700 directories).
The system ``/etc/postfix`` is never read for configuration nor touched.

What the instance does (see ``docs/infra.md`` in the steering repo, section 3):

* smtpd on ``127.0.0.1:<free port>``; ``check_policy_service
  inet:127.0.0.1:<policy port>`` first in ``smtpd_recipient_restrictions``
  (then ``permit_mynetworks, permit_sasl_authenticated,
  reject_unauth_destination``) and in ``smtpd_end_of_data_restrictions``;
  ``smtpd_relay_restrictions`` is empty, so the policy server sees every RCPT,
  relay attempts included, as it does on an iRedMail server;
* ``mynetworks = 192.0.2.0/24`` by default, so the test client on 127.0.0.1
  comes "from outside"; pass ``mynetworks="127.0.0.0/8"`` to test from inside;
* every address in ``domains`` (default ``example.com``) is a valid virtual
  mailbox; accepted mail is discarded, or with ``deliver=True`` written by
  Postfix's ``virtual(8)`` agent, as user ``nobody``, into the Maildir
  ``<base>/mail/Maildir/``, one copy per recipient with its ``Delivered-To:``
  header (read it back with :meth:`PostfixInstance.delivered` or
  :meth:`PostfixInstance.wait_for_delivery`);
* mail to other domains (sent by authenticated or mynetworks clients) is
  discarded (``outbound="discard"``, default), refused at RCPT by the
  ``error`` transport (``outbound="error"``), or delivered into the same
  Maildir (``outbound="deliver"``); nothing ever leaves the machine;
* SMTP AUTH PLAIN/LOGIN through Cyrus SASL with a sasldb made by
  ``saslpasswd2`` for ``users`` (``smtpd_tls_auth_only = no``, no TLS);
* the log goes to ``<base>/maillog`` through ``postlogd`` (``maillog_file``);
  there is no syslog on the test machines;
* ``extra`` main.cf parameters are applied last and override everything
  (``{"sender_canonical_maps": "tcp:127.0.0.1:7778"}``, ...).

Usage in a test::

    def test_something(postfix_instance_factory):
        pfx = postfix_instance_factory(policy_port, deliver=True)
        result = pfx.send("a@example.net", ["user1@example.com"])
        msg = pfx.wait_for_delivery(result.queue_id)

or, outside pytest fixtures, ``with postfix_instance(policy_port) as pfx: ...``.

Needs root (only root may start a Postfix master) and the Debian packages
``postfix``, ``sasl2-bin`` and ``libsasl2-modules``; otherwise the test is
skipped, or fails under ``REQUIRE_ALL_BACKENDS=1``.

An instance starts in about 0.1 s and stops in 0.05 s.  Two things make that:
main.cf and master.cf are backdated, because Postfix re-reads a configuration
file modified in the last second or two until it "cools down" (2 s); and
``postfix start`` skips its checks (the queue directories are made here from
Postfix's own ``postfix-files`` list, and the ``quick-start`` marker is set).
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import email.utils
import grp
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal

import pytest

from tests.support.services import (
    deadline_in,
    free_port,
    require,
    require_root,
    scaled,
    wait_until,
)

__all__ = [
    "DEFAULT_DOMAINS",
    "DEFAULT_USERS",
    "OUTSIDE_NETWORKS",
    "PostfixConfig",
    "PostfixInstance",
    "PostfixStartError",
    "SmtpResult",
    "postfix_instance",
    "postfix_instance_factory",
    "render_main_cf",
    "render_master_cf",
]

#: SASL logins (address -> password) created by default.
DEFAULT_USERS: Mapping[str, str] = {
    "user1@example.com": "user1pass",
    "user2@example.com": "user2pass",
}
DEFAULT_DOMAINS: tuple[str, ...] = ("example.com",)
#: RFC 5737 TEST-NET-1: a mynetworks that does not contain the test client.
OUTSIDE_NETWORKS = "192.0.2.0/24"
DEFAULT_CLIENT_HELO = "client.example.net"

# Queue directories as in Debian's postfix-files, for when it cannot be read:
# (name, owner is mail_owner, group is setgid_group, mode).
_QUEUE_DIRS_FALLBACK: tuple[tuple[str, bool, bool, int], ...] = (
    ("active", True, False, 0o700),
    ("bounce", True, False, 0o700),
    ("corrupt", True, False, 0o700),
    ("defer", True, False, 0o700),
    ("deferred", True, False, 0o700),
    ("flush", True, False, 0o700),
    ("hold", True, False, 0o700),
    ("incoming", True, False, 0o700),
    ("private", True, False, 0o700),
    ("maildrop", True, True, 0o730),
    ("public", True, True, 0o710),
    ("pid", False, False, 0o755),
    ("saved", True, False, 0o700),
    ("trace", True, False, 0o700),
)
_POSTFIX_FILES = Path("/etc/postfix/postfix-files")
_QUEUED_AS = re.compile(r"queued as ([0-9A-Za-z]+)")

Outbound = Literal["discard", "error", "deliver"]


class PostfixStartError(RuntimeError):
    """The instance did not come up; the message carries the command output and log."""


@dataclass(frozen=True)
class PostfixConfig:
    """What a test may choose about an instance.  Every field has a default.

    Attributes:
        policy_port: where ``check_policy_service inet:HOST:PORT`` points;
            ``None`` leaves the policy service out of the restrictions.
        myhostname: ``myhostname`` (the name in the banner and Received:).
        mynetworks: ``mynetworks``; the default excludes 127.0.0.1.
        domains: the ``virtual_mailbox_domains``; every address in them exists.
        users: SASL logins, full address -> password.
        policy_timeout: ``smtpd_policy_service_timeout`` in seconds (scaled).
        policy_default_action: ``smtpd_policy_service_default_action`` or
            ``None`` for Postfix's default (``451 4.3.5 Server configuration problem``).
        end_of_data_policy: also ask the policy service at END-OF-MESSAGE.
        deliver: write accepted mail to a Maildir instead of discarding it.
        outbound: what happens to mail for other domains (see the module doc).
        extra: main.cf parameters applied last.
    """

    policy_port: int | None = None
    policy_host: str = "127.0.0.1"
    myhostname: str = "mx.example.test"
    mynetworks: str = OUTSIDE_NETWORKS
    domains: Sequence[str] = DEFAULT_DOMAINS
    users: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_USERS))
    policy_timeout: float = 10
    policy_default_action: str | None = None
    end_of_data_policy: bool = True
    deliver: bool = False
    outbound: Outbound = "discard"
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass
class SmtpResult:
    """Replies to one SMTP transaction, command by command."""

    mail: tuple[int, str]
    rcpt: dict[str, tuple[int, str]]
    data: tuple[int, str] | None = None

    @property
    def accepted(self) -> bool:
        """True when DATA was accepted (250)."""
        return self.data is not None and self.data[0] == 250

    @property
    def queue_id(self) -> str | None:
        """Postfix's queue id from ``250 2.0.0 Ok: queued as ID``."""
        if self.data is None:
            return None
        match = _QUEUED_AS.search(self.data[1])
        return match.group(1) if match else None


def render_main_cf(config: PostfixConfig, base: Path) -> dict[str, str]:
    """The main.cf parameters of an instance rooted at ``base``, in file order.

    The smtpd listener (address and port) is in master.cf.
    """
    policy = (
        [f"check_policy_service inet:{config.policy_host}:{config.policy_port}"]
        if config.policy_port is not None
        else []
    )
    outbound = {
        "discard": "discard:test instance, outbound mail dropped",
        "error": "error:5.7.1 test instance, no outbound mail",
        "deliver": "virtual",
    }[config.outbound]
    params: dict[str, str] = {
        "compatibility_level": "3.6",
        "config_directory": str(base / "etc"),
        "queue_directory": str(base / "spool"),
        "data_directory": str(base / "data"),
        "maillog_file_prefixes": str(base),
        "maillog_file": str(base / "maillog"),
        "myhostname": config.myhostname,
        "mydomain": config.myhostname.partition(".")[2] or config.myhostname,
        "myorigin": "$myhostname",
        "inet_interfaces": "127.0.0.1",
        "inet_protocols": "ipv4",
        "mynetworks": config.mynetworks,
        "mydestination": "",
        "local_recipient_maps": "",
        "alias_maps": "",
        "alias_database": "",
        "relay_domains": "",
        "virtual_mailbox_domains": ", ".join(config.domains),
        "virtual_mailbox_maps": "static:ok",
        "virtual_transport": "discard:test instance, delivered",
        # nothing may leave the machine
        "default_transport": outbound,
        "relay_transport": outbound,
        "local_transport": "error:5.7.1 test instance, no local delivery",
        "smtp_dns_support_level": "disabled",
        "smtpd_peername_lookup": "no",
        "biff": "no",
        "smtputf8_enable": "no",
        "append_dot_mydomain": "no",
        "maximal_queue_lifetime": "1h",
        "bounce_queue_lifetime": "1h",
        # SMTP AUTH via Cyrus SASL, sasldb file.  Debian's smtpd reads
        # <config_directory>/sasl/smtpd.conf (infra.md section 3).
        "smtpd_sasl_auth_enable": "yes",
        "smtpd_sasl_type": "cyrus",
        "smtpd_sasl_path": "smtpd",
        "cyrus_sasl_config_path": str(base / "etc" / "sasl"),
        "smtpd_sasl_security_options": "noanonymous",
        "smtpd_tls_auth_only": "no",
        # The policy service sees every RCPT: relay restrictions are left
        # empty, the relay decision is made after the policy in the
        # recipient restrictions (postconf(5) smtpd_relay_restrictions).
        "smtpd_relay_restrictions": "",
        "smtpd_recipient_restrictions": ", ".join(
            [*policy, "permit_mynetworks", "permit_sasl_authenticated", "reject_unauth_destination"]
        ),
        "smtpd_end_of_data_restrictions": ", ".join(policy if config.end_of_data_policy else []),
        "smtpd_policy_service_timeout": f"{max(1, round(scaled(config.policy_timeout)))}s",
    }
    if config.policy_default_action is not None:
        params["smtpd_policy_service_default_action"] = config.policy_default_action
    if config.deliver or config.outbound == "deliver":
        nobody = pwd.getpwnam("nobody")
        params.update(
            {
                "virtual_mailbox_base": str(base / "mail"),
                # virtual(8) refuses $1 substitutions from regexp maps, so
                # every recipient shares one Maildir; Delivered-To tells them apart.
                "virtual_mailbox_maps": "static:Maildir/",
                "virtual_uid_maps": f"static:{nobody.pw_uid}",
                "virtual_gid_maps": f"static:{nobody.pw_gid}",
            }
        )
        if config.deliver:
            params["virtual_transport"] = "virtual"
    params.update(config.extra)
    return params


def render_master_cf(smtp_host: str, smtp_port: int) -> str:
    """master.cf: smtpd on ``smtp_host:smtp_port`` and the internal services, none chrooted."""
    return f"""\
# service type  private unpriv  chroot  wakeup  maxproc command + args
{smtp_host}:{smtp_port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixInstance:
    """A running private Postfix.  Made by :func:`postfix_instance`.

    Attributes:
        base: the instance's directory (etc/, spool/, data/, mail/, maillog).
        smtp_host, smtp_port: where smtpd listens.
        config: the :class:`PostfixConfig` it was started with.
    """

    def __init__(self, base: Path, config: PostfixConfig, smtp_port: int) -> None:
        self.base = base
        self.config = config
        self.smtp_host = "127.0.0.1"
        self.smtp_port = smtp_port
        self.config_dir = base / "etc"
        self.queue_dir = base / "spool"
        self.data_dir = base / "data"
        self.mail_dir = base / "mail"
        self.maildir = self.mail_dir / "Maildir"
        self.maillog_path = base / "maillog"
        self._postfix = require("postfix", "Debian package postfix")
        self._postconf = require("postconf", "Debian package postfix")

    def __repr__(self) -> str:
        return f"<PostfixInstance {self.smtp_host}:{self.smtp_port} base={self.base}>"

    # -- lifecycle -------------------------------------------------------

    def create(self) -> None:
        """Write the configuration, queue directories and sasldb."""
        for sub in (self.config_dir / "sasl", self.queue_dir, self.data_dir):
            sub.mkdir(parents=True, exist_ok=True)
        postfix_user = pwd.getpwnam("postfix")
        postdrop_gid = grp.getgrnam("postdrop").gr_gid
        os.chown(self.data_dir, postfix_user.pw_uid, postfix_user.pw_gid)
        self.data_dir.chmod(0o700)
        # What "postfix check" (post-install create-missing) would make; with
        # these and the quick-start marker below, start takes 0.1 s, not 0.5-1 s.
        for name, owned, setgid_group, mode in _queue_dirs():
            path = self.queue_dir / name
            path.mkdir(exist_ok=True)
            os.chown(
                path,
                postfix_user.pw_uid if owned else 0,
                postdrop_gid if setgid_group else (postfix_user.pw_gid if owned else 0),
            )
            path.chmod(mode)
        params = render_main_cf(self.config, self.base)
        (self.config_dir / "main.cf").write_text(
            "# written by tests/support/postfix.py\n"
            + "".join(f"{key} = {value}\n" for key, value in params.items())
        )
        (self.config_dir / "master.cf").write_text(render_master_cf(self.smtp_host, self.smtp_port))
        _cool_down(self.config_dir / "main.cf", self.config_dir / "master.cf")
        if self.config.deliver or self.config.outbound == "deliver":
            nobody = pwd.getpwnam("nobody")
            self.mail_dir.mkdir(exist_ok=True)
            os.chown(self.mail_dir, nobody.pw_uid, nobody.pw_gid)
        self._write_sasl()

    def _write_sasl(self) -> None:
        sasl_dir = self.config_dir / "sasl"
        # Outside config_directory: Postfix wants everything there owned by
        # root, and smtpd (user postfix) must read the sasldb.
        sasldb = self.base / "sasldb" / "sasldb2"
        sasldb.parent.mkdir(exist_ok=True)
        (sasl_dir / "smtpd.conf").write_text(
            "pwcheck_method: auxprop\n"
            "auxprop_plugin: sasldb\n"
            "mech_list: PLAIN LOGIN\n"
            f"sasldb_path: {sasldb}\n"
        )
        if not self.config.users:
            return
        saslpasswd2 = require("saslpasswd2", "Debian package sasl2-bin")
        for address, password in self.config.users.items():
            user, _, realm = address.rpartition("@")
            if not user:
                raise ValueError(f"SASL user must be a full address: {address!r}")
            # saslpasswd2 -u REALM USER makes the login USER@REALM.
            _run(
                [saslpasswd2, "-p", "-c", "-f", str(sasldb), "-u", realm, user],
                input_text=password,
            )
        postfix_user = pwd.getpwnam("postfix")
        os.chown(sasldb, postfix_user.pw_uid, postfix_user.pw_gid)
        sasldb.chmod(0o640)

    def start(self, deadline: float | None = None, *, attempts: int = 3) -> None:
        """``postfix -c DIR start``, then wait until smtpd answers with a 220 banner.

        The SMTP port was free when picked, but someone may take it before the
        master binds it: then a new port is picked and the start retried.

        Raises:
            PostfixStartError: with the command output and the maillog tail.
        """
        if deadline is None:
            deadline = deadline_in(20)
        for attempt in range(1, attempts + 1):
            mark = self.log_mark()
            # postfix-script skips its "check-fatal" and "check-warn" steps
            # once: create() made what they would make.
            (self.queue_dir / "quick-start").touch()
            proc = subprocess.run(
                [self._postfix, "-c", str(self.config_dir), "start"],
                capture_output=True,
                text=True,
                timeout=max(deadline - time.monotonic(), 1),
                check=False,
            )
            if proc.returncode == 0:
                break
            new_log = self.maillog()[mark:]
            if "Address already in use" not in new_log or attempt == attempts:
                raise PostfixStartError(
                    f"postfix start ({self.base}) exited {proc.returncode}: "
                    f"{proc.stdout}{proc.stderr}\nmaillog:\n{self.maillog_tail()}"
                )
            self.smtp_port = free_port()
            (self.config_dir / "master.cf").write_text(
                render_master_cf(self.smtp_host, self.smtp_port)
            )
            _cool_down(self.config_dir / "master.cf")
        try:
            self.wait_for_banner(deadline)
        except TimeoutError as exc:
            raise PostfixStartError(
                f"{exc} ({self.base})\nmaillog:\n{self.maillog_tail()}"
            ) from None

    def wait_for_banner(self, deadline: float) -> str:
        """Connect until smtpd greets with ``220``; return the banner line."""
        last: Exception | None = None

        def banner() -> str | None:
            nonlocal last
            try:
                with socket.create_connection((self.smtp_host, self.smtp_port), timeout=2) as s:
                    line = s.makefile("rb").readline().decode("ascii", "replace")
                    if line.startswith("220"):
                        s.sendall(b"QUIT\r\n")
                        return line.strip()
                    last = RuntimeError(f"unexpected greeting {line!r}")
            except OSError as exc:
                last = exc
            return None

        line = wait_until(banner, deadline)
        if line is None:
            raise TimeoutError(f"no 220 banner on {self.smtp_host}:{self.smtp_port}: {last}")
        return line

    def master_pid(self) -> int | None:
        """The master's PID from ``pid/master.pid``, if it is running."""
        try:
            pid = int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _alive(pid) else None

    def stop(self, deadline: float | None = None) -> None:
        """``postfix -c DIR stop``, and wait until the master is gone.

        The master ends its children.  If it is still there at the deadline,
        SIGKILL goes to its process group (what ``postfix stop`` does after 5 s).
        """
        if deadline is None:
            deadline = deadline_in(10)
        pid = self.master_pid()
        if pid is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(
                [self._postfix, "-c", str(self.config_dir), "stop"],
                capture_output=True,
                timeout=max(deadline - time.monotonic(), 0.1),
                check=False,
            )
        if not wait_until(lambda: not _alive(pid), deadline):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            wait_until(lambda: not _alive(pid), deadline_in(5))

    # -- configuration ---------------------------------------------------

    def postconf(self, params: Mapping[str, str], *, reload: bool = True) -> None:
        """Set main.cf parameters (``postconf -c DIR -e``) and reload.

        The reload is complete when this returns: old smtpd processes are gone
        when the master logs ``reload``, and new connections get new ones.
        """
        args = [f"{key}={value}" for key, value in params.items()]
        _run([self._postconf, "-c", str(self.config_dir), "-e", *args])
        _cool_down(self.config_dir / "main.cf")
        if reload:
            self.reload()

    def reload(self, deadline: float | None = None) -> None:
        """``postfix reload`` and wait for the master to log it."""
        mark = self.log_mark()
        _run([self._postfix, "-c", str(self.config_dir), "reload"])
        self.wait_for_log(r"postfix/master\[\d+\]: reload", deadline, start=mark)

    # -- the log ---------------------------------------------------------

    def maillog(self) -> str:
        """The whole maillog so far ('' before the first line)."""
        try:
            return self.maillog_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def maillog_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the maillog, for error messages."""
        return "\n".join(self.maillog().splitlines()[-lines:])

    def log_mark(self) -> int:
        """The current end of the maillog; pass it as ``start`` to see only newer lines."""
        try:
            return self.maillog_path.stat().st_size
        except FileNotFoundError:
            return 0

    def wait_for_log(
        self, pattern: str | re.Pattern[str], deadline: float | None = None, *, start: int = 0
    ) -> re.Match[str]:
        """Wait until the maillog (from byte ``start``) matches ``pattern``; return the match.

        Postfix logs through postlogd, a moment after the event.

        Raises:
            TimeoutError: no match by the deadline; the message has the log tail.
        """
        regex = re.compile(pattern, re.MULTILINE) if isinstance(pattern, str) else pattern

        def search() -> re.Match[str] | None:
            try:
                with self.maillog_path.open("rb") as f:
                    f.seek(start)
                    return regex.search(f.read().decode(errors="replace"))
            except FileNotFoundError:
                return None

        match = wait_until(search, deadline if deadline is not None else deadline_in(10))
        if match is None:
            raise TimeoutError(
                f"maillog never matched {regex.pattern!r}; tail:\n{self.maillog_tail()}"
            )
        return match

    # -- SMTP ------------------------------------------------------------

    def smtp(self, *, helo: str = DEFAULT_CLIENT_HELO, timeout: float = 30) -> smtplib.SMTP:
        """A connected :class:`smtplib.SMTP` client, EHLO done.  Use it in ``with``."""
        client = smtplib.SMTP(
            self.smtp_host, self.smtp_port, local_hostname=helo, timeout=scaled(timeout)
        )
        client.ehlo()
        return client

    def send(
        self,
        sender: str,
        recipients: Sequence[str],
        message: bytes | str | EmailMessage | None = None,
        *,
        login: tuple[str, str] | None = None,
        helo: str = DEFAULT_CLIENT_HELO,
    ) -> SmtpResult:
        """One transaction with the reply to each command (``sendmail()`` hides them).

        DATA is sent when at least one recipient was accepted.  ``message``
        defaults to a small one with a unique Message-ID.  A failed login raises
        :class:`smtplib.SMTPAuthenticationError`.
        """
        if message is None:
            message = make_message(sender, recipients)
        if isinstance(message, EmailMessage):
            message = message.as_bytes(policy=email.policy.SMTP)
        with self.smtp(helo=helo) as client:
            if login is not None:
                client.login(*login)
            code, text = client.mail(sender)
            result = SmtpResult(mail=(code, _text(text)), rcpt={})
            if code != 250:
                return result
            for rcpt in recipients:
                code, text = client.rcpt(rcpt)
                result.rcpt[rcpt] = (code, _text(text))
            if any(code == 250 for code, _ in result.rcpt.values()):
                try:
                    code, text = client.data(message)
                    result.data = (code, _text(text))
                except smtplib.SMTPDataError as exc:  # 5xx/4xx at DATA or end of data
                    result.data = (exc.smtp_code, _text(exc.smtp_error))
            return result

    # -- delivered mail (deliver=True) -----------------------------------

    def delivered(self, recipient: str | None = None) -> list[email.message.Message]:
        """Messages delivered so far, oldest first, to ``recipient`` or to anyone.

        Each is parsed with :data:`email.policy.compat32` (headers exactly as
        written).  Postfix's ``virtual`` agent writes one copy per recipient
        and adds ``Delivered-To: <recipient>`` and ``Return-Path:``.
        """
        if not (self.config.deliver or self.config.outbound == "deliver"):
            raise RuntimeError("this instance discards mail: start it with deliver=True")
        # virtual(8) writes into tmp/ and renames into new/: files in new/ are complete.
        files = sorted(
            (self.maildir / "new").glob("*"), key=lambda p: (p.stat().st_mtime_ns, p.name)
        )
        messages = [email.message_from_bytes(p.read_bytes()) for p in files]
        if recipient is not None:
            messages = [
                m for m in messages if str(m.get("Delivered-To", "")).lower() == recipient.lower()
            ]
        return messages

    def wait_for_delivery(
        self,
        queue_id: str | None = None,
        deadline: float | None = None,
        *,
        recipient: str | None = None,
        match: Callable[[email.message.Message], bool] | None = None,
    ) -> email.message.Message:
        """Wait for a delivered message and return it.

        Args:
            queue_id: the id from :attr:`SmtpResult.queue_id` (found in the
                message's own ``Received:`` header); ``None``: any message.
            recipient: only messages with this ``Delivered-To:``.
            match: an additional test on the parsed message.

        Raises:
            TimeoutError: nothing matching by the deadline; the message has the log tail.
        """
        id_pattern = re.compile(rf"\bid {re.escape(queue_id)}\b") if queue_id else None

        def find() -> email.message.Message | None:
            for msg in self.delivered(recipient):
                received = " ".join(str(h) for h in msg.get_all("Received", []))
                if id_pattern is not None and not id_pattern.search(received):
                    continue
                if match is not None and not match(msg):
                    continue
                return msg
            return None

        found = wait_until(find, deadline if deadline is not None else deadline_in(10))
        if found is None:
            raise TimeoutError(
                f"no delivered message (queue id {queue_id}, recipient {recipient}); "
                f"maillog tail:\n{self.maillog_tail()}"
            )
        return found


def make_message(
    sender: str, recipients: Sequence[str], subject: str = "test", body: str = "hello\n"
) -> bytes:
    """A small RFC 5322 message with a unique Message-ID."""
    msg = EmailMessage()
    msg["From"] = sender or "MAILER-DAEMON@client.example.net"
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = subject
    msg["Message-ID"] = email.utils.make_msgid(domain="client.example.net")
    msg["Date"] = email.utils.formatdate(localtime=False)
    msg.set_content(body)
    return msg.as_bytes(policy=email.policy.SMTP)


@contextlib.contextmanager
def postfix_instance(
    policy_port: int | None = None,
    *,
    base_dir: str | os.PathLike[str] | None = None,
    keep: bool | None = None,
    **options: Any,
) -> Iterator[PostfixInstance]:
    """Create and start a private Postfix; stop it (even on failure) and remove it on exit.

    Args:
        policy_port: the policy server's port on 127.0.0.1 (``None``: no policy).
        base_dir: parent of the instance directory (default: the system temp
            dir; it must be traversable by users ``postfix`` and ``nobody``).
        keep: keep the directory after stopping (default: only when
            ``IREDAPD_TEST_KEEP_TMP=1``).
        options: the other :class:`PostfixConfig` fields.

    Yields:
        the running :class:`PostfixInstance`.
    """
    require_root("only root may start a Postfix master")
    require("postfix", "Debian package postfix")
    config = PostfixConfig(policy_port=policy_port, **options)
    base = Path(tempfile.mkdtemp(prefix="iredapd-postfix-", dir=base_dir))
    base.chmod(0o755)
    instance = PostfixInstance(base, config, free_port())
    try:
        instance.create()
        instance.start()
        yield instance
    finally:
        try:
            instance.stop()
        finally:
            if keep is None:
                keep = os.environ.get("IREDAPD_TEST_KEEP_TMP", "") == "1"
            if not keep:
                shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postfix_instance_factory(
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., PostfixInstance]]:
    """A function ``(policy_port=None, **PostfixConfig fields) -> PostfixInstance``.

    Every instance it starts is stopped and removed when the test ends; when
    the test failed, the instance directory is kept and a warning names it
    (its ``maillog`` tells what Postfix saw).
    """
    failed_before = request.session.testsfailed
    instances: list[PostfixInstance] = []
    stack = contextlib.ExitStack()

    def factory(policy_port: int | None = None, **options: Any) -> PostfixInstance:
        options["keep"] = True  # removed below, after every instance has stopped
        pfx = stack.enter_context(postfix_instance(policy_port, **options))
        instances.append(pfx)
        return pfx

    try:
        yield factory
    finally:
        # pytest logs the call phase's report before teardown, so this tells
        # whether the test itself failed.
        failed = request.session.testsfailed > failed_before
        try:
            stack.close()
        finally:
            for pfx in instances:
                _remove_or_report(pfx, failed)


def _remove_or_report(pfx: PostfixInstance, failed: bool) -> None:
    if failed or os.environ.get("IREDAPD_TEST_KEEP_TMP", "") == "1":
        warnings.warn(
            f"postfix instance kept for inspection: {pfx.base} (maillog {pfx.maillog_path})",
            stacklevel=1,
        )
    else:
        shutil.rmtree(pfx.base, ignore_errors=True)


def _queue_dirs() -> list[tuple[str, bool, bool, int]]:
    """Queue directories from Postfix's own ``postfix-files``, as post-install makes them."""
    dirs: list[tuple[str, bool, bool, int]] = []
    try:
        lines = _POSTFIX_FILES.read_text().splitlines()
    except OSError:
        return list(_QUEUE_DIRS_FALLBACK)
    for line in lines:
        fields = line.split(":")
        if len(fields) < 5 or fields[1] != "d" or not fields[0].startswith("$queue_directory/"):
            continue
        name = fields[0].removeprefix("$queue_directory/")
        dirs.append(
            (name, fields[2] == "$mail_owner", fields[3] == "$setgid_group", int(fields[4], 8))
        )
    return dirs or list(_QUEUE_DIRS_FALLBACK)


def _text(reply: bytes | str) -> str:
    return reply.decode(errors="replace") if isinstance(reply, bytes) else reply


def _cool_down(*paths: Path) -> None:
    """Backdate ``paths`` so Postfix reads them at once.

    Postfix re-reads a configuration file modified within the last second or
    so, every 0.3 s, until it "cools down" (dict_load_file_xt() in
    src/util/dict.c): about 2 s on every start and reload after writing main.cf.
    """
    past = time.time() - 60
    for path in paths:
        os.utime(path, (past, past))


def _alive(pid: int) -> bool:
    """True while ``pid`` runs.  A zombie counts as gone: the daemonized master
    is not our child, and its new parent may take a while to reap it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # /proc/PID/stat: "pid (comm) state ..."; comm may contain spaces or ")".
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _run(args: list[str], input_text: str | None = None) -> str:
    proc = subprocess.run(
        args,
        input=input_text,
        capture_output=True,
        text=True,
        timeout=scaled(30),
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{args[0]} exited {proc.returncode}: {proc.stdout}{proc.stderr}")
    return proc.stdout
