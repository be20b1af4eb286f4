"""A submit may be retried only when the answer guarantees nothing was created (contract 2).

Everything else — any 5xx, an answer that cannot be read, an error nobody mapped — ends
the job as ``unknown``: never sent again in the run, never left ``pending`` or
``submitting``. Proved against the emulators' charge ledgers, over real HTTP on loopback.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web

from pipeline.commands import load_checked_spec, run_spec
from pipeline.emulators import serve
from pipeline.emulators.knobs import Knobs
from pipeline.errors import (
    FinalError,
    ProviderError,
    RateLimited,
    SubmitRefused,
    SubmitUnknown,
    TransientError,
)
from pipeline.http.client import make_api_client
from pipeline.manifest.store import Manifest
from pipeline.matrix import iter_jobs
from pipeline.models import Job, JobState, ProviderSettings
from pipeline.providers import registry
from pipeline.providers.base import Provider, submit_outcome
from pipeline.providers.pixellabs import PixelLabsProvider
from pipeline.runner.scheduler import RunOptions, RunSummary, Scheduler
from pipeline.runner.session import open_session

from .conftest import serve_app, write_spec
from .test_run_e2e import pixellabs_spec

PROVIDERS = ("pixellabs", "apixo", "acedata", "pixai")
PARAMS = {
    "pixellabs": {},
    "apixo": {"model": "nano-banana"},
    "acedata": {"quality": "360p", "duration": 5},
    "pixai": {},
}
KEY = "test-key-fake-0001"


def four_provider_spec(tmp_path: Path, urls: dict[str, str], *, retries: int = 3) -> Path:
    entries = "".join(
        f"""
          {name}:
            base_url: {urls[name]}
            api_key: {KEY}
            concurrency: 2
            params: {json.dumps(PARAMS[name])}
            options: {{completion: {"batch" if name == "acedata" else "poll"}}}"""
        for name in PROVIDERS
    )
    return write_spec(
        tmp_path,
        f"""
        name: submit-outcomes
        output:
          root: {tmp_path / "out"}
        providers:{entries}
        prompts:
          - a lighthouse in a storm
        run:
          poll: {{initial: 0.05s, max: 0.3s}}
          deadline: 1m
          retries: {retries}
        """,
    )


@pytest.mark.parametrize("status", [500, 502, 503, 504, 524, 599])
def test_a_5xx_after_the_task_was_created_is_unknown_and_charged_once(
    tmp_path: Path, emulator_factory: Any, status: int
) -> None:
    emulator = emulator_factory(
        list(PROVIDERS),
        task_seconds=0.1,
        error_after_create_rate=1.0,
        error_after_create_status=status,
        callback_retry_delays=[],
    )
    spec = load_checked_spec(four_provider_spec(tmp_path, emulator.urls))
    summary = run_spec(spec, quiet=True, handle_signals=False)

    for name in PROVIDERS:
        assert len(emulator.ledger(name)) == 1, name  # one charge per job, never two
        assert summary.states[name] == {JobState.UNKNOWN: 1}, (name, summary.states)
    with Manifest.open(spec.output.root, readonly=True) as manifest:
        for record in manifest.iter_records():
            assert str(status) in (record.error or ""), record.error
            assert record.remote_id is None


# -- each adapter against its emulator: the allowlist, status by status --------------


@asynccontextmanager
async def adapter_on_emulator(name: str, **knobs: Any) -> AsyncIterator[tuple[Provider, Any]]:
    settings = {"task_jitter": 0.0, "task_seconds": 0.1, "callback_retry_delays": [], **knobs}
    async with serve([name], knobs={name: settings}) as running:
        emulator = running[name]
        adapter = await open_adapter(name, emulator.base_url)
        try:
            yield adapter, emulator.state
        finally:
            await adapter.client.aclose()


async def open_adapter(name: str, url: str) -> Provider:
    adapter_type = registry.get(name)
    entry = ProviderSettings(name=name, type=name, api_key=KEY, base_url=url, params=PARAMS[name])
    client = make_api_client(
        url, headers=adapter_type.auth_headers(KEY), timeout=10, max_connections=4
    )
    adapter = adapter_type(entry, client)
    if name in ("acedata",):  # never called back: the task's callback goes to a closed port
        adapter.callback_url = "http://127.0.0.1:9/hook"  # type: ignore[attr-defined]
    return adapter


def one_job(name: str) -> Job:
    model = PARAMS[name].get("model")
    params = {"prompt": "a lighthouse", **PARAMS[name]}
    params.pop("model", None)
    return Job(id="0123456789abcdef", provider=name, model=model, params=params)


async def outcome_of_submit(adapter: Provider, name: str) -> ProviderError:
    try:
        await adapter.submit(one_job(name))
    except Exception as exc:
        return submit_outcome(exc)
    raise AssertionError("the submit succeeded")


@pytest.mark.anyio
@pytest.mark.parametrize("name", PROVIDERS)
@pytest.mark.parametrize("status", [500, 501, 502, 503, 504, 507, 520, 521, 522, 523, 524, 599])
async def test_every_5xx_after_creation_is_unknown_for_every_adapter(
    name: str, status: int
) -> None:
    async with adapter_on_emulator(
        name, error_after_create_rate=1.0, error_after_create_status=status
    ) as (adapter, state):
        outcome = await outcome_of_submit(adapter, name)
        assert type(outcome) is SubmitUnknown, (outcome, outcome.reason())
        assert len(state.ledger) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("name", PROVIDERS)
async def test_a_429_refusal_may_be_retried_and_created_nothing(name: str) -> None:
    async with adapter_on_emulator(name, rate_limit_rate=1.0, retry_after=2) as (adapter, state):
        outcome = await outcome_of_submit(adapter, name)
        assert isinstance(outcome, RateLimited), (outcome, outcome.reason())
        assert len(state.ledger) == 0


# -- answers that cannot be read: a hostile server on loopback --------------------------


def hostile_answer(kind: str) -> web.Response:
    if kind == "deep":
        return web.Response(body=b'{"a":' * 100_000 + b"1" + b"}" * 100_000)
    if kind == "deep_error":
        return web.Response(status=400, body=b"[" * 100_000 + b"]" * 100_000)
    if kind == "not_json":
        return web.Response(text="<html>ok</html>", content_type="text/html")
    if kind == "list":
        return web.json_response([1, 2, 3])
    if kind == "no_id":
        return web.json_response({"data": {}, "status": "queued"})
    if kind == "unavailable":
        return web.json_response({"message": "busy"}, status=503, headers={"Retry-After": "1"})
    raise AssertionError(kind)


@asynccontextmanager
async def hostile_server(kind: str) -> AsyncIterator[str]:
    async def answer(_request: web.Request) -> web.Response:
        return hostile_answer(kind)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    async with serve_app(app) as url:
        yield url


@pytest.mark.anyio
@pytest.mark.parametrize("name", PROVIDERS)
@pytest.mark.parametrize("kind", ["deep", "deep_error", "not_json", "list", "no_id", "unavailable"])
async def test_an_unreadable_or_unavailable_submit_answer_is_unknown(name: str, kind: str) -> None:
    """None of the four APIs documents 503 as "not processed": it is ambiguous too."""
    async with hostile_server(kind) as url:
        adapter = await open_adapter(name, url)
        try:
            outcome = await outcome_of_submit(adapter, name)
        finally:
            await adapter.client.aclose()
    expected = FinalError if kind == "deep_error" else SubmitUnknown
    assert type(outcome) is expected, (outcome, outcome.reason())


@pytest.mark.anyio
@pytest.mark.parametrize("name", PROVIDERS)
@pytest.mark.parametrize("kind", ["deep", "deep_error", "not_json", "list"])
async def test_an_unreadable_status_answer_is_transient_not_a_crash(name: str, kind: str) -> None:
    remote_id = "nano-banana/abc" if name == "apixo" else "abc"
    async with hostile_server(kind) as url:
        adapter = await open_adapter(name, url)
        try:
            with pytest.raises(ProviderError) as caught:
                await adapter.status(remote_id)
            if name == "acedata":
                with pytest.raises(ProviderError):
                    await adapter.status_many([remote_id])
        finally:
            await adapter.client.aclose()
    if kind != "deep_error":
        assert isinstance(caught.value, TransientError), caught.value


def test_the_allowlist() -> None:
    assert isinstance(submit_outcome(RateLimited("429", status=429)), RateLimited)
    assert isinstance(submit_outcome(SubmitRefused("refused")), SubmitRefused)
    assert isinstance(submit_outcome(FinalError("bad", status=400)), FinalError)
    for error in (
        TransientError("503", status=503),
        TransientError("408", status=408),
        FinalError("a 5xx called final", status=502),
        RecursionError("deep"),
        ValueError("odd"),
        KeyError("id"),
    ):
        outcome = submit_outcome(error)
        assert type(outcome) is SubmitUnknown, error
        assert outcome.__cause__ is error or outcome is error


def test_a_refused_connection_is_a_refusal(tmp_path: Path) -> None:
    """Nothing listens on the port: the request provably never left."""

    async def main() -> ProviderError:
        adapter = await open_adapter("pixellabs", "http://127.0.0.1:9")
        try:
            return await outcome_of_submit(adapter, "pixellabs")
        finally:
            await adapter.client.aclose()

    outcome = anyio.run(main)
    assert isinstance(outcome, SubmitRefused), outcome


# -- the scheduler's own catch-all: whatever escapes an adapter's submit ----------------


class ParsesBadly(PixelLabsProvider):
    """A real PixelLabs adapter whose answer reading breaks after the task was created
    (as a bug in a plugin's parsing would)."""

    async def submit(self, job: Job) -> str:
        await super().submit(job)
        raise KeyError("generationId")


def test_a_non_provider_error_after_the_submit_left_ends_unknown(
    tmp_path: Path, emulator_factory: Any
) -> None:
    emulator = emulator_factory(task_seconds=0.1)
    spec = load_checked_spec(
        pixellabs_spec(tmp_path, emulator.urls["pixellabs"], seeds="[1]"),
        env={"PIXELLABS_API_KEY": KEY},
    )

    async def main() -> RunSummary:
        with Manifest.open(spec.output.root, spec_name=spec.name) as manifest:
            manifest.add_jobs(iter_jobs(spec))
            async with open_session(spec) as session:
                lane = session.lanes["pixellabs"]
                lane.adapter = ParsesBadly(lane.settings, lane.adapter.client)
                options = RunOptions(handle_signals=False)
                return await Scheduler(spec, manifest, session, options=options).run()

    summary = anyio.run(main)
    assert summary.states["pixellabs"] == {JobState.UNKNOWN: 6}, summary.states
    assert len(emulator.ledger("pixellabs")) == 6  # once each, never again
    with Manifest.open(spec.output.root, readonly=True) as manifest:
        assert all("KeyError" in (r.error or "") for r in manifest.iter_records())


def test_the_new_knobs_validate() -> None:
    knobs = Knobs.from_mapping(
        {"error_after_create_status": 599, "fault_routes": ["POST /v1/generate"]}
    )
    assert knobs.error_after_create_status == 599 and knobs.fault_routes == ("POST /v1/generate",)
    for bad in (
        {"error_after_create_status": 404},
        {"error_after_create_status": 600},
        {"error_after_create_status": "524"},
        {"fault_routes": "POST /v1/generate"},
        {"fault_routes": [1]},
        {"task_limit_message": None},
    ):
        with pytest.raises(ValueError, match="knob"):
            Knobs.from_mapping(bad)
