"""The daemon as a process: start, SIGTERM, SIGHUP, pid file, privileges, logging, CLI."""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.daemon import REPO, PolicyClient, daemon_command, subprocess_daemon
from tests.support.plugins import write_plugin
from tests.support.requests import encode
from tests.support.services import missing, require_module, require_root

pytestmark = pytest.mark.integration

RCPT_NULL = {"protocol_state": "RCPT", "sender": "", "sasl_username": "u@example.com"}


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("IREDAPD_SETTINGS", None)
    return subprocess.run(
        daemon_command(*args), capture_output=True, text=True, timeout=60, env=env, cwd=cwd
    )


def slow_plugin(directory: Path) -> None:
    write_plugin(
        directory,
        "custom_slow",
        """
        class P(Plugin):
            async def check(self, ctx):
                await asyncio.sleep(1.0)
                return "REJECT slow but sure"
        """,
    )


def test_sigterm_finishes_in_flight_request_and_exits_0(tmp_path: Path) -> None:
    slow_plugin(tmp_path / "p")
    settings = f"PLUGIN_DIRS = [{str(tmp_path / 'p')!r}]\nplugins = ['custom_slow']\n"
    with subprocess_daemon(tmp_path, settings) as d:

        async def scenario() -> str:
            c = await PolicyClient.connect("127.0.0.1", d.port)
            await c.send(encode({"protocol_state": "RCPT", "sender": "a@b.com"}))
            await asyncio.sleep(0.3)
            d.signal(signal.SIGTERM)
            reply = await c.reply()
            await c.close()
            return reply

        assert asyncio.run(scenario()) == "REJECT slow but sure"
        assert d.wait() == 0
        assert "stopped after 1 requests" in d.log()


def test_sighup_reloads_settings(tmp_path: Path) -> None:
    with subprocess_daemon(tmp_path, "plugins = ['reject_null_sender']\n") as d:

        async def ask() -> str:
            c = await PolicyClient.connect("127.0.0.1", d.port)
            reply = await c.ask(RCPT_NULL)
            await c.close()
            return reply

        assert asyncio.run(ask()) == "REJECT Policy rejection due to null sender"
        text = d.settings_path.read_text().replace("['reject_null_sender']", "[]")
        d.settings_path.write_text(text)
        d.signal(signal.SIGHUP)
        d.wait_log(r"settings reloaded")
        assert asyncio.run(ask()) == "DUNNO No enabled plugins"

        # an invalid file: the running settings stay, and the log says why
        d.settings_path.write_text(text + "plugins = ['no_such_plugin']\n")
        d.signal(signal.SIGHUP)
        d.wait_log(r"reload failed, keeping the current settings: plugin no_such_plugin not found")
        assert asyncio.run(ask()) == "DUNNO No enabled plugins"
        d.settings_path.write_text(text + "listen_prot = 1\n")
        d.signal(signal.SIGHUP)
        d.wait_log(r"keeping the current settings: unknown setting listen_prot")
        assert asyncio.run(ask()) == "DUNNO No enabled plugins"
        d.signal(signal.SIGTERM)
        assert d.wait() == 0


def test_connection_survives_reload(tmp_path: Path) -> None:
    with subprocess_daemon(tmp_path, "plugins = ['reject_null_sender']\n") as d:

        async def scenario() -> list[str]:
            c = await PolicyClient.connect("127.0.0.1", d.port)
            first = await c.ask(RCPT_NULL)
            d.settings_path.write_text(d.settings_path.read_text() + "plugins = []\n")
            d.signal(signal.SIGHUP)
            await asyncio.to_thread(d.wait_log, r"settings reloaded")
            second = await c.ask(RCPT_NULL)
            await c.close()
            return [first, second]

        assert asyncio.run(scenario()) == [
            "REJECT Policy rejection due to null sender",
            "DUNNO No enabled plugins",
        ]


def test_pid_file_written_and_removed(tmp_path: Path) -> None:
    pid_file = tmp_path / "iredapd.pid"
    with subprocess_daemon(tmp_path, f"pid_file = {str(pid_file)!r}\n") as d:
        assert pid_file.read_text().strip() == str(d.proc.pid)
        d.signal(signal.SIGTERM)
        assert d.wait() == 0
    assert not pid_file.exists()


def test_run_as_user_drops_privileges_after_binding(tmp_path: Path) -> None:
    require_root("dropping privileges needs root")
    nobody = pwd.getpwnam("nobody")
    tmp_path.chmod(0o755)
    with subprocess_daemon(tmp_path, "run_as_user = 'nobody'\n") as d:
        d.wait_log(r"running as user nobody")
        status = Path(f"/proc/{d.proc.pid}/status").read_text()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert uid_line.split()[1:] == [str(nobody.pw_uid)] * 4
        groups = next(line for line in status.splitlines() if line.startswith("Groups:"))
        assert "0" not in groups.split()[1:]  # root's groups are gone
        # the embedded databases stay writable for the new user
        assert (tmp_path / "data" / "iredapd.sqlite").stat().st_uid == nobody.pw_uid

        async def ask() -> str:
            c = await PolicyClient.connect("127.0.0.1", d.port)
            reply = await c.ask(RCPT_NULL)
            await c.close()
            return reply

        assert asyncio.run(ask()) == "REJECT Policy rejection due to null sender"


def test_unknown_run_as_user_is_a_startup_error(tmp_path: Path) -> None:
    require_root("run_as_user is only used as root")
    (tmp_path / "s.py").write_text(
        f"run_as_user = 'no-such-user-xyz'\nlisten_port = 0\nDATA_DIR = {str(tmp_path)!r}\n"
    )
    r = run_cli("--foreground", "--config", str(tmp_path / "s.py"))
    assert r.returncode == 78
    assert "run_as_user 'no-such-user-xyz' does not exist" in r.stdout + r.stderr


def test_log_file_target_has_one_line_per_request(tmp_path: Path) -> None:
    log_file = tmp_path / "iredapd.log"
    settings = (
        f"LOG_TARGET = 'file'\nLOG_FILE = {str(log_file)!r}\nlog_level = 'info'\n"
        "plugins = ['reject_null_sender', 'reject_to_hostname']\n"
    )
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "s.py").write_text(
        settings + f"listen_port = 0\nDATA_DIR = {str(data)!r}\nSERVER_HOSTNAME = 'mx.test.org'\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(daemon_command("--config", str(tmp_path / "s.py")), env=env)
    try:
        port = 0
        for _ in range(200):
            if log_file.exists() and "listening on 127.0.0.1:" in log_file.read_text():
                text = log_file.read_text()
                port = int(text.split("listening on 127.0.0.1:")[-1].split()[0])
                break
            asyncio.run(asyncio.sleep(0.05))
        assert port

        async def ask() -> str:
            c = await PolicyClient.connect("127.0.0.1", port)
            reply = await c.ask(
                {
                    "protocol_state": "RCPT",
                    "client_address": "203.0.113.9",
                    "sender": "x@example.org",
                    "recipient": "root@mx.test.org",
                }
            )
            await c.close()
            return reply

        assert asyncio.run(ask()) == "REJECT Not authorized"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log_file.read_text()
    assert (
        "[203.0.113.9] RCPT, x@example.org -> root@mx.test.org, REJECT Not authorized "
        "[sasl_username=, sender=x@example.org, client_name=, reverse_client_name=, helo=, "
        "encryption_protocol=, encryption_cipher=, server_port=, plugin=reject_to_hostname, "
        "process_time="
    ) in text


def test_syslog_target(tmp_path: Path) -> None:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(10)
    port = sink.getsockname()[1]
    settings = (
        f"LOG_TARGET = 'syslog'\nSYSLOG_SERVER = '127.0.0.1'\nSYSLOG_PORT = {port}\n"
        f"SYSLOG_FACILITY = 'local5'\nlisten_port = 0\nDATA_DIR = {str(tmp_path)!r}\n"
    )
    (tmp_path / "s.py").write_text(settings)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(daemon_command("--config", str(tmp_path / "s.py")), env=env)
    try:
        messages = []
        while not any("Starting iRedAPD" in m for m in messages):
            messages.append(sink.recv(4096).decode())
        # <PRI>: facility local5 (21) * 8 + info (6) = 174; iRedAPD's 'iredapd ' prefix
        assert messages[-1].startswith("<174>iredapd Starting iRedAPD"), messages
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        sink.close()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ("listen_prot = 7777\n", "unknown setting listen_prot (did you mean listen_port?)"),
        ("listen_port = 'x'\n", "setting listen_port must be a int"),
        ("plugins = ['no_such_plugin']\n", "plugin no_such_plugin not found"),
        ("x = (\n", "syntax error"),
    ],
)
def test_bad_settings_exit_78_with_one_line(tmp_path: Path, settings: str, message: str) -> None:
    (tmp_path / "s.py").write_text(settings)
    r = run_cli("--config", str(tmp_path / "s.py"))
    assert r.returncode == 78
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("iredapd: error: ")
    assert message in lines[0]


def test_missing_settings_file(tmp_path: Path) -> None:
    r = run_cli("--config", str(tmp_path / "nope.py"))
    assert r.returncode == 78
    assert "cannot read settings file" in r.stderr


@pytest.mark.parametrize(
    "args",
    [("--bogus",), ("--config",), ("--non-default",), ("-o", "no-equals")],
)
def test_bad_arguments(args: tuple[str, ...]) -> None:
    r = run_cli(*args)
    assert r.returncode in (2, 78)
    assert r.stderr.strip()
    assert len(r.stderr.strip().splitlines()) <= 3


def test_check_config(tmp_path: Path) -> None:
    (tmp_path / "s.py").write_text("plugins = ['reject_null_sender']\n")
    r = run_cli("--check-config", "--config", str(tmp_path / "s.py"))
    assert r.returncode == 0
    assert "settings OK" in r.stdout and "reject_null_sender" in r.stdout


def test_show_config_non_default(tmp_path: Path) -> None:
    (tmp_path / "s.py").write_text(
        "from libs.default_settings import *\nlisten_port = 7000\nMYNETWORKS = ['10.0.0.0/8']\n"
    )
    r = run_cli("--show-config", "--non-default", "--config", str(tmp_path / "s.py"))
    assert r.returncode == 0
    assert r.stdout.splitlines() == ["listen_port = 7000", "MYNETWORKS = ['10.0.0.0/8']"]
    full = run_cli("--show-config", "--config", str(tmp_path / "s.py"))
    assert "GREYLISTING_MESSAGE = 'Intentional policy rejection, please try again later'" in (
        full.stdout
    )


def test_version() -> None:
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("iredapd ")


def test_python_m_and_console_script_agree() -> None:
    script = Path(sys.executable).parent / "iredapd"
    if not script.exists():
        missing("console script iredapd not installed in this environment (make venv)")
    r = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert r.stdout == run_cli("--version").stdout


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_both_event_loops_serve(tmp_path: Path, loop: str) -> None:
    if loop == "uvloop":
        require_module("uvloop", "uvloop not installed (extra 'fast', installed by make)")
    with subprocess_daemon(tmp_path, f"EVENT_LOOP = {loop!r}\n") as d:

        async def ask() -> str:
            c = await PolicyClient.connect("127.0.0.1", d.port)
            reply = await c.ask(RCPT_NULL)
            await c.close()
            return reply

        assert asyncio.run(ask()) == "REJECT Policy rejection due to null sender"
        d.signal(signal.SIGTERM)
        assert d.wait() == 0


def _children(pid: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False
    ).stdout
    return [int(p) for p in out.split()]


def test_workers_share_the_port_and_follow_signals(tmp_path: Path) -> None:
    with subprocess_daemon(tmp_path, "WORKERS = 2\nplugins = ['reject_null_sender']\n") as d:
        d.wait_log(r"2 workers listening on 127\.0\.0\.1 port \d+")
        workers = _children(d.proc.pid)
        assert len(workers) == 2

        async def ask_many() -> list[str]:
            clients = [await PolicyClient.connect("127.0.0.1", d.port) for _ in range(20)]
            replies = [await c.ask(RCPT_NULL) for c in clients]
            for c in clients:
                await c.close()
            return replies

        assert set(asyncio.run(ask_many())) == {"REJECT Policy rejection due to null sender"}

        # a worker that dies is replaced
        os.kill(workers[0], signal.SIGKILL)
        restarted = d.wait_log(
            r"exited with status -9\n(?:.*\n)*.*worker \d started \(pid (\d+)\)\n"
            r"(?:.*\n)*.*worker \d ready \(pid \1\)"
        )
        assert int(restarted.group(1)) not in workers
        assert sorted(_children(d.proc.pid)) == sorted([workers[1], int(restarted.group(1))])

        # SIGHUP: every worker reloads
        d.settings_path.write_text(d.settings_path.read_text() + "plugins = []\n")
        d.signal(signal.SIGHUP)
        for _ in range(200):
            if d.log().count("settings reloaded") >= 2:
                break
            asyncio.run(asyncio.sleep(0.05))
        assert d.log().count("settings reloaded") == 2
        assert set(asyncio.run(ask_many())) == {"DUNNO No enabled plugins"}

        d.signal(signal.SIGTERM)
        assert d.wait() == 0
        assert _children(d.proc.pid) == []
