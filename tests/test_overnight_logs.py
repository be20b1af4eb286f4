"""A run left alone (issue 13, item 2): status lines when stderr is not a terminal, the
``-v``/``--log-file`` run log (one logfmt line per state change, never a key), SIGHUP
ending a run like SIGTERM, and ``pipeline log`` showing a job's history."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from pipeline.manifest.store import Manifest

from .conftest import FAKE_KEY, run_cli, write_spec

STATUS = re.compile(r"^\S+Z (\w+): (.*) · ([\d.]+) jobs/min · ETA (\S+)$")


def slow_spec(tmp_path: Path, *, jobs: int, task_seconds: float, concurrency: int = 2) -> Path:
    return write_spec(
        tmp_path,
        f"""
        name: night
        output:
          root: {tmp_path / "out"}
        providers:
          pixellabs:
            api_key: ${{PIXELLABS_API_KEY}}
            concurrency: {concurrency}
            emulate: {{task_seconds: {task_seconds}}}
        prompts: [{", ".join(f'"subject {n}"' for n in range(jobs))}]
        run:
          poll: {{initial: 0.1s, max: 0.2s}}
        """,
    )


def states(root: Path) -> dict[str, int]:
    with Manifest.open(root, readonly=True) as manifest:
        return manifest.counts().get("pixellabs", {})


def test_piped_run_prints_periodic_status_lines(tmp_path: Path) -> None:
    spec = slow_spec(tmp_path, jobs=6, task_seconds=0.6)
    run = run_cli(
        "run", str(spec), "--status-every", "0.5", cwd=tmp_path,
        env={"PIXELLABS_API_KEY": FAKE_KEY},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = [m for line in run.stderr.splitlines() if (m := STATUS.match(line))]
    assert len(lines) >= 2, run.stderr
    assert {m.group(1) for m in lines} == {"pixellabs"}
    assert all(re.search(r"\b(pending|submitted|running|done) \d+", m.group(2)) for m in lines)
    assert "done" in lines[-1].group(2), run.stderr


def test_default_interval_is_quiet_for_a_short_run(tmp_path: Path) -> None:
    spec = slow_spec(tmp_path, jobs=2, task_seconds=0.1)
    run = run_cli("run", str(spec), cwd=tmp_path, env={"PIXELLABS_API_KEY": FAKE_KEY})
    assert run.returncode == 0, run.stderr
    assert not [line for line in run.stderr.splitlines() if STATUS.match(line)], run.stderr


def logfmt(line: str) -> dict[str, str]:
    pairs = re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line)
    return {key: value.strip('"') for key, value in pairs}


def test_log_file_has_every_state_change_and_no_key(tmp_path: Path) -> None:
    denied = f"deny-Zx9/Qk+{secrets.token_hex(8)}=="  # the emulator answers 403, echoing it
    spec = write_spec(
        tmp_path,
        f"""
        name: logged
        output:
          root: {tmp_path / "out"}
        run: {{retries: 1, poll: {{initial: 0.1s, max: 0.2s}}}}
        providers:
          pixellabs:
            api_key: ${{PIXELLABS_API_KEY}}
            emulate: {{task_seconds: 0.2}}
          pixai:
            api_key: ${{DENIED_KEY}}
            emulate: {{echo_auth: true, task_seconds: 0.2}}
            options: {{completion: poll}}
        prompts: ["a red fox", "a grey owl"]
        seeds: [1, 2]
        """,
    )
    log = tmp_path / "night.log"
    run = run_cli(
        "run", str(spec), "-v", "--log-file", str(log), cwd=tmp_path,
        env={"PIXELLABS_API_KEY": FAKE_KEY, "DENIED_KEY": denied},
    )  # fmt: skip
    assert run.returncode == 1, run.stderr  # pixai's jobs are refused
    text = log.read_text(encoding="utf-8")
    core = denied.split("+", 1)[1][:16]
    for form in (denied, core, FAKE_KEY):
        assert form not in text and form not in run.stderr + run.stdout

    logged: Counter[tuple[str, str, str, str]] = Counter()
    for line in text.splitlines():
        fields = logfmt(line)
        assert {"ts", "job", "provider", "event"} <= fields.keys(), line
        if fields["event"] == "transition":
            logged[(fields["job"], fields["provider"], fields["from"], fields["to"])] += 1
    expected: Counter[tuple[str, str, str, str]] = Counter()
    with Manifest.open(tmp_path / "out", readonly=True) as manifest:
        records = list(manifest.iter_records())
        for record in records:
            for event in manifest.events(record.job.id):
                if event.kind == "transition":
                    assert event.from_state is not None and event.to_state is not None
                    key = (record.job.id, record.job.provider, event.from_state.value,
                           event.to_state.value)  # fmt: skip
                    expected[key] += 1
    assert len(records) == 8
    assert logged == expected
    assert {job for job, *_ in logged} == {r.job.id for r in records}
    refused = [logfmt(line) for line in text.splitlines() if "provider=pixai" in line]
    assert any(f.get("to") == "failed" and f.get("reason") for f in refused), text
    assert "to=done" in run.stderr  # -v: the same lines on stderr


@pytest.mark.timeout(120)
def test_sighup_ends_a_run_with_its_summary_and_it_resumes(tmp_path: Path) -> None:
    spec = slow_spec(tmp_path, jobs=12, task_seconds=0.5)
    root = tmp_path / "out"
    env = {**os.environ, "PIXELLABS_API_KEY": FAKE_KEY}
    runner = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(spec)],
        cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (root / "manifest.sqlite").exists() and states(root).get("done", 0) >= 1:
            break
        time.sleep(0.05)
    runner.send_signal(signal.SIGHUP)
    out, err = runner.communicate(timeout=60)
    assert runner.returncode == 130, out + err
    assert "interrupted" in out, out
    left = states(root)
    assert left.get("done", 0) < 12 and not left.get("submitting") and not left.get("unknown")

    rerun = run_cli("run", str(spec), cwd=tmp_path, env={"PIXELLABS_API_KEY": FAKE_KEY})
    assert rerun.returncode == 0, rerun.stderr
    assert states(root) == {"done": 12}


@pytest.mark.timeout(120)
def test_sighup_is_left_ignored_under_nohup(tmp_path: Path) -> None:
    """``nohup pipeline run …`` ignores SIGHUP so that closing the terminal does not end
    the run: the run must not undo that by handling it."""
    spec = slow_spec(tmp_path, jobs=6, task_seconds=0.5)
    root = tmp_path / "out"
    nohup = shutil.which("nohup")
    if nohup is None:
        pytest.skip("no nohup here")
    runner = subprocess.Popen(
        [nohup, sys.executable, "-m", "pipeline", "run", str(spec)],
        cwd=tmp_path, env={**os.environ, "PIXELLABS_API_KEY": FAKE_KEY}, text=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (root / "manifest.sqlite").exists() and states(root).get("done", 0) >= 1:
            break
        time.sleep(0.05)
    runner.send_signal(signal.SIGHUP)
    out, err = runner.communicate(timeout=60)
    assert runner.returncode == 0, out + err
    assert states(root) == {"done": 6}


def test_log_command_shows_a_job_history_by_prefix(tmp_path: Path) -> None:
    spec = slow_spec(tmp_path, jobs=6, task_seconds=0.1, concurrency=6)
    env = {"PIXELLABS_API_KEY": FAKE_KEY}
    assert run_cli("run", str(spec), cwd=tmp_path, env=env).returncode == 0
    with Manifest.open(tmp_path / "out", readonly=True) as manifest:
        ids = sorted(record.job.id for record in manifest.iter_records())

    prefix = unique_prefix(ids[0], ids)
    shown = run_cli("log", str(tmp_path / "out"), prefix, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "pending → submitting" in lines[0] and "→ done" in lines[-1], shown.stdout
    assert ids[0] not in shown.stdout  # one job: its id is not repeated on every line

    recent = run_cli("log", str(spec), "--last", "3", cwd=tmp_path, env=env)
    assert recent.returncode == 0, recent.stderr
    assert len(recent.stdout.splitlines()) == 3
    assert all("[pixellabs]" in line for line in recent.stdout.splitlines())

    unknown = run_cli("log", str(spec), "zzzz", cwd=tmp_path, env=env)
    assert unknown.returncode == 2 and "no job" in unknown.stderr, unknown.stderr
    ambiguous = run_cli("log", str(spec), "", cwd=tmp_path, env=env)
    assert ambiguous.returncode == 2 and "more than one job" in ambiguous.stderr


def unique_prefix(job_id: str, ids: list[str]) -> str:
    for size in range(1, len(job_id) + 1):
        if sum(other.startswith(job_id[:size]) for other in ids) == 1:
            return job_id[:size]
    return job_id


# -- the pieces, without a run -----------------------------------------------------------


def test_event_line_quotes_what_would_break_a_logfmt_line() -> None:
    from pipeline.manifest.store import Event
    from pipeline.models import JobState
    from pipeline.runner.progress import event_line

    event = Event(
        7, "3f2a", 0.25, "transition", JobState.RUNNING, JobState.FAILED,
        'policy "nsfw"\nsecond line', "pixai",
    )  # fmt: skip
    line = event_line(event)
    assert "\n" not in line
    assert line == (
        "ts=1970-01-01T00:00:00.250Z job=3f2a provider=pixai event=transition from=running "
        'to=failed reason="policy \\"nsfw\\"\\nsecond line"'
    )
    assert logfmt(line)["to"] == "failed"


def test_status_lines_count_rate_and_eta_on_a_fake_clock() -> None:
    import io

    from pipeline.runner.progress import StatusLines

    now = [1000.0]
    stream = io.StringIO()
    status = StatusLines(stream, 30.0, clock=lambda: now[0])
    status.start({"pixai": 10})
    for _ in range(4):
        status.advance("pixai", "done")
    now[0] += 120  # 4 jobs in 2 minutes: 2/min, 6 left: 3 minutes
    status.status({"pixai": {"done": 4, "running": 2, "pending": 4, "failed": 0}})
    (line,) = stream.getvalue().splitlines()
    assert line == (
        "1970-01-01T00:18:40Z pixai: done 4, pending 4, running 2 · 2.0 jobs/min · ETA 3m00s"
    )


def test_verbose_lines_go_to_stderr_even_when_quiet(tmp_path: Path) -> None:
    import io

    from pipeline.manifest.store import Event
    from pipeline.runner.progress import ProgressOptions, make_progress

    stream = io.StringIO()
    log = tmp_path / "run.log"
    options = ProgressOptions(quiet=True, verbose=True, log_file=log)
    progress = make_progress(stream=stream, options=options)
    assert progress.follows_events and progress.status_every is None
    progress.events([Event(1, "ab", 0.0, "retry", None, None, "Bearer sk-secret-123", "x")])
    progress.close()
    for text in (stream.getvalue(), log.read_text(encoding="utf-8")):
        assert "event=retry" in text and "sk-secret-123" not in text


def test_a_stderr_reader_going_away_does_not_stop_the_run(tmp_path: Path) -> None:
    """``pipeline run SPEC 2>&1 | head -1``: status lines to a closed pipe are dropped;
    the run goes on to the end."""
    spec = slow_spec(tmp_path, jobs=6, task_seconds=0.5)
    runner = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(spec), "--status-every", "0.2"],
        cwd=tmp_path, env={**os.environ, "PIXELLABS_API_KEY": FAKE_KEY}, text=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert runner.stderr is not None
    assert STATUS.match(runner.stderr.readline().rstrip("\n"))
    runner.stderr.close()  # the reader leaves
    assert runner.wait(timeout=60) == 0
    assert states(tmp_path / "out") == {"done": 6}
