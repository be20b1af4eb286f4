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
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from pipeline.cost import Costs
from pipeline.errors import (
    AccountBusy,
    AccountError,
    DownloadError,
    FinalError,
    ManifestError,
    ProviderError,
    RateLimited,
    SubmitRefused,
    TransientError,
)
from pipeline.failpoints import failpoint
from pipeline.manifest import GroupCommit, Manifest, group_commits
from pipeline.models import Job, JobRecord, JobState, RemoteStatus, RemoteTask, Spec
from pipeline.outputs import fetch_outputs
from pipeline.providers.base import submit_outcome
from pipeline.retry import Backoff, ask_status
from pipeline.runner.budget import BudgetGate, Refusal
from pipeline.runner.coordination import Budget, Coordinator, RunCounts, coordinate
from pipeline.runner.progress import NullProgress, Progress
from pipeline.runner.session import Lane, Session, prepaid_requests

__all__ = ["RunOptions", "RunSummary", "Scheduler"]

S = JobState
Submitted = tuple[str, float | None]  # remote id, and when the manifest recorded it
IN_FLIGHT = (S.SUBMITTED, S.RUNNING, S.SUCCEEDED, S.DOWNLOADING)
BUDGET_STOPPED = "budget reached"
RUN_COUNTS_EVERY = 1.5
"""Seconds between two counts of a shared run's jobs for the display."""


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
    notes: list[str] = field(default_factory=list)  # things the user should know, once each
    outside_spec: dict[str, dict[str, int]] = field(default_factory=dict)  # left as they were
    spent: dict[str, Decimal] = field(default_factory=dict)  # priced providers, at end
    budget_stops: dict[str, str] = field(default_factory=dict)  # budget key → why, once
    lease_lost: str | None = None  # a shared run's runner was reaped: why it stopped
    runners: int = 0  # a shared run: the most runners seen at work at once (0: alone)

    def count(self, state: JobState) -> int:
        return sum(by_state.get(state, 0) for by_state in self.states.values())

    @property
    def complete(self) -> bool:
        total = sum(sum(by_state.values()) for by_state in self.states.values())
        return total == self.count(S.DONE) and self.lease_lost is None


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
        coordinator: Coordinator | None = None,
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
        self._busy_said: set[str] = set()  # lanes whose full account was reported
        for lane in session.lanes.values():
            lane.limiter.on_capped = self._note_capped_wait(lane.name)
        self._lanes_scope: anyio.CancelScope | None = None  # while the lanes run
        self._event_cursor = 0  # the last event passed to the progress display
        self._costs = Costs.of_spec(spec)
        self._budget: Budget = BudgetGate(self._costs, ())  # counted when the run starts
        # alone (SQLite), or one of several runners of a shared run (PostgreSQL)
        self._coordinator = coordinator or coordinate(manifest, lease=spec.run.lease)

    # -- the run ----------------------------------------------------------------------

    async def run(self) -> RunSummary:
        started = self.clock()
        self._event_cursor = self._last_event_id()  # the log starts with this run's events
        self._budget = self._coordinator.start(self.session.lanes, self._costs, self._note_run)
        try:
            self._prepare_manifest()
        except BaseException:
            self._settle()
            raise
        shared = self._coordinator.run_counts()  # None alone: the manifest's counts then
        counts = shared[0] if shared is not None else self.manifest.counts()
        self.summary.already_done = sum(c.get(S.DONE, 0) for c in counts.values())
        self.progress.start(self._runnable_totals(counts))
        if shared is not None:
            self._show_run(shared)
        try:
            async with anyio.create_task_group() as outer:
                if self.options.handle_signals:
                    outer.start_soon(self._watch_signals, outer.cancel_scope)
                if shared is not None:
                    outer.start_soon(self._follow_run)
                if self.progress.follows_events or self.progress.status_every is not None:
                    outer.start_soon(self._report)
                outer.start_soon(self._coordinator.keep_alive, self._lease_lost)
                try:
                    async with (
                        group_commits(self.manifest) as self._commits,
                        anyio.create_task_group() as lanes,
                    ):
                        self._lanes_scope = lanes.cancel_scope
                        for lane in self.session.lanes.values():
                            lanes.start_soon(self._run_lane, lane)
                finally:
                    self._commits = None
                outer.cancel_scope.cancel()
        finally:
            self._settle()
            try:
                with contextlib.suppress(ManifestError):
                    self._pass_events()  # the settling resets too
                if shared is not None:
                    self._look_at_run()  # the run as this runner leaves it
            finally:
                self.progress.close()
            self.summary.states = self.manifest.counts()
            self.summary.stopped = {
                name: lane.stopped for name, lane in self.session.lanes.items() if lane.stopped
            }
            self.summary.elapsed = self.clock() - started
            self.summary.spent = dict(self._budget.spent)
            self.manifest.write_snapshot()
        return self.summary

    def _settle(self) -> None:
        """However the run ends (Ctrl-C, a crash), no job stays mid-step: a download goes
        back to ``succeeded``, a submit that may have left becomes ``unknown`` (of a
        shared run, this runner's jobs, which it then hands back)."""
        lost = self._coordinator.settle()
        if lost is not None and self.summary.lease_lost is None:
            self._lease_lost(lost)

    def _note_run(self, text: str) -> None:
        self.summary.notes.append(text)
        self.progress.note("run", text)

    def _lease_lost(self, why: str) -> None:
        """This runner was reaped: its jobs are the others' now. Nothing more is
        submitted or moved here (its moves would be refused anyway)."""
        self.summary.lease_lost = why
        self.summary.errors.append(f"stopped: {why}")
        self.progress.note("run", f"stopped: {why}")
        for lane in self.session.lanes.values():
            lane.stopped = lane.stopped or "this runner's lease was lost"
        if self._lanes_scope is not None:
            self._lanes_scope.cancel()

    async def _watch_signals(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(*_stop_signals()) as signals:
            async for _ in signals:
                self.summary.interrupted = True
                scope.cancel()
                return

    async def _report(self) -> None:
        """The one hook for the run log and the status lines: the manifest's event log
        (every state change, with its reason) is passed on as it grows, and the counts
        at the display's interval."""
        every = self.progress.status_every
        last_status = self.clock()
        while True:
            await anyio.sleep(min(every or 1.0, 1.0))
            with contextlib.suppress(ManifestError):  # a failed manifest stops the run
                self._pass_events()
                if every is not None and self.clock() - last_status >= every:
                    last_status = self.clock()
                    counts = self.manifest.counts()
                    if self.summary.runners:  # a shared run: the rate and ETA are the run's
                        self.progress.follow(counts)
                    self.progress.status(counts)

    async def _follow_run(self) -> None:
        """A shared run: the display follows every runner's jobs, counted afresh every
        ``RUN_COUNTS_EVERY`` seconds (one grouped count)."""
        while True:
            await anyio.sleep(RUN_COUNTS_EVERY)
            self._look_at_run()

    def _look_at_run(self) -> None:
        try:
            seen = self._coordinator.run_counts()
        except ManifestError:  # the display waits; the run's own writes say what failed
            return
        if seen is not None:
            self._show_run(seen)

    def _show_run(self, seen: RunCounts) -> None:
        counts, runners = seen
        self.summary.runners = max(self.summary.runners, runners)
        self.progress.follow(counts)

    def _last_event_id(self) -> int:
        if not self.progress.follows_events:
            return 0
        last = self.manifest.last_events(1)
        return last[0].id if last else 0

    def _pass_events(self) -> None:
        if not self.progress.follows_events:
            return
        while events := self.manifest.events_after(self._event_cursor):
            self._event_cursor = events[-1].id
            self.progress.events(events)

    def _prepare_manifest(self) -> None:
        """Reconcile what a previous run left half-done, and apply the retry options."""
        # A submit interrupted by a crash: the request may or may not have reached the
        # provider. None of the supported APIs can look a task up by our reference, so
        # it becomes `unknown` and is only resubmitted on request (contract 2).
        self.manifest.reset([S.SUBMITTING], S.UNKNOWN)
        if self.options.retry_failed:  # a recorded task is asked about before any new submit
            self.manifest.retry_failed()
        if self.options.resubmit_unknown:
            self.manifest.reset([S.UNKNOWN], S.PENDING)

    def _runnable_totals(self, counts: dict[str, dict[str, int]]) -> dict[str, int]:
        runnable = (S.PENDING, *IN_FLIGHT)
        return {
            name: sum(counts.get(name, {}).get(state, 0) for state in runnable)
            for name in self.session.lanes
        }

    def _note_capped_wait(self, provider: str) -> Callable[[float, float], None]:
        def note(asked: float, cap: float) -> None:
            text = (
                f"the server asked to wait {asked:g}s; waiting {cap:g}s at most "
                "(run.max_retry_after)"
            )
            self.summary.notes.append(f"{provider}: {text}")
            self.progress.note(provider, text)

        return note

    # -- one provider -----------------------------------------------------------------

    async def _run_lane(self, lane: Lane) -> None:
        send, receive = anyio.create_memory_object_stream[JobRecord](lane.settings.concurrency)
        async with anyio.create_task_group() as group:
            group.start_soon(self._feed, lane, send)
            for _ in range(lane.settings.concurrency):
                group.start_soon(self._work, lane, receive.clone())
            receive.close()

    async def _feed(self, lane: Lane, send: MemoryObjectSendStream[JobRecord]) -> None:
        """Jobs already paid for first, then new ones, as the coordinator hands them out."""
        records = self._coordinator.records(
            lane.name, page=lane.settings.concurrency, stopped=lambda: bool(lane.stopped)
        )
        async with send, contextlib.aclosing(records):
            async for record in records:
                if record.state is S.PENDING and lane.stopped:
                    break
                await send.send(record)
        if lane.stopped:
            self._coordinator.stopped_feeding(lane.name)

    async def _work(self, lane: Lane, receive: MemoryObjectReceiveStream[JobRecord]) -> None:
        async with receive:
            async for record in receive:
                try:
                    async with self._coordinator.slot(lane.name):
                        end = await self._process(lane, record)
                except Exception as exc:  # one job's trouble must not end the run
                    end = None
                    self._unexpected(lane, record, exc)
                    self._stop_if_unwritable()
                if end is not None:
                    self.summary.finished[end] += 1
                    self.progress.advance(lane.name, end)

    def _unexpected(self, lane: Lane, record: JobRecord, exc: Exception) -> None:
        """A local problem (disk full, permissions) or a bug: the run goes on, the summary
        says what happened, and the job is left where the next run takes it further."""
        text = self._report_unexpected(lane, record.job.id, exc)
        with contextlib.suppress(Exception):  # the manifest itself may be what failed
            self._leave_movable(record.job.id, f"unexpected error: {text}")

    def _report_unexpected(self, lane: Lane, job_id: str, exc: Exception) -> str:
        """Put an unexpected error in the summary and the progress notes; its text."""
        text = f"{type(exc).__name__}: {exc}"
        self.summary.errors.append(f"{lane.name} job {job_id}: {text}")
        self.progress.note(lane.name, f"job {job_id}: {text}")
        return text

    def _leave_movable(self, job_id: str, reason: str) -> None:
        """Record ``reason``; a submit that may have left becomes ``unknown`` (never
        resubmitted blindly), a download goes back to ``succeeded``; any other state is
        one a rerun continues from as it is."""
        current = self.manifest.get(job_id)
        if current is None:
            return
        if current.state is S.SUBMITTING:
            reason += "; the submit may have created a task"
            if self.manifest.transition(job_id, S.UNKNOWN, expect=S.SUBMITTING, error=reason):
                return
        elif current.state is S.DOWNLOADING and self.manifest.transition(
            job_id, S.SUCCEEDED, expect=S.DOWNLOADING, error=reason
        ):
            return
        self.manifest.record_error(job_id, reason)

    def _stop_if_unwritable(self) -> None:
        """A failed manifest write ends the run: no lane may submit (and pay) for a job
        whose outcome could not be recorded. Shielded submits in flight still finish."""
        failure = self.manifest.write_failure
        if failure is None:
            return
        for lane in self.session.lanes.values():
            lane.stopped = lane.stopped or f"the manifest could not be written ({failure})"
        if self._lanes_scope is not None:
            self._lanes_scope.cancel()

    # -- one job ------------------------------------------------------------------------

    async def _process(self, lane: Lane, record: JobRecord) -> str | None:
        """Take one job as far as it can go. Returns its end state, or None if it stays."""
        job = record.job
        resumed = record.state is not S.PENDING  # in flight since an earlier run
        if record.state is S.PENDING:
            submitted = await self._submit(lane, record)
            if submitted is None:
                return self._state_if_final(job.id)
            record = submitted
        state, remote_id = record.state, record.remote_id
        assert remote_id is not None, f"job {job.id} in {state} has no remote id"
        task: RemoteTask | None = None
        if state in (S.SUBMITTED, S.RUNNING):
            ended = await self._await_task(lane, record, remote_id, resumed)
            if not isinstance(ended, RemoteTask):
                again = self._retry_anew(job.id) if resumed else None
                return ended if again is None else await self._process(lane, again)
            task = ended
            # Straight on to the download: succeeded and downloading in one transaction.
            if not self.manifest.transition(
                job.id, S.DOWNLOADING, via=S.SUCCEEDED, expect=(S.SUBMITTED, S.RUNNING)
            ):
                return None
            state = S.DOWNLOADING
        return await self._fetch_in_time(lane, record, state, remote_id, task)

    async def _await_task(
        self, lane: Lane, record: JobRecord, remote_id: str, resumed: bool
    ) -> RemoteTask | str | None:
        """The succeeded task, or the job's end state (None: it stays in flight).

        The deadline (from the submit) bounds the waiting, never the asking: once it has
        passed, the provider is asked once more before anything is decided, so a task
        that finished while nobody watched is downloaded, not timed out."""
        job_id = record.job.id
        since = (record.submitted_at or self.clock()) if resumed else self.clock()
        remaining = since + self.spec.run.deadline - self.clock()
        task: RemoteTask | None = None
        if remaining > 0:
            with anyio.move_on_after(remaining):
                task = await self._follow(lane, job_id, remote_id, record.state, resumed)
                if task is None:
                    return self._state_if_final(job_id)
        if task is None:  # the deadline passed
            task = await self._last_look(lane, job_id, remote_id)
            if task is None:
                return self._state_if_final(job_id)
            if not task.status.terminal:
                return await self._time_out(lane, job_id, remote_id)
        if task.status is not RemoteStatus.SUCCEEDED:
            return self._remote_end(job_id, task)
        return task

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
            self._status_refused(job_id, exc)
            return None
        except TransientError as exc:
            # Still in flight remotely; the next run picks it up from the remote id.
            self.manifest.log_event(job_id, "error", f"status unreachable: {exc.reason()}")
            return None

    async def _last_look(self, lane: Lane, job_id: str, remote_id: str) -> RemoteTask | None:
        """The task as the provider tells it now, asked within ``http_timeout``; None when
        there is no answer (the job stays in flight for the next run) or no task."""
        problem = f"no answer within {self.spec.run.http_timeout:g}s"
        with anyio.move_on_after(self.spec.run.http_timeout):
            try:
                return await ask_status(
                    lane.adapter, remote_id, retries=self.spec.run.retries, backoff=self._backoff
                )
            except FinalError as exc:
                self._status_refused(job_id, exc)
                return None
            except TransientError as exc:
                problem = exc.reason()
        self.manifest.log_event(
            job_id, "error", f"deadline passed, status unreachable ({problem}); left in flight"
        )
        return None

    def _status_refused(self, job_id: str, exc: FinalError) -> None:
        self.manifest.transition(
            job_id, S.FAILED, expect=(S.SUBMITTED, S.RUNNING), error=f"status: {exc.reason()}",
            failure=_gone(exc),
        )  # fmt: skip

    def _remote_end(self, job_id: str, task: RemoteTask) -> str:
        if task.status is RemoteStatus.CANCELLED:
            end, error = S.CANCELLED, task.error or "cancelled by the provider"
        else:
            end, error = S.FAILED, task.error or "the provider reported failure"
        self.manifest.transition(
            job_id, end, expect=(S.SUBMITTED, S.RUNNING), error=error, failure="remote"
        )
        return end.value

    async def _time_out(self, lane: Lane, job_id: str, remote_id: str) -> str | None:
        """The deadline passed and the provider, just asked, says the task still runs:
        cancel it where the API can, and record whether it may still finish."""
        reason = f"deadline of {self.spec.run.deadline:g}s passed; still running when asked"
        failure = "deadline"  # --retry-failed asks about it again
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.spec.run.http_timeout):
            try:
                if await lane.adapter.cancel(remote_id):
                    reason, failure = reason + "; remote task cancelled", "remote"
            except ProviderError as exc:
                reason += f"; cancel failed: {exc.reason()}"
        self.manifest.transition(
            job_id, S.TIMED_OUT, expect=(S.SUBMITTED, S.RUNNING), error=reason, failure=failure
        )
        return self._state_if_final(job_id)

    def _retry_anew(self, job_id: str) -> JobRecord | None:
        """With --retry-failed, a job whose recorded task the provider has just confirmed
        failed, cancelled or gone goes back to ``pending`` (returned) to be submitted anew."""
        if not self.options.retry_failed:
            return None
        record = self.manifest.get(job_id)
        if record is None or record.failure != "remote":
            return None
        if not self.manifest.transition(
            job_id, S.PENDING, expect=(S.FAILED, S.CANCELLED),
            detail="retry: the recorded task failed or is gone; submitting anew",
        ):  # fmt: skip
            return None
        return self.manifest.get(job_id)

    def _state_if_final(self, job_id: str) -> str | None:
        record = self.manifest.get(job_id)
        if record is None or record.state in (S.PENDING, *IN_FLIGHT):
            return None
        return record.state.value

    # -- submit: contract 2 ---------------------------------------------------------

    async def _submit(self, lane: Lane, record: JobRecord) -> JobRecord | None:
        """Submit until the provider takes it or says no for good. Only refusals that
        prove nothing was created are sent again (``submit_outcome``): a 429 or an
        unsent request after a pause, at most ``run.retries`` times; "every task slot
        is taken" (``AccountBusy``) with poll-like spacing for up to ``run.deadline``.

        Returns the job as now recorded (submitted, with its remote id), or None."""
        job, run = record.job, self.spec.run
        await lane.follower.ready()
        refusals = busy = sent = 0
        busy_since: float | None = None
        while True:
            if lane.stopped:
                return None
            await lane.limiter.request(submit=True)  # cancellable wait, outside the shield
            await self._coordinator.pace(lane)  # the account's rate, across all runners
            sent += 1
            client_ref = f"{job.id}.{record.attempts + sent}"
            if not self._reserve_and_record(lane, job, client_ref):
                return None
            outcome = await self._submit_shielded(lane, job)
            if isinstance(outcome, tuple):
                remote_id, submitted_at = outcome
                return replace(
                    record,
                    state=S.SUBMITTED,
                    remote_id=remote_id,
                    client_ref=client_ref,
                    attempts=record.attempts + sent,
                    submitted_at=submitted_at,
                    updated_at=submitted_at,
                )
            if outcome is None:
                return None
            if isinstance(outcome, AccountBusy):
                self._note_busy(lane.name, outcome)
                busy_since = self.clock() if busy_since is None else busy_since
                if self.clock() - busy_since >= run.deadline:
                    self._left_pending(lane, job, f"no free task slot for {run.deadline:g}s")
                    return None
                busy += 1
                spacing = min(run.poll_max, run.poll_initial * run.poll_factor ** (busy - 1))
                delay = max(self._backoff.delay(busy, outcome.retry_after), spacing)
            else:
                refusals += 1
                if refusals > run.retries:
                    self._left_pending(lane, job, f"submit refused {refusals} times")
                    return None
                delay = self._backoff.delay(refusals, outcome.retry_after)
                if outcome.retry_after:
                    lane.limiter.penalize(outcome.retry_after, submit=True)
            self.manifest.log_event(
                job.id, "retry", f"submit refused ({outcome.reason()}); retrying in {delay:.1f}s"
            )
            await anyio.sleep(delay)

    def _reserve_and_record(self, lane: Lane, job: Job, client_ref: str) -> bool:
        """Reserve the job's cost and record the intent to submit, with no await in
        between, so no other worker can take the same money. False: neither is held."""
        refusal = self._budget.reserve(job)
        if refusal is not None:
            self._stop_for_budget(lane, refusal)
            return False
        if self.manifest.transition(job.id, S.SUBMITTING, expect=S.PENDING, client_ref=client_ref):
            return True
        self._budget.release(job)
        return False

    def _stop_for_budget(self, lane: Lane, refusal: Refusal) -> None:
        """No more submits on this lane (on every lane for the run's budget); jobs in
        flight are still followed and downloaded. Said once per budget."""
        for other in self.session.lanes.values() if refusal.whole_run else (lane,):
            other.stopped = other.stopped or BUDGET_STOPPED
        if refusal.key not in self.summary.budget_stops:
            self.summary.budget_stops[refusal.key] = refusal.text
            self.progress.note(lane.name, refusal.text)

    def _note_busy(self, provider: str, busy: AccountBusy) -> None:
        if provider in self._busy_said:
            return
        self._busy_said.add(provider)
        text = f"every task slot of the account is taken ({busy.reason()}); submits wait for one"
        self.summary.notes.append(f"{provider}: {text}")
        self.progress.note(provider, text)

    def _left_pending(self, lane: Lane, job: Job, why: str) -> None:
        """Refusals say "not now", not "never": the job stays pending for the next run."""
        text = f"{why}; left pending"
        self.manifest.log_event(job.id, "error", text)
        self.summary.errors.append(f"{lane.name} job {job.id}: {text}")

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
        """Send the submit and record what its answer proves. Returns the remote id, the
        refusal to wait out, or None when the job left ``submitting`` for good."""
        job_id = job.id
        try:
            remote_id = await lane.adapter.submit(job)
        except Exception as exc:  # everything not on the allowlist is ambiguous
            error = submit_outcome(exc)
            if not isinstance(exc, ProviderError):  # a bug or local trouble: say so too
                self._report_unexpected(lane, job_id, exc)
        else:
            failpoint("submit.after_answer")
            at = self.manifest.transition_at(
                job_id, S.SUBMITTED, expect=(S.SUBMITTING, S.UNKNOWN), remote_id=remote_id
            )
            self.summary.submitted += 1
            if at is None:  # the job was taken over while its request was out
                self._record_late(lane, job_id, remote_id)
                return None
            return remote_id, at
        if isinstance(error, RateLimited | SubmitRefused | AccountError | FinalError):
            self._budget.release(job)  # provably nothing was created: nothing paid
        if isinstance(error, RateLimited | SubmitRefused):
            self.manifest.transition(
                job_id, S.PENDING, expect=S.SUBMITTING, detail=f"refused: {error.reason()}"
            )
            return error
        if isinstance(error, AccountError):
            lane.stopped = lane.stopped or error.reason()
            self.manifest.transition(
                job_id, S.PENDING, expect=S.SUBMITTING, detail=f"account error: {error.reason()}"
            )
            self.progress.note(lane.name, f"submits stopped: {error.reason()}")
        elif isinstance(error, FinalError):
            self.manifest.transition(
                job_id, S.FAILED, expect=S.SUBMITTING, error=f"submit: {error.reason()}"
            )
        else:
            self.manifest.transition(job_id, S.UNKNOWN, expect=S.SUBMITTING, error=error.reason())
        return None

    def _record_late(self, lane: Lane, job_id: str, remote_id: str) -> None:
        """A submit's answer came after the job was taken over (this runner had stopped
        renewing its lease): the remote id is recorded all the same, and the job handed
        back for any runner to follow; if that cannot be, it goes to the unrecorded file
        (the next run on this output root takes it back from there)."""
        if self._coordinator.take_back(job_id):
            recorded = self.manifest.transition(
                job_id, S.SUBMITTED, expect=(S.SUBMITTING, S.UNKNOWN), remote_id=remote_id,
                detail="reconciled: the submit's answer came after the job was taken over",
            )  # fmt: skip
            self._coordinator.hand_back(job_id)
            if recorded:
                return
        reason = "the job was taken over by another runner before the submit's answer came"
        self.manifest.write_failures.lose(job_id, remote_id, reason, lambda _: lane.name)
        self.summary.errors.append(f"{lane.name} job {job_id}: {reason}; remote id {remote_id}")

    # -- outputs --------------------------------------------------------------------

    async def _fetch_in_time(
        self,
        lane: Lane,
        record: JobRecord,
        state: JobState,
        remote_id: str,
        task: RemoteTask | None,
    ) -> str | None:
        """``_fetch`` within a deadline of its own: the task is finished and paid for, so
        its download gets ``run.deadline`` afresh in every run. If that passes too, the
        job goes back to ``succeeded`` with the reason, for the next run to fetch."""
        with anyio.move_on_after(self.spec.run.deadline):
            return await self._fetch(lane, record, state, remote_id, task)
        self.manifest.transition(
            record.job.id, S.SUCCEEDED, expect=S.DOWNLOADING,
            error=f"download paused: deadline of {self.spec.run.deadline:g}s passed during it",
        )  # fmt: skip
        return None

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
            # The task succeeded: --retry-failed fetches again from it, unless the
            # provider says it is gone.
            failure = _gone(exc) or "download"
            self.manifest.transition(
                job_id, S.FAILED, expect=S.DOWNLOADING, error=f"download: {reason}",
                failure=failure,
            )  # fmt: skip
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


def _stop_signals() -> list[signal.Signals]:
    """The signals that end a run cleanly with its summary: SIGINT, SIGTERM, and SIGHUP
    (its terminal went away) unless it is ignored, as under nohup, which must keep the
    run going when the terminal closes."""
    stops = [signal.SIGINT, signal.SIGTERM]
    hangup = getattr(signal, "SIGHUP", None)
    if hangup is not None and signal.getsignal(hangup) is not signal.SIG_IGN:
        stops.append(hangup)
    return stops


def _gone(exc: Exception) -> str | None:
    """``"remote"`` when a status query's final refusal means the task is gone (not found);
    None when it says nothing about the task (a refused key), so it is asked again."""
    if isinstance(exc, FinalError) and not isinstance(exc, AccountError):
        return "remote"
    return None
