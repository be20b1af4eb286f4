"""Callbacks in a shared run: a callback that reaches one runner for a task another runner
waits for is passed on through the manifest's database, and confirmed there by a status
query as always (real PostgreSQL, real HTTP, two `pipeline run` processes)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from pipeline.manifest import open_run
from pipeline.models import JobState
from tests.conftest import write_spec

JOBS = 12
READER = "pipeline hints"  # the application_name of a runner's reader of relayed hints
WARNING = "could not read the callbacks other runners relayed"
RELAY_WARNING = "could not relay a callback to the other runners"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spec_text(
    tmp_path: Path, emulator: Any, public_port: int | None, safety_poll: str = "1h"
) -> str:
    """Runner specs (``PORT`` to fill in); with ``public_port``, every runner tells the API
    that address (as behind one public URL), so every callback reaches that runner. With
    no safety polls and no fallback to polling, a task whose callback is lost waits an hour."""
    public = "" if public_port is None else f"public_url: http://127.0.0.1:{public_port}"
    return textwrap.dedent(
        f"""
        name: relay
        output: {{root: {tmp_path / "out"}}}
        providers:
          apixo:
            base_url: {emulator.urls["apixo"]}
            api_key: test-key-not-secret
            concurrency: 2
            params: {{model: nano-banana}}
            options: {{completion: webhook, safety_poll: {safety_poll}, callback_timeout: 1h}}
        prompts: [a lighthouse, a cat, a teapot]
        seeds: [1, 2, 3, 4]
        webhooks:
          host: 127.0.0.1
          port: PORT
          {public}
        run: {{deadline: 1h}}
        """
    )


def start_runners(tmp_path: Path, text: str, ports: list[int], pg_url: str) -> list[Any]:
    return [
        subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run", str(spec), "--manifest", pg_url, "-q"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for spec in (
            write_spec(tmp_path, text.replace("PORT", str(port)), f"runner{port}.yaml")
            for port in ports
        )
    ]


def finish(runners: list[Any]) -> list[tuple[str, str]]:
    """Each runner's (stdout, stderr), once all ended well."""
    ended = []
    try:
        for runner in runners:
            out, err = runner.communicate(timeout=150)
            ended.append((out, err))
            assert runner.returncode == 0, out + err
    finally:
        for runner in runners:
            runner.kill()
    return ended


def check_done(tmp_path: Path, pg_url: str, emulator: Any, outputs: list[str]) -> None:
    """Every job done and paid once, each confirmed by one status query (no polling)."""
    submitted = [int(re.search(r"submitted this run: (\d+)", out)[1]) for out in outputs]  # type: ignore[index]
    assert sum(submitted) == JOBS and submitted[-1] > 0, submitted  # B had tasks of its own
    with open_run(tmp_path / "out", url=pg_url, run="relay", readonly=True) as manifest:
        assert manifest.counts() == {"apixo": {JobState.DONE.value: JOBS}}
    assert len(emulator.ledger("apixo")) == JOBS  # each paid once
    stats = emulator.stats("apixo")
    polls = sum(n for route, n in stats["requests"].items() if "statusTask" in route)
    assert polls == JOBS, json.dumps(stats["requests"])  # one confirmation each, no polling


def wait_for(what: str, found: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not found():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_callback_for_another_runners_task_is_relayed(
    pg_url: str, tmp_path: Path, emulator_factory: Any
) -> None:
    emulator = emulator_factory(["apixo"], task_seconds=1.0, callback_retry_delays=[0.3])
    port_a = free_port()
    runners = start_runners(tmp_path, spec_text(tmp_path, emulator, port_a), [port_a, 0], pg_url)
    check_done(tmp_path, pg_url, emulator, [out for out, _ in finish(runners)])


def test_a_lost_connection_of_the_hint_reader_is_reopened_and_no_hint_is_missed(
    pg_url: str, tmp_path: Path, emulator_factory: Any
) -> None:
    """Both runners' readers of relayed hints lose their connection (terminated by the
    server) before the first callback: the runs go on, each reader reconnects, and
    runner B's tasks, whose callbacks all reach A, are still woken by relayed hints."""
    emulator = emulator_factory(["apixo"], task_seconds=2.0, callback_retry_delays=[0.3])
    port_a = free_port()
    runners = start_runners(tmp_path, spec_text(tmp_path, emulator, port_a), [port_a, 0], pg_url)
    try:
        with psycopg.connect(pg_url, autocommit=True) as admin:

            def readers() -> list[int]:
                rows = admin.execute(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (READER,)
                ).fetchall()
                return [int(pid) for (pid,) in rows]

            wait_for("both runners' hint readers", lambda: len(readers()) == 2)
            for pid in readers():
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            wait_for("the hint readers to reconnect", lambda: len(readers()) == 2)
    finally:
        ended = finish(runners)
    check_done(tmp_path, pg_url, emulator, [out for out, _ in ended])
    for _, err in ended:
        assert err.count(WARNING) == 1, err  # said once, and the runs went on


def started(admin: psycopg.Connection[Any]) -> bool:
    """Whether a runner of the run has submitted a job."""
    row = admin.execute(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'pipeline_relay' AND tablename = 'jobs'"
    ).fetchone()
    if not row or not row[0]:
        return False
    row = admin.execute(
        "SELECT count(*) FROM pipeline_relay.jobs WHERE state <> 'pending'"
    ).fetchone()
    return bool(row and row[0])


def test_a_database_error_in_the_hint_reader_does_not_end_the_run(
    pg_url: str, tmp_path: Path, emulator_factory: Any
) -> None:
    """The hints table is out of reach for a few seconds (renamed away) during a run: the
    reader's reads fail, and it says so once and reads on; the run ends well."""
    emulator = emulator_factory(["apixo"], task_seconds=2.0, callback_retry_delays=[0.3])
    (runner,) = start_runners(tmp_path, spec_text(tmp_path, emulator, None), [0], pg_url)
    try:
        with psycopg.connect(pg_url, autocommit=True) as admin:
            wait_for("the first submit", lambda: started(admin))
            admin.execute("ALTER TABLE pipeline_relay.hints RENAME TO hints_away")
            time.sleep(3)  # several reads of the reader fail meanwhile
            admin.execute("ALTER TABLE pipeline_relay.hints_away RENAME TO hints")
    finally:
        ((_, err),) = finish([runner])
    assert err.count(WARNING) == 1, err
    with open_run(tmp_path / "out", url=pg_url, run="relay", readonly=True) as manifest:
        assert manifest.counts() == {"apixo": {JobState.DONE.value: JOBS}}


def test_a_failed_relay_is_said_once_and_the_run_goes_on(
    pg_url: str, tmp_path: Path, emulator_factory: Any
) -> None:
    """Every callback reaches runner A; while the hints table is out of reach (renamed
    away), A cannot relay those for B's tasks. A says so once and counts them, neither run
    ends, and B's tasks are found by their safety polls."""
    emulator = emulator_factory(["apixo"], task_seconds=1.0, callback_retry_delays=[0.3])
    port_a = free_port()
    text = spec_text(tmp_path, emulator, port_a, safety_poll="2s")
    runners = start_runners(tmp_path, text, [port_a, 0], pg_url)
    try:
        with psycopg.connect(pg_url, autocommit=True) as admin:
            wait_for("the first submit", lambda: started(admin))
            admin.execute("ALTER TABLE pipeline_relay.hints RENAME TO hints_away")
            time.sleep(4)  # B's first tasks end meanwhile: their callbacks reach A
            admin.execute("ALTER TABLE pipeline_relay.hints_away RENAME TO hints")
    finally:
        (_, err_a), (_, err_b) = finish(runners)
    assert err_a.count(RELAY_WARNING) == 1, err_a
    assert re.search(r"\d+ callback\(s\) could not be relayed", err_a), err_a
    assert RELAY_WARNING not in err_b, err_b
    with open_run(tmp_path / "out", url=pg_url, run="relay", readonly=True) as manifest:
        assert manifest.counts() == {"apixo": {JobState.DONE.value: JOBS}}
    assert len(emulator.ledger("apixo")) == JOBS  # each paid once
