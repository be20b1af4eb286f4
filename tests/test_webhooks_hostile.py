"""The webhook receiver under hostile clients: slow connections (slowloris), more
connections than it takes, deep JSON. It must stay responsive, close what it does not
want within its timeouts, and stay quiet: a few summary lines, never a traceback.

The receiver runs in its own process, as in a run, so that its stderr is the user's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import resource
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pipeline.completion.receiver_guard import QuietLog
from pipeline.completion.webhook import open_receiver
from pipeline.models import WebhookSettings

SERVER = """
import json, sys
import anyio
from pipeline.models import WebhookSettings
from pipeline.completion.receiver import WebhookReceiver

async def main() -> None:
    receiver = WebhookReceiver(WebhookSettings(), **json.loads(sys.argv[1]))
    receiver.register("fake", lambda b: b.get("id") if isinstance(b, dict) else None)
    await receiver.start()
    print(receiver.url_for("fake"), flush=True)
    try:
        await anyio.sleep_forever()
    finally:
        await receiver.aclose()

try:
    anyio.run(main)
except KeyboardInterrupt:
    pass
"""

LIMITS = {"header_timeout": 1.0, "body_timeout": 1.0, "max_connections": 40, "log_interval": 60}


@pytest.fixture
def receiver_process(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A receiver with short timeouts in its own process; yields its URL and stderr file."""
    with receiver_in_process(tmp_path, LIMITS) as started:
        yield started


@contextlib.contextmanager
def receiver_in_process(tmp_path: Path, limits: dict[str, float]) -> Iterator[tuple[str, Path]]:
    stderr = tmp_path / "stderr.txt"
    with stderr.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-c", SERVER, json.dumps(limits)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    assert process.stdout is not None
    url = process.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:"), url
    try:
        yield url, stderr
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def slow_connections(url: str, count: int) -> list[socket.socket]:
    """``count`` connections that send half a request head, or a head and half a body."""
    parsed = httpx.URL(url)
    sockets = []
    for i in range(count):
        sock = socket.create_connection((parsed.host, parsed.port), timeout=5)
        if i % 2:
            sock.sendall(f"POST {parsed.path} HTTP/1.1\r\nHost: x\r\nX-Slow: ".encode())
        else:
            head = f"POST {parsed.path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
            sock.sendall(head.encode() + b'{"id": ')
        sockets.append(sock)
    return sockets


def closed_by_peer(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        while chunk := sock.recv(65536):  # an error answer, then the close
            if not select.select([sock], [], [], 0.5)[0]:
                return False
            del chunk
    except OSError:
        return True  # reset
    return True


def slow_count() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(20, min(300, (soft - 64) // 2))


def test_slow_connections_are_closed_and_callbacks_still_answered(receiver_process) -> None:
    url, stderr = receiver_process
    sockets = slow_connections(url, slow_count())
    try:
        started = time.monotonic()
        answer = httpx.post(url, json={"id": "task-1"}, timeout=5)
        assert answer.status_code == 200
        assert time.monotonic() - started < 2.0, "a valid callback waited behind slow ones"

        deadline = time.monotonic() + LIMITS["header_timeout"] + LIMITS["body_timeout"] + 6
        still_open, closed_late = list(sockets), 0
        while still_open and time.monotonic() < deadline:
            now = time.monotonic()
            closed = [s for s in still_open if closed_by_peer(s)]
            closed_late += len(closed) if now - started >= LIMITS["header_timeout"] / 2 else 0
            still_open = [s for s in still_open if s not in closed]
            time.sleep(0.05)
        assert not still_open, f"{len(still_open)} slow connections never closed"
        assert closed_late, "the connections under the cap are closed by the timeouts"
        assert httpx.post(url, json={"id": "task-2"}, timeout=5).status_code == 200
    finally:
        for sock in sockets:
            sock.close()
    text = stderr.read_text(errors="replace")
    assert "Traceback" not in text
    assert len(text) < 2000 and text.count("\n") <= 3, text
    assert "webhook receiver dropped" in text  # said once, in sum


def test_a_callback_is_answered_when_slow_bodies_fill_the_cap(tmp_path: Path) -> None:
    """At the cap with no slow head left, the oldest unfinished body makes room, not the
    new callback: a receiver full of slow bodies must still take a real one."""
    limits = {**LIMITS, "header_timeout": 30.0, "body_timeout": 30.0, "max_connections": 4}
    with receiver_in_process(tmp_path, limits) as (url, stderr):
        sockets = []
        try:
            for _ in range(6):
                sockets += slow_connections(url, 1)  # head sent, body half sent
                time.sleep(0.2)  # let the receiver read the head before the next one
            for i in range(3):
                answer = httpx.post(url, json={"id": f"task-{i}"}, timeout=5)
                assert answer.status_code == 200
            assert sum(closed_by_peer(s) for s in sockets) >= 3
        finally:
            for sock in sockets:
                sock.close()
    assert "Traceback" not in stderr.read_text(errors="replace")


def test_deep_json_is_refused_with_400_and_no_traceback(receiver_process) -> None:
    url, stderr = receiver_process
    for depth in (100_000, 5_000):
        body = "[" * depth + "]" * depth
        answer = httpx.post(url, content=body, timeout=10)
        assert answer.status_code == 400, answer.text
        deep = '{"id": "t", "x": ' + "[" * depth + "]" * depth + "}"
        assert httpx.post(url, content=deep, timeout=10).status_code == 400
    assert httpx.post(url, json={"id": "task-1"}, timeout=5).status_code == 200
    assert "Traceback" not in stderr.read_text(errors="replace")


@pytest.mark.anyio
async def test_every_answer_closes_the_connection() -> None:
    """One request per connection: a kept-alive connection could idle past the limits."""
    async with open_receiver(WebhookSettings()) as receiver:
        receiver.register("fake", lambda b: "k")
        async with httpx.AsyncClient(timeout=5) as client:
            answer = await client.post(receiver.url_for("fake"), json={"id": "k"})
        assert answer.headers.get("connection") == "close"


def test_dropped_connections_are_summed_up_at_most_once_per_interval() -> None:
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.Logger("test.quiet")
    logger.addHandler(Collect())
    now = [0.0]
    quiet = QuietLog(logger, interval=10.0, clock=lambda: now[0])
    for i in range(10_000):
        now[0] = i / 1000  # 10,000 drops over 10 s
        quiet.count("slow request heads" if i % 2 else "refused at the connection cap")
    quiet.flush()
    assert len(lines) == 2, lines  # the first drop at once, then the rest in one line
    assert "1 refused at the connection cap" in lines[0]
    assert "5000 slow request heads, 4999 refused at the connection cap" in lines[1]
    assert quiet.totals["slow request heads"] == 5000
