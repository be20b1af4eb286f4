"""The one place that joins everything: manifest, lanes, followers, downloads, progress.

Per provider, a feeder streams that provider's unfinished jobs out of the manifest
(jobs already paid for first, then new ones) into a bounded memory stream, and
``concurrency`` workers take one job each from submit to files on disk. Memory does not
grow with the number of jobs: the manifest is read a page at a time.

Contract 2 (never pay twice) lives in ``_submit``: the intent is committed before the
request leaves, the remote id the moment it returns, and the submit itself is shielded
from cancellation so Ctrl-C never abandons a request in flight. An ambiguous submit
becomes ``unknown`` and is left alone.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from pipeline.commits import GroupCommit, group_commits
from pipeline.errors import (
    AccountError,
    DownloadError,
    FinalError,
    ProviderError,
    SubmitUnknown,
    TransientError,
)
from pipeline.failpoints import failpoint
from pipeline.limits import Backoff
from pipeline.manifest import Manifest
from pipeline.models import Job, JobRecord, JobState, RemoteStatus, RemoteTask, Spec
from pipeline.outputs import fetch_outputs
from pipeline.progress import NullProgress, Progress
from pipeline.session import Lane, Session, prepaid_requests

__all__ = ["RunOptions", "RunSummary", "Scheduler"]

S = JobState
Submitted = tuple[str, float | None]  # remote id, and when the manifest recorded it
IN_FLIGHT = (S.SUBMITTED, S.RUNNING, S.SUCCEEDED, S.DOWNLOADING)


@dataclass(frozen=True)
class RunOptions:
    retry_failed: bool = False
    resubmit_unknown: bool = False
    handle_signals: bool = True


@dataclass
class RunSummary:
    """What one run did, for the closing report and the exit code."""

    submitted: int = 0  # submits accepted by a provider in this run
    finished: Counter[str] = field(default_factory=Counter)  # end state → jobs, this run
    already_done: int = 0  # done before this run started
    states: dict[str, dict[str, int]] = field(default_factory=dict)  # whole manifest, at end
    stopped: dict[str, str] = field(default_factory=dict)  # provider → why it stopped
    interrupted: bool = False
    elapsed: float = 0.0
    errors: list[str] = field(default_factory=list)  # unexpected local errors, per job

    def count(self, state: JobState) -> int:
        return sum(by_state.get(state, 0) for by_state in self.states.values())

    @property
    def complete(self) -> bool:
        total = sum(sum(by_state.values()) for by_state in self.states.values())
        return total == self.count(S.DONE)


class Scheduler:
    def __init__(
        self,
        spec: Spec,
        manifest: Manifest,
        session: Session,
        *,
        options: RunOptions | None = None,
        progress: Progress | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.spec = spec
        self.manifest = manifest
        self.session = session
        self.options = options or RunOptions()
        self.progress = progress or NullProgress()
        self.clock = clock
        self.summary = RunSummary()
        self._backoff = Backoff(initial=1.0, factor=2.0, maximum=spec.run.poll_max)
        self._commits: GroupCommit | None = None  # while the lanes run

    # -- the run ----------------------------------------------------------------------

    async def run(self) -> RunSummary:
        started = self.clock()
        self._prepare_manifest()
        self.summary.already_done = self._count(S.DONE)
        self.progress.start(self._runnable_totals())
        try:
            async with anyio.create_task_group() as outer:
                if self.options.handle_signals:
                    outer.start_soon(self._watch_signals, outer.cancel_scope)
                try:
                    async with (
                        group_commits(self.manifest) as self._commits,
                        anyio.create_task_group() as lanes,
                    ):
                        for lane in self.session.lanes.values():
                            lanes.start_soon(self._run_lane, lane)
                finally:
                    self._commits = None
                outer.cancel_scope.cancel()
        finally:
            self.progress.close()
            self.summary.states = self.manifest.counts()
            self.summary.stopped = {
                name: lane.stopped for name, lane in self.session.lanes.items() if lane.stopped
            }
            self.summary.elapsed = self.clock() - started
            self.manifest.write_snapshot()
        return self.summary

    async def _watch_signals(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                self.summary.interrupted = True
                scope.cancel()
                return

    def _prepare_manifest(self) -> None:
        """Reconcile what a previous run left half-done, and apply the retry options."""
        # A submit interrupted by a crash: the request may or may not have reached the
        # provider. None of the supported APIs can look a task up by our reference, so
        # it becomes `unknown` and is only resubmitted on request (contract 2).
        self.manifest.reset([S.SUBMITTING], S.UNKNOWN)
        if self.options.retry_failed:
            self.manifest.reset([S.FAILED, S.CANCELLED, S.TIMED_OUT], S.PENDING)
        if self.options.resubmit_unknown:
            self.manifest.reset([S.UNKNOWN], S.PENDING)

    def _runnable_totals(self) -> dict[str, int]:
        counts = self.manifest.counts()
        runnable = (S.PENDING, *IN_FLIGHT)
        return {
            name: sum(counts.get(name, {}).get(state, 0) for state in runnable)
            for name in self.session.lanes
        }

    def _count(self, state: JobState) -> int:
        return sum(by_state.get(state, 0) for by_state in self.manifest.counts().values())

    # -- one provider -----------------------------------------------------------------

    async def _run_lane(self, lane: Lane) -> None:
        send, receive = anyio.create_memory_object_stream[JobRecord](lane.settings.concurrency)
        async with anyio.create_task_group() as group:
            group.start_soon(self._feed, lane, send)
            for _ in range(lane.settings.concurrency):
                group.start_soon(self._work, lane, receive.clone())
            receive.close()

    async def _feed(self, lane: Lane, send: MemoryObjectSendStream[JobRecord]) -> None:
        async with send:
            for record in self._records(lane.name):
                if record.state is S.PENDING and lane.stopped:
                    return
                await send.send(record)

    def _records(self, provider: str) -> Iterator[JobRecord]:
        """Jobs already paid for first, then new ones; a page at a time."""
        yield from self.manifest.iter_records(provider=provider, states=IN_FLIGHT)
        yield from self.manifest.iter_records(provider=provider, states=[S.PENDING])

    async def _work(self, lane: Lane, receive: MemoryObjectReceiveStream[JobRecord]) -> None:
        async with receive:
            async for record in receive:
                try:
                    end = await self._process(lane, record)
                except Exception as exc:  # one job's trouble must not end the run
                    end = None
                    self._unexpected(lane, record, exc)
                if end is not None:
                    self.summary.finished[end] += 1
                    self.progress.advance(lane.name, end)

    def _unexpected(self, lane: Lane, record: JobRecord, exc: Exception) -> None:
        """A local problem (disk full, permissions) or a bug: the job keeps its state, so
        the next run continues it; the run goes on and the summary says what happened."""
        text = f"{type(exc).__name__}: {exc}"
        self.summary.errors.append(f"{lane.name} job {record.job.id}: {text}")
        self.progress.note(lane.name, f"job {record.job.id}: {text}")
        with contextlib.suppress(Exception):
            self.manifest.log_event(record.job.id, "error", text)

    # -- one job ------------------------------------------------------------------------

    async def _process(self, lane: Lane, record: JobRecord) -> str | None:
        """Take one job as far as it can go. Returns its end state, or None if it stays."""
        job = record.job
        submitted_at = record.submitted_at
        resumed = record.state is not S.PENDING  # in flight since an earlier run
        if record.state is S.PENDING:
            submitted = await self._submit(lane, record)
            if submitted is None:
                return self._state_if_final(job.id)
            record, submitted_at = submitted, None  # the deadline runs from now
        state, remote_id = record.state, record.remote_id
        assert remote_id is not None, f"job {job.id} in {state} has no remote id"
        remaining = (submitted_at or self.clock()) + self.spec.run.deadline - self.clock()
        with anyio.move_on_after(max(remaining, 0.0)) as deadline:
            return await self._follow_and_fetch(lane, record, state, remote_id, resumed)
        if deadline.cancelled_caught:
            return await self._time_out(lane, job.id, remote_id)
        return None

    async def _follow_and_fetch(
        self, lane: Lane, record: JobRecord, state: JobState, remote_id: str, resumed: bool
    ) -> str | None:
        job_id = record.job.id
        task: RemoteTask | None = None
        if state in (S.SUBMITTED, S.RUNNING):
            task = await self._follow(lane, job_id, remote_id, state, resumed)
            if task is None:
                return None
            if task.status is not RemoteStatus.SUCCEEDED:
                return self._remote_end(job_id, task)
            # Straight on to the download: succeeded and downloading in one transaction.
            if not self.manifest.transition(
                job_id, S.DOWNLOADING, via=S.SUCCEEDED, expect=(S.SUBMITTED, S.RUNNING)
            ):
                return None
            state = S.DOWNLOADING
        return await self._fetch(lane, record, state, remote_id, task)

    async def _follow(
        self, lane: Lane, job_id: str, remote_id: str, state: JobState, resumed: bool
    ) -> RemoteTask | None:
        seen_running = state is S.RUNNING

        def on_update(task: RemoteTask) -> None:
            nonlocal seen_running
            if task.status is RemoteStatus.RUNNING and not seen_running:
                seen_running = True
                self.manifest.transition(job_id, S.RUNNING, expect=S.SUBMITTED)

        try:
            # A resumed task may have finished while nothing watched it (its callbacks
            # went to the last run's receiver): look at it now, then the usual schedule.
            first = 0.0 if resumed else None
            return await lane.follower.follow(remote_id, on_update=on_update, first_delay=first)
        except FinalError as exc:
            self.manifest.transition(
                job_id, S.FAILED, expect=(S.SUBMITTED, S.RUNNING), error=f"status: {exc.reason()}"
            )
            return None
        except TransientError as exc:
            # Still in flight remotely; the next run picks it up from the remote id.
            self.manifest.log_event(job_id, "error", f"status unreachable: {exc.reason()}")
            return None

    def _remote_end(self, job_id: str, task: RemoteTask) -> str:
        if task.status is RemoteStatus.CANCELLED:
            end, error = S.CANCELLED, task.error or "cancelled by the provider"
        else:
            end, error = S.FAILED, task.error or "the provider reported failure"
        self.manifest.transition(job_id, end, expect=(S.SUBMITTED, S.RUNNING), error=error)
        return end.value

    async def _time_out(self, lane: Lane, job_id: str, remote_id: str) -> str:
        reason = f"deadline of {self.spec.run.deadline:g}s passed"
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.spec.run.http_timeout):
            try:
                if await lane.adapter.cancel(remote_id):
                    reason += "; remote task cancelled"
            except ProviderError as exc:
                reason += f"; cancel failed: {exc.reason()}"
        self.manifest.transition(job_id, S.TIMED_OUT, expect=(S.SUBMITTED, S.RUNNING), error=reason)
        return S.TIMED_OUT.value

    def _state_if_final(self, job_id: str) -> str | None:
        record = self.manifest.get(job_id)
        if record is None or record.state in (S.PENDING, *IN_FLIGHT):
            return None
        return record.state.value

    # -- submit: contract 2 ---------------------------------------------------------

    async def _submit(self, lane: Lane, record: JobRecord) -> JobRecord | None:
        """Submit once per refusal-free attempt; a refused submit (429, 503, no
        connection) is safe to repeat after a pause, an ambiguous one never is.

        Returns the job as now recorded (submitted, with its remote id), or None."""
        job = record.job
        await lane.follower.ready()
        for attempt in range(self.spec.run.retries + 1):
            if lane.stopped:
                return None
            await lane.limiter.request()  # cancellable wait, outside the shield
            client_ref = f"{job.id}.{record.attempts + attempt + 1}"
            if not self.manifest.transition(
                job.id, S.SUBMITTING, expect=S.PENDING, client_ref=client_ref
            ):
                return None
            outcome = await self._submit_shielded(lane, job)
            if isinstance(outcome, tuple):
                remote_id, submitted_at = outcome
                return replace(
                    record,
                    state=S.SUBMITTED,
                    remote_id=remote_id,
                    client_ref=client_ref,
                    attempts=record.attempts + attempt + 1,
                    submitted_at=submitted_at,
                    updated_at=submitted_at,
                )
            if outcome is None:
                return None
            delay = self._backoff.delay(attempt, outcome.retry_after)
            self.manifest.log_event(
                job.id, "retry", f"submit refused ({outcome.reason()}); retrying in {delay:.1f}s"
            )
            if outcome.retry_after:
                lane.limiter.penalize(outcome.retry_after)
            await anyio.sleep(delay)
        # Refusals say "not now", not "never": the job stays pending for the next run.
        text = f"submit refused {self.spec.run.retries + 1} times; left pending"
        self.manifest.log_event(job.id, "error", text)
        self.summary.errors.append(f"{lane.name} job {job.id}: {text}")
        return None

    async def _submit_shielded(self, lane: Lane, job: Job) -> Submitted | TransientError | None:
        """One submit request, immune to Ctrl-C: its outcome is always recorded."""
        outcome: Submitted | TransientError | None = None
        with anyio.CancelScope(shield=True), prepaid_requests():
            if self._commits is not None:  # the intent is on disk before the request
                await self._commits.durable()
            failpoint("submit.before_send")
            outcome = await self._submit_once(lane, job)
        return outcome

    async def _submit_once(self, lane: Lane, job: Job) -> Submitted | TransientError | None:
        job_id = job.id
        try:
            remote_id = await lane.adapter.submit(job)
        except SubmitUnknown as exc:
            self.manifest.transition(job_id, S.UNKNOWN, expect=S.SUBMITTING, error=exc.reason())
            return None
        except AccountError as exc:
            lane.stopped = lane.stopped or exc.reason()
            self.manifest.transition(
                job_id, S.PENDING, expect=S.SUBMITTING, detail=f"account error: {exc.reason()}"
            )
            self.progress.note(lane.name, f"submits stopped: {exc.reason()}")
            return None
        except FinalError as exc:
            self.manifest.transition(
                job_id, S.FAILED, expect=S.SUBMITTING, error=f"submit: {exc.reason()}"
            )
            return None
        except TransientError as exc:
            self.manifest.transition(
                job_id, S.PENDING, expect=S.SUBMITTING, detail=f"refused: {exc.reason()}"
            )
            return exc
        failpoint("submit.after_answer")
        at = self.manifest.transition_at(
            job_id, S.SUBMITTED, expect=S.SUBMITTING, remote_id=remote_id
        )
        self.summary.submitted += 1
        return remote_id, at

    # -- outputs --------------------------------------------------------------------

    async def _fetch(
        self,
        lane: Lane,
        record: JobRecord,
        state: JobState,
        remote_id: str,
        task: RemoteTask | None,
    ) -> str | None:
        """Download the outputs of a job in ``state`` (succeeded or downloading).

        ``record`` is the job as this run knows it (its timings go into the sidecars):
        nothing is read back from the manifest on this path."""
        job_id = record.job.id
        if state is not S.DOWNLOADING and not self.manifest.transition(
            job_id, S.DOWNLOADING, expect=S.SUCCEEDED
        ):
            return None
        try:
            outputs = await fetch_outputs(
                self.spec,
                lane.adapter,
                self.session.downloads,
                record,
                remote_id=remote_id,
                task=task,
                backoff=self._backoff,
                on_retry=self._log_retry(job_id),
                committer=self.session.committer,
            )
        except (DownloadError, ProviderError) as exc:
            transient = isinstance(exc, TransientError) or (
                isinstance(exc, DownloadError) and exc.transient
            )
            reason = exc.reason() if isinstance(exc, ProviderError) else str(exc)
            if transient:  # outputs still there remotely: the next run retries
                self.manifest.transition(
                    job_id, S.SUCCEEDED, expect=S.DOWNLOADING, detail=f"download paused: {reason}"
                )
                return None
            self.manifest.transition(
                job_id, S.FAILED, expect=S.DOWNLOADING, error=f"download: {reason}"
            )
            return S.FAILED.value
        failpoint("download.before_finish")
        self.manifest.finish(job_id, outputs)  # outputs and `done` in one transaction
        return S.DONE.value

    def _log_retry(self, job_id: str) -> Callable[[int, BaseException, float], None]:
        def log(attempt: int, exc: BaseException, delay: float) -> None:
            self.manifest.log_event(
                job_id, "retry", f"attempt {attempt}: {exc}; next in {delay:.1f}s"
            )

        return log
