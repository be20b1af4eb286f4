"""Edited specs are obeyed: a run submits exactly the jobs of the spec it is given.

Real processes over loopback: the emulator in its own process (its ledger is the proof of
what was paid for), ``pipeline run`` as a subprocess, interrupted with SIGINT.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from pipeline.manifest.store import Manifest
from pipeline.models import JobState

from .conftest import FAKE_KEY, PYTHON, run_cli, write_spec

ENV = {"PIXELLABS_API_KEY": FAKE_KEY}


def _spec(tmp_path: Path, url: str, prompts: list[str], *, name: str = "edits",
          file: str = "spec.yaml", seeds: str = "[1, 2]") -> Path:  # fmt: skip
    items = "\n".join(f"          - {p}" for p in prompts)
    return write_spec(
        tmp_path,
        f"""
        name: {name}
        output:
          root: {tmp_path / "out"}
        providers:
          pixellabs:
            base_url: {url}
            api_key: ${{PIXELLABS_API_KEY}}
            concurrency: 2
        prompts:
{items}
        seeds: {seeds}
        run:
          poll: {{initial: 0.05s, max: 0.2s}}
          deadline: 2m
        """,
        file,
    )


def _prompts_charged(ledger: list[dict[str, object]]) -> list[str]:
    return sorted(str(charge["body"]["prompt"]) for charge in ledger)  # type: ignore[index]


def _interrupt_after_charges(spec: Path, cwd: Path, emulator: object, charges: int) -> int:
    import os

    process = subprocess.Popen(
        [PYTHON, "-m", "pipeline", "run", "-q", str(spec)],
        cwd=cwd,
        env={**os.environ, **ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while len(emulator.ledger("pixellabs")) < charges:  # type: ignore[attr-defined]
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=60)
    return process.returncode


def test_removed_prompts_are_not_submitted_and_stay_out_of_the_exit_code(
    tmp_path, emulator_factory
):
    emulator = emulator_factory(task_seconds=60)
    url = emulator.urls["pixellabs"]
    spec = _spec(tmp_path, url, ["alpha fox", "beta fox", "gamma fox"])
    # concurrency 2: alpha's two jobs are paid and in flight, beta and gamma pending
    assert _interrupt_after_charges(spec, tmp_path, emulator, 2) == 130
    assert _prompts_charged(emulator.ledger("pixellabs")) == ["alpha fox"] * 2

    emulator.configure("pixellabs", task_seconds=0.2)
    _spec(tmp_path, url, ["beta fox", "delta fox"])  # the same file, edited
    plan = run_cli("plan", str(spec), cwd=tmp_path, env=ENV)
    assert plan.returncode == 0, plan.stderr
    assert "edits: 4 jobs" in plan.stdout

    result = run_cli("run", "-q", str(spec), cwd=tmp_path, env=ENV)

    assert result.returncode == 0, result.stdout + result.stderr
    charged = _prompts_charged(emulator.ledger("pixellabs"))
    assert charged == sorted(["alpha fox"] * 2 + ["beta fox"] * 2 + ["delta fox"] * 2)
    assert "done 4/4" in result.stdout
    assert "4 job(s) not in this spec" in result.stdout
    with Manifest.open(tmp_path / "out", readonly=True) as manifest:
        by_prompt = {r.job.prompt: r.state for r in manifest.iter_records()}
    # the removed jobs are untouched: gamma never submitted, alpha's paid tasks kept
    assert by_prompt == {
        "alpha fox": JobState.SUBMITTED,
        "beta fox": JobState.DONE,
        "gamma fox": JobState.PENDING,
        "delta fox": JobState.DONE,
    }
    status = run_cli("status", "--json", str(tmp_path / "out"), cwd=tmp_path)
    report = json.loads(status.stdout)
    assert report["not_in_spec"] == {"pixellabs": {"pending": 2, "submitted": 2}}
    assert report["jobs"] == 4
    text = run_cli("status", str(tmp_path / "out"), cwd=tmp_path).stdout
    assert "4 not in the spec" in text

    # a rerun submits nothing and still exits 0
    again = run_cli("run", "-q", str(spec), cwd=tmp_path, env=ENV)
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(emulator.ledger("pixellabs")) == 6


def test_prune_removes_rows_not_in_the_spec_keeping_paid_ones(tmp_path, emulator_factory):
    emulator = emulator_factory(task_seconds=60)
    url = emulator.urls["pixellabs"]
    spec = _spec(tmp_path, url, ["alpha fox", "beta fox", "gamma fox"])
    assert _interrupt_after_charges(spec, tmp_path, emulator, 2) == 130
    emulator.configure("pixellabs", task_seconds=0.2)
    _spec(tmp_path, url, ["gamma fox"], seeds="[1]")
    assert run_cli("run", "-q", str(spec), cwd=tmp_path, env=ENV).returncode == 0
    gamma = sorted((tmp_path / "out").rglob("*.png"))
    assert len(gamma) == 1

    result = run_cli("prune", str(spec), cwd=tmp_path, env=ENV)

    assert result.returncode == 0, result.stderr
    assert "removed 3 job(s)" in result.stdout  # beta's two and gamma seed 2
    assert "kept 2 job(s) with a paid remote task" in result.stdout
    with Manifest.open(tmp_path / "out", readonly=True) as manifest:
        left = sorted((r.job.prompt, r.state.value) for r in manifest.iter_records())
    assert left == [("alpha fox", "submitted"), ("alpha fox", "submitted"), ("gamma fox", "done")]

    forced = run_cli("prune", str(spec), "--include-paid", cwd=tmp_path, env=ENV)
    assert forced.returncode == 0, forced.stderr
    assert "removed 2 job(s)" in forced.stdout
    assert emulator.ledger("pixellabs")[0]["task_id"] in forced.stdout  # never recorded nowhere
    assert gamma[0].is_file()


def test_prune_deletes_files_only_when_asked(tmp_path, emulator_factory):
    emulator = emulator_factory(task_seconds=0.2)
    url = emulator.urls["pixellabs"]
    spec = _spec(tmp_path, url, ["alpha fox", "beta fox"], seeds="[1]")
    assert run_cli("run", "-q", str(spec), cwd=tmp_path, env=ENV).returncode == 0
    _spec(tmp_path, url, ["beta fox"], seeds="[1]")
    assert run_cli("run", "-q", str(spec), cwd=tmp_path, env=ENV).returncode == 0
    files = sorted((tmp_path / "out").rglob("*.png"))
    assert len(files) == 2

    kept = run_cli("prune", str(spec), cwd=tmp_path, env=ENV)
    assert kept.returncode == 0, kept.stderr
    assert all(f.is_file() for f in files)
    # once pruned, the files are no longer known; start again to delete them
    _spec(tmp_path, url, ["alpha fox", "beta fox"], seeds="[1]")
    assert run_cli("run", "-q", str(spec), cwd=tmp_path, env=ENV).returncode == 0
    assert len(emulator.ledger("pixellabs")) == 3  # alpha resubmitted: its row was pruned
    _spec(tmp_path, url, ["beta fox"], seeds="[1]")
    assert run_cli("run", "-q", str(spec), cwd=tmp_path, env=ENV).returncode == 0
    deleted = run_cli("prune", str(spec), "--delete-files", cwd=tmp_path, env=ENV)
    assert deleted.returncode == 0, deleted.stderr
    left = sorted((tmp_path / "out").rglob("*.png"))
    assert len(left) == 1 and "beta" in str(left[0])
    assert not list((tmp_path / "out").rglob("*alpha*.json"))  # the sidecar went too


def test_a_different_spec_with_the_same_name_is_refused(tmp_path, emulator_factory):
    emulator = emulator_factory(task_seconds=0.2)
    url = emulator.urls["pixellabs"]
    first = _spec(tmp_path, url, ["alpha fox"], seeds="[1]")
    assert run_cli("run", "-q", str(first), cwd=tmp_path, env=ENV).returncode == 0
    second = _spec(tmp_path, url, ["beta fox"], seeds="[1]", file="other.yaml")

    result = run_cli("run", "-q", str(second), cwd=tmp_path, env=ENV)

    assert result.returncode == 2, result.stdout + result.stderr
    assert "other.yaml" in result.stderr and "spec.yaml" in result.stderr
    assert "--out" in result.stderr and "--adopt" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(emulator.ledger("pixellabs")) == 1
    adopted = run_cli("run", "-q", "--adopt", str(second), cwd=tmp_path, env=ENV)
    assert adopted.returncode == 0, adopted.stdout + adopted.stderr
    assert _prompts_charged(emulator.ledger("pixellabs")) == ["alpha fox", "beta fox"]
    # the adopted spec is now the folder's own: no flag needed again
    assert run_cli("run", "-q", str(second), cwd=tmp_path, env=ENV).returncode == 0


def test_plan_validate_and_run_count_duplicate_prompts_once(tmp_path, emulator_factory):
    emulator = emulator_factory(task_seconds=0.2)
    spec = _spec(tmp_path, emulator.urls["pixellabs"], ["a fox", "a fox"], seeds="[1]")

    validate = run_cli("validate", str(spec), cwd=tmp_path, env=ENV)
    plan = run_cli("plan", str(spec), cwd=tmp_path, env=ENV)
    run = run_cli("run", "-q", str(spec), cwd=tmp_path, env=ENV)

    assert "ok — 1 jobs" in validate.stdout or "ok — 1 job " in validate.stdout, validate.stdout
    assert "1 duplicate merged" in validate.stdout
    assert "edits: 1 jobs" in plan.stdout and "1 duplicate merged" in plan.stdout, plan.stdout
    assert run.returncode == 0 and "done 1/1" in run.stdout, run.stdout
    assert len(emulator.ledger("pixellabs")) == 1
