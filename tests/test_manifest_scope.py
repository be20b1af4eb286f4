"""Spec generations in the manifest: which rows the current spec lists, scoped reads and
resets, pruning, and the migration of a schema-1 manifest."""

from __future__ import annotations

import sqlite3

from pipeline.manifest.store import DB_NAME, Manifest
from pipeline.models import JobState

from .test_manifest import make_job, make_jobs

S = JobState


def test_add_jobs_tags_the_current_generation_and_counts_only_new_rows(tmp_path):
    with Manifest.open(tmp_path) as manifest:
        assert manifest.add_jobs(make_jobs(5), chunk=2) == 5
        assert manifest.begin_generation() == 1
        assert manifest.add_jobs(make_jobs(7), chunk=3) == 2  # 5 re-tagged, 2 new
        manifest.limit_to_spec()
        assert manifest.total() == 7
        assert manifest.begin_generation() == 2
        assert manifest.add_jobs([make_job(1), make_job(3)]) == 0
        assert manifest.total() == 2  # the limit follows the new generation
        assert manifest.outside_spec_counts() == {"pixai": {"pending": 5}}


def test_scoped_reads_and_resets_leave_other_rows_alone(tmp_path):
    with Manifest.open(tmp_path) as manifest:
        manifest.add_jobs(make_jobs(4))
        for i in range(4):
            job_id = make_job(i).id
            manifest.transition(job_id, S.SUBMITTING, expect=S.PENDING)
            manifest.transition(job_id, S.SUBMITTED, expect=S.SUBMITTING, remote_id=f"r{i}")
            manifest.transition(job_id, S.FAILED, expect=S.SUBMITTED, error="no")
        manifest.begin_generation()
        manifest.add_jobs([make_job(0), make_job(1)])
        manifest.limit_to_spec()

        assert manifest.reset([S.FAILED], S.PENDING) == 2
        assert [r.job.id for r in manifest.iter_records(states=[S.PENDING])] == [
            make_job(0).id,
            make_job(1).id,
        ]
        assert manifest.counts() == {"pixai": {"pending": 2}}
        assert manifest.failures() == []
        assert manifest.get(make_job(3).id).state is S.FAILED  # by id: every row


def test_prune_keeps_paid_open_tasks_unless_asked(tmp_path):
    with Manifest.open(tmp_path) as manifest:
        manifest.add_jobs(make_jobs(3))
        manifest.transition(make_job(0).id, S.SUBMITTING, expect=S.PENDING)
        manifest.transition(make_job(0).id, S.SUBMITTED, expect=S.SUBMITTING, remote_id="paid-0")
        manifest.begin_generation()
        manifest.add_jobs([make_job(2)])

        first = manifest.prune()
        assert (first.removed, first.kept_paid, first.remote_ids) == (1, 1, ())
        second = manifest.prune(include_paid=True)
        assert (second.removed, second.remote_ids) == (1, ("paid-0",))
        assert [r.job.id for r in manifest.iter_records()] == [make_job(2).id]
        assert "paid-0" in (manifest.events(make_job(0).id)[-1].detail or "")


def test_a_schema_1_manifest_is_migrated_and_listed_again(tmp_path):
    with Manifest.open(tmp_path) as manifest:
        manifest.add_jobs(make_jobs(2))
        manifest.set_meta("expansion", "old")
    with sqlite3.connect(tmp_path / DB_NAME) as conn:  # back to schema 1
        conn.execute("DROP INDEX jobs_provider_state")
        conn.execute("ALTER TABLE jobs DROP COLUMN generation")
        conn.execute("ALTER TABLE jobs DROP COLUMN failure")  # added by 2 -> 3
        conn.execute("ALTER TABLE jobs DROP COLUMN meta")  # added by 3 -> 4
        conn.execute("ALTER TABLE outputs DROP COLUMN root")  # added by 4 -> 5
        conn.execute("CREATE INDEX jobs_provider_state ON jobs (provider, state)")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    conn.close()

    with Manifest.open(tmp_path) as manifest:
        assert "expansion" not in manifest.meta()  # the next run lists its jobs again
        manifest.limit_to_spec()
        assert manifest.total() == 2
        assert manifest.begin_generation() == 1
