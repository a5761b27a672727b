"""A throwaway OpenLDAP slapd with the iRedMail schema, for integration tests.

Each instance gets its own directory (slapd.conf, an mdb database, slapd.log)
and listens on ``ldap://127.0.0.1:<free port>/`` (and ``ldap://[::1]:<same
port>/`` with ``ipv6=True``).  The tree is iRedMail's::

    dc=iredmail,dc=org                              SUFFIX (rootdn cn=Manager)
      cn=vmail                                      VMAIL_DN: read access to everything
      o=domains                                     BASEDN (iRedAPD's ldap_basedn)
        domainName=example.com
          ou=Users
            mail=user1@example.com                  mailUser + inetOrgPerson + ...
          ou=Groups, ou=Aliases, ou=Externals

The schemas are loaded from ``tests/data/ldap/`` (iredmail.schema and
amavisd.schema, see the README there) after Debian's core, cosine, nis and
inetorgperson.  Passwords in the test data are cleartext (slapd compares them
as such on bind).

Usage in a test::

    def test_lookup(slapd_instance_factory):
        ldap_server = slapd_instance_factory()          # loaded with base_ldif()
        ldap_server.add(user_entry("new@example.com", "pw"))
        conn = ldap_server.connect()                    # bound as cn=vmail

or ``with slapd_instance(base_ldif()) as ldap_server: ...`` for other scopes.

Needs the Debian packages ``slapd`` and ``ldap-utils`` (and python-ldap for
:meth:`SlapdInstance.connect`); otherwise the test is skipped, or fails under
``REQUIRE_ALL_BACKENDS=1``.  Root is not needed.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support.services import (
    deadline_in,
    free_port,
    missing,
    require,
    require_module,
    scaled,
    wait_until,
)

__all__ = [
    "BASEDN",
    "DEFAULT_LDAP_USERS",
    "ROOTDN",
    "ROOTPW",
    "SCHEMA_DIR",
    "SUFFIX",
    "USER_SERVICES",
    "VMAIL_DN",
    "VMAIL_PW",
    "SlapdInstance",
    "SlapdStartError",
    "base_ldif",
    "domain_entries",
    "ldif_entry",
    "slapd_instance",
    "slapd_instance_factory",
    "user_entry",
]

SUFFIX = "dc=iredmail,dc=org"
#: iRedAPD's default ldap_basedn.
BASEDN = f"o=domains,{SUFFIX}"
ROOTDN = f"cn=Manager,{SUFFIX}"
ROOTPW = "manager-secret"
#: iRedAPD's default ldap_binddn; it may read the whole tree.
VMAIL_DN = f"cn=vmail,{SUFFIX}"
VMAIL_PW = "vmail-secret"

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "data" / "ldap"
SYSTEM_SCHEMA_DIR = Path("/etc/ldap/schema")
SYSTEM_SCHEMAS = ("core", "cosine", "nis", "inetorgperson")
MODULE_DIRS = ("/usr/lib/ldap", "/usr/lib/x86_64-linux-gnu/ldap", "/usr/libexec/openldap")

#: enabledService values of a new iRedMail user (iRedAdmin's defaults).
USER_SERVICES: tuple[str, ...] = (
    "internal",
    "doveadm",
    "lib-storage",
    "indexer-worker",
    "dsync",
    "mail",
    "smtp",
    "smtpsecured",
    "smtptls",
    "pop3",
    "pop3secured",
    "pop3tls",
    "imap",
    "imapsecured",
    "imaptls",
    "managesieve",
    "managesievesecured",
    "managesievetls",
    "sieve",
    "sievesecured",
    "sievetls",
    "deliver",
    "lda",
    "lmtp",
    "forward",
    "senderbcc",
    "recipientbcc",
    "shadowaddress",
    "displayedInGlobalAddressBook",
)

#: Users of :func:`base_ldif`: address -> (password, extra attributes).
DEFAULT_LDAP_USERS: Mapping[str, tuple[str, Mapping[str, str | Sequence[str]]]] = {
    "user1@example.com": ("user1pass", {"shadowAddress": "alias1@example.com"}),
    "user2@example.com": ("user2pass", {}),
    "disabled@example.com": ("disabledpass", {"accountStatus": "disabled"}),
}

AttrValue = str | bytes | Sequence[str | bytes] | None


class SlapdStartError(RuntimeError):
    """slapd did not come up; the message carries its log."""


# -- LDIF helpers --------------------------------------------------------------


def ldif_entry(dn: str, attrs: Mapping[str, AttrValue]) -> str:
    """One LDIF entry (with its trailing blank line).

    Values that LDIF cannot carry as plain text (non-ASCII, leading space or
    colon or ``<``, trailing space, line breaks) are base64-encoded; ``None``
    values are left out.
    """
    lines = [_ldif_line("dn", dn)]
    for name, value in attrs.items():
        if value is None:
            continue
        values = [value] if isinstance(value, str | bytes) else list(value)
        lines.extend(_ldif_line(name, v) for v in values)
    return "\n".join(lines) + "\n\n"


def _ldif_line(name: str, value: str | bytes) -> str:
    raw = value.encode() if isinstance(value, str) else value
    text = raw.decode("ascii", "replace")
    safe = (
        raw.isascii()
        and not any(c in text for c in "\0\r\n")
        and not text.startswith((" ", ":", "<"))
        and not text.endswith(" ")
    )
    if safe:
        return f"{name}: {text}"
    return f"{name}:: {base64.b64encode(raw).decode()}"


def domain_entries(domain: str, suffix: str = SUFFIX, **attrs: AttrValue) -> str:
    """A ``mailDomain`` under ``o=domains`` with its ou=Users/Groups/Aliases/Externals.

    ``attrs`` add to or replace the domain's attributes (``None`` removes one),
    e.g. ``domainAliasName=["alias.example.com"]``.
    """
    dn = f"domainName={domain},o=domains,{suffix}"
    values: dict[str, AttrValue] = {
        "objectClass": "mailDomain",
        "domainName": domain,
        "mtaTransport": "dovecot",
        "accountStatus": "active",
        "accountSetting": "minPasswordLength:8",
        "enabledService": ["mail"],
    }
    values.update(attrs)
    text = ldif_entry(dn, values)
    for ou in ("Users", "Groups", "Aliases", "Externals"):
        text += ldif_entry(f"ou={ou},{dn}", {"objectClass": "organizationalUnit", "ou": ou})
    return text


def user_entry(mail: str, password: str, suffix: str = SUFFIX, **attrs: AttrValue) -> str:
    """An iRedMail mail user under ``ou=Users`` of its domain, as iRedAdmin creates one.

    ``attrs`` add to or replace attributes (``None`` removes one), e.g.
    ``accountStatus="disabled"``, ``enabledService=[...]``,
    ``shadowAddress="alias@example.com"``.
    """
    local, _, domain = mail.partition("@")
    values: dict[str, AttrValue] = {
        "objectClass": ["inetOrgPerson", "shadowAccount", "amavisAccount", "mailUser"],
        "mail": mail,
        "uid": local,
        "cn": local,
        "sn": local,
        "givenName": local,
        "accountStatus": "active",
        "userPassword": password,
        "mailQuota": "104857600",
        "storageBaseDirectory": "/var/vmail",
        "mailMessageStore": f"vmail1/{domain}/{local}/",
        "homeDirectory": f"/var/vmail/vmail1/{domain}/{local}/",
        "enabledService": list(USER_SERVICES),
        "amavisLocal": "TRUE",
        "shadowLastChange": "20000",
    }
    values.update(attrs)
    return ldif_entry(f"mail={mail},ou=Users,domainName={domain},o=domains,{suffix}", values)


def base_ldif(
    domains: Sequence[str] = ("example.com",),
    users: Mapping[str, tuple[str, Mapping[str, AttrValue]]] = DEFAULT_LDAP_USERS,
    suffix: str = SUFFIX,
) -> str:
    """The suffix, ``cn=vmail``, ``o=domains``, ``domains`` and ``users``."""
    top = suffix.split(",", maxsplit=1)[0].partition("=")[2]
    text = ldif_entry(suffix, {"objectClass": ["dcObject", "organization"], "dc": top, "o": top})
    text += ldif_entry(
        f"cn=vmail,{suffix}",
        {
            "objectClass": ["person", "shadowAccount"],
            "cn": "vmail",
            "sn": "vmail",
            "uid": "vmail",
            "userPassword": VMAIL_PW,
        },
    )
    text += ldif_entry(f"o=domains,{suffix}", {"objectClass": "organization", "o": "domains"})
    for domain in domains:
        text += domain_entries(domain, suffix)
    for mail, (password, attrs) in users.items():
        text += user_entry(mail, password, suffix, **attrs)
    return text


# -- the server ----------------------------------------------------------------


def render_slapd_conf(base: Path, suffix: str = SUFFIX, schema_dir: Path = SCHEMA_DIR) -> str:
    """slapd.conf for an instance in ``base``: mdb, iRedMail schema, ACLs like iRedMail's."""
    includes = [SYSTEM_SCHEMA_DIR / f"{name}.schema" for name in SYSTEM_SCHEMAS]
    includes += [schema_dir / "amavisd.schema", schema_dir / "iredmail.schema"]
    module_dir = next((d for d in MODULE_DIRS if Path(d, "back_mdb.la").exists()), None)
    module = f"modulepath {module_dir}\nmoduleload back_mdb\n" if module_dir else ""
    vmail = f'dn.exact="cn=vmail,{suffix}"'
    include_lines = "".join(f"include {path}\n" for path in includes)
    return f"""\
# written by tests/support/slapd.py
{include_lines}pidfile {base}/slapd.pid
argsfile {base}/slapd.args
{module}loglevel none
sizelimit unlimited

database mdb
maxsize 104857600
suffix "{suffix}"
rootdn "cn=Manager,{suffix}"
rootpw {ROOTPW}
directory {base}/data
index objectClass,mail,shadowAddress,domainName,domainAliasName,accountStatus,enabledService eq
index memberOfGroup,mailForwardingAddress eq

# Like iRedMail: anonymous may only bind, cn=vmail reads everything,
# users read their own entry; the rootdn bypasses ACLs.
access to attrs=userPassword
    by anonymous auth
    by self write
    by {vmail} read
    by * none
access to *
    by anonymous auth
    by self read
    by {vmail} read
    by * none
"""


class SlapdInstance:
    """A running throwaway slapd.  Made by :func:`slapd_instance`.

    Attributes:
        base: the instance directory (slapd.conf, data/, slapd.log).
        host, port: the IPv4 listener; ``uri`` is ``ldap://127.0.0.1:PORT``.
        uri6: ``ldap://[::1]:PORT`` when started with ``ipv6=True``, else None.
        suffix, basedn, rootdn, rootpw, binddn, bindpw: the tree and its users.
    """

    def __init__(self, base: Path, *, ipv6: bool = False, suffix: str = SUFFIX) -> None:
        self.base = base
        self.ipv6 = ipv6
        self.host = "127.0.0.1"
        self.port = 0
        self.suffix = suffix
        self.basedn = f"o=domains,{suffix}"
        self.rootdn = f"cn=Manager,{suffix}"
        self.rootpw = ROOTPW
        self.binddn = f"cn=vmail,{suffix}"
        self.bindpw = VMAIL_PW
        self.log_path = base / "slapd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._slapd = require("slapd", "Debian package slapd")
        self._ldapmodify_bin = require("ldapmodify", "Debian package ldap-utils")
        self._ldapdelete_bin = require("ldapdelete", "Debian package ldap-utils")

    def __repr__(self) -> str:
        return f"<SlapdInstance {self.uri} base={self.base}>"

    @property
    def uri(self) -> str:
        return f"ldap://{self.host}:{self.port}"

    @property
    def uri6(self) -> str | None:
        return f"ldap://[::1]:{self.port}" if self.ipv6 else None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, deadline: float | None = None) -> None:
        """Write the config and start slapd in the foreground (``-d 0``) as our child."""
        if deadline is None:
            deadline = deadline_in(20)
        (self.base / "data").mkdir(parents=True, exist_ok=True)
        (self.base / "slapd.conf").write_text(render_slapd_conf(self.base, self.suffix))
        for attempt in range(3):
            # The port can be taken between free_port() and slapd's bind.
            hosts = ("127.0.0.1", "::1") if self.ipv6 else ("127.0.0.1",)
            self.port = free_port(*hosts)
            urls = " ".join(u for u in (self.uri, self.uri6) if u)
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(
                    [self._slapd, "-f", str(self.base / "slapd.conf"), "-h", urls, "-d", "0"],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            if self._wait_ready(deadline):
                return
            exited = self.proc.poll() is not None
            self.stop()
            if not exited or attempt == 2 or time.monotonic() >= deadline:
                break
        log_text = self.log_path.read_text(errors="replace")
        raise SlapdStartError(f"slapd did not start on {urls}; slapd.log:\n{log_text}")

    def _wait_ready(self, deadline: float) -> bool:
        proc = self.proc
        assert proc is not None

        def state() -> str | None:
            if proc.poll() is not None:
                return "exited"
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return "up"
            except OSError:
                return None

        return wait_until(state, deadline) == "up"

    def stop(self, deadline: float | None = None) -> None:
        """SIGTERM, wait (slapd syncs and exits within about a second), SIGKILL at the deadline."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        timeout = (deadline - time.monotonic()) if deadline is not None else scaled(10)
        try:
            proc.wait(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=scaled(5))

    # -- changing the tree -------------------------------------------------

    def add(self, ldif: str) -> None:
        """Add the entries in ``ldif`` (as the rootdn)."""
        self._ldapmodify(ldif, "-a")

    def modify(self, ldif: str) -> None:
        """Apply LDIF change records (``changetype: modify`` ...), as the rootdn."""
        self._ldapmodify(ldif)

    def delete(self, *dns: str) -> None:
        """Delete entries by DN (leaves first), as the rootdn."""
        self._run([self._ldapdelete_bin, *self._auth_args(), *dns])

    def _ldapmodify(self, ldif: str, *flags: str) -> None:
        self._run([self._ldapmodify_bin, *flags, *self._auth_args()], ldif)

    def _auth_args(self) -> list[str]:
        return ["-x", "-H", self.uri, "-D", self.rootdn, "-w", self.rootpw]

    def _run(self, args: list[str], stdin: str | None = None) -> None:
        proc = subprocess.run(
            args, input=stdin, capture_output=True, text=True, timeout=scaled(30), check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{Path(args[0]).name} exited {proc.returncode}: {proc.stderr}{proc.stdout}"
            )

    # -- python-ldap -------------------------------------------------------

    def connect(
        self, dn: str | None = None, password: str | None = None, *, uri: str | None = None
    ) -> Any:
        """A python-ldap connection bound as ``dn`` (default: cn=vmail).

        Raises python-ldap's exceptions (``ldap.INVALID_CREDENTIALS`` ...).
        """
        ldap = require_module("ldap", "python-ldap (pip; needs libldap2-dev, libsasl2-dev)")
        conn = ldap.initialize(uri or self.uri)
        conn.protocol_version = 3
        conn.set_option(ldap.OPT_NETWORK_TIMEOUT, scaled(5))
        conn.set_option(ldap.OPT_TIMEOUT, scaled(10))
        conn.simple_bind_s(
            dn if dn is not None else self.binddn,
            password if password is not None else self.bindpw,
        )
        return conn


@contextlib.contextmanager
def slapd_instance(
    ldif: str | None = None,
    *,
    ipv6: bool = False,
    base_dir: str | os.PathLike[str] | None = None,
    keep: bool | None = None,
) -> Iterator[SlapdInstance]:
    """Start slapd, load ``ldif`` (default :func:`base_ldif`; ``""`` for an empty
    database), stop it by PID on exit even on failure, and remove its directory.

    Args:
        ipv6: also listen on ``[::1]`` (same port).
        base_dir: parent of the instance directory (default: system temp dir).
        keep: keep the directory (default: only when ``IREDAPD_TEST_KEEP_TMP=1``).
    """
    require("slapd", "Debian package slapd")
    require("ldapmodify", "Debian package ldap-utils")
    for name in ("iredmail.schema", "amavisd.schema"):
        if not (SCHEMA_DIR / name).exists():
            raise FileNotFoundError(SCHEMA_DIR / name)
    if not (SYSTEM_SCHEMA_DIR / "core.schema").exists():
        missing(f"{SYSTEM_SCHEMA_DIR}/core.schema not found: Debian package slapd")
    if ipv6:
        _require_ipv6_loopback()
    base = Path(tempfile.mkdtemp(prefix="iredapd-slapd-", dir=base_dir))
    instance = SlapdInstance(base, ipv6=ipv6)
    try:
        instance.start()
        text = base_ldif() if ldif is None else ldif
        if text.strip():
            instance.add(text)
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
def slapd_instance_factory() -> Iterator[Callable[..., SlapdInstance]]:
    """A function ``(ldif=None, *, ipv6=False) -> SlapdInstance`` (see :func:`slapd_instance`).

    Every instance it starts is stopped and removed when the test ends.
    """
    with contextlib.ExitStack() as stack:

        def factory(ldif: str | None = None, **options: Any) -> SlapdInstance:
            return stack.enter_context(slapd_instance(ldif, **options))

        yield factory


def _require_ipv6_loopback() -> None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError as exc:
        missing(f"no IPv6 loopback (::1): {exc}")
