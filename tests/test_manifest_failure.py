"""``jobs.failure`` tells a download failure from a remote one; --retry-failed reads it
(issue 10, #1 and #7), and an older manifest gains it from its recorded errors."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from pipeline.manifest.schema import SCHEMA_VERSION
from pipeline.manifest.store import DB_NAME, Manifest
from pipeline.models import JobState

from .test_manifest import make_jobs

S = JobState


def submitted(manifest: Manifest, job_id: str, remote_id: str) -> None:
    manifest.transition(job_id, S.SUBMITTING, expect=S.PENDING, client_ref=job_id)
    manifest.transition(job_id, S.SUBMITTED, expect=S.SUBMITTING, remote_id=remote_id)


def test_retry_failed_asks_every_recorded_task_and_refetches_download_failures(
    tmp_path: Path,
) -> None:
    with Manifest.open(tmp_path) as manifest:
        manifest.add_jobs(make_jobs(5))
        ids = [r.job.id for r in manifest.iter_records()]
        for n, job_id in enumerate(ids[:4]):
            submitted(manifest, job_id, f"r{n}")
        manifest.transition(ids[0], S.FAILED, expect=S.SUBMITTED, error="boom", failure="remote")
        manifest.transition(ids[1], S.DOWNLOADING, via=S.SUCCEEDED, expect=S.SUBMITTED)
        manifest.transition(ids[1], S.FAILED, expect=S.DOWNLOADING, failure="download")
        manifest.transition(ids[2], S.TIMED_OUT, expect=S.SUBMITTED, failure="deadline")
        manifest.transition(ids[3], S.CANCELLED, expect=S.SUBMITTED)  # cause not recorded
        manifest.transition(ids[4], S.SUBMITTING, expect=S.PENDING, client_ref="x")
        manifest.transition(ids[4], S.FAILED, expect=S.SUBMITTING, error="submit: 400")

        assert manifest.get(ids[1]).failure == "download"  # type: ignore[union-attr]
        assert manifest.retry_failed() == 5
        after = {r.job.id: r for r in manifest.iter_records()}
    assert [after[i].state for i in ids] == [S.SUBMITTED, S.SUCCEEDED, S.SUBMITTED,
                                             S.SUBMITTED, S.PENDING]  # fmt: skip
    assert [after[i].remote_id for i in ids] == ["r0", "r1", "r2", "r3", None]
    assert all(r.failure is None for r in after.values())


def test_a_manifest_from_before_failure_is_migrated_with_failures_told_apart(
    tmp_path: Path,
) -> None:
    with Manifest.open(tmp_path) as manifest:
        manifest.add_jobs(make_jobs(4))
    rows = [("failed", "download: 403 expired"), ("failed", "no NSFW"),
            ("timed_out", "deadline of 60s passed"), ("failed", "submit: 400")]  # fmt: skip
    conn = sqlite3.connect(tmp_path / DB_NAME)
    with conn:
        conn.execute("ALTER TABLE jobs DROP COLUMN failure")
        conn.execute("ALTER TABLE jobs DROP COLUMN meta")  # added by 3 -> 4
        conn.execute("ALTER TABLE outputs DROP COLUMN root")  # added by 4 -> 5
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
        for rowid, (state, error) in enumerate(rows, start=1):
            conn.execute(
                "UPDATE jobs SET state = ?, error = ?, remote_id = 'r' WHERE rowid = ?",
                (state, error, rowid),
            )
    conn.close()
    with Manifest.open(tmp_path) as manifest:
        failures = [r.failure for r in manifest.iter_records()]
        assert manifest.meta()["schema_version"] == str(SCHEMA_VERSION)
    assert failures == ["download", "remote", "deadline", "submit"]
