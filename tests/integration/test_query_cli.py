"""iredapd-query: one request through the configured chain, explained."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.daemon import REPO
from tests.support.plugins import write_plugin

pytestmark = pytest.mark.integration


def query(tmp_path: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("IREDAPD_SETTINGS", None)
    cmd = [sys.executable, "-m", "iredapd.cli.query", "-o", f"DATA_DIR={tmp_path}", *args]
    return subprocess.run(
        cmd, input=stdin, capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path
    )


def test_arguments_give_action_plugin_and_steps(tmp_path: Path) -> None:
    r = query(tmp_path, "--json", "sender=", "sasl_username=u@example.com", "recipient=x@b.org")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["action"] == "REJECT Policy rejection due to null sender"
    assert report["plugin"] == "reject_null_sender"
    assert report["protocol_state"] == "RCPT"
    steps = {p["plugin"]: p for p in report["plugins"]}
    assert steps["reject_null_sender"]["outcome"] == "action"
    assert steps["reject_null_sender"]["ms"] >= 0
    assert steps["wblist_rdns"]["outcome"].startswith("not run")  # iRedAPD's default chain


def test_stdin_policy_lines_and_text_output(tmp_path: Path) -> None:
    lines = (
        "protocol_state=RCPT\nsender=a@b.com\nrecipient=root@mx.q.test\nclient_address=192.0.2.7\n"
    )
    r = query(
        tmp_path,
        "-o",
        "SERVER_HOSTNAME=mx.q.test",
        "-o",
        "plugins=['reject_null_sender', 'reject_to_hostname']",
        stdin=lines,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "action: REJECT Not authorized"
    assert "decided by: reject_to_hostname" in r.stdout
    assert "reject_null_sender" in r.stdout and "pass" in r.stdout


def test_every_plugin_time_and_failures_are_shown(tmp_path: Path) -> None:
    write_plugin(
        tmp_path / "p",
        "custom_broken",
        """
        class P(Plugin):
            async def check(self, ctx):
                raise KeyError("missing")
        """,
    )
    r = query(
        tmp_path,
        "--json",
        "-o",
        f"PLUGIN_DIRS=[{str(tmp_path / 'p')!r}]",
        "-o",
        "plugins=['reject_null_sender', 'custom_broken']",
        "sender=a@b.com",
    )
    report = json.loads(r.stdout)
    assert report["action"] == "DUNNO"
    steps = {p["plugin"]: p for p in report["plugins"]}
    assert steps["custom_broken"]["outcome"] == "failed"
    assert "KeyError" in steps["custom_broken"]["error"]


def test_invalid_address_is_explained(tmp_path: Path) -> None:
    r = query(tmp_path, "sender=not an address")
    assert r.returncode == 0
    assert "action: DUNNO Error: Invalid sender address: not an address" in r.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("foo",), 2, "not NAME=VALUE"),
        (("-o", "listen_prot=1", "sender=a@b.com"), 78, "did you mean listen_port?"),
        (("-o", "plugins=['nope']", "sender=a@b.com"), 78, "plugin nope not found"),
        (("--bogus",), 2, "unrecognized arguments"),
    ],
)
def test_errors(tmp_path: Path, args: tuple[str, ...], code: int, message: str) -> None:
    r = query(tmp_path, *args)
    assert r.returncode == code
    assert message in r.stderr
