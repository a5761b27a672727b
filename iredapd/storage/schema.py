"""Tables of the databases this project owns or reads, as SQLAlchemy Core.

Names, columns, defaults and indexes are iRedAPD's (``SQL/iredapd.{mysql,pgsql}``)
and iRedMail's (vmail, amavisd), so an existing database works unchanged; SQLite
gets the same shape.  Spec: core-and-stateful.md §16 (iredapd), access-policies.md
§16.1 (vmail), §16.2 (amavisd).

``METADATA`` maps a database name (``iredapd``, ``amavisd``, ``vmail``) to its
MetaData.  The daemon creates and upgrades the tables of the database it owns
(``iredapd``); ``vmail`` and ``amavisd`` are only created on the embedded SQLite
default and in tests (see ``iredapd.storage.migrate``).

Deliberate differences, only in tables *we* create (an existing database's
column types are never altered):

* ``throttle(account, kind)`` and ``throttle_tracking(tid, account)`` are unique
  on every dialect (iRedAPD's PostgreSQL has plain indexes): the counters are
  updated by one atomic UPSERT, which needs the unique index (§17.1, §17.9).
* ``throttle_tracking.tid`` is NOT NULL on every dialect (PostgreSQL's is
  nullable; NULLs never conflict in a unique index).
* ``throttle_tracking.cur_msgs``/``cur_quota`` are BIGINT everywhere (MySQL had
  MEDIUMINT UNSIGNED / INT UNSIGNED, which overflow: §17.4 item 28).
* Auto-increment ids are BIGSERIAL on PostgreSQL (iRedAPD: SERIAL, 2^31), so a
  busy ``smtp_sessions``/``greylisting_tracking`` never runs out of ids.
* ``smtp_sessions.reason`` and ``greylisting*.account/sender`` are VARCHAR(255)
  everywhere (MySQL had 150 / 100: long values failed in strict mode, §17.9).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator, TypeEngine

__all__ = [
    "ID",
    "METADATA",
    "AmavisdEmail",
    "alias",
    "alias_domain",
    "amavisd_metadata",
    "domain",
    "forwardings",
    "greylisting",
    "greylisting_tracking",
    "greylisting_whitelist_domain_spf",
    "greylisting_whitelist_domains",
    "greylisting_whitelists",
    "iredapd_metadata",
    "mailaddr",
    "mailbox",
    "maillist_owners",
    "maillists",
    "moderators",
    "outbound_wblist",
    "policy",
    "senderscore_cache",
    "smtp_sessions",
    "srs_exclude_domains",
    "throttle",
    "throttle_tracking",
    "users",
    "vmail_metadata",
    "wblist",
    "wblist_rdns",
]

# Variants apply to both names SQLAlchemy gives MySQL-family dialects.
_MYSQL = ("mysql", "mariadb")
_ENGINE = "InnoDB"  # all of iRedAPD's MySQL tables are InnoDB (§16)

# ---------------------------------------------------------------------------
# Column types (MySQL variant / PostgreSQL / SQLite)
# ---------------------------------------------------------------------------

# An auto-increment id: BIGINT UNSIGNED on MySQL, BIGSERIAL on PostgreSQL,
# INTEGER PRIMARY KEY (the rowid) on SQLite.
ID = (
    sa.BigInteger()
    .with_variant(mysql.BIGINT(unsigned=True), *_MYSQL)
    .with_variant(sa.Integer(), "sqlite")
)
# BIGINT(20) UNSIGNED / BIGINT: throttle_tracking.tid (refers to throttle.id).
_BIGINT_U = sa.BigInteger().with_variant(mysql.BIGINT(unsigned=True), *_MYSQL)
# INT(10) UNSIGNED / BIGINT: epoch seconds and periods.
_INT_U = sa.BigInteger().with_variant(mysql.INTEGER(unsigned=True), *_MYSQL)
# TINYINT(1) UNSIGNED / BIGINT: throttle.priority (0-255 on MySQL).
_TINY_U = sa.BigInteger().with_variant(mysql.TINYINT(1, unsigned=True), *_MYSQL)
# TINYINT(2) (signed) / SMALLINT: greylisting priorities.
_TINY2 = sa.SmallInteger().with_variant(mysql.TINYINT(2), *_MYSQL)
# TINYINT(1) / SMALLINT (INT2): 0/1 flags.
_FLAG = sa.SmallInteger().with_variant(mysql.TINYINT(1), *_MYSQL)
# amavisd ids: INT UNSIGNED / SERIAL (integer).
_AMAVIS_ID = sa.Integer().with_variant(mysql.INTEGER(unsigned=True), *_MYSQL)
# amavisd policy thresholds: FLOAT / REAL.
_REAL = (
    sa.Float().with_variant(mysql.FLOAT(), *_MYSQL).with_variant(postgresql.REAL(), "postgresql")
)


class AmavisdEmail(TypeDecorator[str]):
    """amavisd's ``email`` column: VARBINARY(255) / BYTEA / BLOB, used as ``str``.

    amavisd compares addresses byte for byte (case-sensitive), so the column is
    binary; iRedAPD decodes what it reads as UTF-8 (access-policies.md §6.6).
    Values are encoded and decoded with ``surrogateescape`` so any stored byte
    string survives a read-then-write round trip.
    """

    impl = sa.LargeBinary
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in _MYSQL:
            return dialect.type_descriptor(mysql.VARBINARY(255))
        return dialect.type_descriptor(sa.LargeBinary())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if isinstance(value, str):
            return value.encode("utf-8", "surrogateescape")
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return bytes(value).decode("utf-8", "surrogateescape")


class _CreatedDefault(FunctionElement[datetime]):
    """iRedMail's default for created/modified/passwordlastchange.

    MySQL: ``'1970-01-01 01:01:01'``; PostgreSQL: ``NOW()`` (access-policies.md
    §16.1).  SQLite follows MySQL, the most common iRedMail backend.
    """

    inherit_cache = True
    type = sa.DateTime()
    name = "created_default"


@compiles(_CreatedDefault)
def _created_default(_element: Any, _compiler: SQLCompiler, **_kw: Any) -> str:
    return "'1970-01-01 01:01:01'"


@compiles(_CreatedDefault, "postgresql")
def _created_default_pg(_element: Any, _compiler: SQLCompiler, **_kw: Any) -> str:
    return "NOW()"


def _int(n: int) -> sa.TextClause | str:
    """A numeric server default; negatives quoted so MySQL 5.7 accepts them."""
    return sa.text(str(n)) if n >= 0 else str(n)


def _id() -> sa.Column[int]:
    return sa.Column("id", ID, primary_key=True, autoincrement=True)


def _vc(name: str, length: int, default: str | None = "") -> sa.Column[str]:
    """VARCHAR NOT NULL with a default ('' unless given; None for no default)."""
    return sa.Column(name, sa.String(length), nullable=False, server_default=default)


def _num(name: str, type_: TypeEngine[Any], default: int) -> sa.Column[Any]:
    return sa.Column(name, type_, nullable=False, server_default=_int(default))


def _ix(table: str, *cols: str, unique: bool = False, name: str | None = None) -> sa.Index:
    return sa.Index(name or f"idx_{table}_{'_'.join(cols)}", *cols, unique=unique)


# ---------------------------------------------------------------------------
# iredapd database (core-and-stateful.md §16)
# ---------------------------------------------------------------------------

iredapd_metadata = sa.MetaData()

# §16.1.  Unique (account, kind) keeps iRedAPD's MySQL name.
throttle = sa.Table(
    "throttle",
    iredapd_metadata,
    _id(),
    _vc("account", 255, None),
    _vc("kind", 10, "outbound"),
    _num("priority", _TINY_U, 0),
    _num("period", _INT_U, 0),
    _num("msg_size", sa.BigInteger(), -1),
    _num("max_msgs", sa.BigInteger(), -1),
    _num("max_quota", sa.BigInteger(), -1),
    _num("max_rcpts", sa.BigInteger(), -1),  # added in iRedAPD 5.0
    _ix("throttle", "account", "kind", unique=True, name="account_kind"),
    mysql_engine=_ENGINE,
    mariadb_engine=_ENGINE,
)

# §16.2.  Unique (tid, account) keeps iRedAPD's MySQL name.
throttle_tracking = sa.Table(
    "throttle_tracking",
    iredapd_metadata,
    _id(),
    sa.Column(
        "tid",
        _BIGINT_U,
        sa.ForeignKey("throttle.id"),
        nullable=False,
        server_default=sa.text("0"),
    ),
    _vc("account", 255),
    _num("period", _INT_U, 0),
    _num("cur_msgs", sa.BigInteger(), 0),  # MySQL: was MEDIUMINT(8) UNSIGNED
    _num("cur_quota", sa.BigInteger(), 0),  # MySQL: was INT(10) UNSIGNED
    _num("init_time", _INT_U, 0),
    _num("last_time", _INT_U, 0),
    _num("last_notify_time", _INT_U, 0),  # added in iRedAPD 2.3
    _ix("throttle_tracking", "tid", "account", unique=True, name="tid_account"),
    mysql_engine=_ENGINE,
    mariadb_engine=_ENGINE,
)

# §16.3
greylisting = sa.Table(
    "greylisting",
    iredapd_metadata,
    _id(),
    _vc("account", 255),
    _num("priority", _TINY2, 0),
    _vc("sender", 255),
    _num("sender_priority", _TINY2, 0),
    _vc("comment", 255),
    _num("active", _FLAG, 1),
    _ix("greylisting", "account", "sender", unique=True),
    _ix("greylisting", "comment"),
    mysql_engine=_ENGINE,
    mariadb_engine=_ENGINE,
)


def _greylisting_whitelist(name: str) -> sa.Table:
    """§16.4: greylisting_whitelists and greylisting_whitelist_domain_spf."""
    return sa.Table(
        name,
        iredapd_metadata,
        _id(),
        _vc("account", 255),
        _vc("sender", 255),
        _vc("comment", 255),
        _ix(name, "account", "sender", unique=True),
        _ix(name, "comment"),
        mysql_engine=_ENGINE,
        mariadb_engine=_ENGINE,
    )


greylisting_whitelists = _greylisting_whitelist("greylisting_whitelists")
greylisting_whitelist_domain_spf = _greylisting_whitelist("greylisting_whitelist_domain_spf")

# §16.5
greylisting_whitelist_domains = sa.Table(
    "greylisting_whitelist_domains",
    iredapd_metadata,
    _id(),
    _vc("domain", 255),
    _ix("greylisting_whitelist_domains", "domain", unique=True),
    mysql_engine=_ENGINE,
    mariadb_engine=_ENGINE,
)

# §16.6
greylisting_tracking = sa.Table(
    "greylisting_tracking",
    iredapd_metadata,
    _id(),
    _vc("sender", 255, None),
    _vc("recipient", 255, None),
    _vc("client_address", 40, None),
    _vc("sender_domain", 255),
    _vc("rcpt_domain", 255),
    _num("init_time", _INT_U, 0),
    _num("block_expired", _INT_U, 0),
    _num("record_expired", _INT_U, 0),
    _num("blocked_count", sa.BigInteger(), 0),
    _num("passed", _FLAG, 0),
    _ix("greylisting_tracking", "sender", "recipient", "client_address", unique=True),
    _ix("greylisting_tracking", "sender_domain"),
    _ix("greylisting_tracking", "rcpt_domain"),
    _ix("greylisting_tracking", "client_address", "passed"),
    mysql_engine=_ENGINE,
    mariadb_engine=_ENGINE,
)

# §16.7 (access-policies.md §5)
wblist_rdns = sa.Table(
    "wblist_rdns",
    iredapd_metadata,
    _id(),
    _vc("rdns", 255),
    _vc("wb", 10, "B"),
    _ix("wblist_rdns", "rdns", unique=True),
    _ix("wblist_rdns", "wb"),
    mysql_engine=_ENGINE,
    mariadb_engine=_ENGINE,
)

# §16.8
srs_exclude_domains = sa.Table(
    "srs_exclude_domains",
    iredapd_metadata,
    _id(),
    _vc("domain", 255),
    _ix("srs_exclude_domains", "domain", unique=True),
    mysql_engine=_ENGINE,
    mariadb_engine=_ENGINE,
)

# §16.9: client_address is the primary key; score is nullable.
senderscore_cache = sa.Table(
    "senderscore_cache",
    iredapd_metadata,
    sa.Column("client_address", sa.String(40), primary_key=True, server_default=""),
    sa.Column(
        "score",
        sa.Integer().with_variant(mysql.INTEGER(3, unsigned=True), *_MYSQL),
        nullable=True,
        server_default=sa.text("0"),
    ),
    _num("time", _INT_U, 0),
    _ix("senderscore_cache", "score"),
    _ix("senderscore_cache", "time"),
    mysql_engine=_ENGINE,
    mariadb_engine=_ENGINE,
)

# §16.10: every column except id is indexed on its own.
smtp_sessions = sa.Table(
    "smtp_sessions",
    iredapd_metadata,
    _id(),
    sa.Column(
        "time",
        sa.DateTime().with_variant(mysql.TIMESTAMP(), *_MYSQL),
        nullable=False,
        server_default=sa.func.current_timestamp(),
    ),
    _num("time_num", _INT_U, 0),
    _vc("action", 20),
    _vc("reason", 255),  # MySQL: was VARCHAR(150)
    _vc("instance", 40),
    _vc("client_address", 40),
    _vc("client_name", 255),
    _vc("reverse_client_name", 255),
    _vc("helo_name", 255),
    _vc("sender", 255),
    _vc("sender_domain", 255),
    _vc("sasl_username", 255),
    _vc("sasl_domain", 255),
    _vc("recipient", 255),
    _vc("recipient_domain", 255),
    _vc("encryption_protocol", 20),
    _vc("encryption_cipher", 50),
    _vc("server_address", 40),
    _vc("server_port", 10),
    mysql_engine=_ENGINE,
    mariadb_engine=_ENGINE,
)
# iRedAPD indexes every column: iRedAdmin searches the log by any of them.
# iRedAdmin reads MySQL/PostgreSQL only, and on the embedded SQLite default
# these 18 search indexes made each logged request cost ~200 µs of CPU (a
# tenth of that without them), so there only time_num, which the cleanup
# tool deletes by, is indexed.
SQLITE_SKIPS: Final = "not_on_sqlite"


for _col in smtp_sessions.columns:
    if _col.name != "id":
        _index = sa.Index(f"idx_smtp_sessions_{_col.name}", _col)
        if _col.name != "time_num":
            _index.info[SQLITE_SKIPS] = True
            # (a tuple of names is documented; the stubs only know one name)
            _index.ddl_if(dialect=("mysql", "mariadb", "postgresql"))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# amavisd database (access-policies.md §16.2; iRedMail's amavisd schema)
# ---------------------------------------------------------------------------

amavisd_metadata = sa.MetaData()


def _amavis_id() -> sa.Column[int]:
    return sa.Column("id", _AMAVIS_ID, primary_key=True, autoincrement=True)


def _email() -> sa.Column[str]:
    return sa.Column("email", AmavisdEmail(), nullable=False)


_POLICY_FLAGS = (
    "virus_lover",
    "spam_lover",
    "unchecked_lover",
    "banned_files_lover",
    "bad_header_lover",
    "bypass_virus_checks",
    "bypass_spam_checks",
    "bypass_banned_checks",
    "bypass_header_checks",
)
_POLICY_QUARANTINE = (
    "virus_quarantine_to",
    "spam_quarantine_to",
    "banned_quarantine_to",
    "unchecked_quarantine_to",
    "bad_header_quarantine_to",
    "clean_quarantine_to",
    "archive_quarantine_to",
)
_POLICY_LEVELS = (
    "spam_tag_level",
    "spam_tag2_level",
    "spam_tag3_level",
    "spam_kill_level",
    "spam_dsn_cutoff_level",
    "spam_quarantine_cutoff_level",
)
_POLICY_STRINGS = (
    "addr_extension_virus",
    "addr_extension_spam",
    "addr_extension_banned",
    "addr_extension_bad_header",
    "newvirus_admin",
    "virus_admin",
    "banned_admin",
    "bad_header_admin",
    "spam_admin",
    "spam_subject_tag",
    "spam_subject_tag2",
    "spam_subject_tag3",
    "banned_rulenames",
    "disclaimer_options",
    "forward_method",
    "sa_userconf",
    "sa_username",
)

# Not read by iRedAPD; users.policy_id refers to it.  policy_name is unique
# (an iRedMail change to amavisd's schema).
policy = sa.Table(
    "policy",
    amavisd_metadata,
    _amavis_id(),
    sa.Column("policy_name", sa.String(255), nullable=False),
    *(sa.Column(c, sa.CHAR(1)) for c in _POLICY_FLAGS),
    *(sa.Column(c, sa.String(64)) for c in _POLICY_QUARANTINE),
    *(sa.Column(c, _REAL) for c in _POLICY_LEVELS),
    *(sa.Column(c, sa.String(64)) for c in _POLICY_STRINGS[:4]),
    *(sa.Column(c, sa.CHAR(1)) for c in ("warnvirusrecip", "warnbannedrecip", "warnbadhrecip")),
    *(sa.Column(c, sa.String(64)) for c in _POLICY_STRINGS[4:12]),
    sa.Column("message_size_limit", sa.Integer),
    *(sa.Column(c, sa.String(64)) for c in _POLICY_STRINGS[12:]),
    _ix("policy", "policy_name", unique=True, name="policy_idx_policy_name"),
    mysql_engine=_ENGINE,
    mariadb_engine=_ENGINE,
)

# Local accounts and account patterns (user@dom, @dom, @.dom, @.).
users = sa.Table(
    "users",
    amavisd_metadata,
    _amavis_id(),
    _num("priority", sa.Integer(), 7),
    _num("policy_id", _AMAVIS_ID, 1),
    _email(),
    sa.Column("fullname", sa.String(255)),
    _ix("users", "email", unique=True),
    mysql_engine=_ENGINE,
    mariadb_engine=_ENGINE,
)

# External senders/recipients, IPs, networks and patterns.
mailaddr = sa.Table(
    "mailaddr",
    amavisd_metadata,
    _amavis_id(),
    _num("priority", sa.Integer(), 7),
    _email(),
    _ix("mailaddr", "email", unique=True),
    mysql_engine=_ENGINE,
    mariadb_engine=_ENGINE,
)


def _wblist(name: str) -> sa.Table:
    """wblist: rid -> users.id, sid -> mailaddr.id; outbound_wblist the reverse.

    No foreign keys, as in amavisd's MySQL schema: iRedAPD mixes mailaddr ids
    into user-id lists (access-policies.md §6.5).
    """
    return sa.Table(
        name,
        amavisd_metadata,
        sa.Column("rid", _AMAVIS_ID, primary_key=True, autoincrement=False),
        sa.Column("sid", _AMAVIS_ID, primary_key=True, autoincrement=False),
        sa.Column("wb", sa.String(10), nullable=False),
        mysql_engine=_ENGINE,
        mariadb_engine=_ENGINE,
    )


wblist = _wblist("wblist")
outbound_wblist = _wblist("outbound_wblist")


# ---------------------------------------------------------------------------
# vmail database (access-policies.md §16.1, §13.4; iRedMail's schema)
# ---------------------------------------------------------------------------

vmail_metadata = sa.MetaData()


def _active() -> sa.Column[int]:
    return _num("active", _FLAG, 1)


def _dt(name: str, *, expired: bool = False) -> sa.Column[datetime]:
    default: Any = "9999-12-31 00:00:00" if expired else _CreatedDefault()
    return sa.Column(name, sa.DateTime, nullable=False, server_default=default)


def _stamps() -> list[sa.Column[datetime]]:
    return [_dt("created"), _dt("modified"), _dt("expired", expired=True)]


domain = sa.Table(
    "domain",
    vmail_metadata,
    sa.Column("domain", sa.String(255), primary_key=True, server_default=""),
    sa.Column("description", sa.Text),
    sa.Column("disclaimer", sa.Text),
    _num("aliases", sa.Integer(), 0),
    _num("mailboxes", sa.Integer(), 0),
    _num("maillists", sa.Integer(), 0),
    _num("maxquota", sa.BigInteger(), 0),
    _num("quota", sa.BigInteger(), 0),
    _vc("transport", 255, "dovecot"),
    _num("backupmx", _FLAG, 0),
    sa.Column("settings", sa.Text),
    *_stamps(),
    _active(),
    _ix("domain", "backupmx"),
    _ix("domain", "expired"),
    _ix("domain", "active"),
    mysql_engine=_ENGINE,
    mariadb_engine=_ENGINE,
)

alias_domain = sa.Table(
    "alias_domain",
    vmail_metadata,
    sa.Column("alias_domain", sa.String(255), primary_key=True),
    _vc("target_domain", 255, None),
    _dt("created"),
    _dt("modified"),
    _active(),
    _ix("alias_domain", "target_domain"),
    _ix("alias_domain", "active"),
    mysql_engine=_ENGINE,
    mariadb_engine=_ENGINE,
)

_MAILBOX_SERVICES = (
    "enablesmtp",
    "enablesmtpsecured",
    "enablepop3",
    "enablepop3secured",
    "enablepop3tls",
    "enableimap",
    "enableimapsecured",
    "enableimaptls",
    "enabledeliver",
    "enablelda",
    "enablemanagesieve",
    "enablemanagesievesecured",
    "enablesieve",
    "enablesievesecured",
    "enablesievetls",
    "enableinternal",
    "enabledoveadm",
    "enablelib-storage",
    "enablequota-status",
    "enableindexer-worker",
    "enablelmtp",
    "enabledsync",
    "enablesogo",
)

mailbox = sa.Table(
    "mailbox",
    vmail_metadata,
    sa.Column("username", sa.String(255), primary_key=True, server_default=""),
    _vc("password", 255),
    _vc("name", 255),
    _vc("language", 5),
    _vc("mailboxformat", 50, "maildir"),
    _vc("mailboxfolder", 50, "Maildir"),
    _vc("storagebasedirectory", 255, "/var/vmail"),
    _vc("storagenode", 255, "vmail1"),
    _vc("maildir", 255),
    _num("quota", sa.BigInteger(), 0),
    _vc("domain", 255),
    _vc("transport", 255),
    _vc("department", 255),
    _vc("rank", 255, "normal"),
    sa.Column("employeeid", sa.String(255), server_default=""),
    _num("isadmin", _FLAG, 0),
    _num("isglobaladmin", _FLAG, 0),
    *(_num(c, _FLAG, 1) for c in _MAILBOX_SERVICES),
    sa.Column("allow_nets", sa.Text),
    sa.Column("disclaimer", sa.Text),
    sa.Column("settings", sa.Text),
    _dt("passwordlastchange"),
    *_stamps(),
    _active(),
    _ix("mailbox", "domain"),
    _ix("mailbox", "department"),
    _ix("mailbox", "employeeid"),
    _ix("mailbox", "passwordlastchange"),
    _ix("mailbox", "expired"),
    _ix("mailbox", "active"),
    mysql_engine=_ENGINE,
    mariadb_engine=_ENGINE,
)

alias = sa.Table(
    "alias",
    vmail_metadata,
    sa.Column("address", sa.String(255), primary_key=True, server_default=""),
    _vc("name", 255),
    _vc("accesspolicy", 30),
    _vc("domain", 255),
    *_stamps(),
    _active(),
    _ix("alias", "domain"),
    _ix("alias", "expired"),
    _ix("alias", "active"),
    mysql_engine=_ENGINE,
    mariadb_engine=_ENGINE,
)

forwardings = sa.Table(
    "forwardings",
    vmail_metadata,
    _id(),
    _vc("address", 255),
    _vc("forwarding", 255),
    _vc("domain", 255),
    _vc("dest_domain", 255),
    _num("is_maillist", _FLAG, 0),
    _num("is_list", _FLAG, 0),
    _num("is_forwarding", _FLAG, 0),
    _num("is_alias", _FLAG, 0),
    _active(),
    _ix("forwardings", "address", "forwarding", unique=True),
    _ix("forwardings", "domain"),
    _ix("forwardings", "dest_domain"),
    _ix("forwardings", "is_maillist"),
    _ix("forwardings", "is_list"),
    _ix("forwardings", "is_alias"),
    mysql_engine=_ENGINE,
    mariadb_engine=_ENGINE,
)

maillists = sa.Table(
    "maillists",
    vmail_metadata,
    _id(),
    _vc("address", 255),
    _vc("domain", 255),
    _vc("transport", 255),
    _vc("accesspolicy", 30),
    _num("maxmsgsize", sa.BigInteger(), 0),
    _vc("name", 255),
    sa.Column("description", sa.Text),
    _vc("mlid", 36),
    _num("is_newsletter", _FLAG, 0),
    sa.Column("settings", sa.Text),
    *_stamps(),
    _active(),
    _ix("maillists", "address", unique=True),
    _ix("maillists", "mlid", unique=True),
    _ix("maillists", "is_newsletter"),
    _ix("maillists", "domain"),
    _ix("maillists", "active"),
    mysql_engine=_ENGINE,
    mariadb_engine=_ENGINE,
)


def _list_members(name: str, member: str) -> sa.Table:
    """moderators / maillist_owners: (address, <member>) pairs, unique."""
    return sa.Table(
        name,
        vmail_metadata,
        _id(),
        _vc("address", 255),
        _vc(member, 255),
        _vc("domain", 255),
        _vc("dest_domain", 255),
        _ix(name, "address", member, unique=True),
        _ix(name, member),
        _ix(name, "domain"),
        _ix(name, "dest_domain"),
        mysql_engine=_ENGINE,
        mariadb_engine=_ENGINE,
    )


moderators = _list_members("moderators", "moderator")
maillist_owners = _list_members("maillist_owners", "owner")


METADATA: dict[str, sa.MetaData] = {
    "iredapd": iredapd_metadata,
    "amavisd": amavisd_metadata,
    "vmail": vmail_metadata,
}
