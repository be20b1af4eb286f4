"""The nouns of pipeline, as frozen dataclasses. No I/O here.

A *spec* (``Spec``) expands into *jobs* (``Job``): one prompt x one provider x one cell of
the parameter matrix x one replicate. A job becomes one *remote task* at its provider
(``RemoteTask``), whose *outputs* (``OutputRef``) are downloaded into files (``Output``).
The manifest stores each job as a ``JobRecord``: the job plus where it is in its life
(``JobState``).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "ACTIVE_STATES",
    "COMMON_PARAMS",
    "DEFAULT_MAX_DOWNLOAD_BYTES",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "FAILURES",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "Job",
    "JobRecord",
    "JobState",
    "MatrixSpec",
    "Output",
    "OutputRef",
    "OutputSettings",
    "PlainPrompt",
    "PollAdvice",
    "Price",
    "PromptFile",
    "PromptSource",
    "ProviderSettings",
    "Rate",
    "RemoteStatus",
    "RemoteTask",
    "RunSettings",
    "Spec",
    "TemplatePrompt",
    "WebhookSettings",
]


class JobState(enum.StrEnum):
    """Where a job is. See ``TRANSITIONS`` and docs/architecture.md, "Job states"."""

    PENDING = "pending"
    SUBMITTING = "submitting"  # intent recorded, submit request may be in flight
    SUBMITTED = "submitted"  # remote id known
    RUNNING = "running"  # the provider says it is working on it
    SUCCEEDED = "succeeded"  # the provider says it is done; outputs not yet on disk
    DOWNLOADING = "downloading"
    DONE = "done"  # every output on disk, verified, renamed into place
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    UNKNOWN = "unknown"  # a submit whose outcome we cannot know; never resubmitted blindly


TERMINAL_STATES = frozenset(
    {JobState.DONE, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT}
)
"""States a run leaves alone (``failed`` is retried only with ``--retry-failed``)."""

ACTIVE_STATES = frozenset(
    {
        JobState.PENDING,
        JobState.SUBMITTING,
        JobState.SUBMITTED,
        JobState.RUNNING,
        JobState.SUCCEEDED,
        JobState.DOWNLOADING,
    }
)
"""States a run still has work to do for."""

FAILURES = frozenset({"submit", "remote", "download", "deadline"})
"""``JobRecord.failure``: the submit was refused for good; the remote task failed, was
cancelled or does not exist; the task succeeded but its outputs could not be fetched;
the deadline passed while the task may still run. --retry-failed fetches a `download`
failure again from its task, and asks about any other recorded task before it submits
anew (only once the provider confirms that the task failed or is gone)."""

_S = JobState
TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    _S.PENDING: frozenset({_S.SUBMITTING, _S.CANCELLED}),
    _S.SUBMITTING: frozenset({_S.SUBMITTED, _S.UNKNOWN, _S.FAILED, _S.PENDING}),
    _S.SUBMITTED: frozenset({_S.RUNNING, _S.SUCCEEDED, _S.FAILED, _S.CANCELLED, _S.TIMED_OUT}),
    _S.RUNNING: frozenset({_S.SUCCEEDED, _S.FAILED, _S.CANCELLED, _S.TIMED_OUT}),
    _S.SUCCEEDED: frozenset({_S.DOWNLOADING, _S.FAILED}),
    _S.DOWNLOADING: frozenset({_S.DONE, _S.FAILED, _S.SUCCEEDED}),
    _S.DONE: frozenset(),
    _S.FAILED: frozenset({_S.PENDING, _S.SUBMITTED, _S.SUCCEEDED}),  # --retry-failed
    _S.CANCELLED: frozenset({_S.PENDING, _S.SUBMITTED}),  # --retry-failed
    _S.TIMED_OUT: frozenset({_S.PENDING, _S.SUBMITTED}),  # --retry-failed; resume polling
    _S.UNKNOWN: frozenset({_S.PENDING, _S.SUBMITTED}),  # --resubmit-unknown; reconciled
}
"""Every legal state change. ``SUBMITTING → PENDING`` is only for a submit the server
provably never received (connection refused before sending)."""


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` requests per ``per_seconds`` (``60/min`` → Rate(60, 60.0))."""

    count: int
    per_seconds: float

    @property
    def per_second(self) -> float:
        return self.count / self.per_seconds


DEFAULT_MAX_RESPONSE_BYTES = 8 << 20
"""Bytes an API answer may have (``providers.X.limits.max_response_bytes``)."""
DEFAULT_MAX_DOWNLOAD_BYTES = 2 << 30
"""Bytes one output may have (``providers.X.limits.max_download_bytes``)."""


def _doc(text: str) -> dict[str, str]:
    """A settings field's user documentation: the spec schema's description of its key."""
    return {"description": text}


@dataclass(frozen=True, slots=True)
class Price:
    """What one job of a provider costs, in ``run.currency``: ``per_job``, or
    ``per_output`` times the job's ``count`` parameter (1 when unset). ``by`` names one
    parameter (or ``model``) whose listed values have their own unit price."""

    per_job: float | None = field(
        default=None, metadata=_doc("Price of one job (one submit), whatever it returns.")
    )
    per_output: float | None = field(
        default=None,
        metadata=_doc("Price of one output; a job costs this times its `count` (default 1)."),
    )
    by: Mapping[str, Mapping[str, float]] = field(
        default_factory=dict,
        metadata=_doc(
            "One parameter (or `model`) whose values have their own unit price, e.g. "
            "{quality: {high: 0.05, standard: 0.02}}; values not listed cost the base price."
        ),
    )


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """One entry of ``providers:`` in the spec, validated and with ``${VAR}`` resolved.

    ``name`` is the key in the spec (and in job ids); ``type`` the API it speaks
    (defaults to ``name``), so two accounts of one API can sit side by side.
    """

    name: str
    type: str
    api_key: str | None = field(
        default=None,
        repr=False,  # never printed
        metadata=_doc("API key; write ${ENV_VAR} so that it stays out of the file."),
    )
    base_url: str | None = field(
        default=None, metadata=_doc("API base URL, to override the default.")
    )
    concurrency: int = field(default=4, metadata=_doc("Most jobs in flight at once."))
    rate: Rate | None = field(default=None, metadata=_doc("Most submit requests per time."))
    params: Mapping[str, Any] = field(
        default_factory=dict,
        metadata=_doc(
            "Default job parameters for this provider; prompts and the matrix override them."
        ),
    )
    options: Mapping[str, Any] = field(
        default_factory=dict,
        metadata=_doc("Adapter options (e.g. how completion is learned)."),
    )
    emulate: Mapping[str, Any] | None = field(  # None: the real API
        default=None,
        metadata=_doc(
            "Use the built-in emulator of this API: true, or emulator knobs such as "
            "{task_seconds: 2, failure_rate: 0.1}."
        ),
    )
    max_response_bytes: int = field(
        default=DEFAULT_MAX_RESPONSE_BYTES,
        metadata=_doc(
            "Most bytes an API answer may have; a longer one is abandoned as it streams "
            "(a status query is retried, a submit's outcome becomes unknown)."
        ),
    )
    max_download_bytes: int = field(
        default=DEFAULT_MAX_DOWNLOAD_BYTES,
        metadata=_doc(
            "Most bytes one output may have; a longer download is stopped at the cap, its "
            "partial file deleted, and the job fails with that reason."
        ),
    )
    pass_through: bool | tuple[str, ...] = field(
        default=(),
        metadata=_doc(
            "Parameters to send though this API's adapter does not declare them (e.g. a "
            "model's own inputs): a list of names, or true for any. `validate` refuses "
            "every other undeclared parameter."
        ),
    )
    price: Price | None = field(
        default=None,
        metadata=_doc(
            "What a job costs, for `plan` and budgets: {per_job: 0.04}, or {per_output: "
            "0.02, by: {quality: {high: 0.05}}}. An estimate the API does not confirm."
        ),
    )
    budget: float | None = field(
        default=None,
        metadata=_doc(
            "Most this provider may spend (in run.currency), counting jobs already paid "
            "and `unknown` ones; submits stop before one would go over. Needs `price`."
        ),
    )
    allow_private_downloads: bool = field(
        default=False,
        metadata=_doc(
            "Fetch result URLs on loopback and private addresses (a self-hosted file "
            "store). Off: only public addresses, and the API's own configured host and "
            "port. Link-local and cloud metadata addresses are never fetched."
        ),
    )


@dataclass(frozen=True, slots=True)
class OutputSettings:
    root: Path
    path: str = field(
        default="{provider}/{prompt_slug}/{job_id}-{index}.{ext}",
        metadata=_doc(
            "Template of each output's path under root. Fields: {provider}, {model}, "
            "{prompt_slug}, {job_id}, {index}, {replicate}, {seed}, {ext}, {name}, any job "
            "parameter ({style}, {aspect_ratio}…) and {meta.KEY}. {job_id} and {index} must "
            "each end a folder or the file name, after every other field. Fields take no "
            "format specs or widths."
        ),
    )


@dataclass(frozen=True, slots=True)
class PollAdvice:
    """An API's documented advice on status polling (None: no advice on that point)."""

    initial: float | None = None
    factor: float | None = None
    maximum: float | None = None


@dataclass(frozen=True, slots=True)
class RunSettings:
    """Timing of one run. All durations in seconds.

    ``poll_defaults`` names the poll settings (``initial``, ``max``, ``factor``) the spec
    left unset: for those, each lane follows its API's documented advice (``advised``)
    where the API gives one, and the values here where it does not.
    """

    deadline: float = field(
        default=1800.0,
        metadata=_doc(
            "Per job: how long to wait for its remote task, from the submit (the provider "
            "is always asked once more before a job is timed out); its download then gets "
            "as long again, in every run."
        ),
    )
    poll_initial: float = 1.0
    poll_max: float = 30.0
    poll_factor: float = 1.5
    http_timeout: float = field(default=60.0, metadata=_doc("Timeout of one HTTP request."))
    retries: int = field(
        default=6,
        metadata=_doc(
            "Retries of transient errors (polls, downloads) and of submits the provider "
            "refused (429); never of a submit that may have created its task."
        ),
    )
    max_retry_after: float = field(
        default=300.0,
        metadata=_doc(
            "The longest wait a server may ask for (Retry-After, a rate-limit reset); a "
            "longer one is cut to this, and the run says so."
        ),
    )
    budget: float | None = field(
        default=None,
        metadata=_doc(
            "Most the whole run may spend (in currency), over every provider, counting jobs "
            "already paid and `unknown` ones; submits stop before one would go over. Needs "
            "a price for every provider."
        ),
    )
    currency: str = field(
        default="USD",
        metadata=_doc("The unit prices and budgets are written in; a label, never converted."),
    )
    lease: float = field(
        default=30.0,
        metadata=_doc(
            "Shared runs: how long a runner's hold on its jobs lasts unless renewed (it "
            "renews every third of it). A runner silent that long is taken for dead and "
            "its jobs are taken over."
        ),
    )
    poll_defaults: frozenset[str] = frozenset()

    def advised(self, advice: PollAdvice) -> RunSettings:
        """These settings for one API: its advice replaces the poll settings left unset."""
        unset = self.poll_defaults
        initial = advice.initial if "initial" in unset and advice.initial else self.poll_initial
        factor = advice.factor if "factor" in unset and advice.factor else self.poll_factor
        maximum = advice.maximum if "max" in unset and advice.maximum else self.poll_max
        if (initial, factor, maximum) == (self.poll_initial, self.poll_factor, self.poll_max):
            return self
        return replace(
            self, poll_initial=initial, poll_factor=factor, poll_max=max(maximum, initial)
        )


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """Where the run's webhook receiver listens, and the address providers are told.

    ``port`` 0 picks a free port; ``public_url`` (e.g. a tunnel or reverse proxy) replaces
    ``http://host:port`` in callback URLs.
    """

    host: str = field(
        default="127.0.0.1", metadata=_doc("Address the run's webhook receiver listens on.")
    )
    port: int = field(default=0, metadata=_doc("Its port; 0 picks a free one."))
    public_url: str | None = field(
        default=None,
        metadata=_doc(
            "The receiver as providers reach it (a tunnel or reverse proxy), e.g. "
            "https://hooks.example.com. Default: http://host:port."
        ),
    )


@dataclass(frozen=True, slots=True)
class PlainPrompt:
    """A prompt written out in the spec, used as is (braces are not special)."""

    text: str
    index: int = 0  # position in the spec's ``prompts:`` list


@dataclass(frozen=True, slots=True)
class TemplatePrompt:
    """``{text: "a {animal}", vars: {animal: [cat, fox]}}``: one prompt per product of vars.

    ``text`` uses ``{name}`` fields and ``{{``/``}}`` for literal braces; every field is a
    key of ``vars`` (checked when the spec is loaded).
    """

    text: str
    vars: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    index: int = 0
    meta: Mapping[str, Any] = field(
        default_factory=dict,
        metadata=_doc(
            "Metadata of these prompts (scalar values), recorded with each job and never "
            "sent to a provider, e.g. {id: 7, category: animals}."
        ),
    )


@dataclass(frozen=True, slots=True)
class PromptFile:
    """A file of prompts, streamed when jobs are expanded (never loaded whole).

    ``txt``: one prompt per non-empty line, ``#`` lines ignored. ``csv``: the ``column``
    column, or ``text`` rendered with the row's columns as variables. ``jsonl``: one
    object per line, ``{"prompt": ..., "meta": {...}, **params}``. The ``meta`` columns
    (csv) or keys (jsonl) are the prompt's metadata, not parameters. ``path`` is absolute.
    """

    path: Path
    format: Literal["txt", "csv", "jsonl"]
    column: str = "prompt"
    text: str | None = None  # csv only: a template over the row's columns
    params: Mapping[str, Any] = field(default_factory=dict)
    index: int = 0
    meta: tuple[str, ...] = field(
        default=(),
        metadata=_doc(
            "csv columns or jsonl keys that are metadata: recorded with each job, never "
            'sent to a provider. A jsonl line\'s "meta" object always is.'
        ),
    )


PromptSource = PlainPrompt | TemplatePrompt | PromptFile
"""One item of ``prompts:`` in the spec."""


@dataclass(frozen=True, slots=True)
class MatrixSpec:
    """The parameter matrix, with GitHub-Actions semantics for ``include``/``exclude``.

    ``dimensions`` are ``(key, values)`` in spec order; the loader always adds the
    ``provider`` dimension last (all provider names when the spec does not restrict it).
    """

    dimensions: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    include: tuple[Mapping[str, Any], ...] = ()
    exclude: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class Spec:
    """A loaded, validated spec. ``source`` is the file it came from.

    ``raw`` is the parsed YAML *before* ``${VAR}`` expansion, so it holds no secrets.
    ``base_dir`` is the spec file's directory (prompt files are relative to it).
    ``seeds`` is None when the spec sets none (then jobs carry no ``seed`` parameter).
    """

    source: Path
    name: str
    providers: Mapping[str, ProviderSettings]
    output: OutputSettings
    run: RunSettings
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    base_dir: Path = Path()
    prompts: tuple[PromptSource, ...] = ()
    matrix: MatrixSpec = field(default_factory=MatrixSpec)
    seeds: Sequence[int] | None = field(  # a tuple, or a range for {start, count}
        default=None,
        metadata=_doc("Seeds, a list or {start, count}; each becomes the seed parameter."),
    )
    repeats: int = field(default=1, metadata=_doc("Replicates of every job (distinct job ids)."))
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    manifest: str | None = field(
        default=None,
        metadata=_doc(
            "A PostgreSQL URL (postgresql://…) to keep the run's manifest in, so that any "
            "number of `pipeline run` processes, on any hosts, share the run. Default: "
            "manifest.sqlite in the output root, for one process."
        ),
    )
    lines: Mapping[tuple[str | int, ...], int] = field(
        default_factory=dict, repr=False, compare=False
    )  # YAML line of each key / list item, for errors found after loading
    unset_env: Mapping[str, tuple[str | int, ...]] = field(
        default_factory=dict, repr=False, compare=False
    )  # ${VAR}s left unexpanded for a dry run (name → first use): `run` refuses them

    def line_of(self, path: tuple[str | int, ...]) -> int | None:
        """The spec line of ``path``, or of its nearest ancestor that has one."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None


COMMON_PARAMS = (
    "prompt",
    "negative_prompt",
    "width",
    "height",
    "aspect_ratio",
    "seed",
    "model",
    "style",
    "count",
    "duration",
    "quality",
)
"""The parameter names every adapter understands (each maps them to its API); a spec
may set them and an output template may name them wherever the spec does not."""


@dataclass(frozen=True, slots=True)
class Job:
    """One unit of work: what is sent to one provider, once.

    ``params`` are the final parameters in the common vocabulary (``prompt``, ``seed``,
    ``width``…) plus provider-specific ones, after defaults, matrix cell and prompt
    variables are merged. ``id`` is the hash of (provider, model, params, replicate): see
    ``identity.job_id`` and contract 1 in docs/architecture.md. ``meta`` is its prompt's
    metadata (scalar values): recorded, never sent, and not part of the id, so two
    prompts that differ only in it are one job.
    """

    id: str
    provider: str
    model: str | None
    params: Mapping[str, Any]
    replicate: int = 0
    prompt_slug: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        return str(self.params.get("prompt", ""))

    def params_json(self) -> str:
        return json.dumps(self.params, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def meta_json(self) -> str:
        return json.dumps(dict(self.meta), separators=(",", ":"), ensure_ascii=False)


class RemoteStatus(enum.StrEnum):
    """The common states every provider's own status values map onto."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in {RemoteStatus.SUCCEEDED, RemoteStatus.FAILED, RemoteStatus.CANCELLED}


@dataclass(frozen=True, slots=True)
class OutputRef:
    """One file a finished remote task offers. ``ext`` is a guess from the provider."""

    url: str
    ext: str | None = None
    size: int | None = None  # bytes, when the provider states it
    sha256: str | None = None  # when the provider states it
    content_type: str | None = None  # expected family, e.g. "image/" or "video/"


@dataclass(frozen=True, slots=True)
class RemoteTask:
    """What a provider says about one task."""

    remote_id: str
    status: RemoteStatus
    progress: float | None = None  # 0..100
    outputs: tuple[OutputRef, ...] = ()
    error: str | None = None  # the provider's failure reason
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Output:
    """One file on disk, verified. ``path`` is relative to the output root: the
    reader's, or ``root`` when the file lies under another one (another runner of a
    shared run wrote it under its own, or the manifest was copied from another folder)."""

    job_id: str
    index: int
    path: str
    size: int
    sha256: str
    url: str
    content_type: str | None = None
    root: str | None = None


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job as the manifest knows it."""

    job: Job
    state: JobState
    remote_id: str | None = None
    client_ref: str | None = None
    attempts: int = 0
    error: str | None = None
    created_at: float | None = None
    updated_at: float | None = None
    submitted_at: float | None = None
    finished_at: float | None = None
    outputs: tuple[Output, ...] = ()
    failure: str | None = None
    """Where a failed/cancelled/timed-out job stopped (``FAILURES``); None otherwise."""
