"""Everything a run holds open: one lane per provider (adapter, API client, limiter,
follower), the credential-free download client, and any built-in emulators the spec
asked for (served in-process on loopback).
"""

from __future__ import annotations

import contextvars
import importlib
import logging
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import (
    AbstractAsyncContextManager,
    AsyncExitStack,
    asynccontextmanager,
    contextmanager,
)
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Protocol, TypeVar, runtime_checkable

import anyio
import httpx
from anyio.abc import TaskGroup

from pipeline.completion import FollowContext, Follower, make_follower
from pipeline.errors import ManifestError, PipelineError
from pipeline.http import make_api_client, make_download_client
from pipeline.limits import ProviderLimiter
from pipeline.models import ProviderSettings, Spec
from pipeline.outputs import Committer
from pipeline.providers import registry
from pipeline.providers.base import Provider
from pipeline.redact import register_secrets

__all__ = [
    "EMULATOR_KEY",
    "EMULATOR_STATE_DIR",
    "HintReader",
    "HintRelay",
    "Lane",
    "Session",
    "open_adapters",
    "open_session",
    "prepaid_requests",
]

EMULATOR_KEY = "emulator-key-not-secret"
"""The API key sent to built-in emulators: they accept any key."""
EMULATOR_STATE_DIR = ".emulators"
"""Under the output root: the in-process emulators' worlds, one directory per entry."""

T = TypeVar("T")

_prepaid: contextvars.ContextVar[bool] = contextvars.ContextVar("prepaid", default=False)


@contextmanager
def prepaid_requests() -> Iterator[None]:
    """Within this block, the current task's requests were rate-limited by the caller.

    The scheduler takes a submit's rate token *before* it records the submit intent, so
    that waiting for a token stays cancellable while the submit itself is shielded. The
    block holds only the submit, so the limiter also reads it as "this is a submit".
    """
    token = _prepaid.set(True)
    try:
        yield
    finally:
        _prepaid.reset(token)


@dataclass
class Lane:
    """One provider entry of the spec, ready to use."""

    settings: ProviderSettings
    adapter: Provider
    limiter: ProviderLimiter
    follower: Follower
    stopped: str | None = None  # why submits to this provider stopped (account error)

    @property
    def name(self) -> str:
        return self.settings.name


class HintReader(Protocol):
    """Reads the hints other runners relayed; a failed read raises ``ManifestError``
    and the next one goes on where the last good one stopped."""

    def read(self) -> list[tuple[str, str]]: ...

    def close(self) -> None: ...


@runtime_checkable
class HintRelay(Protocol):
    """A shared run's way to pass callbacks between runners (its manifest's database):
    the run's receiver token, and hints for tasks another runner waits for."""

    def webhook_token(self) -> str: ...

    def relay_hint(self, provider: str, key: str) -> None: ...

    def hint_reader(self) -> HintReader: ...


HINT_POLL = 1.0
"""Seconds between two reads of the hints other runners relayed."""
HINT_BACKOFF = 30.0
"""The longest wait between two reads of relayed hints while they fail."""

_logger = logging.getLogger("pipeline.runner.hints")


CLOSE_SECONDS = 15.0
"""How long closing the built-in emulators may take when the run is cancelled."""


@asynccontextmanager
async def _closed_in_full(context: AbstractAsyncContextManager[T]) -> AsyncIterator[T]:
    """``context``, closed to the end even when a caller cancels the run from outside (a
    cancel scope around ``run_async``): the emulators' server close, cancelled, stops half
    way and leaves their tasks running. Bounded, so a stuck close cannot hang the run."""
    value = await context.__aenter__()
    try:
        yield value
    except BaseException as exc:
        with anyio.move_on_after(CLOSE_SECONDS, shield=True):
            await context.__aexit__(type(exc), exc, exc.__traceback__)
        raise
    with anyio.move_on_after(CLOSE_SECONDS, shield=True):
        await context.__aexit__(None, None, None)


@dataclass
class Session:
    lanes: Mapping[str, Lane]
    downloads: httpx.AsyncClient
    emulator_urls: Mapping[str, str]
    committer: Committer  # makes finished downloads durable, in batches


@asynccontextmanager
async def open_session(spec: Spec, *, hints: HintRelay | None = None) -> AsyncIterator[Session]:
    """Everything the run holds open; ``hints``: a shared run's relay of callbacks."""
    register_secrets(entry.api_key for entry in spec.providers.values())  # before any request
    async with AsyncExitStack() as stack:
        settings, urls = await _start_emulators(stack, spec)
        services: dict[str, object] = {}
        await _start_webhooks(stack, spec, settings, services, hints)
        background = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(background.cancel_scope.cancel)  # runs first on exit
        if hints is not None and services:
            background.start_soon(_pass_relayed_hints, hints, services)
        lanes = {}
        for entry in settings.values():
            lanes[entry.name] = await _open_lane(stack, entry, spec, background, services)
        width = sum(entry.concurrency for entry in settings.values())
        downloads = make_download_client(
            timeout=spec.run.http_timeout, max_connections=max(width, 8)
        )
        await stack.enter_async_context(downloads)
        committer = Committer()
        background.start_soon(committer.run)
        yield Session(lanes=lanes, downloads=downloads, emulator_urls=urls, committer=committer)


def emulators() -> ModuleType:
    """The built-in emulators package, or a clear error when its extra is missing."""
    try:
        return importlib.import_module("pipeline.emulators")
    except ImportError as exc:
        raise PipelineError(
            f"the built-in emulators need extra packages ({exc.name} is missing): "
            "pip install 'genmedia-pipeline[emulators]'"
        ) from exc


async def _start_emulators(
    stack: AsyncExitStack, spec: Spec
) -> tuple[dict[str, ProviderSettings], dict[str, str]]:
    """Start an in-process emulator for each provider entry with ``emulate`` set.

    Each keeps its tasks, media and charges in ``<output root>/.emulators/<entry>/``, so
    a rerun finds the tasks the last run left in flight, as it would at the real API."""
    settings = dict(spec.providers)
    urls: dict[str, str] = {}
    for name, entry in spec.providers.items():
        if entry.emulate is None:
            continue
        serve = emulators().serve
        state_dir = Path(spec.output.root) / EMULATOR_STATE_DIR / name
        running = await stack.enter_async_context(
            _closed_in_full(
                serve(
                    [entry.type],
                    knobs={entry.type: dict(entry.emulate)},
                    state_dirs={entry.type: state_dir},
                )
            )
        )
        url = running[entry.type].base_url
        settings[name] = replace(entry, base_url=url, api_key=entry.api_key or EMULATOR_KEY)
        urls[name] = url
    return settings, urls


async def _start_webhooks(
    stack: AsyncExitStack,
    spec: Spec,
    settings: Mapping[str, ProviderSettings],
    services: dict[str, object],
    hints: HintRelay | None,
) -> None:
    """Start the run's webhook receiver, once, if any lane is called back."""
    from pipeline.completion import SERVICE, open_receiver, wants_callbacks

    for entry in settings.values():
        adapter_type = registry.get(entry.type)
        if wants_callbacks(completion_mode(entry, adapter_type), adapter_type):
            relay = None if hints is None else _Relay(hints)
            receiver = open_receiver(
                spec.webhooks,
                token=None if hints is None else hints.webhook_token(),
                relay=relay,
            )
            if relay is not None:
                stack.callback(relay.close)
            services[SERVICE] = await stack.enter_async_context(receiver)
            return


class _Relay:
    """Passes a callback on to the other runners. A failed relay is said once and
    counted, never fatal: a missed hint costs only time (the runner waiting for the task
    confirms by a status query and keeps its safety polls)."""

    def __init__(self, hints: HintRelay) -> None:
        self._hints = hints
        self.failed = 0

    def __call__(self, provider: str, key: str) -> None:
        try:
            self._hints.relay_hint(provider, key)
        except ManifestError as exc:
            self.failed += 1
            if self.failed == 1:
                _logger.warning(
                    "warning: could not relay a callback to the other runners (%s); going "
                    "on, and the tasks it was for wait for their safety polls",
                    exc,
                )

    def close(self) -> None:
        if self.failed:
            _logger.warning(
                "warning: %d callback(s) could not be relayed to the other runners",
                self.failed,
            )


async def _pass_relayed_hints(hints: HintRelay, services: Mapping[str, object]) -> None:
    """Hand this runner's receiver the callbacks other runners got for its tasks.

    A failed read is said once and retried, backing off: a missed hint costs only time
    (a hint is confirmed by a status query, and safety polls go on), and the run's own
    writes stop the run if the database is really gone."""
    from pipeline.completion import SERVICE, WebhookReceiver

    receiver = services[SERVICE]
    assert isinstance(receiver, WebhookReceiver)
    reader = hints.hint_reader()
    wait, said = HINT_POLL, False
    try:
        while True:
            try:
                found = await anyio.to_thread.run_sync(reader.read)
            except ManifestError as exc:
                if not said:
                    _logger.warning(
                        "warning: could not read the callbacks other runners relayed (%s); "
                        "retrying quietly, and meanwhile tasks they are for wait for their "
                        "safety polls",
                        exc,
                    )
                    said = True
                wait = min(wait * 2, HINT_BACKOFF)
            else:
                wait = HINT_POLL
                for provider, key in found:
                    receiver.hint(provider, key, relayed=True)
            await anyio.sleep(wait)
    finally:
        reader.close()


def completion_mode(entry: ProviderSettings, adapter_type: type[Provider]) -> str:
    """The lane's completion mode: ``options.completion`` or the adapter's default."""
    mode = entry.options.get("completion", adapter_type.completion_modes[0])
    return str(mode)


async def _open_lane(
    stack: AsyncExitStack,
    entry: ProviderSettings,
    spec: Spec,
    background: TaskGroup,
    services: dict[str, object],
) -> Lane:
    run = spec.run
    adapter_type = registry.get(entry.type)
    if (
        adapter_type.max_concurrency is not None
        and entry.concurrency > adapter_type.max_concurrency
    ):
        entry = replace(entry, concurrency=adapter_type.max_concurrency)
    adapter, limiter = await _open_adapter(stack, entry, spec)
    mode = completion_mode(entry, adapter_type)
    if services:
        from pipeline.completion import attach_callbacks

        attach_callbacks(services, entry.name, adapter, mode)
    context = FollowContext(adapter, entry, run, background, services)
    follower = make_follower(mode, context)
    return Lane(entry, adapter, limiter, follower)


@asynccontextmanager
async def open_adapters(spec: Spec) -> AsyncIterator[dict[str, Provider]]:
    """Each provider entry's adapter with its rate-limited API client, and the spec's
    built-in emulators, but no follower, receiver or downloads: for one-off requests to
    a spec's providers (``pipeline cancel``)."""
    register_secrets(entry.api_key for entry in spec.providers.values())
    async with AsyncExitStack() as stack:
        settings, _ = await _start_emulators(stack, spec)
        adapters = {}
        for entry in settings.values():
            adapters[entry.name], _ = await _open_adapter(stack, entry, spec)
        yield adapters


async def _open_adapter(
    stack: AsyncExitStack, entry: ProviderSettings, spec: Spec
) -> tuple[Provider, ProviderLimiter]:
    run = spec.run
    adapter_type = registry.get(entry.type)
    limiter = ProviderLimiter(entry.concurrency, entry.rate, max_wait=run.max_retry_after)

    async def on_request(request: httpx.Request) -> None:
        if not _prepaid.get():
            await limiter.request()

    async def on_response(response: httpx.Response) -> None:
        # A wait asked in answer to a submit holds back submits only (polls go on).
        limiter.observe_response(_rate_headers(response.headers), submit=_prepaid.get())

    client = make_api_client(
        entry.base_url or adapter_type.default_base_url,
        headers=adapter_type.auth_headers(entry.api_key),
        timeout=run.http_timeout,
        max_connections=max(entry.concurrency, 4),
        on_request=on_request,
        on_response=on_response,
        max_response_bytes=entry.max_response_bytes,
    )
    await stack.enter_async_context(client)
    adapter = adapter_type(entry, client)
    adapter.max_retry_after = run.max_retry_after
    return adapter, limiter


def _rate_headers(headers: httpx.Headers) -> dict[str, str]:
    """The headers the limiter reads (``*RateLimit-*``, ``Retry-After``), lower-cased.

    Taken from the raw pairs: ``httpx.Headers.items()`` re-detects the encoding of every
    header for each item, which costs more than the rest of the hook
    (benchmarks/RESULTS.md, section "runner/session.py")."""
    found = {}
    for raw_name, raw_value in headers.raw:
        name = raw_name.lower()
        if b"ratelimit" in name or name == b"retry-after":
            found[name.decode("latin-1")] = raw_value.decode("latin-1")
    return found
