"""A throwaway PostgreSQL for the tests: ``initdb`` and ``pg_ctl`` in a temporary folder,
listening on a free loopback port, never the machine's own cluster.

``initdb`` refuses to run as root, so as root the server runs as the ``postgres`` user
(which Debian's package creates) in a folder that user owns.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

REQUIRE_ENV = "PIPELINE_REQUIRE_POSTGRES"
MISSING = "PostgreSQL server binaries not found; `apt-get install postgresql` or run .ci/run"
DEBIAN_ROOT = Path("/usr/lib/postgresql")
SERVER_USER = "postgres"
TIMEOUT = 120  # seconds for initdb, start and stop on a slow shared machine
SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "max_connections": "200",  # several runner processes, each with a few connections
}


class PostgresMissing(RuntimeError):
    """No usable PostgreSQL server where the run requires one."""


def newest_bindir(root: Path = DEBIAN_ROOT) -> Path | None:
    """The ``bin`` folder of the newest version under ``root`` (Debian's layout,
    ``/usr/lib/postgresql/<version>/bin``) that has both ``initdb`` and ``pg_ctl``."""

    def version(bindir: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", bindir.parent.name))

    usable = [bindir for bindir in root.glob("*/bin") if has_tools(bindir)]
    return max(usable, key=version, default=None)


def has_tools(bindir: Path) -> bool:
    return all(os.access(bindir / tool, os.X_OK) for tool in ("initdb", "pg_ctl"))


def find_bindir() -> Path | None:
    """Debian's newest server binaries, else those of the ``pg_config`` on PATH."""
    found = newest_bindir()
    if found is not None:
        return found
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    answer = subprocess.run(
        [pg_config, "--bindir"], capture_output=True, text=True, check=False, timeout=30
    )
    bindir = Path(answer.stdout.strip())
    return bindir if answer.returncode == 0 and has_tools(bindir) else None


def unavailable(reason: str) -> NoReturn:
    """Skip the test, or fail it where ``PIPELINE_REQUIRE_POSTGRES=1`` (CI): a broken
    install must never silently skip the PostgreSQL tests."""
    if os.environ.get(REQUIRE_ENV) == "1":
        raise PostgresMissing(f"{reason} ({REQUIRE_ENV}=1 requires a PostgreSQL server)")
    pytest.skip(reason)


def bindir_or_skip() -> Path:
    bindir = find_bindir()
    if bindir is None:
        unavailable(MISSING)
    return bindir


def server_user_or_skip() -> pwd.struct_passwd | None:
    """As root, the unprivileged user to run the server as; otherwise None (ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        unavailable(f"running as root needs the {SERVER_USER!r} user (Debian's package makes it)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class PostgresServer:
    """One server: its binaries, its folder (data, socket and log), its port."""

    bindir: Path
    folder: Path
    port: int
    user: pwd.struct_passwd | None

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log(self) -> Path:
        return self.folder / "postgresql.log"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def run(self, tool: str, *args: str) -> None:
        """Run a server tool, as the ``postgres`` user when we are root."""
        command = [str(self.bindir / tool), *args]
        if self.user is not None:
            command = ["su", self.user.pw_name, "-s", "/bin/sh", "-c", shlex.join(command)]
        done = subprocess.run(
            command, cwd=self.folder, capture_output=True, text=True, timeout=TIMEOUT, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{tool} {shlex.join(args)} exited with {done.returncode}:\n"
                f"{done.stdout}{done.stderr}\n{self.log_tail()}"
            )

    def initdb(self) -> None:
        # UTF8 and the C locale whatever the machine's locale (a bare container's POSIX
        # locale would give SQL_ASCII); --no-sync only skips flushing the initial files.
        self.run(
            "initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip

    def start(self) -> None:
        settings = [f"-c {name}={value}" for name, value in SETTINGS.items()]
        options = " ".join([f"-k {shlex.quote(str(self.folder))} -p {self.port}", *settings])
        self.run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", str(TIMEOUT),
            "-o", options, "start",
        )  # fmt: skip

    def stop(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", str(TIMEOUT), "stop")

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return f"(no server log at {self.log})"
        return f"--- last lines of {self.log} ---\n" + "\n".join(text.splitlines()[-lines:])


def make_folder(user: pwd.struct_passwd | None) -> Path:
    """A temporary folder the server's user owns (and may reach: /tmp, not a root-only
    home)."""
    folder = Path(tempfile.mkdtemp(prefix="pipeline-pg-", dir="/tmp"))
    if user is not None:
        os.chown(folder, user.pw_uid, user.pw_gid)
    return folder


@contextmanager
def running_server(attempts: int = 3) -> Iterator[PostgresServer]:
    """A fresh server for the ``with`` block; stopped and its folder removed after, also
    when it failed half way."""
    bindir = bindir_or_skip()
    user = server_user_or_skip()
    server = PostgresServer(bindir, make_folder(user), free_port(), user)
    try:
        server.initdb()
        start_on_a_free_port(server, attempts)
        yield server
        server.stop()
    finally:
        if (server.data / "postmaster.pid").exists():  # still up: a failed start or test
            with suppress(RuntimeError, subprocess.TimeoutExpired):
                server.stop()
        shutil.rmtree(server.folder, ignore_errors=True)


def start_on_a_free_port(server: PostgresServer, attempts: int) -> None:
    """The port was free when chosen but may be taken before the server binds it: then
    start again on another."""
    for attempt in range(1, attempts + 1):
        try:
            server.start()
            return
        except RuntimeError:
            if attempt == attempts or "could not bind" not in server.log_tail():
                raise
            server.port = free_port()


def timed_start() -> tuple[float, float]:
    """Seconds for initdb + start, and for stop (a figure for the notes)."""
    started = time.perf_counter()
    with running_server():
        ready = time.perf_counter()
    return ready - started, time.perf_counter() - ready


@contextmanager
def fresh_database(server: PostgresServer, label: str) -> Iterator[str]:
    """A new empty database named after ``label`` for the ``with`` block; dropped after,
    even with sessions still open in it."""
    import psycopg
    from psycopg import sql

    slug = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")[:40]
    name = f"t_{slug}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server.url("postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield server.url(name)
    finally:
        with psycopg.connect(server.url("postgres"), autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
