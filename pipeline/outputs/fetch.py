"""From a finished remote task to verified files with provenance sidecars.

Each output goes to the path the spec's template renders (sanitised, inside the output
root), through ``download`` (``.part``, verify, fsync, atomic rename), which writes its
provenance sidecar in the same step. Transient trouble
is retried with backoff; a result URL that expired (or is refused for good) is refreshed
by asking the provider for the task again, up to ``run.retries`` times, for as long as
each answer gives a new URL.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from pipeline import __version__
from pipeline.errors import DownloadError
from pipeline.identity import render_output_path, resolve_inside
from pipeline.models import JobRecord, Output, OutputRef, RemoteTask, Spec
from pipeline.outputs.download import Committer, download
from pipeline.outputs.guard import policy_for
from pipeline.providers.base import Provider
from pipeline.retry import Backoff, ask_status, retrying

__all__ = ["fetch_outputs", "guess_ext"]

RetryLog = Callable[[int, BaseException, float], None]


async def fetch_outputs(
    spec: Spec,
    adapter: Provider,
    client: httpx.AsyncClient,
    record: JobRecord,
    *,
    remote_id: str,
    task: RemoteTask | None,
    backoff: Backoff,
    on_retry: RetryLog | None = None,
    committer: Committer | None = None,
) -> list[Output]:
    """Download every output of a succeeded task; raises DownloadError/ProviderError.

    ``committer`` (the session's) makes the files durable in batches with other jobs'."""
    if task is None:  # resumed after a restart: ask again (also refreshes expiring URLs)
        task = await ask_status(adapter, remote_id, retries=spec.run.retries, backoff=backoff)
    if not task.outputs:
        raise DownloadError("the provider reported success but gave no output", transient=False)
    outputs = []
    for index in range(len(task.outputs)):
        output, task = await _fetch_one(
            spec,
            adapter,
            client,
            record,
            task=task,
            index=index,
            backoff=backoff,
            on_retry=on_retry,
            committer=committer,
        )
        outputs.append(output)
    return outputs


async def _fetch_one(
    spec: Spec,
    adapter: Provider,
    client: httpx.AsyncClient,
    record: JobRecord,
    *,
    task: RemoteTask,
    index: int,
    backoff: Backoff,
    on_retry: RetryLog | None,
    committer: Committer | None,
) -> tuple[Output, RemoteTask]:
    job = record.job
    ref = task.outputs[index]
    rel = render_output_path(
        spec.output.path, job, index=index, ext=guess_ext(ref), spec_name=spec.name
    )
    dest = resolve_inside(spec.output.root, rel)

    async def attempt(current: OutputRef) -> Output:
        def sidecar(output: Output) -> Mapping[str, Any]:
            return provenance(spec, adapter, record, task, output)

        async def once() -> Output:
            return await download(
                client, current, dest, job_id=job.id, index=index, rel_path=rel.as_posix(),
                sidecar=sidecar, committer=committer, policy=policy_for(adapter.settings),
            )  # fmt: skip

        return await retrying(
            once,
            retries=spec.run.retries,
            backoff=backoff,
            is_transient=lambda exc: _download_transient(exc, spec.run.max_retry_after),
            on_retry=on_retry,
        )

    current, refreshes = ref, 0
    while True:
        try:
            return await attempt(current), task
        except DownloadError as exc:
            if exc.transient or refreshes >= spec.run.retries:
                raise
            refreshes += 1
            # The URL may have expired: ask for fresh ones.
            task = await ask_status(
                adapter, task.remote_id, retries=spec.run.retries, backoff=backoff
            )
            if len(task.outputs) <= index or task.outputs[index].url == current.url:
                raise
            current = task.outputs[index]


def _download_transient(exc: BaseException, max_wait: float) -> float | bool | None:
    """Retry a transient download failure, waiting what the host asked, up to
    ``max_wait`` (``run.max_retry_after``)."""
    if isinstance(exc, DownloadError) and exc.transient:
        return True if exc.retry_after is None else min(exc.retry_after, max_wait)
    return False


def guess_ext(ref: OutputRef) -> str:
    """The output's file extension: the provider's word, else the URL's, else by kind."""
    if ref.ext:
        return ref.ext.lstrip(".").lower()
    suffix = posixpath.splitext(urlsplit(ref.url).path)[1].lstrip(".").lower()
    if suffix.isalnum() and 1 <= len(suffix) <= 5:
        return suffix
    if ref.content_type and ref.content_type.startswith("video/"):
        return "mp4"
    return "png" if ref.content_type and ref.content_type.startswith("image/") else "bin"


def provenance(
    spec: Spec, adapter: Provider, record: JobRecord, task: RemoteTask, output: Output
) -> Mapping[str, Any]:
    """Everything needed to know where a file came from. Never any credential."""
    job = record.job
    return {
        "pipeline": {"version": __version__, "spec": spec.name, "spec_file": str(spec.source)},
        "job_id": job.id,
        "provider": job.provider,
        "provider_type": adapter.type,
        "model": job.model,
        "prompt": job.prompt,
        "params": dict(job.params),
        "meta": dict(job.meta),  # the prompt's metadata: recorded, never sent
        "replicate": job.replicate,
        "remote_id": task.remote_id,
        "output": {
            "index": output.index,
            "path": output.path,
            "url": output.url,
            "size": output.size,
            "sha256": output.sha256,
            "content_type": output.content_type,
        },
        "timings": {
            "created_at": record.created_at,
            "submitted_at": record.submitted_at,
            "downloaded_at": time.time(),
        },
    }
