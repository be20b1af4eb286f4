"""`pipeline status | head` and `pipeline export … | head`: a reader that goes away
early ends the command quietly (exit 141, as a process killed by SIGPIPE), with no
traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.manifest.store import Manifest

from .test_manifest import make_jobs

pytestmark = pytest.mark.slow


@pytest.fixture
def root(tmp_path: Path) -> Path:
    with Manifest.open(tmp_path / "out") as manifest:
        manifest.add_jobs(make_jobs(3000))
    return tmp_path / "out"


@pytest.mark.parametrize(
    "args", [["status"], ["status", "--json"], ["export"]], ids=["status", "json", "export"]
)
def test_closed_stdout_ends_quietly(root: Path, args: list[str]) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args, str(root)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # like `head` that has seen enough, before the first write
    err = process.stderr.read()
    assert process.wait(timeout=60) == 141, err
    assert err == "", err


def test_reader_leaving_mid_export_ends_quietly(root: Path) -> None:
    pipe = subprocess.run(
        f"{sys.executable} -m pipeline export {root} | head -n 2",
        shell=True, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert len(pipe.stdout.splitlines()) == 2
    assert "Traceback" not in pipe.stderr and "BrokenPipeError" not in pipe.stderr, pipe.stderr
