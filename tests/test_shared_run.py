"""Several runners, one run (issue 14): schedulers sharing a PostgreSQL manifest, each
with its own connection, session and output root, against real emulators over HTTP.
Every job is done once and paid once, the account's concurrency and budget hold across
the runners together, and a runner that stops renewing its lease is taken over."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import psycopg

from pipeline.commands import iter_jobs, load_checked_spec
from pipeline.completion.poll import PollFollower
from pipeline.manifest.postgres import PgManifest, schema_name
from pipeline.manifest.runners import Runners
from pipeline.models import Job, JobState, Spec
from pipeline.providers.pixellabs import PixelLabsProvider
from pipeline.runner.coordination import Shared
from pipeline.runner.scheduler import RunOptions, RunSummary, Scheduler
from pipeline.runner.session import open_session

from .conftest import FAKE_KEY, write_spec

ENV = {"PIXELLABS_API_KEY": FAKE_KEY}
S = JobState
LEASE = 3.0  # seconds: short, so a takeover happens within a test


def shared_spec(tmp_path: Path, url: str, *, jobs: int, concurrency: int, extra: str = "") -> Spec:
    path = write_spec(
        tmp_path,
        f"""
        name: shared
        output:
          root: {tmp_path / "out"}
        providers:
          pixellabs:
            base_url: {url}
            api_key: ${{PIXELLABS_API_KEY}}
            concurrency: {concurrency}
            {extra}
        prompts:
          - a lighthouse in a storm
        seeds: {{start: 0, count: {jobs}}}
        run:
          poll: {{initial: 0.05s, max: 0.2s}}
          deadline: 2m
        """,
    )
    return load_checked_spec(path, env=ENV)


def create_run(pg_url: str, spec: Spec) -> None:
    with PgManifest.open_url(pg_url, run=spec.name, root=spec.output.root) as manifest:
        manifest.begin_generation()
        manifest.add_jobs(iter_jobs(spec))


def runner_spec(spec: Spec, tmp_path: Path, n: int) -> Spec:
    """Each runner writes under an output root of its own."""
    return replace(spec, output=replace(spec.output, root=tmp_path / f"runner{n}"))


async def run_runner(
    pg_url: str,
    spec: Spec,
    coordinator: Callable[[PgManifest], Shared] | None = None,
    *,
    dies: anyio.Event | None = None,
) -> RunSummary | None:
    """One runner; with ``dies``, its scheduler is cut off when that is set (None)."""
    with PgManifest.open_url(pg_url, run=spec.name, root=spec.output.root) as manifest:
        manifest.limit_to_spec()
        shared = (coordinator or (lambda m: Shared(Runners(m), lease=LEASE)))(manifest)
        async with open_session(spec) as session:
            scheduler = Scheduler(
                spec, manifest, session, options=RunOptions(handle_signals=False),
                coordinator=shared,
            )  # fmt: skip
            if dies is None:
                return await scheduler.run()
            async with anyio.create_task_group() as group:

                async def die() -> None:
                    await dies.wait()
                    group.cancel_scope.cancel()

                group.start_soon(die)
                await scheduler.run()
            return None


def run_together(pg_url: str, specs: list[Spec]) -> list[RunSummary]:
    summaries: list[RunSummary] = []

    async def main() -> None:
        async def one(spec: Spec) -> None:
            summary = await run_runner(pg_url, spec)
            assert summary is not None
            summaries.append(summary)

        async with anyio.create_task_group() as group:
            for spec in specs:
                group.start_soon(one, spec)

    anyio.run(main)
    return summaries


def final_states(pg_url: str, spec: Spec) -> Counter[JobState]:
    with PgManifest.open_url(pg_url, run=spec.name, root=spec.output.root) as manifest:
        return Counter(record.state for record in manifest.iter_records())


def assert_paid_once(emulator: Any, jobs: int) -> None:
    charges = emulator.ledger("pixellabs")
    assert len(charges) == jobs
    bodies = Counter(repr(sorted(charge["body"].items())) for charge in charges)
    assert [body for body, n in bodies.items() if n > 1] == []


def test_three_runners_do_every_job_once_within_the_accounts_concurrency(
    pg_url: str, tmp_path: Path, emulator_factory: Any
) -> None:
    emulator = emulator_factory(["pixellabs"], task_seconds=0.3)
    jobs, concurrency = 36, 3
    spec = shared_spec(tmp_path, emulator.urls["pixellabs"], jobs=jobs, concurrency=concurrency)
    create_run(pg_url, spec)

    summaries = run_together(pg_url, [runner_spec(spec, tmp_path, n) for n in range(3)])

    assert final_states(pg_url, spec) == {S.DONE: jobs}
    assert_paid_once(emulator, jobs)
    assert sum(s.submitted for s in summaries) == jobs
    assert sum(s.finished["done"] for s in summaries) == jobs  # each job finished by one
    assert sum(1 for s in summaries if s.submitted) >= 2, "the runners did not share the work"
    stats = emulator.stats("pixellabs")
    assert 1 <= stats["peak_tasks"] <= concurrency, stats  # one account, one limit
    assert all(s.errors == [] and s.lease_lost is None for s in summaries)
    with PgManifest.open_url(pg_url, run=spec.name, root=tmp_path) as manifest:
        runners = Runners(manifest)
        runners.join(30)
        assert not runners.others_working("pixellabs", list(S))  # every job handed back
        assert runners.take_slot("pixellabs") is not None  # and every slot


def test_a_budget_holds_across_runners(pg_url: str, tmp_path: Path, emulator_factory: Any) -> None:
    emulator = emulator_factory(["pixellabs"], task_seconds=0.1)
    spec = shared_spec(
        tmp_path, emulator.urls["pixellabs"], jobs=60, concurrency=8,
        extra="price: {per_job: 0.1}\n            budget: 3.7",
    )  # fmt: skip
    create_run(pg_url, spec)

    summaries = run_together(pg_url, [runner_spec(spec, tmp_path, n) for n in range(3)])

    assert len(emulator.ledger("pixellabs")) == 37  # a cap for exactly 37 jobs
    assert final_states(pg_url, spec) == {S.DONE: 37, S.PENDING: 23}
    assert any(s.budget_stops for s in summaries)
    assert all(s.spent == {"pixellabs": Decimal("3.7")} for s in summaries), [
        s.spent for s in summaries
    ]


class Vanishing(Shared):
    """A runner whose process dies: no leave, no more renewals."""

    def settle(self) -> None:
        return None


def test_a_runner_that_stops_renewing_is_taken_over_without_paying_twice(
    pg_url: str, tmp_path: Path, emulator_factory: Any
) -> None:
    emulator = emulator_factory(["pixellabs"], task_seconds=1.5)
    jobs = 8
    spec = shared_spec(tmp_path, emulator.urls["pixellabs"], jobs=jobs, concurrency=4)
    create_run(pg_url, spec)
    dying, taking_over = runner_spec(spec, tmp_path, 0), runner_spec(spec, tmp_path, 1)
    taker: list[RunSummary] = []

    async def main() -> None:
        dies = anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(
                partial(run_runner, pg_url, dying, lambda m: Vanishing(Runners(m), lease=LEASE),
                        dies=dies)
            )  # fmt: skip
            await _until_in_flight(pg_url, spec, 4)
            dies.set()  # mid-follow: its jobs stay held until its lease runs out
            survivor = await run_runner(pg_url, taking_over)
            assert survivor is not None
            taker.append(survivor)

    anyio.run(main)

    assert final_states(pg_url, spec) == {S.DONE: jobs}
    assert_paid_once(emulator, jobs)  # the dead runner's tasks were followed, not resubmitted
    (survivor,) = taker
    assert survivor.submitted == jobs - 4
    assert survivor.finished["done"] == jobs
    assert any("took over from runner" in note for note in survivor.notes), survivor.notes


async def _until_in_flight(pg_url: str, spec: Spec, n: int) -> None:
    with PgManifest.open_url(pg_url, run=spec.name, root=spec.output.root) as manifest:
        with anyio.fail_after(60):
            while True:
                counts = manifest.counts().get("pixellabs", {})
                if counts.get(S.SUBMITTED, 0) + counts.get(S.RUNNING, 0) >= n:
                    return
                await anyio.sleep(0.02)


class HeldSubmit(PixelLabsProvider):
    """Holds each submit's request until ``go`` is set (``sent`` says it is waiting)."""

    sent: anyio.Event
    go: anyio.Event

    async def submit(self, job: Job) -> str:
        self.sent.set()
        await self.go.wait()
        return await super().submit(job)


def test_a_reaped_runner_stops_and_still_records_the_submit_it_had_out(
    pg_url: str, tmp_path: Path, emulator_factory: Any
) -> None:
    """A runner whose lease is lost while a submit is out: the job is taken over as
    `unknown`, the answer that then arrives is recorded anyway (never lost, never paid
    again), the runner stops with the reason and an incomplete run, and the next runner
    follows the task to done."""
    emulator = emulator_factory(["pixellabs"], task_seconds=0.2)
    spec = shared_spec(tmp_path, emulator.urls["pixellabs"], jobs=1, concurrency=1)
    create_run(pg_url, spec)
    slow = runner_spec(spec, tmp_path, 0)
    (job,) = iter_jobs(spec)
    events: list[str] = []

    async def main() -> RunSummary:
        with PgManifest.open_url(pg_url, run=spec.name, root=slow.output.root) as manifest:
            manifest.limit_to_spec()
            async with open_session(slow) as opened:
                lane = opened.lanes["pixellabs"]
                adapter = HeldSubmit(lane.settings, lane.adapter.client)
                adapter.sent, adapter.go = anyio.Event(), anyio.Event()
                held = replace(lane, adapter=adapter, follower=PollFollower(adapter, slow.run))
                session = replace(opened, lanes={"pixellabs": held})
                scheduler = Scheduler(
                    slow, manifest, session, options=RunOptions(handle_signals=False),
                    coordinator=Shared(Runners(manifest), lease=LEASE),
                )  # fmt: skip
                async with anyio.create_task_group() as group:

                    async def reap_it() -> None:
                        await adapter.sent.wait()
                        with PgManifest.open_url(pg_url, run=spec.name, root=tmp_path) as other:
                            reaper = Runners(other)
                            reaper.join(30)
                            _expire_all_but(pg_url, spec, reaper.id)
                            reaped = reaper.reap()
                            events.append(f"reaped {len(reaped.runners)}")
                            record = other.get(job.id)
                            assert record is not None and record.state is S.UNKNOWN
                            reaper.leave()
                        adapter.go.set()

                    group.start_soon(reap_it)
                    summary = await scheduler.run()
                return summary

    summary = anyio.run(main)
    assert events == ["reaped 1"]
    assert summary.lease_lost is not None and "was reaped" in summary.lease_lost
    assert not summary.complete  # the exit code says the run stopped short
    with PgManifest.open_url(pg_url, run=spec.name, root=tmp_path) as manifest:
        record = manifest.get(job.id)
        assert record is not None and record.state is S.SUBMITTED and record.remote_id
        last = manifest.events(job.id)[-1]
        assert (last.from_state, last.to_state) == (S.UNKNOWN, S.SUBMITTED)
        assert "reconciled" in (last.detail or "")
    assert len(emulator.ledger("pixellabs")) == 1

    (after,) = run_together(pg_url, [runner_spec(spec, tmp_path, 1)])
    assert after.submitted == 0 and after.finished["done"] == 1
    assert final_states(pg_url, spec) == {S.DONE: 1}
    assert_paid_once(emulator, 1)


def _expire_all_but(pg_url: str, spec: Spec, keep: str) -> None:
    """Every other runner's lease ended a second ago, by the database's clock."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            f"UPDATE {schema_name(spec.name)}.runners SET expires_at = "  # type: ignore[arg-type]
            "extract(epoch from clock_timestamp()) - 1 WHERE id <> %s",
            (keep,),
        )


STATUS = re.compile(r"^\S+Z (\w+): (.*) · ([\d.]+) jobs/min · ETA (\S+)$")


def test_each_runner_shows_the_whole_runs_progress(
    pg_url: str, tmp_path: Path, emulator_factory: Any
) -> None:
    """Two `pipeline run` processes, status lines on (stderr not a terminal): each runner's
    lines follow every runner's jobs, its last line says the whole run is done, and its
    summary tells what it did apart from what the run did."""
    emulator = emulator_factory(["pixellabs"], task_seconds=0.5)
    jobs = 20
    spec = shared_spec(tmp_path, emulator.urls["pixellabs"], jobs=jobs, concurrency=4)
    command = [sys.executable, "-m", "pipeline", "run", str(spec.source), "--manifest", pg_url]
    runners = [
        subprocess.Popen(
            [*command, "--out", str(tmp_path / f"runner{n}"), "--status-every", "0.5"],
            cwd=tmp_path,
            env={**os.environ, **ENV},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    ended = []
    try:
        for runner in runners:
            out, err = runner.communicate(timeout=150)
            assert runner.returncode == 0, out + err
            ended.append((out, err))
    finally:
        for runner in runners:
            runner.kill()

    assert final_states(pg_url, spec) == {S.DONE: jobs}
    mine = []
    for out, err in ended:
        lines = [m for line in err.splitlines() if (m := STATUS.match(line))]
        assert lines, err
        last = lines[-1]
        assert (last.group(2), last.group(4)) == (f"done {jobs}", "0s"), err
        found = re.search(r"this runner: (\d+) done; run: (\d+)/(\d+) done, (\d) runners?", out)
        assert found, out
        assert found.group(2, 3) == (str(jobs), str(jobs)), out
        mine.append(int(found.group(1)))
    assert sum(mine) == jobs, mine  # each job counted once, by the runner that did it


def test_a_shared_runs_bar_follows_every_runners_jobs() -> None:
    """On a terminal, the bar counts the run's finished jobs once it follows the run's
    counts: another runner's jobs move it, this runner's own are not counted twice."""
    import io

    from pipeline.runner.progress import TqdmProgress

    progress = TqdmProgress(io.StringIO())
    progress.start({"pixellabs": 10})
    progress.follow({"pixellabs": {"done": 2, "pending": 10}})  # done before it began
    progress.advance("pixellabs", "done")  # its own: counted by the next follow
    progress.follow({"pixellabs": {"done": 9, "failed": 1, "pending": 2}})
    (bar,) = progress._bars.values()
    assert (bar.n, bar.postfix) == (8, "1 not done")
    progress.follow({"pixellabs": {"done": 11, "failed": 1}})
    assert bar.n == 10
    progress.close()
