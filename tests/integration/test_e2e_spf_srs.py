"""End to end: a real Postfix asks the daemon (a subprocess), which asks the stub DNS.

* SPF: a message from an outside client whose sender's SPF passes is delivered
  with a ``Received-SPF: pass`` header, once per copy, even with several
  recipients; an SPF ``fail`` is refused at RCPT with ``550 5.7.23``.
* SRS: with ``sender_canonical_maps = tcp:127.0.0.1:<forward port>`` a
  forwarded message from an outside sender leaves with an SRS0 envelope
  sender at ``srs_domain`` (a local sender keeps its address), and with
  ``recipient_canonical_maps = tcp:127.0.0.1:<reverse port>`` a bounce to that
  SRS address is delivered to the original sender.

Postfix listens on 127.0.0.1; the test client connects from 127.0.0.2 so that
the daemon sees an outside client (127.0.0.1 is always trusted).  The daemon
listens on ports picked by the system (policy and both SRS channels), read
from its log before Postfix is configured.  The hosted domain comes from the
embedded SQLite vmail database (``DATA_DIR/vmail.sqlite``, table ``domain``).
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import smtplib
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from iredapd.config import default_settings
from iredapd.storage.db import open_database
from iredapd.storage.schema import domain as domain_table
from tests.support.daemon import Subprocess, subprocess_daemon
from tests.support.postfix import (
    DEFAULT_CLIENT_HELO,
    PostfixInstance,
    SmtpResult,
    make_message,
)
from tests.support.services import require, require_root, scaled, wait_until

pytest_plugins = ["tests.support.postfix"]
pytestmark = [pytest.mark.integration, pytest.mark.postfix]

STUBDNS = Path(__file__).resolve().parents[1] / "support" / "stubdns.py"
HOSTNAME = "mx.example.test"  # Postfix's myhostname and the daemon's SERVER_HOSTNAME
SRS_DOMAIN = "srs.example.test"
HOSTED = "example.com"
# Outside client: in 127.0.0.0/8 (so on loopback) but not 127.0.0.1.
OUTSIDE = "127.0.0.2"

ZONE = {
    "example.net": [{"TXT": f"v=spf1 ip4:{OUTSIDE} -all"}],
    "fail.example.net": [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all exp=why.fail.example.net"}],
    "why.fail.example.net": [{"TXT": "%{i} is not a mail server of %{d}"}],
    # the HELO name of the test client (checked for bounces: null sender)
    DEFAULT_CLIENT_HELO: [{"TXT": f"v=spf1 ip4:{OUTSIDE} -all"}],
}


@dataclass
class Stack:
    """The daemon and the stub DNS, and the ports Postfix is pointed at."""

    daemon: Subprocess
    dns_port: int
    forward_port: int
    reverse_port: int

    @property
    def policy_port(self) -> int:
        return self.daemon.port


@contextlib.contextmanager
def stub_dns(directory: Path) -> Iterator[int]:
    """tests/support/stubdns.py as a subprocess serving ZONE; yields its port."""
    zone_file = directory / "zone.json"  # JSON is YAML
    zone_file.write_text(json.dumps({"zonedata": ZONE}))
    port_file = directory / "dns.port"
    with (directory / "stubdns.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(STUBDNS), str(port_file), str(zone_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        text = wait_until(lambda: port_file.exists() and port_file.read_text().strip())
        if not text:
            raise TimeoutError(f"stub DNS did not start: {(directory / 'stubdns.log').read_text()}")
        yield int(text)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(scaled(10))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def host_domain(data_dir: Path, name: str) -> None:
    """Create the embedded vmail database and add a hosted domain (as iRedAdmin would)."""
    settings = default_settings(DATA_DIR=str(data_dir))

    async def unused(*_args: object) -> object:
        raise AssertionError("not used here: blocking calls below, outside any event loop")

    db = open_database("vmail", settings, unused)
    try:
        db.create_schema()
        with db.engine.begin() as conn:
            conn.execute(domain_table.insert().values(domain=name, active=1))
    finally:
        db.dispose()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_root("only root may start a Postfix master")
    require("postfix", "Debian package postfix")
    require("saslpasswd2", "Debian package sasl2-bin")
    tmp = tmp_path_factory.mktemp("e2e-spf-srs")
    (tmp / "data").mkdir()
    host_domain(tmp / "data", HOSTED)
    with stub_dns(tmp) as dns_port:
        settings = (
            "plugins = ['spf']\n"
            f"SERVER_HOSTNAME = {HOSTNAME!r}\n"
            "DNS_NAMESERVERS = ['127.0.0.1']\n"
            f"DNS_PORT = {dns_port}\n"
            "DNS_QUERY_TIMEOUT = 2.0\n"
            "srs_secrets = ['e2e test secret']\n"
            f"srs_domain = {SRS_DOMAIN!r}\n"
            "srs_forward_port = 0\n"
            "srs_reverse_port = 0\n"
        )
        with subprocess_daemon(tmp, settings) as daemon:
            channel = r"Starting SRS {} channel, listening on 127\.0\.0\.1:(\d+)"
            forward = daemon.wait_log(channel.format("sender rewriting"))
            reverse = daemon.wait_log(channel.format("recipient rewriting"))
            yield Stack(daemon, dns_port, int(forward.group(1)), int(reverse.group(1)))
            log = daemon.log()
            # A failing plugin gets its failure action (DUNNO): only the log tells.
            assert not re.search(r"plugin spf (failed|ran past)|Traceback", log), log


def send_from(
    pfx: PostfixInstance,
    sender: str,
    recipients: Sequence[str],
    *,
    source: str = OUTSIDE,
    helo: str = DEFAULT_CLIENT_HELO,
) -> SmtpResult:
    """Like PostfixInstance.send, from a chosen source address (the fixture has none)."""
    message = make_message(sender, recipients)
    with smtplib.SMTP(
        pfx.smtp_host,
        pfx.smtp_port,
        local_hostname=helo,
        timeout=scaled(30),
        source_address=(source, 0),
    ) as client:
        client.ehlo()
        code, text = client.mail(sender)
        result = SmtpResult(mail=(code, text.decode(errors="replace")), rcpt={})
        if code != 250:
            return result
        for rcpt in recipients:
            code, text = client.rcpt(rcpt)
            result.rcpt[rcpt] = (code, text.decode(errors="replace"))
        if any(code == 250 for code, _ in result.rcpt.values()):
            try:
                code, text = client.data(message)
            except smtplib.SMTPDataError as exc:  # 4xx/5xx at DATA or at the end of data
                code, text = exc.smtp_code, _bytes(exc.smtp_error)
            result.data = (code, text.decode(errors="replace"))
    return result


def _bytes(reply: bytes | str) -> bytes:
    return reply if isinstance(reply, bytes) else reply.encode()


Factory = Callable[..., PostfixInstance]


def test_received_spf_header_in_delivered_message(
    stack: Stack, postfix_instance_factory: Factory
) -> None:
    pfx = postfix_instance_factory(stack.policy_port, deliver=True, myhostname=HOSTNAME)
    # The first recipient is refused by Postfix after the policy answered: the
    # header asked for at that RCPT must still be in the message (once).
    recipients = ["friend@example.org", "user1@example.com", "user2@example.com"]
    result = send_from(pfx, "someone@example.net", recipients)

    assert result.rcpt["friend@example.org"][0] == 554  # Relay access denied
    assert result.rcpt["user1@example.com"][0] == 250
    assert result.rcpt["user2@example.com"][0] == 250
    assert result.accepted, result.data
    for rcpt in ("user1@example.com", "user2@example.com"):
        msg = pfx.wait_for_delivery(result.queue_id, recipient=rcpt)
        headers = msg.get_all("Received-SPF")
        assert headers is not None and len(headers) == 1, headers
        value = " ".join(headers[0].split())  # unfolded
        assert value.startswith(
            f"pass ({HOSTNAME}: domain of someone@example.net designates {OUTSIDE} "
            "as permitted sender) "
        ), value
        for pair in (
            f"client-ip={OUTSIDE};",
            'envelope-from="someone@example.net";',
            f"helo={DEFAULT_CLIENT_HELO};",
            f"receiver={HOSTNAME};",
            "identity=mailfrom;",
            f'mechanism="ip4:{OUTSIDE}";',
        ):
            assert pair in value, value


def test_spf_fail_is_refused_at_rcpt(stack: Stack, postfix_instance_factory: Factory) -> None:
    pfx = postfix_instance_factory(stack.policy_port, deliver=True, myhostname=HOSTNAME)
    mark = pfx.log_mark()
    result = send_from(pfx, "someone@fail.example.net", ["user1@example.com"])

    assert result.rcpt["user1@example.com"] == (
        550,
        "5.7.23 <user1@example.com>: Recipient address rejected: SPF fail: explanation "
        f"from fail.example.net: {OUTSIDE} is not a mail server of fail.example.net",
    )
    assert result.data is None
    pfx.wait_for_log(r"NOQUEUE: reject: RCPT from .*: 550 5\.7\.23 ", start=mark)

    # From a trusted client (127.0.0.1) the same sender is not checked.
    trusted = send_from(pfx, "someone@fail.example.net", ["user1@example.com"], source="127.0.0.1")
    assert trusted.accepted, trusted
    msg = pfx.wait_for_delivery(trusted.queue_id, recipient="user1@example.com")
    assert msg.get_all("Received-SPF") is None


_SRS0 = re.compile(rf"SRS0=[^=@]+=[A-Z2-7]{{2}}=example\.net=someone@{re.escape(SRS_DOMAIN)}")


def test_srs_forward_and_bounce(stack: Stack, postfix_instance_factory: Factory) -> None:
    pfx = postfix_instance_factory(
        stack.policy_port,
        deliver=True,
        outbound="deliver",  # mail for other domains lands in the same Maildir
        myhostname=HOSTNAME,
        domains=(HOSTED, SRS_DOMAIN),
        extra={
            "virtual_alias_maps": f"inline:{{ forward@{HOSTED}=friend@example.org }}",
            "sender_canonical_maps": f"tcp:127.0.0.1:{stack.forward_port}",
            "sender_canonical_classes": "envelope_sender",
            "recipient_canonical_maps": f"tcp:127.0.0.1:{stack.reverse_port}",
            "recipient_canonical_classes": "envelope_recipient,header_recipient",
        },
    )

    # 1. Forwarded mail from an outside sender leaves with an SRS0 sender.
    mark = pfx.log_mark()
    forwarded = send_from(pfx, "someone@example.net", [f"forward@{HOSTED}"])
    assert forwarded.accepted, (forwarded, pfx.maillog_tail())
    msg = pfx.wait_for_delivery(forwarded.queue_id, recipient="friend@example.org")
    return_path = str(msg["Return-Path"]).strip("<>")
    assert _SRS0.fullmatch(return_path), return_path
    pfx.wait_for_log(rf"{forwarded.queue_id}: from=<{re.escape(return_path)}>", start=mark)
    assert str(msg["Received-SPF"]).startswith("pass ")
    stack.daemon.wait_log(rf"rewrote: someone@example\.net -> {re.escape(return_path)}")

    # 2. A sender of a hosted domain (vmail.domain) keeps its address.
    local = send_from(pfx, f"user2@{HOSTED}", [f"forward@{HOSTED}"])
    assert local.accepted, (local, pfx.maillog_tail())
    msg = pfx.wait_for_delivery(local.queue_id, recipient="friend@example.org")
    assert msg["Return-Path"] == f"<user2@{HOSTED}>"

    # 3. A bounce to the SRS address is delivered to the original sender.
    bounce = send_from(pfx, "", [return_path])
    assert bounce.rcpt[return_path][0] == 250
    assert bounce.accepted, (bounce, pfx.maillog_tail())
    msg = pfx.wait_for_delivery(bounce.queue_id, recipient="someone@example.net")
    assert msg["Return-Path"] == "<>"
    # (The To: header keeps the SRS address: Postfix rewrites headers only in
    # mail from local clients, local_header_rewrite_clients.)
    spf = " ".join(str(msg["Received-SPF"]).split())
    assert spf.startswith("pass "), spf
    assert f'envelope-from="postmaster@{DEFAULT_CLIENT_HELO}";' in spf  # HELO identity
    stack.daemon.wait_log(rf"restored: {re.escape(return_path)} -> someone@example\.net")
