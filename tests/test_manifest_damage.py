"""A damaged manifest is refused, never started over: zero length, garbage, a corrupted
page or missing tables end `pipeline run` with a one-paragraph message, exit != 0 and no
submit. `pipeline recover` moves it aside and rebuilds it from manifest.jsonl, keeping
remote ids and states so nothing is paid twice."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from pipeline.errors import ManifestError
from pipeline.manifest.lock import hold_run_lock
from pipeline.manifest.store import DB_NAME, SNAPSHOT_NAME, Manifest
from pipeline.models import JobState

from .conftest import FAKE_KEY, run_cli, write_spec
from .test_manifest import make_jobs

S = JobState
pytestmark = pytest.mark.slow


def small_spec(tmp_path: Path, url: str) -> Path:
    return write_spec(
        tmp_path,
        f"""
        name: damage
        output:
          root: {tmp_path / "out"}
        providers:
          pixellabs:
            base_url: {url}
            api_key: ${{PIXELLABS_API_KEY}}
            concurrency: 4
        prompts: ["a fox", "a hare", "an owl"]
        seeds: [1, 2]
        run:
          poll: {{initial: 0.05s, max: 0.2s}}
    """,
    )


def big_manifest(root: Path) -> bytes:
    """A real manifest of some pages, checkpointed into the main file; its bytes."""
    with Manifest.open(root, spec_name="big") as manifest:
        manifest.add_jobs(make_jobs(3000))
    return (root / DB_NAME).read_bytes()


def corrupt_middle(path: Path) -> None:
    """Overwrite whole pages in the middle of the file with junk, as a torn or bit-rotted
    disk would."""
    data = bytearray(path.read_bytes())
    page = 4096
    middle = (len(data) // page // 2) * page
    data[middle : middle + 3 * page] = bytes([0xA5]) * (3 * page)
    path.write_bytes(bytes(data))


def missing_tables(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE jobs")
    conn.close()


DAMAGES = {
    "zero-length": lambda path: path.write_bytes(b""),
    "garbage": lambda path: path.write_bytes(os.urandom(64 * 1024)),
    "corrupt-page": corrupt_middle,
    "missing-tables": missing_tables,
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_manifest_is_refused_and_nothing_is_submitted(tmp_path, emulator_factory, damage):
    emulator = emulator_factory(task_seconds=0.1)
    spec = small_spec(tmp_path, emulator.urls["pixellabs"])
    root = tmp_path / "out"
    big_manifest(root)
    DAMAGES[damage](root / DB_NAME)
    before = (root / DB_NAME).read_bytes()
    env = {**os.environ, "PIXELLABS_API_KEY": FAKE_KEY}

    result = run_cli("run", str(spec), "--quiet", cwd=tmp_path, env=env, timeout=120)

    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    message = result.stderr.strip()
    assert len(message.splitlines()) <= 6, message
    assert "pipeline recover" in message and str(root) in message, message
    assert emulator.ledger("pixellabs") == []  # nothing submitted, nothing paid
    assert (root / DB_NAME).read_bytes() == before  # left as it was, for recovery


def test_manifest_that_does_not_exist_is_created(tmp_path):
    with Manifest.open(tmp_path / "out") as manifest:
        assert manifest.total() == 0
    assert not list((tmp_path / "out").glob("*.new*"))


def test_recover_rebuilds_states_and_remote_ids_from_the_snapshot(tmp_path):
    root = tmp_path / "out"
    jobs = list(make_jobs(5))
    with Manifest.open(root, spec_name="cats") as manifest:
        manifest.add_jobs(jobs)
        manifest.transition(jobs[0].id, S.SUBMITTING, expect=S.PENDING, client_ref="r0")
        manifest.transition(jobs[1].id, S.SUBMITTING, expect=S.PENDING, client_ref="r1")
        manifest.transition(jobs[1].id, S.SUBMITTED, expect=S.SUBMITTING, remote_id="task-1")
        manifest.transition(jobs[2].id, S.SUBMITTING, expect=S.PENDING, client_ref="r2")
        manifest.transition(jobs[2].id, S.FAILED, expect=S.SUBMITTING, error="policy")
        manifest.write_snapshot()
        expected = {r.job.id: r for r in manifest.iter_records(with_outputs=True)}
    (root / DB_NAME).write_bytes(b"")
    with pytest.raises(ManifestError, match="pipeline recover"):
        Manifest.open(root)

    result = run_cli("recover", str(root), cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    aside = [p for p in root.iterdir() if p.name.startswith(DB_NAME + ".damaged")]
    assert len(aside) == 1 and aside[0].read_bytes() == b"", aside  # moved, not deleted
    assert "5 jobs" in result.stdout

    with Manifest.open(root) as manifest:
        got = {r.job.id: r for r in manifest.iter_records(with_outputs=True)}
    assert set(got) == set(expected)
    assert got[jobs[0].id].state is S.UNKNOWN  # it may have reached the provider
    assert got[jobs[1].id].state is S.SUBMITTED and got[jobs[1].id].remote_id == "task-1"
    assert got[jobs[2].id].state is S.FAILED and got[jobs[2].id].error == "policy"
    for job in jobs:
        assert got[job.id].job == expected[job.id].job


def test_recover_refuses_a_healthy_manifest_and_a_missing_snapshot(tmp_path):
    root = tmp_path / "out"
    with Manifest.open(root) as manifest:
        manifest.add_jobs(make_jobs(2))
    result = run_cli("recover", str(root), cwd=tmp_path, timeout=60)
    assert result.returncode != 0 and "healthy" in result.stderr, result.stderr
    (root / DB_NAME).write_bytes(b"junk" * 100)
    result = run_cli("recover", str(root), cwd=tmp_path, timeout=60)
    assert result.returncode != 0 and SNAPSHOT_NAME in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert (root / DB_NAME).read_bytes() == b"junk" * 100


def test_recover_round_trip_after_a_real_run_pays_nothing_again(tmp_path, emulator_factory):
    emulator = emulator_factory(task_seconds=0.1)
    spec = small_spec(tmp_path, emulator.urls["pixellabs"])
    root = tmp_path / "out"
    env = {**os.environ, "PIXELLABS_API_KEY": FAKE_KEY}
    first = run_cli("run", str(spec), "--quiet", cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    charges = len(emulator.ledger("pixellabs"))
    assert charges == 6
    snapshot = [json.loads(line) for line in (root / SNAPSHOT_NAME).read_text().splitlines()]
    (root / DB_NAME).write_bytes(b"\0" * 8192)

    refused = run_cli("run", str(spec), "--quiet", cwd=tmp_path, env=env)
    assert refused.returncode != 0 and "pipeline recover" in refused.stderr

    recovered = run_cli("recover", str(root), cwd=tmp_path, env=env)
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    again = run_cli("run", str(spec), "--quiet", cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing to do" in again.stdout
    assert len(emulator.ledger("pixellabs")) == charges
    export = run_cli("export", str(root), cwd=tmp_path)
    rebuilt = [json.loads(line) for line in export.stdout.splitlines()]
    assert [(o["id"], o["state"], o["remote_id"], o["outputs"]) for o in rebuilt] == [
        (o["id"], o["state"], o["remote_id"], o["outputs"]) for o in snapshot
    ]


def test_recover_is_refused_while_a_run_holds_the_folder(tmp_path):
    root = tmp_path / "out"
    Manifest.open(root).close()
    (root / DB_NAME).write_bytes(b"")
    with hold_run_lock(root):
        result = run_cli("recover", str(root), cwd=tmp_path, timeout=60)
    assert result.returncode != 0 and "in use by another" in result.stderr, result.stderr
    assert (root / DB_NAME).read_bytes() == b""


def test_status_of_a_damaged_manifest_names_the_recover_command(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    (root / DB_NAME).write_bytes(b"")
    result = run_cli("status", str(root), cwd=tmp_path, timeout=60)
    assert result.returncode == 1 and "pipeline recover" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
