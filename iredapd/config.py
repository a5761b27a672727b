"""Settings: every iRedAPD setting with its default, loaded from ``settings.py``.

A settings file is Python, as with iRedAPD: the defaults are in place before it
runs (so ``PLUGIN_PRIORITIES['x'] = 5`` mutates the default table), and its
usual first line ``from libs.default_settings import *`` is served from here.
Imports, ``os.environ`` look-ups, functions and ``_private`` names are fine;
a public name bound to plain data (str, number, bool, list, tuple, dict, set)
must be a known setting of the right type, or loading fails with a message
naming it and the closest known name.

The result is one frozen :class:`Settings`, passed explicitly to whoever needs
it; no module imports a global settings module.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import difflib
import logging
import os
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, Final, get_args, get_origin, get_type_hints

from iredapd.actions import Action, InvalidAction
from iredapd.lookup import TrustedNetworks

__all__ = [
    "SEARCH_PATHS",
    "ConfigError",
    "Settings",
    "build_settings",
    "default_settings",
    "find_settings_file",
    "load_settings",
    "parse_override",
    "read_settings_file",
]

log = logging.getLogger(__name__)


class ConfigError(Exception):
    """A settings file or value that cannot be used; the message says which."""


# ---------------------------------------------------------------------------
# value kinds beyond plain annotations


@dataclass(frozen=True, slots=True)
class _Port:
    """An int 0-65535, or a string of digits (iRedAPD's '3306')."""


@dataclass(frozen=True, slots=True)
class _Choice:
    choices: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Positive:
    """A number > 0."""


@dataclass(frozen=True, slots=True)
class _NonNegative:
    """A number >= 0."""


Port = Annotated[int, _Port()]
Seconds = Annotated[float, _Positive()]
Count = Annotated[int, _NonNegative()]

_LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
_SYSLOG_FACILITIES: Final = (
    "auth",
    "authpriv",
    "cron",
    "daemon",
    "ftp",
    "kern",
    "lpr",
    "mail",
    "news",
    "syslog",
    "user",
    "uucp",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
)

# iRedAPD's plugin priorities (larger runs first).  iRedAPD keys the two
# force-change-password plugins as '*_in_days', which matches no plugin file, so
# they run at 0 there; we list the real names too (see "Differences").
BUILTIN_PLUGIN_PRIORITIES: Final[Mapping[str, int]] = types.MappingProxyType(
    {
        "reject_null_sender": 100,
        "reject_to_hostname": 100,
        "wblist_rdns": 99,
        "reject_sender_login_mismatch": 90,
        "greylisting": 80,
        "ldap_force_change_password_in_days": 70,
        "sql_force_change_password_in_days": 70,
        "ldap_force_change_password": 70,
        "sql_force_change_password": 70,
        "throttle": 60,
        "sql_ml_access_policy": 51,
        "ldap_maillist_access_policy": 50,
        "sql_alias_access_policy": 50,
        "amavisd_wblist": 40,
        "whitelist_outbound_recipient": 30,
        "senderscore": 10,
        "spf": 20,
    }
)


def _s(default: Any, doc: str, *, ours: bool = False) -> Any:
    """A settings field: its default and one line for ``--show-config``."""
    meta = {"doc": doc, "ours": ours}
    if isinstance(default, list | tuple):
        return field(default=tuple(default), metadata=meta)
    if isinstance(default, dict):
        frozen = types.MappingProxyType(dict(default))
        return field(default_factory=lambda: frozen, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True, slots=True)
class Settings:
    """All settings.  Names are iRedAPD's; ``ours=True`` marks new ones."""

    # --- daemon ---------------------------------------------------------
    listen_address: str = _s("127.0.0.1", "address of the policy listener (IPv4 or IPv6)")
    listen_port: Port = _s(7777, "policy port (Postfix check_policy_service)")
    srs_forward_port: Port = _s(7778, "SRS sender rewriting port (tcp_table)")
    srs_reverse_port: Port = _s(7779, "SRS recipient restoring port (tcp_table)")
    srs_secrets: tuple[str, ...] = _s((), "SRS secrets: first signs, all verify; empty = SRS off")
    srs_domain: str = _s("", "SRS rewrite domain; empty = SRS off")
    run_as_user: str = _s("", "user to switch to after binding (as root); empty = stay")
    pid_file: str = _s("", "pid file written at start, removed at exit; empty = none")
    log_level: Annotated[str, _Choice(_LOG_LEVELS)] = _s("info", "log level")
    backend: Annotated[str, _Choice(("sqlite", "mysql", "pgsql", "ldap"))] = _s(
        "sqlite", "account backend: sqlite (embedded), mysql, pgsql or ldap"
    )
    plugins: tuple[str, ...] = _s(
        # iRedAPD's sample settings.py
        (
            "reject_null_sender",
            "wblist_rdns",
            "reject_sender_login_mismatch",
            "greylisting",
            "throttle",
            "amavisd_wblist",
            "sql_alias_access_policy",
        ),
        "enabled plugins (order by priority)",
    )
    PLUGIN_PRIORITIES: Mapping[str, int] = _s({}, "priority overrides (larger runs first)")
    SYSLOG_SERVER: str = _s("/dev/log", "syslog socket path, or host for UDP")
    SYSLOG_PORT: Port = _s(514, "syslog UDP port when SYSLOG_SERVER is a host")
    SYSLOG_FACILITY: Annotated[str, _Choice(_SYSLOG_FACILITIES)] = _s("local5", "syslog facility")
    DNS_QUERY_TIMEOUT: Seconds = _s(3.0, "deadline of one DNS query (s)")
    SPF_MAX_DNS_QUERIES: Count = _s(20, "DNS queries per SPF expansion (greylisting tool)")
    DNS_NAMESERVERS: tuple[str, ...] = _s(
        (), "DNS servers to ask (IP addresses); empty = /etc/resolv.conf", ours=True
    )
    DNS_PORT: Port = _s(53, "port of DNS_NAMESERVERS", ours=True)
    LOG_TARGET: Annotated[str, _Choice(("syslog", "stderr", "file"))] = _s(
        "syslog", "where the log goes (--foreground forces stderr)", ours=True
    )
    LOG_FILE: str = _s("/var/log/iredapd/iredapd.log", "log file when LOG_TARGET='file'", ours=True)
    DATA_DIR: str = _s("/var/lib/iredapd", "embedded SQLite databases live here", ours=True)
    SERVER_HOSTNAME: str = _s("", "this server's hostname; empty = gethostname()", ours=True)
    PLUGIN_DIRS: tuple[str, ...] = _s((), "extra directories searched for plugins", ours=True)
    PLUGIN_TIMEOUT: Seconds = _s(5.0, "deadline of one plugin for one request (s)", ours=True)
    PLUGIN_TIMEOUTS: Mapping[str, float] = _s({}, "per-plugin deadlines (s)", ours=True)
    PLUGIN_FAILURE_ACTION: str = _s(
        "DUNNO", "action when a plugin fails or runs late (e.g. 'DEFER_IF_PERMIT ...')", ours=True
    )
    PLUGIN_FAILURE_ACTIONS: Mapping[str, str] = _s({}, "per-plugin failure actions", ours=True)
    REQUEST_TIMEOUT: Seconds = _s(
        10.0, "deadline of the whole chain for one request (s)", ours=True
    )
    IDLE_TIMEOUT: Seconds = _s(
        330.0, "close a connection idle this long (Postfix max_idle is 300 s)", ours=True
    )
    SHUTDOWN_GRACE: Seconds = _s(
        5.0, "on SIGTERM, time in-flight requests get to finish (s)", ours=True
    )
    WORKERS: Annotated[int, _Positive()] = _s(
        1, "processes serving the same ports (SO_REUSEPORT); 1 = no supervisor", ours=True
    )
    EVENT_LOOP: Annotated[str, _Choice(("auto", "asyncio", "uvloop"))] = _s(
        "auto", "event loop: uvloop when installed (auto), or the stdlib's", ours=True
    )
    THREAD_POOL_SIZE: Count = _s(
        8,
        "threads for blocking backend calls (keep it at most SQL_CONNECTION_POOL_SIZE: "
        "more threads than pooled connections open and close overflow connections "
        "under load, and every extra thread contends for the GIL with the event loop)",
        ours=True,
    )
    CACHE_TTL: Annotated[float, _NonNegative()] = _s(
        60.0, "seconds lookups that rarely change are cached; 0 = off", ours=True
    )

    # --- databases -----------------------------------------------------
    vmail_db_server: str = _s("127.0.0.1", "vmail database host")
    vmail_db_port: Port = _s(3306, "vmail database port")
    vmail_db_name: str = _s("vmail", "vmail database name")
    vmail_db_user: str = _s("vmail", "vmail database user")
    vmail_db_password: str = _s("password", "vmail database password")
    vmail_db_use_ssl: bool = _s(False, "TLS to the vmail database")
    amavisd_db_server: str = _s("127.0.0.1", "amavisd database host")
    amavisd_db_port: Port = _s(3306, "amavisd database port")
    amavisd_db_name: str = _s("amavisd", "amavisd database name")
    amavisd_db_user: str = _s("amavisd", "amavisd database user")
    amavisd_db_password: str = _s("password", "amavisd database password")
    amavisd_db_use_ssl: bool = _s(False, "TLS to the amavisd database")
    iredapd_db_server: str = _s("127.0.0.1", "iredapd database host")
    iredapd_db_port: Port = _s(3306, "iredapd database port")
    iredapd_db_name: str = _s("iredapd", "iredapd database name")
    iredapd_db_user: str = _s("iredapd", "iredapd database user")
    iredapd_db_password: str = _s("password", "iredapd database password")
    iredapd_db_use_ssl: bool = _s(False, "TLS to the iredapd database")
    SQL_CONNECTION_POOL_SIZE: Count = _s(10, "SQL connections kept open per database")
    SQL_CONNECTION_MAX_OVERFLOW: Count = _s(10, "extra SQL connections under load")
    SQL_CONNECTION_POOL_RECYCLE: Count = _s(60, "seconds before an SQL connection is renewed")
    SQL_DB_DRIVER: str = _s("", "DBAPI driver (pymysql, psycopg2); empty = default")
    ldap_uri: str = _s("ldap://127.0.0.1:389", "LDAP server URI")
    ldap_basedn: str = _s("o=domains,dc=iredmail,dc=org", "LDAP base DN of mail domains")
    ldap_binddn: str = _s("cn=vmail,dc=iredmail,dc=org", "LDAP bind DN")
    ldap_bindpw: str = _s("password", "LDAP bind password")
    ldap_enable_tls: bool = _s(False, "STARTTLS to the LDAP server")
    LDAP_TLS_REQUIRE_CERT: bool = _s(
        True, "verify the LDAP server's certificate (ldaps:// and STARTTLS)", ours=True
    )
    LDAP_TLS_CA_CERT_FILE: str = _s("", "CA certificates for LDAP TLS; empty = system", ours=True)
    LDAP_TIMEOUT: Seconds = _s(5.0, "deadline of one LDAP connect or search (s)", ours=True)
    LDAP_CONNECTIONS: Count = _s(4, "LDAP connections kept open", ours=True)

    # --- core behaviour and logging ---------------------------------------
    MYNETWORKS: tuple[str, ...] = _s((), "trusted clients: IPs, wildcards (192.168.1.*), CIDR")
    RECIPIENT_DELIMITERS: tuple[str, ...] = _s(("+",), "address extension delimiters")
    ENABLE_ALL_WILDCARD_IP: bool = _s(False, "look up every wildcard form of a client IPv4")
    LOG_SMTP_SESSIONS: bool = _s(True, "record sessions in iredapd.smtp_sessions")
    LOG_SMTP_SESSIONS_EXPIRE_DAYS: Count = _s(7, "days smtp_sessions rows are kept")
    LOG_SMTP_SESSIONS_BYPASS_DUNNO: bool = _s(False, "do not record DUNNO actions")
    LOG_SMTP_SESSIONS_BYPASS_GREYLISTING: bool = _s(False, "do not record greylisting deferrals")
    LOG_SMTP_SESSIONS_BYPASS_WHITELIST: bool = _s(False, "do not record OK actions")
    TRACKING_EXPIRE_SECONDS: Count = _s(10, "unused (kept for iRedAPD settings files)")
    CLEANUP_QUERY_SIZE_LIMIT: Count = _s(1000, "rows per DELETE batch in cleanup_db")

    # --- throttle ------------------------------------------------------------
    THROTTLE_BYPASS_MYNETWORKS: bool = _s(False, "do not throttle trusted clients")
    THROTTLE_BYPASS_LOCAL_RECIPIENT: bool = _s(True, "no recipient throttling for SMTP AUTH")
    THROTTLE_BYPASS_SAME_DOMAIN: bool = _s(True, "no throttling when sender/recipient domain match")

    # --- greylisting ---------------------------------------------------------
    GREYLISTING_MESSAGE: str = _s(
        "Intentional policy rejection, please try again later", "text after '451 4.7.1 '"
    )
    GREYLISTING_TRAINING_MODE: bool = _s(False, "track triplets but never defer")
    GREYLISTING_BLOCK_EXPIRE: Count = _s(15, "minutes before a retry is accepted")
    GREYLISTING_AUTH_TRIPLET_EXPIRE: Count = _s(30, "days a passed triplet stays whitelisted")
    GREYLISTING_UNAUTH_TRIPLET_EXPIRE: Count = _s(1, "days an unpassed triplet is kept")
    GREYLISTING_BYPASS_SPF: bool = _s(True, "no greylisting when the sender's SPF lists the client")
    WL_RCPT_FOR_GREYLISTING: bool = _s(True, "whitelist outbound recipients for greylisting")
    WL_RCPT_WITHOUT_SPF: bool = _s(False, "also whitelist them directly (no SPF)")
    WL_RCPT_LOCAL_ACCOUNT: str = _s("user", "whose whitelist: user, domain or global")
    WL_RCPT_RCPT: str = _s("user", "what is whitelisted: user or domain")
    WL_RCPT_WHITELIST_DOMAIN_FOR_GREYLISTING: bool = _s(False, "whitelist the recipient domain")

    # --- senderscore ---------------------------------------------------------
    SENDERSCORE_REJECT_SCORE: Count = _s(30, "reject when the score is at most this")
    SENDERSCORE_CACHE_DAYS: Count = _s(2, "days a score is cached")

    # --- notifications -------------------------------------------------------
    CMD_SENDMAIL: str = _s("/usr/sbin/sendmail", "sendmail command for notifications")
    NOTIFICATION_RECIPIENTS: tuple[str, ...] = _s(("root",), "who gets throttle notifications")
    NOTIFICATION_SMTP_SERVER: str = _s("localhost", "SMTP server for notifications")
    NOTIFICATION_SMTP_PORT: Port = _s(587, "SMTP port for notifications")
    NOTIFICATION_SMTP_STARTTLS: bool = _s(True, "STARTTLS for notifications")
    NOTIFICATION_SMTP_USER: str = _s("no-reply@localhost.localdomain", "SMTP login and sender")
    NOTIFICATION_SMTP_PASSWORD: str = _s("", "SMTP password; empty = use CMD_SENDMAIL")
    NOTIFICATION_SMTP_DEBUG_LEVEL: Count = _s(0, "smtplib debug level")
    NOTIFICATION_SENDER_NAME: str = _s("No Reply", "display name of the notification sender")
    NOTIFICATION_TIMEOUT: Seconds = _s(
        30.0, "deadline of sending one notification (off the hot path) (s)", ours=True
    )

    # --- access policies, white/blacklists -----------------------------------
    WBLIST_BYPASS_OUTGOING_EMAIL: bool = _s(False, "no wblist check for SMTP AUTH senders")
    WBLIST_DISCARD_INSTEAD_OF_REJECT: bool = _s(False, "DISCARD blacklisted mail, not REJECT")
    CHANGE_PASSWORD_DAYS: Count = _s(90, "days before a password must be changed")
    CHANGE_PASSWORD_MESSAGE: str = _s(
        "Password expired or never changed, please change your password in webmail "
        "before sending email",
        "reject text for an expired password",
    )
    CHANGE_PASSWORD_NEVER_EXPIRE_USERS: tuple[str, ...] = _s((), "users/domains never forced")
    CHECK_FORGED_SENDER: bool = _s(True, "reject local senders without SMTP AUTH")
    ALLOWED_FORGED_SENDERS: tuple[str, ...] = _s((), "senders allowed without SMTP AUTH")
    CHECK_SPF_IF_LOGIN_MISMATCH: bool = _s(True, "allow a mismatch when SPF lists the client")
    ALLOWED_LOGIN_MISMATCH_SENDERS: tuple[str, ...] = _s((), "users allowed to send as others")
    ALLOWED_LOGIN_MISMATCH_STRICTLY: bool = _s(True, "only as their own alias addresses")
    ALLOWED_LOGIN_MISMATCH_LIST_MEMBER: bool = _s(False, "members may send as their list")
    MLMMJADMIN_API_AUTH_TOKEN_HEADER_NAME: str = _s(
        "X-MLMMJADMIN-API-AUTH-TOKEN", "mlmmjadmin API token header"
    )
    mlmmjadmin_api_endpoint: str = _s("http://127.0.0.1:7790/api", "mlmmjadmin API")
    mlmmjadmin_api_auth_token: str = _s("", "mlmmjadmin API token")
    MLMMJADMIN_API_TIMEOUT: Seconds = _s(5.0, "deadline of one mlmmjadmin API call (s)", ours=True)
    MLMMJADMIN_API_VERIFY_TLS: bool = _s(True, "verify mlmmjadmin's TLS certificate", ours=True)

    # --- not settings: where they came from, and plugin-declared extras ------
    source: str = field(default="", metadata={"internal": True})
    extras: Mapping[str, Any] = field(
        default_factory=lambda: types.MappingProxyType({}), metadata={"internal": True}
    )
    trusted_networks: TrustedNetworks = field(
        default_factory=lambda: TrustedNetworks.from_entries(()),
        metadata={"internal": True},
        compare=False,
    )

    def get(self, name: str, default: Any = None) -> Any:
        """A setting by name: core ones and those declared by plugins."""
        if name in _FIELD_NAMES:
            return getattr(self, name)
        return self.extras.get(name, default)

    def plugin_priority(self, name: str) -> int:
        """The plugin's priority: PLUGIN_PRIORITIES, else iRedAPD's table, else 0."""
        if name in self.PLUGIN_PRIORITIES:
            return self.PLUGIN_PRIORITIES[name]
        return BUILTIN_PLUGIN_PRIORITIES.get(name, 0)

    def plugin_timeout(self, name: str) -> float:
        """The deadline of one plugin call."""
        return float(self.PLUGIN_TIMEOUTS.get(name, self.PLUGIN_TIMEOUT))


_FIELDS: Final = {f.name: f for f in fields(Settings) if not f.metadata.get("internal")}
_FIELD_NAMES: Final = frozenset(_FIELDS)
_HINTS: Final = get_type_hints(Settings, include_extras=True)

# Names an older iRedAPD settings.py may carry.  Renamed ones map to today's
# name (with a warning); retired ones are accepted and ignored (with a warning).
LEGACY_RENAMED: Final[Mapping[str, str]] = types.MappingProxyType(
    {
        "sql_server": "vmail_db_server",
        "sql_port": "vmail_db_port",
        "sql_db": "vmail_db_name",
        "sql_user": "vmail_db_user",
        "sql_password": "vmail_db_password",
        "mynetworks": "MYNETWORKS",
        "log_file": "LOG_FILE",
    }
)
LEGACY_RETIRED: Final = frozenset(
    {
        "log_action_in_db",
        "iredadmin_db_server",
        "iredadmin_db_port",
        "iredadmin_db_name",
        "iredadmin_db_user",
        "iredadmin_db_password",
        "REQUIRE_IREDAPD_DB",
    }
)

# Where a settings file is looked for when --config is not given.
SEARCH_PATHS: Final = (
    Path(__file__).resolve().parent.parent / "settings.py",  # a checkout, iRedAPD's way
    Path("/opt/iredapd/settings.py"),
    Path("/etc/iredapd/settings.py"),
    Path("/usr/local/etc/iredapd/settings.py"),
)

_DATA_TYPES: Final = (str, int, float, bool, list, tuple, dict, set, frozenset, type(None))


# ---------------------------------------------------------------------------
# reading the file


def _defaults_namespace() -> dict[str, Any]:
    """Fresh, mutable copies of every default (lists and dicts, as iRedAPD has them)."""
    ns: dict[str, Any] = {}
    for name, f in _FIELDS.items():
        value = f.default
        if value is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, Mapping):
            value = dict(value)
        ns[name] = value
    return ns


def _make_import(ns: dict[str, Any]) -> Any:
    """``__import__`` that serves ``libs.default_settings`` from ``ns``."""
    real_import = builtins.__import__
    shim = types.ModuleType("libs.default_settings")
    shim.__dict__.update(ns)
    shim.__all__ = list(ns)  # type: ignore[attr-defined]
    package = types.ModuleType("libs")
    package.default_settings = shim  # type: ignore[attr-defined]

    def _import(
        name: str,
        globals: Mapping[str, object] | None = None,
        locals: Mapping[str, object] | None = None,
        fromlist: Sequence[str] = (),
        level: int = 0,
    ) -> Any:
        if level == 0 and name in ("libs.default_settings", "iredapd.default_settings"):
            return shim if fromlist else package
        if level == 0 and name == "libs":
            return package
        return real_import(name, globals, locals, fromlist, level)

    return _import


def read_settings_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Run a settings file over the defaults; return its resulting namespace.

    Raises ConfigError for a missing or unreadable file, a syntax error or an
    exception raised by the file, naming the file and line.
    """
    p = Path(path)
    try:
        source = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read settings file {p}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"settings file {p} is not UTF-8: {e}") from None
    ns = _defaults_namespace()
    try:
        code = compile(source, str(p), "exec")
    except SyntaxError as e:
        raise ConfigError(f"{p}:{e.lineno}: syntax error: {e.msg}") from None
    own_builtins = dict(vars(builtins))
    own_builtins["__import__"] = _make_import(ns)
    glb: dict[str, Any] = {"__builtins__": own_builtins, "__file__": str(p), "__name__": "settings"}
    glb.update(ns)
    try:
        exec(code, glb)  # noqa: S102 - a settings file is Python by design (iRedAPD's format)
    except Exception as e:  # noqa: BLE001 - a settings file may raise anything; one line
        tb = e.__traceback__
        line = None
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == str(p):
                line = tb.tb_lineno
            tb = tb.tb_next
        where = f"{p}:{line}" if line else str(p)
        raise ConfigError(f"{where}: {type(e).__name__}: {e}") from None
    return {k: v for k, v in glb.items() if k not in ("__builtins__", "__file__", "__name__")}


def find_settings_file(explicit: str | None, env: Mapping[str, str] | None = None) -> Path | None:
    """The settings file to use: --config, $IREDAPD_SETTINGS, then SEARCH_PATHS."""
    if explicit:
        return Path(explicit)
    env = os.environ if env is None else env
    if env.get("IREDAPD_SETTINGS"):
        return Path(env["IREDAPD_SETTINGS"])
    for candidate in SEARCH_PATHS:
        if candidate.is_file():
            return candidate
    return None


def parse_override(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` from the command line; VALUE is a Python literal or a string."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier():
        raise ConfigError(f"override must look like NAME=VALUE: {text!r}")
    try:
        value: Any = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return name, value


# ---------------------------------------------------------------------------
# validation


def _type_name(hint: Any) -> str:
    base = get_args(hint)[0] if get_origin(hint) is Annotated else hint
    if base is Mapping or get_origin(base) is Mapping:
        return "dict"
    if get_origin(base) is tuple:
        return "list of strings"
    return getattr(base, "__name__", str(base))


def _check(name: str, hint: Any, value: Any) -> Any:
    """Validate and normalise one value against its annotation."""
    extras: tuple[Any, ...] = ()
    if get_origin(hint) is Annotated:
        hint, *rest = get_args(hint)
        extras = tuple(rest)
    bad = ConfigError(
        f"setting {name} must be a {_type_name(hint)}, not {type(value).__name__} ({value!r})"
    )
    out: Any
    if any(isinstance(x, _Port) for x in extras):
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        if not 0 <= value <= 65535:
            raise ConfigError(f"setting {name} must be a port number 0-65535, not {value}")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise bad
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        out = value
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        out = float(value)
    elif hint is str:
        if not isinstance(value, str):
            raise bad
        out = value
    elif get_origin(hint) is tuple:
        if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset):
            raise bad
        items = list(value)
        for item in items:
            if not isinstance(item, str):
                raise ConfigError(f"setting {name} must list strings, found {item!r}")
        return tuple(items)
    elif get_origin(hint) is Mapping:
        _, vtype = get_args(hint)
        if not isinstance(value, Mapping):
            raise bad
        result: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"setting {name} must have string keys, found {k!r}")
            if vtype is float and isinstance(v, int | float) and not isinstance(v, bool):
                result[k] = float(v)
                continue
            if not isinstance(v, vtype) or isinstance(v, bool):
                raise ConfigError(f"setting {name}[{k!r}] must be a {vtype.__name__}, not {v!r}")
            result[k] = v
        return types.MappingProxyType(result)
    else:  # pragma: no cover - every field has one of the kinds above
        raise ConfigError(f"setting {name}: unsupported type")
    for x in extras:
        if isinstance(x, _Choice) and out not in x.choices:
            choices = ", ".join(x.choices)
            raise ConfigError(f"setting {name} must be one of {choices}, not {out!r}")
        if isinstance(x, _Positive) and not out > 0:
            raise ConfigError(f"setting {name} must be greater than 0, not {out}")
        if isinstance(x, _NonNegative) and out < 0:
            raise ConfigError(f"setting {name} must not be negative, not {out}")
    return out


def _check_plugin_value(name: str, default: Any, value: Any) -> Any:
    """A setting declared by a plugin is checked against its default's type."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        return _check(name, bool, value)
    if isinstance(default, int):
        return _check(name, int, value)
    if isinstance(default, float):
        return _check(name, float, value)
    if isinstance(default, str):
        return _check(name, str, value)
    if isinstance(default, list | tuple):
        if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset):
            raise ConfigError(f"setting {name} must be a list, not {type(value).__name__}")
        return tuple(value)
    if isinstance(default, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"setting {name} must be a dict, not {type(value).__name__}")
        return types.MappingProxyType(dict(value))
    return value


def _unknown(name: str, known: Iterable[str]) -> ConfigError:
    known = list(known)
    by_lower = {k.lower(): k for k in known}
    hint = by_lower.get(name.lower())
    if hint is None:
        close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
        hint = by_lower[close[0]] if close else None
    suffix = f" (did you mean {hint}?)" if hint else ""
    return ConfigError(f"unknown setting {name}{suffix}")


def build_settings(
    namespace: Mapping[str, Any],
    *,
    source: str = "",
    plugin_settings: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Validate a settings namespace into Settings.

    ``plugin_settings`` maps the names plugins declare to their defaults;
    ``overrides`` (from ``-o NAME=VALUE``) win over the file.
    """
    plugin_settings = dict(plugin_settings or {})
    merged = dict(namespace)
    merged.update(overrides or {})
    core: dict[str, Any] = {}
    extras: dict[str, Any] = dict(plugin_settings)
    known = set(_FIELD_NAMES) | set(plugin_settings)
    for raw_name, value in merged.items():
        name = raw_name
        if name.startswith("_") or not isinstance(value, _DATA_TYPES):
            continue  # helpers, imports, functions: not settings
        if name in LEGACY_RETIRED:
            log.warning("setting %s is no longer used; ignored", name)
            continue
        if name in LEGACY_RENAMED:
            new = LEGACY_RENAMED[name]
            log.warning("setting %s is now called %s", name, new)
            if new in merged and merged[new] != _defaults_namespace().get(new):
                continue  # the new name is set too: it wins
            name = new
        if name in _FIELD_NAMES:
            core[name] = _check(name, _HINTS[name], value)
        elif name in plugin_settings:
            extras[name] = _check_plugin_value(name, plugin_settings[name], value)
        else:
            raise _unknown(name, known)
    for name in core.get("plugins", ()):
        if not name.isidentifier():
            raise ConfigError(f"setting plugins: {name!r} is not a plugin name")
    failure_actions = {"PLUGIN_FAILURE_ACTION": core.get("PLUGIN_FAILURE_ACTION", "DUNNO")}
    for plugin, text in core.get("PLUGIN_FAILURE_ACTIONS", {}).items():
        failure_actions[f"PLUGIN_FAILURE_ACTIONS[{plugin!r}]"] = text
    for label, text in failure_actions.items():
        try:
            Action.parse(text)
        except InvalidAction as e:
            raise ConfigError(f"setting {label}: {e}") from None
    for label in ("PLUGIN_TIMEOUTS",):
        for plugin, seconds in core.get(label, {}).items():
            if seconds <= 0:
                raise ConfigError(f"setting {label}[{plugin!r}] must be greater than 0")
    try:
        trusted = TrustedNetworks.from_entries(core.get("MYNETWORKS", ()))
    except ValueError as e:
        raise ConfigError(f"setting MYNETWORKS: {e}") from None
    return Settings(
        **core,
        source=source,
        extras=types.MappingProxyType(extras),
        trusted_networks=trusted,
    )


def default_settings(**overrides: Any) -> Settings:
    """Settings with every default, and keyword overrides (handy in tests)."""
    return build_settings({}, overrides=overrides)


def load_settings(
    path: str | os.PathLike[str] | None,
    *,
    plugin_settings: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read and validate a settings file (None: defaults only)."""
    ns = read_settings_file(path) if path is not None else {}
    return build_settings(
        ns,
        source=str(path) if path is not None else "",
        plugin_settings=plugin_settings,
        overrides=overrides,
    )


def non_default(settings: Settings) -> dict[str, Any]:
    """The settings whose value differs from the default (``postconf -n``)."""
    base = default_settings()
    out = {
        n: getattr(settings, n) for n in _FIELD_NAMES if getattr(settings, n) != getattr(base, n)
    }
    out.update(settings.extras)
    return out


def all_values(settings: Settings) -> dict[str, Any]:
    """Every setting with its value."""
    out = {n: getattr(settings, n) for n in _FIELD_NAMES}
    out.update(settings.extras)
    return out


def describe(name: str) -> str:
    """The one-line description of a core setting ('' if unknown)."""
    f = _FIELDS.get(name)
    return str(f.metadata.get("doc", "")) if f else ""
