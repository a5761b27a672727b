"""Private MariaDB and PostgreSQL servers that a test may stop and start again.

The machine's shared servers (127.0.0.1:3306 and :5432) must never be stopped;
fault tests ("the database goes down mid-run") use these instead: a throw-away
data directory, a free loopback port kept across restarts, and servers stopped
by their own pid (never by name).  Recipes: ../shared/docs/infra.md section 4.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.engine import URL

from tests.conftest import TIMEOUT_SCALE
from tests.support.services import free_port, require

__all__ = ["PrivateMariaDB", "PrivatePostgres", "private_mariadb", "private_postgres"]


def _chown(path: Path, user: str) -> None:
    if os.geteuid() == 0:
        pw = pwd.getpwnam(user)
        for p in [path, *path.rglob("*")]:
            os.chown(p, pw.pw_uid, pw.pw_gid)


def _wait(check: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout * TIMEOUT_SCALE
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not come up in time")


class PrivateMariaDB:
    """mariadbd with its own datadir under ``base``, root without password over TCP."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.cnf = base / "my.cnf"

    def _setup(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        (self.base / "data").mkdir(exist_ok=True)
        user = "user=mysql\n" if os.geteuid() == 0 else ""
        self.cnf.write_text(
            "[mysqld]\n"
            f"{user}datadir={self.base}/data\nsocket={self.base}/mysqld.sock\n"
            f"pid-file={self.base}/mysqld.pid\nlog-error={self.base}/error.log\n"
            f"port={self.port}\nbind-address=127.0.0.1\nskip-name-resolve\n"
            "innodb_buffer_pool_size=32M\ninnodb_log_file_size=16M\n"
            "performance_schema=OFF\ncharacter-set-server=utf8mb4\n"
            "collation-server=utf8mb4_general_ci\n"
            f"[client]\nsocket={self.base}/mysqld.sock\nport={self.port}\n"
        )
        if os.geteuid() == 0:
            _chown(self.base, "mysql")
        subprocess.run(
            [
                "mariadb-install-db",
                f"--defaults-file={self.cnf}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def _ping(self) -> bool:
        r = subprocess.run(
            ["mariadb-admin", f"--defaults-file={self.cnf}", "-uroot", "ping"],
            capture_output=True,
            timeout=10,
        )
        return r.returncode == 0

    def start(self) -> None:
        """Start (the first time: create the datadir); wait until it answers."""
        if not self.cnf.exists():
            self._setup()
        self.proc = subprocess.Popen(
            [shutil.which("mariadbd") or "/usr/sbin/mariadbd", f"--defaults-file={self.cnf}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait(self._ping, f"MariaDB on port {self.port}")

    def stop(self) -> None:
        """Stop and wait until the process is gone."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(30 * TIMEOUT_SCALE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def url(self, database: str | None = None) -> URL:
        """SQLAlchemy URL as root (no password)."""
        return URL.create(
            "mysql+pymysql",
            username="root",
            host="127.0.0.1",
            port=self.port,
            database=database,
            query={"charset": "utf8mb4"},
        )

    def sql(self, statement: str) -> None:
        """Run one statement with the mariadb client."""
        subprocess.run(
            ["mariadb", f"--defaults-file={self.cnf}", "-uroot", "-e", statement],
            check=True,
            capture_output=True,
            timeout=30,
        )


class PrivatePostgres:
    """A PostgreSQL cluster under ``base``, user postgres with trust auth over TCP."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.bindir = Path(sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1])
        self.data = base / "data"

    def _as_owner(self, *cmd: str) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *cmd]
        return list(cmd)

    def start(self) -> None:
        """Start (the first time: initdb); wait until it accepts connections."""
        if not self.data.exists():
            self.base.mkdir(parents=True, exist_ok=True)
            _chown(self.base, "postgres")
            subprocess.run(
                self._as_owner(
                    str(self.bindir / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                ),
                check=True,
                capture_output=True,
                timeout=120,
                cwd=self.base,
            )
        opts = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.base} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        subprocess.run(
            self._as_owner(
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.base / "server.log"),
                "-w",
                "-t",
                "60",
                "-o",
                opts,
                "start",
            ),
            check=True,
            capture_output=True,
            timeout=120,
            cwd=self.base,
        )

    def stop(self) -> None:
        """Fast shutdown; waits until it is down."""
        subprocess.run(
            self._as_owner(
                str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"
            ),
            capture_output=True,
            timeout=60,
            cwd=self.base,
        )

    def url(self, database: str = "postgres") -> URL:
        """SQLAlchemy URL as postgres (trust)."""
        return URL.create(
            "postgresql+psycopg2",
            username="postgres",
            host="127.0.0.1",
            port=self.port,
            database=database,
        )


@contextlib.contextmanager
def _server_dir(name: str) -> Iterator[Path]:
    # Not under pytest's tmp_path: its parents are private to root, and the
    # servers run as the mysql/postgres users, who must be able to get in.
    base = Path(tempfile.mkdtemp(prefix=f"iredapd-test-{name}-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def private_mariadb() -> Iterator[PrivateMariaDB]:
    """A started private MariaDB; stopped and removed at the end."""
    for tool in ("mariadbd", "mariadb-install-db", "mariadb-admin"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            require(tool, f"{tool} not installed (Debian package mariadb-server)")
    with _server_dir("mariadb") as base:
        server = PrivateMariaDB(base / "inst")
        server.start()
        try:
            yield server
        finally:
            server.stop()


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A started private PostgreSQL; stopped and removed at the end."""
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        require("initdb", "PostgreSQL server binaries not installed")
    with _server_dir("pgsql") as base:
        server = PrivatePostgres(base / "inst")
        server.start()
        try:
            yield server
        finally:
            server.stop()
