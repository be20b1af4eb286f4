"""Group commit: while a run is on, the manifest's writes share one commit per turn of
the event loop; a submit's intent is still on disk before the request leaves."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from pipeline.commands import load_checked_spec, run_spec
from pipeline.errors import ManifestError
from pipeline.manifest.group_commit import group_commits
from pipeline.manifest.store import Manifest
from pipeline.manifest.unrecorded import FALLBACK_NAME
from pipeline.models import Job, JobState
from pipeline.providers.pixellabs import PixelLabsProvider

from .conftest import FAKE_KEY, write_spec

S = JobState


def job(i: int) -> Job:
    return Job(id=f"job-{i}", provider="p", model="m", params={"prompt": f"p{i}"}, replicate=0)


def state_seen_by_another_process(root: Path, job_id: str) -> str:
    with Manifest.open(root, readonly=True) as other:
        record = other.get(job_id)
        assert record is not None
        return record.state.value


def test_deferred_writes_are_seen_here_at_once_and_elsewhere_after_the_commit(
    tmp_path: Path,
) -> None:
    with Manifest.open(tmp_path) as manifest:
        manifest.add_jobs([job(1), job(2)])
        pending: list[int] = []
        manifest.defer_commits(lambda: pending.append(1))
        assert manifest.transition("job-1", S.SUBMITTING, expect=S.PENDING)
        assert manifest.transition("job-2", S.SUBMITTING, expect=S.PENDING)
        assert not manifest.transition("job-2", S.SUBMITTING, expect=S.PENDING)  # guarded
        assert pending  # the caller was asked to commit soon
        record = manifest.get("job-1")
        assert record is not None and record.state is S.SUBMITTING
        assert state_seen_by_another_process(tmp_path, "job-1") == "pending"
        manifest.commit()
        assert state_seen_by_another_process(tmp_path, "job-1") == "submitting"
        manifest.commit()  # nothing pending: a no-op


def test_a_failing_write_undoes_only_itself(tmp_path: Path) -> None:
    with Manifest.open(tmp_path) as manifest:
        manifest.add_jobs([job(1)])
        manifest.defer_commits(lambda: None)
        assert manifest.transition("job-1", S.SUBMITTING, expect=S.PENDING)
        with pytest.raises(ManifestError, match="no job"):
            manifest.transition("nope", S.SUBMITTING, expect=S.PENDING)
        manifest.defer_commits(None)  # commits what is pending
        assert state_seen_by_another_process(tmp_path, "job-1") == "submitting"


class FailingCommit:
    """The manifest's connection, except that COMMIT fails as on a full disk."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT":
            raise sqlite3.OperationalError("database or disk is full")
        return self.conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def test_a_failed_commit_rolls_back_and_stops_every_later_write(tmp_path: Path) -> None:
    manifest = Manifest.open(tmp_path)
    manifest.add_jobs([job(1), job(2)])
    real = manifest._conn
    assert real is not None
    manifest.defer_commits(lambda: None)
    assert manifest.transition("job-1", S.SUBMITTING, expect=S.PENDING)
    manifest._conn = FailingCommit(real)  # type: ignore[assignment]
    with pytest.raises(ManifestError, match="disk is full"):
        manifest.commit()
    manifest._conn = real
    with pytest.raises(ManifestError, match="an earlier write failed"):
        manifest.transition("job-2", S.SUBMITTING, expect=S.PENDING)
    manifest.close()
    assert state_seen_by_another_process(tmp_path, "job-1") == "pending"


def test_remote_ids_lost_with_a_failed_commit_go_to_the_fallback_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = Manifest.open(tmp_path)
    manifest.add_jobs([job(1), job(2)])
    real = manifest._conn
    assert real is not None
    manifest.defer_commits(lambda: None)
    for n in (1, 2):
        manifest.transition(f"job-{n}", S.SUBMITTING, expect=S.PENDING)
    manifest.commit()
    manifest.transition("job-1", S.SUBMITTED, expect=S.SUBMITTING, remote_id="paid-1")
    manifest._conn = FailingCommit(real)  # type: ignore[assignment]
    with pytest.raises(ManifestError, match="disk is full"):
        manifest.commit()
    manifest._conn = real
    with pytest.raises(ManifestError, match="an earlier write failed"):  # after the failure
        manifest.transition("job-2", S.SUBMITTED, expect=S.SUBMITTING, remote_id="paid-2")
    manifest.close()

    lines = (tmp_path / FALLBACK_NAME).read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    assert [(e["job_id"], e["remote_id"], e["provider"]) for e in entries] == [
        ("job-1", "paid-1", "p"),
        ("job-2", "paid-2", "p"),
    ]
    err = capsys.readouterr().err
    assert "remote id paid-1" in err and "remote id paid-2" in err
    assert manifest.write_failure == "database or disk is full"


@pytest.mark.anyio
async def test_durable_waits_for_the_commit_of_everything_written_before(tmp_path: Path) -> None:
    with Manifest.open(tmp_path) as manifest:
        manifest.add_jobs([job(i) for i in range(5)])
        async with group_commits(manifest) as commits:
            for i in range(5):
                manifest.transition(f"job-{i}", S.SUBMITTING, expect=S.PENDING)
            await commits.durable()
            assert all(
                state_seen_by_another_process(tmp_path, f"job-{i}") == "submitting"
                for i in range(5)
            )
            manifest.transition("job-0", S.SUBMITTED, expect=S.SUBMITTING, remote_id="r")
            for _ in range(3):  # no one waits: committed by the background task anyway
                await anyio.lowlevel.checkpoint()
            assert state_seen_by_another_process(tmp_path, "job-0") == "submitted"
            manifest.transition("job-1", S.SUBMITTED, expect=S.SUBMITTING, remote_id="q")
        assert state_seen_by_another_process(tmp_path, "job-1") == "submitted"  # on exit


@pytest.mark.anyio
async def test_a_shielded_wait_ends_when_the_run_is_cancelled(tmp_path: Path) -> None:
    """Ctrl-C cancels the committer while submits wait, shielded, for their intent to be
    on disk: they must get it (committed on the way out), not wait forever."""
    with Manifest.open(tmp_path) as manifest:
        manifest.add_jobs([job(1)])
        waited: list[str] = []

        async def submit(job_id: str) -> None:
            manifest.transition(job_id, S.SUBMITTING, expect=S.PENDING)
            with anyio.CancelScope(shield=True), anyio.fail_after(5):
                await commits.durable()
                waited.append(state_seen_by_another_process(tmp_path, job_id))

        async with anyio.create_task_group() as run, group_commits(manifest) as commits:
            run.start_soon(submit, "job-1")
            await anyio.lowlevel.checkpoint()
            run.cancel_scope.cancel()  # before the committer's turn comes
        assert waited == ["submitting"]
        with anyio.fail_after(5):
            await commits.durable()  # stopped: nothing to wait for


def test_every_submit_leaves_only_after_its_intent_is_committed(
    tmp_path: Path, emulator_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Contract 2 under group commit: when a submit request is about to leave, another
    process reading the manifest already sees the job as ``submitting``."""
    emulator = emulator_factory(task_seconds=0)
    (tmp_path / "prompts.txt").write_text("".join(f"prompt {i}\n" for i in range(12)))
    path = write_spec(
        tmp_path,
        f"""
        output:
          root: {tmp_path / "out"}
        providers:
          pixellabs:
            base_url: "{emulator.urls["pixellabs"]}"
            api_key: "${{PIXELLABS_API_KEY}}"
            concurrency: 6
        prompts:
          - file: prompts.txt
        run:
          poll: {{initial: 0.01s, max: 0.1s}}
        """,
    )
    seen: list[str] = []
    real_submit = PixelLabsProvider.submit

    async def submit(self: PixelLabsProvider, job: Job) -> str:
        seen.append(state_seen_by_another_process(tmp_path / "out", job.id))
        return await real_submit(self, job)

    monkeypatch.setattr(PixelLabsProvider, "submit", submit)
    spec = load_checked_spec(path, env={"PIXELLABS_API_KEY": FAKE_KEY})
    summary = run_spec(spec, quiet=True, handle_signals=False)
    assert summary.complete and summary.submitted == 12
    assert seen == ["submitting"] * 12


_SYNC_PROBE = """
import os, sys
from pathlib import Path
from pipeline.manifest.store import Manifest
from pipeline.models import Job, JobState

root = Path(sys.argv[1])
with Manifest.open(root, spec_name="sync") as manifest:
    manifest.add_jobs([Job(id=f"{i:016x}", provider="p", model=None, params={"prompt": "x"},
                           replicate=0) for i in range(2)])
    manifest.defer_commits(lambda: None)
    for i, synced in enumerate((False, True, True)):
        if i < 2:  # the third commit has nothing pending: an earlier one holds the write
            manifest.transition(f"{i:016x}", JobState.SUBMITTING, expect=JobState.PENDING)
        os.write(2, f"--- begin {synced}\\n".encode())
        manifest.commit(synced=synced)
        os.write(2, b"--- end\\n")
    manifest.defer_commits(None)
"""


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace to see fsync calls")
def test_a_submits_commit_reaches_the_disk_not_only_the_os(tmp_path):
    """Contract 2 under a power cut: the commit a submit waits for fsyncs the WAL, even
    when an earlier commit already holds the intent; other commits do not pay for it."""
    result = subprocess.run(
        ["strace", "-f", "-e", "trace=fsync,fdatasync,write", sys.executable, "-c",
         _SYNC_PROBE, str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    syncs = []
    inside = False
    for line in result.stderr.splitlines():
        if "--- begin" in line:
            inside, count = True, 0
        elif "--- end" in line and inside:
            inside = False
            syncs.append(count)
        elif inside and ("fsync(" in line or "fdatasync(" in line):
            count += 1
    assert len(syncs) == 3, result.stderr[-2000:]
    unsynced, synced, nothing_pending = syncs
    assert unsynced == 0
    assert synced >= 1
    assert nothing_pending >= 1
