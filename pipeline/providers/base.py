"""The Provider base every API adapter subclasses, its capabilities, and the common
parameter vocabulary.

An adapter turns a ``Job`` into HTTP requests and HTTP responses into ``RemoteTask``
states and output URLs. It never touches the manifest, files or progress, and it never
retries a submit: the scheduler owns retries, limits and state.

Common vocabulary (mapped by each adapter onto its API's own field names):

    prompt, negative_prompt, width, height, aspect_ratio, seed, model, style,
    count (images per task), duration and quality (video)

An adapter declares the parameters its API takes in ``parameters``; ``validate`` refuses
any other one (``undeclared_params``) unless the spec lists it under the provider's
``pass_through`` (or sets that to true), and then it is sent to the API unchanged.

Capabilities are declared, never probed. ``Provider`` has every hook that any lane may
use, with defaults (submit, status, status_many, cancel, first_check_in, poll_advice, the
callback flags, hint_key); a completion mode beyond ``poll`` needs hooks that have no
sensible default, so they come in a mixin the adapter subclasses: ``CallbackCapable``
(``webhook``, or ``requires_callback``), ``SubscriptionCapable`` (``subscription``) and
``BatchStatusCapable`` (``batch``). A class that lists a mode without its capability is
refused when it is defined (``MODE_CAPABILITIES``).
"""

from __future__ import annotations

import abc
import difflib
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx

from pipeline.errors import (
    AccountError,
    FinalError,
    ProviderError,
    RateLimited,
    SubmitRefused,
    SubmitUnknown,
    TransientError,
)
from pipeline.http import send
from pipeline.models import COMMON_PARAMS, Job, PollAdvice, ProviderSettings, RemoteTask
from pipeline.retry import DEFAULT_MAX_WAIT

__all__ = [
    "COMMON_OPTIONS",
    "COMMON_PARAMS",
    "MODE_CAPABILITIES",
    "BatchStatusCapable",
    "CallbackCapable",
    "OptionInfo",
    "ParamInfo",
    "PreparedRequest",
    "Provider",
    "SubscriptionCapable",
    "brief",
    "error_for_status",
    "json_or_none",
    "submit_outcome",
]


@dataclass(frozen=True, slots=True)
class ParamInfo:
    """A documented parameter: its API field, a description, and its allowed values."""

    field: str
    description: str
    choices: tuple[Any, ...] | None = None
    maximum_length: int | None = None


@dataclass(frozen=True, slots=True)
class OptionInfo:
    """An adapter option (``providers.<name>.options``): what it does and its kind,
    ``duration`` (``90s``, ``5m``), ``count`` (a whole number >= 1) or ``text``."""

    description: str
    kind: str = "text"


COMMON_OPTIONS: Mapping[str, OptionInfo] = {
    "completion": OptionInfo("how a job learns it is done; one of the completion modes"),
}


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    """One HTTP request, fully built but not sent (``pipeline plan`` shows these)."""

    method: str
    path: str
    json: Mapping[str, Any] | None = None
    query: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        body = json.dumps(self.json, ensure_ascii=False, sort_keys=True) if self.json else ""
        return f"{self.method} {self.path} {body}".rstrip()


MODE_CAPABILITIES: dict[str, type[Provider]] = {}
"""The capability each built-in completion mode needs (filled once the mixins below are
defined); ``poll`` needs only the core hooks."""


def capability_problems(cls: type[Provider]) -> list[str]:
    """What keeps ``cls`` from backing the completion modes it lists (and
    ``requires_callback``): a capability it does not subclass, or hooks it leaves out."""
    needs = [
        (f"completion mode {mode!r}", MODE_CAPABILITIES.get(mode)) for mode in cls.completion_modes
    ]
    if cls.requires_callback:
        needs.append(("requires_callback", CallbackCapable))
    problems = []
    for why, capability in needs:
        if capability is None:
            continue  # poll, or a mode registered elsewhere (checked when followed)
        hooks = sorted(capability.__abstractmethods__ - Provider.__abstractmethods__)
        if not issubclass(cls, capability):
            problems.append(
                f"{why} needs {capability.__name__}: subclass "
                f"pipeline.providers.base.{capability.__name__} and define {', '.join(hooks)}"
            )
            continue
        missing = [hook for hook in hooks if _left_abstract(cls, hook)]
        if missing:
            problems.append(
                f"{why} needs {capability.__name__} hooks it leaves out: {', '.join(missing)}"
            )
    return problems


def _left_abstract(cls: type, hook: str) -> bool:
    """Whether ``cls`` still has only the abstract declaration of ``hook`` (ABC's own
    test, made here because ABC makes it only when the class is instantiated)."""
    return bool(getattr(getattr(cls, hook, None), "__isabstractmethod__", False))


def _type_of(cls: type[Provider]) -> str:
    return repr(getattr(cls, "type", "no type"))


class Provider(abc.ABC):
    """One generation API. Subclasses set the class attributes and the abstract methods,
    and subclass a capability mixin for each completion mode beyond ``poll`` they list."""

    type: ClassVar[str]
    title: ClassVar[str]
    default_base_url: ClassVar[str]
    media: ClassVar[str] = "image"
    completion_modes: ClassVar[tuple[str, ...]] = ("poll",)
    max_concurrency: ClassVar[int | None] = None  # the API's own cap on tasks in flight
    parameters: ClassVar[Mapping[str, ParamInfo]] = {}
    options: ClassVar[Mapping[str, OptionInfo]] = {}  # besides COMMON_OPTIONS
    poll_advice: ClassVar[PollAdvice] = PollAdvice()
    """The API's documented polling advice; it fills the poll settings a spec leaves out."""
    submit_refusal_statuses: ClassVar[frozenset[int]] = frozenset({429})
    """Statuses that prove a submit created nothing, so it may be sent again. Add 503 only
    for an API that documents it as "not processed"; none of the built-in ones does."""
    max_retry_after: float = DEFAULT_MAX_WAIT
    """A server's Retry-After longer than this is cut to it (set from ``run``)."""
    requires_callback: ClassVar[bool] = False
    """Give this adapter a callback URL whatever its completion mode (e.g. an API whose
    submit would block without one); needs ``CallbackCapable``."""
    https_callbacks_only: ClassVar[bool] = False
    """The API takes only ``https://`` callback URLs (checked by ``validate``)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        problems = capability_problems(cls)
        if problems:
            raise TypeError(f"{cls.__name__} ({_type_of(cls)}): " + "; ".join(problems))

    def __init__(self, settings: ProviderSettings, client: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self._client = client

    @property
    def client(self) -> httpx.AsyncClient:
        """The API client; an adapter made without one can only build requests (plan)."""
        if self._client is None:
            raise RuntimeError(f"{self.type} adapter has no HTTP client (offline use only)")
        return self._client

    @classmethod
    def auth_headers(cls, api_key: str | None) -> dict[str, str]:
        """Headers that carry the credentials on API requests (never on downloads)."""
        return {"Authorization": f"Bearer {api_key}"} if api_key else {}

    @classmethod
    def validate_prompt(cls, prompt: str) -> list[tuple[str, str]]:
        """Problems with one job's prompt, as ``(parameter, message)`` pairs."""
        limit = cls.parameters["prompt"].maximum_length if "prompt" in cls.parameters else None
        if limit is not None and len(prompt) > limit:
            return [("prompt", f"longer than {limit} characters")]
        return []

    @classmethod
    def undeclared_params(
        cls, params: Mapping[str, Any], pass_through: bool | Collection[str] = ()
    ) -> list[tuple[str, str]]:
        """The parameters of ``params`` that ``parameters`` does not declare and
        ``pass_through`` (a spec's names, or True for any) does not let through, as
        ``(parameter, message)`` pairs naming the closest declared one."""
        if pass_through is True:
            return []
        allowed = [*cls.parameters, *(pass_through or ())]
        problems: list[tuple[str, str]] = []
        for name in params:
            if name in allowed:
                continue
            close = difflib.get_close_matches(name, allowed, n=1)
            guess = f"; did you mean {close[0]!r}?" if close else ""
            problems.append((name, f"{cls.title} does not take the parameter {name!r}{guess}"))
        return problems

    @classmethod
    def validate_params(cls, params: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Problems with one job's parameters other than the prompt (``model`` included)
        as ``(parameter, message)`` pairs."""
        problems: list[tuple[str, str]] = []
        for name, info in cls.parameters.items():
            if name not in params:
                continue
            value = params[name]
            if info.choices is not None and value not in info.choices:
                allowed = ", ".join(map(str, info.choices))
                close = difflib.get_close_matches(str(value), list(map(str, info.choices)), n=1)
                guess = f"; did you mean {close[0]!r}?" if close else ""
                problems.append((name, f"{value!r} is not one of: {allowed}{guess}"))
            if info.maximum_length is not None and len(str(value)) > info.maximum_length:
                problems.append((name, f"longer than {info.maximum_length} characters"))
        return problems

    @abc.abstractmethod
    def build_submit(self, job: Job) -> PreparedRequest:
        """The request that creates this job's remote task. Pure: no I/O."""

    @abc.abstractmethod
    async def submit(self, job: Job) -> str:
        """Create the remote task and return its id. Never retried by the caller blindly:
        raise ``SubmitUnknown`` when the outcome cannot be known."""

    @abc.abstractmethod
    async def status(self, remote_id: str) -> RemoteTask:
        """What the provider says about one task now."""

    async def status_many(self, remote_ids: Sequence[str]) -> list[RemoteTask]:
        """Several tasks at once; APIs with a batch endpoint override this."""
        return [await self.status(remote_id) for remote_id in remote_ids]

    def first_check_in(self, remote_id: str) -> float | None:
        """Seconds from now until the task's first status check is worth making, from
        what the submit answer estimated; None when the API gave no estimate. Asked once
        per task (an adapter may forget the estimate then)."""
        return None

    async def cancel(self, remote_id: str) -> bool:
        """Ask the provider to stop a task. Returns False where the API cannot cancel."""
        return False

    def hint_key(self, remote_id: str) -> str:
        """The name callbacks give the task ``remote_id`` (a hint names the task by it);
        the remote id itself unless the API's callbacks name tasks otherwise."""
        return remote_id

    # -- helpers shared by adapters -------------------------------------------------

    async def _send_json(
        self, request: PreparedRequest, *, submit: bool = False
    ) -> Mapping[str, Any]:
        """Send a prepared request and return its JSON object, or raise the right error.

        With ``submit=True`` only a refusal that proves nothing was created keeps its
        class (see ``submit_outcome``); anything else raises ``SubmitUnknown``."""
        if not submit:
            return await self._request_json(request)
        try:
            return await self._request_json(request, submit=True)
        except Exception as exc:
            outcome = submit_outcome(exc)
            if outcome is exc:
                raise
            raise outcome from exc

    async def _request_json(
        self, request: PreparedRequest, *, submit: bool = False
    ) -> Mapping[str, Any]:
        response = await send(
            self.client,
            request.method,
            request.path,
            submit=submit,
            json=request.json,
            params=dict(request.query) or None,
        )
        if response.status_code >= 400:
            error = self.error_from_response(response)
            if isinstance(error, TransientError):
                if error.retry_after is not None:
                    error.retry_after = min(error.retry_after, self.max_retry_after)
                if submit:
                    error = self._submit_refusal(response.status_code, error)
            raise error
        what = f"{request.method} {request.path}"
        try:
            body = read_json(response)
        except ValueError as exc:
            raise TransientError(f"{what}: {exc}", status=response.status_code) from exc
        if not isinstance(body, Mapping):
            message = f"{what}: expected a JSON object, got {brief(body)}"
            raise TransientError(message, status=response.status_code)
        return body

    def _submit_refusal(self, status: int, error: TransientError) -> ProviderError:
        """A retryable error answering a submit: a refusal only for the statuses that
        prove nothing was created, else ``SubmitUnknown`` (a 5xx may follow creation)."""
        if status not in self.submit_refusal_statuses:
            unknown = SubmitUnknown(
                f"submit answered {error.reason()}; the task may exist",
                status=status,
                code=error.code,
            )
            unknown.__cause__ = error
            return unknown
        if isinstance(error, RateLimited):
            return error
        refused = SubmitRefused(
            error.message, status=status, code=error.code, retry_after=error.retry_after
        )
        refused.__cause__ = error
        return refused

    def error_from_response(self, response: httpx.Response) -> ProviderError:
        """Map an error response onto the error tree. Adapters refine ``error_code``."""
        code, message = self.error_code(response)
        retry_after = response.headers.get("Retry-After")
        return error_for_status(response.status_code, code, message, retry_after)

    def error_code(self, response: httpx.Response) -> tuple[str | None, str]:
        """The provider's (code, message) from an error body; adapters override."""
        return None, response.reason_phrase or "error"


class CallbackCapable(Provider):
    """Can be called back: completion mode ``webhook``, or ``requires_callback``.

    The session sets ``callback_url`` before any submit (the adapter sends it with each
    task); the run's receiver asks ``callback_task_id`` which task a callback body is
    about. A callback is only a hint: a status query confirms it."""

    callback_url: str | None = None

    @abc.abstractmethod
    def callback_task_id(self, body: object) -> str | None:
        """The task a callback body names, as ``hint_key`` names it; None if none."""


class SubscriptionCapable(Provider):
    """Completion mode ``subscription``: one shared WebSocket per API key streams task
    events (``graphql-transport-ws``). The socket code only moves messages; what they
    mean stays here."""

    @property
    @abc.abstractmethod
    def ws_url(self) -> str:
        """The WebSocket URL to subscribe at."""

    @abc.abstractmethod
    def ws_connection_params(self) -> dict[str, Any]:
        """The ``connection_init`` payload (credentials)."""

    @abc.abstractmethod
    def subscription_payload(self) -> dict[str, Any]:
        """The ``subscribe`` payload (query, operation name, variables)."""

    @abc.abstractmethod
    def task_update(self, payload: Any) -> Mapping[str, Any] | None:
        """The task (with its ``id``) a ``next`` payload is about; None for other events."""

    @abc.abstractmethod
    async def task_from_payload(self, payload: Mapping[str, Any]) -> RemoteTask:
        """A task from ``task_update`` as a RemoteTask (outputs resolved when done)."""

    def submit_sent_at(self, remote_id: str) -> float | None:
        """``time.monotonic()`` when this adapter sent the submit of ``remote_id``; None
        when unknown (the task is then reconciled by one status query). Read once."""
        return None


class BatchStatusCapable(Provider):
    """Completion mode ``batch``: the API answers about many tasks in one request."""

    batch_size: int | None = None
    """Task ids the API takes per request (``status_many`` splits larger rounds);
    None when it states no limit."""

    @abc.abstractmethod
    async def status_many(self, remote_ids: Sequence[str]) -> list[RemoteTask]:
        """Every task of ``remote_ids`` (in as few requests as the API allows)."""


MODE_CAPABILITIES.update(  # abstract classes, which mypy will not take as type[...]
    webhook=CallbackCapable,  # type: ignore[type-abstract]
    subscription=SubscriptionCapable,  # type: ignore[type-abstract]
    batch=BatchStatusCapable,  # type: ignore[type-abstract]
)


def error_for_status(
    status: int, code: str | None, message: str, retry_after: str | None = None
) -> ProviderError:
    """429 → RateLimited; 408/5xx → TransientError; 401/402 → AccountError; else Final."""
    from pipeline.retry import parse_retry_after

    if status == 429:
        import time

        return RateLimited(
            message,
            status=status,
            code=code,
            retry_after=parse_retry_after(retry_after, now=time.time()),
        )
    if status == 408 or status >= 500:
        return TransientError(message, status=status, code=code)
    if status in (401, 402):
        return AccountError(message, status=status, code=code)
    return FinalError(message, status=status, code=code)


def submit_outcome(exc: BaseException) -> ProviderError:
    """What a submit that raised ``exc`` means: the one allowlist of contract 2.

    Only refusals that prove nothing was created keep their class: a 429 or the API's
    "busy" (``RateLimited``), a request that never left (``SubmitRefused``), and a 4xx
    the request itself earned (``FinalError``: nothing to retry). Every other error —
    any 5xx, an answer too large or malformed to read, an error nobody mapped — becomes
    ``SubmitUnknown``: a task may exist, so the submit is never sent again blindly.
    """
    if isinstance(exc, SubmitUnknown | RateLimited | SubmitRefused):
        return exc
    if isinstance(exc, FinalError) and (exc.status is None or exc.status < 500):
        return exc
    if isinstance(exc, ProviderError):
        reason, status, code = exc.reason(), exc.status, exc.code
    else:
        reason, status, code = f"{type(exc).__name__}: {brief(str(exc))}", None, None
    unknown = SubmitUnknown(f"submit outcome unknown ({reason})", status=status, code=code)
    unknown.__cause__ = exc
    return unknown


def read_json(response: httpx.Response) -> Any:
    """The response body as JSON; ValueError when it is not JSON or nested too deeply
    to read (the decoder's RecursionError)."""
    try:
        return response.json()
    except RecursionError:
        raise ValueError("answer is JSON nested too deeply to read") from None
    except ValueError as exc:
        raise ValueError(f"answer is not JSON ({brief(str(exc))})") from exc


def json_or_none(response: httpx.Response) -> Any:
    """The response body as JSON, or None when it cannot be read (error bodies)."""
    try:
        return read_json(response)
    except ValueError:
        return None


def brief(value: Any, limit: int = 200) -> str:
    """``repr(value)`` cut to ``limit`` characters, safe on anything a server sends."""
    try:
        text = value if isinstance(value, str) else repr(value)
    except (RecursionError, ValueError):
        return f"<{type(value).__name__} too deep or large to show>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
