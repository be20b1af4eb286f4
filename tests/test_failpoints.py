"""Failpoints (test-only): the process dies by SIGKILL the n-th time a point is reached,
and a malformed setting is ignored with a warning, never a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from pipeline.failpoints import ENV, failpoint

SCRIPT = """
from pipeline.failpoints import failpoint
for n in range(1, 4):
    failpoint("other")
    failpoint("here")
    print(n, flush=True)
"""


def run(setting: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, ENV: setting}
    return subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip


def test_the_nth_time_a_point_is_reached_the_process_is_killed() -> None:
    died = run("here:2")
    assert died.returncode == -signal.SIGKILL
    assert died.stdout.split() == ["1"]


def test_malformed_settings_are_ignored_with_a_warning() -> None:
    lived = run("here, here:0, :3, here:x")
    assert lived.returncode == 0, lived.stderr
    assert lived.stdout.split() == ["1", "2", "3"]
    assert lived.stderr.count("warning: PIPELINE_FAILPOINTS: ignored") == 4
    assert "Traceback" not in lived.stderr


def test_unset_failpoints_do_nothing() -> None:
    failpoint("submit.after_answer")  # this test process has none armed
