"""The built wheel carries the plugins and runs outside the checkout (pip install .)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.daemon import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from this checkout, unpacked as site-packages would hold it."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = out.glob("iredapd-*.whl")
    target = out / "site"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert "iredapd/_builtin_plugins/reject_null_sender.py" in names
        assert not any(n.startswith("plugins/") for n in names)  # no top-level 'plugins'
        assert not any(n.startswith("tests/") for n in names)
        zf.extractall(target)
    return target


def test_installed_daemon_finds_its_plugins(installed: Path, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(installed))
    code = (
        "from iredapd.chain import builtin_plugin_dir; import sys; "
        "print(builtin_plugin_dir()); sys.exit(0)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert r.stdout.strip() == str(installed / "iredapd" / "_builtin_plugins")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "iredapd.cli.query",
            "-o",
            f"DATA_DIR={tmp_path}",
            "sender=",
            "sasl_username=u@example.com",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "action: REJECT Policy rejection due to null sender" in r.stdout
