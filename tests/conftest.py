"""Shared fixtures: emulators in a separate process (so a killed runner cannot take them
down), a throwaway PostgreSQL with a fresh database per test, spec files written to
tmp_path, and a fast retry switch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline import retry

from . import pgserver

PYTHON = sys.executable
FAKE_KEY = "pixel_test_fake_key_0000"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _fast_backoff() -> Iterator[None]:
    retry.set_testing(True)
    yield
    retry.set_testing(False)


@dataclass
class EmulatorProcess:
    process: subprocess.Popen[str]
    urls: dict[str, str]

    def admin(self, name: str, what: str) -> Any:
        response = httpx.get(f"{self.urls[name]}/_emulator/{what}", timeout=10)
        response.raise_for_status()
        return response.json()

    def configure(self, name: str, **knobs: Any) -> None:
        response = httpx.post(f"{self.urls[name]}/_emulator/config", json=knobs, timeout=10)
        response.raise_for_status()

    def stats(self, name: str) -> dict[str, Any]:
        """``GET /_emulator/stats`` of emulator ``name``: counters, ``active_tasks``,
        ``peak_tasks``, ``active_requests``, ``peak_requests``."""
        body: dict[str, Any] = self.admin(name, "stats")
        return body

    def ledger(self, name: str) -> list[dict[str, Any]]:
        data = self.admin(name, "ledger")
        charges: list[dict[str, Any]] = data["charges"]
        return charges


def start_emulators(names: list[str], knobs: dict[str, Any]) -> EmulatorProcess:
    args = [PYTHON, "-m", "pipeline", "emulate", "--port", "0"]
    for name in names:
        args += ["--provider", name]
    for key, value in knobs.items():
        args += ["--knob", f"{key}={json.dumps(value)}"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, start_new_session=True)
    urls: dict[str, str] = {}
    deadline = time.monotonic() + 60
    assert process.stdout is not None
    while len(urls) < len(names):
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"emulator exited with {process.wait()}")
        name, _, url = line.strip().partition(" ")
        urls[name] = url
        if time.monotonic() > deadline:
            raise RuntimeError("emulator did not start")
    return EmulatorProcess(process, urls)


@pytest.fixture
def emulator_factory() -> Iterator[Callable[..., EmulatorProcess]]:
    started: list[EmulatorProcess] = []

    def factory(names: list[str] | None = None, **knobs: Any) -> EmulatorProcess:
        emulator = start_emulators(names or ["pixellabs"], knobs)
        started.append(emulator)
        return emulator

    yield factory
    for emulator in started:
        os.killpg(emulator.process.pid, signal.SIGTERM)
        try:
            emulator.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(emulator.process.pid, signal.SIGKILL)
            emulator.process.wait()


@pytest.fixture(scope="session")
def pg_server(request: pytest.FixtureRequest) -> Iterator[pgserver.PostgresServer]:
    """One throwaway PostgreSQL for the session (skips where none is installed, unless
    PIPELINE_REQUIRE_POSTGRES=1); its log's tail is printed if any test failed."""
    with pgserver.running_server() as server:
        yield server
        if request.session.testsfailed:
            capture = request.config.pluginmanager.getplugin("capturemanager")
            with capture.global_and_fixture_disabled():  # past capture: shown whoever failed
                print(f"\n{server.log_tail()}", file=sys.stderr)


@pytest.fixture
def pg_url(pg_server: pgserver.PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a fresh, empty database on ``pg_server``, dropped after the test; a failed
    test's report shows the server log's path and tail."""
    with pgserver.fresh_database(pg_server, request.node.name) as url:
        print(f"PostgreSQL {url}, log {pg_server.log}")
        yield url
        print(pg_server.log_tail(lines=20))


def write_spec(directory: Path, text: str, name: str = "spec.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [PYTHON, "-m", "pipeline", *args],
        check=False,
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@asynccontextmanager
async def serve_app(app: Any) -> AsyncIterator[str]:
    """Serve an ``aiohttp.web.Application`` on a free loopback port; yields its base URL."""
    from aiohttp import web

    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()
