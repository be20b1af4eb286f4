"""End to end over real HTTP on loopback: spec → emulator → verified files → rerun."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter
from pathlib import Path

from PIL import Image

from pipeline.commands import load_checked_spec, run_spec
from pipeline.manifest.store import Manifest
from pipeline.models import JobState

from .conftest import FAKE_KEY, run_cli, write_spec

ENV = {"PIXELLABS_API_KEY": FAKE_KEY}


def pixellabs_spec(tmp_path: Path, url: str, *, seeds: str = "[1, 2, 3]", extra: str = "") -> Path:
    return write_spec(
        tmp_path,
        f"""
        name: e2e
        output:
          root: {tmp_path / "out"}
        providers:
          pixellabs:
            base_url: {url}
            api_key: ${{PIXELLABS_API_KEY}}
            concurrency: 4
        prompts:
          - a red fox in the snow
          - text: "a {{thing}} made of glass"
            vars: {{thing: [teapot, bicycle]}}
        matrix:
          aspect_ratio: ["1:1", "16:9"]
        seeds: {seeds}
        run:
          poll: {{initial: 0.05s, max: 0.3s}}
          deadline: 2m
        {extra}
    """,
    )


def test_run_completes_and_rerun_submits_nothing(tmp_path, emulator_factory):
    emulator = emulator_factory(task_seconds=0.3)
    spec = load_checked_spec(pixellabs_spec(tmp_path, emulator.urls["pixellabs"]), env=ENV)

    summary = run_spec(spec, quiet=True, handle_signals=False)

    assert summary.complete, summary
    assert summary.submitted == 18
    with Manifest.open(spec.output.root, readonly=True) as manifest:
        records = list(manifest.iter_records(with_outputs=True))
    assert len(records) == 18
    assert {r.state for r in records} == {JobState.DONE}
    for record in records:
        assert record.remote_id and len(record.outputs) == 1
        output = record.outputs[0]
        path = spec.output.root / output.path
        data = path.read_bytes()
        assert len(data) == output.size
        assert hashlib.sha256(data).hexdigest() == output.sha256
        with Image.open(path) as image:
            assert image.format == "PNG"
        sidecar = json.loads(path.with_name(path.name + ".json").read_text())
        assert sidecar["remote_id"] == record.remote_id
        assert sidecar["output"]["sha256"] == output.sha256
        assert sidecar["prompt"] == record.job.prompt
        assert FAKE_KEY not in json.dumps(sidecar)
        # the timings the scheduler kept in memory are the manifest's own
        assert sidecar["timings"]["created_at"] == record.created_at
        assert sidecar["timings"]["submitted_at"] == record.submitted_at
    assert not list(spec.output.root.rglob("*.part"))
    with Manifest.open(spec.output.root, readonly=True) as manifest:
        for record in records:  # every step logged, each leaving the state entered before
            steps = [
                (e.from_state, e.to_state)
                for e in manifest.events(record.job.id)
                if e.kind == "transition"
            ]
            assert steps[0][0] is JobState.PENDING and steps[-1][1] is JobState.DONE
            assert all(a[1] is b[0] for a, b in itertools.pairwise(steps))
            assert [to for _, to in steps if to is not JobState.RUNNING] == [
                JobState.SUBMITTING,
                JobState.SUBMITTED,
                JobState.SUCCEEDED,
                JobState.DOWNLOADING,
                JobState.DONE,
            ]
    snapshot = (spec.output.root / "manifest.jsonl").read_text().splitlines()
    assert len(snapshot) == 18
    assert FAKE_KEY not in (spec.output.root / "manifest.jsonl").read_text()

    again = run_spec(spec, quiet=True, handle_signals=False)
    assert again.submitted == 0
    assert again.already_done == 18
    assert len(emulator.ledger("pixellabs")) == 18
    assert emulator.admin("pixellabs", "stats")["downloads_with_auth"] == 0


def test_cli_run_status_export(tmp_path, emulator_factory):
    emulator = emulator_factory(task_seconds=0.2)
    spec_path = pixellabs_spec(tmp_path, emulator.urls["pixellabs"], seeds="[5]")

    first = run_cli("run", str(spec_path), "--quiet", cwd=tmp_path, env=ENV)
    assert first.returncode == 0, first.stderr
    assert "submitted this run: 6" in first.stdout

    second = run_cli("run", str(spec_path), cwd=tmp_path, env=ENV)
    assert second.returncode == 0, second.stderr
    assert "nothing to do" in second.stdout and "nothing submitted" in second.stdout

    status = run_cli("status", str(tmp_path / "out"), "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["jobs"] == 6
    assert report["states"] == {"done": 6}
    assert report["providers"] == {"pixellabs": {"done": 6}}

    exported = run_cli("export", str(tmp_path / "out"), "--format", "jsonl", cwd=tmp_path)
    rows = [json.loads(line) for line in exported.stdout.splitlines()]
    assert len(rows) == 6
    assert all(row["state"] == "done" and len(row["outputs"]) == 1 for row in rows)
    assert all(len(row["outputs"][0]["sha256"]) == 64 for row in rows)
    assert {row["params"]["seed"] for row in rows} == {5}


def test_failed_tasks_carry_the_provider_reason(tmp_path, emulator_factory):
    emulator = emulator_factory(task_seconds=0.1, failure_rate=1.0)
    spec = load_checked_spec(
        pixellabs_spec(tmp_path, emulator.urls["pixellabs"], seeds="[1]"), env=ENV
    )
    summary = run_spec(spec, quiet=True, handle_signals=False)
    assert not summary.complete
    with Manifest.open(spec.output.root, readonly=True) as manifest:
        failures = manifest.failures()
    assert len(failures) == 6
    assert all(f.state is JobState.FAILED and f.error for f in failures)
    # rerun leaves failed jobs alone unless asked
    again = run_spec(spec, quiet=True, handle_signals=False)
    assert again.submitted == 0
    emulator.configure("pixellabs", failure_rate=0.0)
    retried = run_spec(spec, quiet=True, handle_signals=False, retry_failed=True)
    assert retried.submitted == 6 and retried.complete


def test_ambiguous_submit_becomes_unknown_and_is_never_resubmitted_blindly(
    tmp_path, emulator_factory
):
    emulator = emulator_factory(task_seconds=0.1, drop_after_create_rate=1.0)
    spec = load_checked_spec(
        pixellabs_spec(tmp_path, emulator.urls["pixellabs"], seeds="[1]"), env=ENV
    )
    summary = run_spec(spec, quiet=True, handle_signals=False)
    assert summary.count(JobState.UNKNOWN) == 6
    assert len(emulator.ledger("pixellabs")) == 6  # created (and charged) once each

    emulator.configure("pixellabs", drop_after_create_rate=0.0)
    again = run_spec(spec, quiet=True, handle_signals=False)
    assert again.submitted == 0
    assert len(emulator.ledger("pixellabs")) == 6

    forced = run_spec(spec, quiet=True, handle_signals=False, resubmit_unknown=True)
    assert forced.complete and forced.submitted == 6
    assert len(emulator.ledger("pixellabs")) == 12


def test_account_error_stops_that_provider_and_keeps_jobs_pending(tmp_path, emulator_factory):
    emulator = emulator_factory(task_seconds=0.1)
    spec = load_checked_spec(
        pixellabs_spec(tmp_path, emulator.urls["pixellabs"], seeds="[1]"),
        env={"PIXELLABS_API_KEY": "bad-key-for-tests"},
    )
    summary = run_spec(spec, quiet=True, handle_signals=False)
    assert "pixellabs" in summary.stopped
    assert "401" in summary.stopped["pixellabs"]
    assert summary.count(JobState.PENDING) == 6
    assert emulator.ledger("pixellabs") == []
    assert Counter(summary.finished) == Counter()


def test_a_local_error_does_not_end_the_run_and_the_rerun_continues(tmp_path, emulator_factory):
    emulator = emulator_factory(task_seconds=0.1)
    spec = load_checked_spec(
        pixellabs_spec(tmp_path, emulator.urls["pixellabs"], seeds="[1]"), env=ENV
    )
    spec.output.root.mkdir(parents=True)
    blocker = spec.output.root / "pixellabs"
    blocker.write_text("not a directory")  # every download fails to create its folder

    summary = run_spec(spec, quiet=True, handle_signals=False)
    assert not summary.complete
    assert len(summary.errors) == 6 and "pixellabs job" in summary.errors[0]
    assert summary.count(JobState.SUCCEEDED) == 6  # paid for, back for the next run to fetch

    blocker.unlink()
    again = run_spec(spec, quiet=True, handle_signals=False)
    assert again.complete and again.submitted == 0
    assert len(emulator.ledger("pixellabs")) == 6


def test_deadline_times_out_slow_tasks_with_a_reason(tmp_path, emulator_factory):
    emulator = emulator_factory(task_seconds=30)
    path = pixellabs_spec(tmp_path, emulator.urls["pixellabs"], seeds="[1]")
    path.write_text(path.read_text().replace("deadline: 2m", "deadline: 0.5s"))
    spec = load_checked_spec(path, env=ENV)
    summary = run_spec(spec, quiet=True, handle_signals=False)
    assert summary.count(JobState.TIMED_OUT) == 6
    with Manifest.open(spec.output.root, readonly=True) as manifest:
        assert all("deadline" in (f.error or "") for f in manifest.failures())


def test_rate_limits_and_server_errors_never_cost_a_double_charge(tmp_path, emulator_factory):
    emulator = emulator_factory(
        task_seconds=0.2, rate_limit_rate=0.1, retry_after=1, error_rate=0.15, seed=7
    )
    spec = load_checked_spec(pixellabs_spec(tmp_path, emulator.urls["pixellabs"]), env=ENV)
    summary = run_spec(spec, quiet=True, handle_signals=False)
    done, unknown = summary.count(JobState.DONE), summary.count(JobState.UNKNOWN)
    assert done + unknown == 18, summary.states  # a 500 on submit is ambiguous: unknown
    assert done >= 9
    charged = Counter(
        (e["body"]["prompt"], e["body"]["seed"], e["body"]["aspectRatio"])
        for e in emulator.ledger("pixellabs")
    )
    assert max(charged.values()) == 1
    assert len(charged) == done  # this emulator creates nothing when it answers 5xx
    stats = emulator.admin("pixellabs", "stats")
    assert sum(stats["faults"].values()) > 0, stats


def test_submits_refused_again_and_again_stay_pending_for_the_next_run(tmp_path, emulator_factory):
    emulator = emulator_factory(task_seconds=0.1, rate_limit_rate=1.0)
    path = pixellabs_spec(tmp_path, emulator.urls["pixellabs"], seeds="[1]")
    path.write_text(path.read_text().replace("deadline: 2m", "deadline: 2m\n  retries: 1"))
    spec = load_checked_spec(path, env=ENV)
    summary = run_spec(spec, quiet=True, handle_signals=False)
    assert summary.count(JobState.PENDING) == 6
    assert len(summary.errors) == 6 and "refused 2 times" in summary.errors[0]
    assert emulator.ledger("pixellabs") == []

    emulator.configure("pixellabs", rate_limit_rate=0.0)
    again = run_spec(spec, quiet=True, handle_signals=False)
    assert again.complete and again.submitted == 6
