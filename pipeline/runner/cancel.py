"""``pipeline cancel``: stop a spec's remote tasks where the API can, and mark the jobs not
yet submitted ``cancelled`` so later runs leave them (``run --retry-failed`` takes every
cancelled job up again: a recorded task is asked about first, so nothing is paid twice).

A job whose task the provider did not confirm stopped (the API has no cancel, or refused
it) stays as it is, followed by the next run: its task may still deliver and be paid.
Jobs caught submitting or ``unknown``, and tasks that already succeeded, are left alone.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import anyio

from pipeline.errors import ProviderError
from pipeline.manifest import Manifest
from pipeline.models import JobRecord, JobState, Spec
from pipeline.providers.base import Provider
from pipeline.runner.session import open_adapters

__all__ = ["CANCELLED_PENDING", "CANCELLED_REMOTE", "Cancelled", "cancel_jobs"]

S = JobState
CANCELLED_PENDING = "cancelled by `pipeline cancel` before it was submitted"
CANCELLED_REMOTE = "cancelled by `pipeline cancel`; the provider stopped the remote task"
IN_FLIGHT = (S.SUBMITTED, S.RUNNING)
LEFT_ALONE = (S.SUBMITTING, S.UNKNOWN, S.SUCCEEDED, S.DOWNLOADING)


@dataclass
class Cancelled:
    """What ``cancel_jobs`` did, per job id where it matters."""

    pending: int = 0  # never submitted, now cancelled
    stopped: dict[str, str] = field(default_factory=dict)  # job id -> its stopped remote id
    kept: dict[str, str] = field(default_factory=dict)  # job id -> why it is still followed
    left: dict[str, int] = field(default_factory=dict)  # state -> jobs left alone


async def cancel_jobs(
    spec: Spec, manifest: Manifest, *, providers: Collection[str] | None = None
) -> Cancelled:
    """Cancel the jobs of ``providers`` (default: every entry of the spec). The caller
    holds the run lock and has limited ``manifest`` to the spec's jobs."""
    names = list(spec.providers) if not providers else list(providers)
    done = Cancelled()
    for name in names:
        done.pending += manifest.reset(
            [S.PENDING], S.CANCELLED, provider=name, note="pipeline cancel",
            error=CANCELLED_PENDING,
        )  # fmt: skip
        for state in LEFT_ALONE:
            n = sum(1 for _ in manifest.iter_records(provider=name, states=[state]))
            if n:
                done.left[state.value] = done.left.get(state.value, 0) + n
    flying = {name: list(manifest.iter_records(provider=name, states=IN_FLIGHT)) for name in names}
    if any(flying.values()):
        async with open_adapters(spec) as adapters, anyio.create_task_group() as group:
            for name, records in flying.items():
                group.start_soon(_cancel_lane, spec, manifest, adapters[name], records, done)
    return done


async def _cancel_lane(
    spec: Spec, manifest: Manifest, adapter: Provider, records: list[JobRecord], done: Cancelled
) -> None:
    slots = anyio.CapacityLimiter(spec.providers[adapter.settings.name].concurrency)

    async def one(record: JobRecord) -> None:
        async with slots:
            await _cancel_one(spec, manifest, adapter, record, done)

    async with anyio.create_task_group() as group:
        for record in records:
            group.start_soon(one, record)


async def _cancel_one(
    spec: Spec, manifest: Manifest, adapter: Provider, record: JobRecord, done: Cancelled
) -> None:
    job_id, remote_id = record.job.id, record.remote_id
    if remote_id is None:  # not reachable: a submitted job always has its remote id
        done.kept[job_id] = "no remote id recorded"
        return
    try:
        with anyio.fail_after(spec.run.http_timeout * 2):
            stopped = await adapter.cancel(remote_id)
    except (ProviderError, TimeoutError) as exc:
        why = exc.reason() if isinstance(exc, ProviderError) else "no answer in time"
        done.kept[job_id] = f"cancel of {remote_id} failed: {why}"
        manifest.log_event(job_id, "cancel", done.kept[job_id])
        return
    if not stopped:
        done.kept[job_id] = (
            f"the {adapter.settings.type} API has no cancel"
            if type(adapter).cancel is Provider.cancel
            else f"{adapter.settings.type} did not stop task {remote_id} (it may have finished)"
        )
        return
    manifest.transition(
        job_id, S.CANCELLED, expect=IN_FLIGHT, error=CANCELLED_REMOTE, failure="remote"
    )  # the remote id stays recorded
    done.stopped[job_id] = remote_id
