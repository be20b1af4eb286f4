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
from pathlib import Path
from typing import Any

from pipeline.manifest import open_run
from pipeline.models import JobState
from tests.conftest import write_spec

JOBS = 12


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_callback_for_another_runners_task_is_relayed(
    pg_url: str, tmp_path: Path, emulator_factory: Any
) -> None:
    emulator = emulator_factory(["apixo"], task_seconds=1.0, callback_retry_delays=[0.3])
    port_a = free_port()
    # Every runner tells the API runner A's address (as behind one public URL), so the
    # callbacks of runner B's tasks all reach A. Without a relay B would wait an hour:
    # no safety polls, no fallback to polling.
    text = textwrap.dedent(
        f"""
        name: relay
        output: {{root: {tmp_path / "out"}}}
        providers:
          apixo:
            base_url: {emulator.urls["apixo"]}
            api_key: test-key-not-secret
            concurrency: 2
            params: {{model: nano-banana}}
            options: {{completion: webhook, safety_poll: 1h, callback_timeout: 1h}}
        prompts: [a lighthouse, a cat, a teapot]
        seeds: [1, 2, 3, 4]
        webhooks:
          host: 127.0.0.1
          port: PORT
          public_url: http://127.0.0.1:{port_a}
        run: {{deadline: 1h}}
        """
    )
    runners = [
        subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run", str(spec), "--manifest", pg_url, "-q"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for spec in (
            write_spec(tmp_path, text.replace("PORT", str(port)), f"runner{port}.yaml")
            for port in (port_a, 0)
        )
    ]
    outputs = []
    try:
        for runner in runners:
            out, err = runner.communicate(timeout=150)
            outputs.append(out)
            assert runner.returncode == 0, out + err
    finally:
        for runner in runners:
            runner.kill()
    submitted = [int(re.search(r"submitted this run: (\d+)", out)[1]) for out in outputs]  # type: ignore[index]
    assert sum(submitted) == JOBS and submitted[1] > 0, submitted  # B had tasks of its own
    with open_run(tmp_path / "out", url=pg_url, run="relay", readonly=True) as manifest:
        assert manifest.counts() == {"apixo": {JobState.DONE.value: JOBS}}
    assert len(emulator.ledger("apixo")) == JOBS  # each paid once
    stats = emulator.stats("apixo")
    polls = sum(n for route, n in stats["requests"].items() if "statusTask" in route)
    assert polls == JOBS, json.dumps(stats["requests"])  # one confirmation each, no polling
