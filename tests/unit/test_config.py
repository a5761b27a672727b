"""Settings: iRedAPD's files load unchanged; bad names and types stop with a hint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from iredapd.config import (
    ConfigError,
    build_settings,
    default_settings,
    find_settings_file,
    load_settings,
    non_default,
    parse_override,
    read_settings_file,
)

DATA = Path(__file__).parent.parent / "data"


def test_defaults_are_iredapds() -> None:
    s = default_settings()
    assert s.listen_address == "127.0.0.1"
    assert s.listen_port == 7777
    assert s.srs_forward_port == 7778 and s.srs_reverse_port == 7779
    assert s.RECIPIENT_DELIMITERS == ("+",)
    assert s.SYSLOG_FACILITY == "local5"
    assert s.GREYLISTING_MESSAGE == "Intentional policy rejection, please try again later"
    assert s.SQL_CONNECTION_POOL_SIZE == 10
    assert s.THROTTLE_BYPASS_SAME_DOMAIN is True
    assert s.ENABLE_ALL_WILDCARD_IP is False
    assert s.CHANGE_PASSWORD_DAYS == 90
    assert s.IDLE_TIMEOUT > 300  # above Postfix's smtpd_policy_service_max_idle


def test_iredapd_settings_file_loads_unchanged() -> None:
    s = load_settings(DATA / "iredapd_settings.py")
    assert s.listen_port == 7777  # "7777" as iRedAPD writes it
    assert s.vmail_db_port == 3306
    assert s.backend == "mysql"
    assert s.srs_secrets == ("a-long-secret",)
    assert s.GREYLISTING_MESSAGE == "Greylisted, come back later"
    # a default container mutated in place, as iRedAPD files do
    assert s.PLUGIN_PRIORITIES == {"reject_to_hostname": 120}
    assert s.plugin_priority("reject_to_hostname") == 120
    assert s.plugin_priority("reject_null_sender") == 100
    assert "10.1.2.3" in s.trusted_networks
    assert "192.168.7.7" in s.trusted_networks
    assert "172.16.9.9" in s.trusted_networks  # wildcard entry, any ENABLE_ALL_WILDCARD_IP


def test_python_features_in_settings_files(settings_file: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("IREDAPD_TEST_PW", "from-env")
    path = settings_file(
        "import os\n"
        "from libs.default_settings import *\n"
        "_base = '/srv/mail'\n"
        "def _path(x):\n    return _base + '/' + x\n"
        "vmail_db_password = os.environ.get('IREDAPD_TEST_PW', 'x')\n"
        "LOG_FILE = _path('iredapd.log')\n"
        "MYNETWORKS.append('192.0.2.0/24')\n"
    )
    s = load_settings(path)
    assert s.vmail_db_password == "from-env"
    assert s.LOG_FILE == "/srv/mail/iredapd.log"
    assert "192.0.2.44" in s.trusted_networks


def test_file_without_the_import_line_gets_defaults_too(settings_file: Any) -> None:
    s = load_settings(settings_file("PLUGIN_PRIORITIES['x'] = 5\nlisten_port = 9999\n"))
    assert s.PLUGIN_PRIORITIES == {"x": 5}
    assert s.listen_port == 9999


def test_defaults_are_not_shared_between_loads(settings_file: Any) -> None:
    load_settings(settings_file("MYNETWORKS.append('192.0.2.1')\n"))
    assert default_settings().MYNETWORKS == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("listen_prot = 7777\n", "unknown setting listen_prot (did you mean listen_port?)"),
        ("GREYLISTING_MESAGE = 'x'\n", "did you mean GREYLISTING_MESSAGE?"),
        ("mynetwork = []\n", "did you mean MYNETWORKS?"),
        ("ZZZ_NOTHING_LIKE_IT = 1\n", "unknown setting ZZZ_NOTHING_LIKE_IT"),
        ("listen_port = 'abc'\n", "listen_port must be a int, not str"),
        ("listen_port = 70000\n", "port number 0-65535"),
        ("plugins = 'reject_null_sender'\n", "plugins must be a list of strings, not str"),
        ("plugins = [1]\n", "plugins must list strings"),
        ("MYNETWORKS = ['not an ip']\n", "MYNETWORKS: not an IP address"),
        ("MYNETWORKS = ['10.0.0.0/99']\n", "MYNETWORKS: not a network"),
        ("log_level = 'verbose'\n", "log_level must be one of"),
        ("backend = 'oracle'\n", "backend must be one of"),
        ("PLUGIN_PRIORITIES = {'x': 'high'}\n", "PLUGIN_PRIORITIES['x'] must be a int"),
        ("REQUEST_TIMEOUT = 0\n", "REQUEST_TIMEOUT must be greater than 0"),
        ("PLUGIN_FAILURE_ACTION = 'bogus words'\n", "PLUGIN_FAILURE_ACTION: unknown action"),
        ("THROTTLE_BYPASS_MYNETWORKS = 'yes'\n", "must be a bool"),
        ("x = (\n", "syntax error"),
        ("raise RuntimeError('boom')\n", "RuntimeError: boom"),
        ("import no_such_module_here\n", "ModuleNotFoundError"),
    ],
)
def test_bad_settings_name_the_problem(settings_file: Any, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(settings_file(text))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_error_names_file_and_line(settings_file: Any) -> None:
    path = settings_file("listen_port = 7777\n\nraise ValueError('no')\n")
    with pytest.raises(ConfigError, match=r"settings\.py:3: ValueError: no"):
        load_settings(path)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read settings file"):
        read_settings_file("/nonexistent/settings.py")


def test_legacy_names(settings_file: Any, caplog: Any) -> None:
    s = load_settings(
        settings_file("sql_server = 'db.example.com'\nsql_db = 'mail'\nlog_action_in_db = True\n")
    )
    assert s.vmail_db_server == "db.example.com"
    assert s.vmail_db_name == "mail"
    assert "no longer used" in caplog.text
    assert "now called vmail_db_server" in caplog.text


def test_plugin_declared_settings() -> None:
    s = build_settings(
        {"SPAM_TRAP_ACCOUNTS": ["trap@example.com"]},
        plugin_settings={"SPAM_TRAP_ACCOUNTS": [], "SPAM_TRAP_BLOCK_SENDER": False},
    )
    assert s.get("SPAM_TRAP_ACCOUNTS") == ("trap@example.com",)
    assert s.get("SPAM_TRAP_BLOCK_SENDER") is False
    with pytest.raises(ConfigError, match="SPAM_TRAP_BLOCK_SENDER must be a bool"):
        build_settings(
            {"SPAM_TRAP_BLOCK_SENDER": "no"}, plugin_settings={"SPAM_TRAP_BLOCK_SENDER": False}
        )


def test_overrides_win() -> None:
    s = build_settings({"listen_port": 1}, overrides={"listen_port": 2})
    assert s.listen_port == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("listen_port=7000", ("listen_port", 7000)),
        ("DATA_DIR=var", ("DATA_DIR", "var")),
        ("plugins=['a', 'b']", ("plugins", ["a", "b"])),
        ("run_as_user=", ("run_as_user", "")),
    ],
)
def test_parse_override(text: str, expected: tuple[str, Any]) -> None:
    assert parse_override(text) == expected


def test_parse_override_rejects_garbage() -> None:
    with pytest.raises(ConfigError):
        parse_override("no equals sign")


def test_non_default() -> None:
    s = default_settings(listen_port=8888)
    assert non_default(s) == {"listen_port": 8888}


def test_find_settings_file_order(tmp_path: Path) -> None:
    assert find_settings_file("/x/y.py", env={}) == Path("/x/y.py")
    assert find_settings_file(None, env={"IREDAPD_SETTINGS": "/e.py"}) == Path("/e.py")


def test_settings_are_frozen() -> None:
    s = default_settings()
    with pytest.raises(AttributeError):
        s.listen_port = 1  # type: ignore[misc]
