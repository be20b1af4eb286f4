"""The throwaway PostgreSQL of the test suite (tests/pgserver.py): a real server on
loopback, a fresh database per test, and a missing install that skips, or fails when
PIPELINE_REQUIRE_POSTGRES=1 (CI) so the PostgreSQL tests can never vanish silently."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from . import pgserver

psycopg = pytest.importorskip("psycopg", reason="psycopg (the postgres extra) talks to the server")

seen_databases: list[str] = []


def test_a_table_round_trips_through_the_real_server(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        conn.execute("CREATE TABLE jobs (id text PRIMARY KEY, prompt text NOT NULL)")
        conn.execute("INSERT INTO jobs VALUES (%s, %s)", ("j1", "a café at dusk ✓"))
        conn.commit()
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT id, prompt FROM jobs").fetchall()
        server_version = conn.info.server_version
        encoding = conn.execute("SHOW server_encoding").fetchone()
    assert rows == [("j1", "a café at dusk ✓")]
    assert server_version >= 150000
    assert encoding == ("UTF8",)


def test_the_server_listens_on_loopback_with_room_for_many_runners(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        address = conn.execute("SELECT inet_server_addr()::text").fetchone()
        max_connections = conn.execute("SHOW max_connections").fetchone()
    assert address is not None and address[0].startswith("127.0.0.1")
    assert max_connections is not None and int(max_connections[0]) >= 200


@pytest.mark.parametrize("turn", [1, 2])
def test_each_test_gets_its_own_empty_database(pg_url: str, turn: int) -> None:
    with psycopg.connect(pg_url) as conn:
        name = conn.execute("SELECT current_database()").fetchone()
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
        conn.execute("CREATE TABLE leftover (x int)")
    assert name is not None
    assert tables == (0,)
    assert name[0] not in seen_databases
    seen_databases.append(name[0])


def test_a_fresh_database_is_dropped_after_use_even_while_connected(
    pg_server: pgserver.PostgresServer,
) -> None:
    with pgserver.fresh_database(pg_server, "dropped") as url:
        lingering = psycopg.connect(url)  # a runner that never closed its connection
        lingering.execute("SELECT 1")
        name = url.rsplit("/", 1)[1]
    assert _is_dead(lingering)
    with psycopg.connect(pg_server.url("postgres")) as conn:
        existing = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
    assert name not in existing


def _is_dead(conn: Any) -> bool:
    """The server ended the session when its database was dropped."""
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return True
    finally:
        conn.close()
    return False


def test_a_port_taken_before_the_server_binds_it_is_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        ports = iter([taken.getsockname()[1], pgserver.free_port()])
        monkeypatch.setattr(pgserver, "free_port", lambda: next(ports))
        with pgserver.running_server() as server:
            assert server.port != taken.getsockname()[1]
            with psycopg.connect(server.url("postgres")) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
            assert "could not bind" in server.log_tail(lines=1000)
    assert not server.folder.exists()


def test_a_missing_install_skips_with_how_to_get_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgserver, "find_bindir", lambda: None)
    monkeypatch.delenv(pgserver.REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"apt-get install postgresql.*\.ci/run"):
        pgserver.bindir_or_skip()


def test_a_missing_install_fails_where_postgres_is_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pgserver, "find_bindir", lambda: None)
    monkeypatch.setenv(pgserver.REQUIRE_ENV, "1")
    with pytest.raises(pgserver.PostgresMissing, match="PIPELINE_REQUIRE_POSTGRES=1"):
        pgserver.bindir_or_skip()


def test_the_newest_installed_version_is_chosen(tmp_path: Path) -> None:
    for version in ("9.6", "15", "13", "16"):
        bindir = tmp_path / version / "bin"
        bindir.mkdir(parents=True)
        for tool in ("initdb", "pg_ctl"):
            (bindir / tool).write_text("#!/bin/sh\n")
            (bindir / tool).chmod(0o755)
    (tmp_path / "16" / "bin" / "pg_ctl").unlink()  # a half-installed 16 does not count
    assert pgserver.newest_bindir(tmp_path) == tmp_path / "15" / "bin"
