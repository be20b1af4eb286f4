"""Every exception pipeline raises, in one tree.

    PipelineError                 base; carries the process exit code
    ├── SpecError                 the spec is wrong (exit 2): file:line, field path, what to fix
    ├── UsageError                a command was asked for what cannot be (exit 2)
    ├── PluginError               a plugin a command needs cannot be loaded (exit 2)
    ├── ManifestError             the manifest database cannot be opened or is not ours
    │   ├── ManifestDamaged       it exists but cannot be read: refused, `pipeline recover`
    │   └── RunLocked             another process is running on the same output root
    ├── ProviderError             an API said no, or could not be reached
    │   ├── TransientError        worth retrying later: 429, 5xx, connection trouble
    │   │   ├── RateLimited       429, with the server's Retry-After when it gave one
    │   │   │   └── AccountBusy   every task slot of the account is taken: wait for one
    │   │   ├── SubmitRefused     a submit that provably created nothing (never sent)
    │   │   └── ResponseTooLarge  an answer's body passed the provider's byte cap
    │   ├── FinalError            retrying the same request cannot help (400, 403 policy…)
    │   │   └── AccountError      the whole account is blocked (bad key, no balance):
    │   │                         stop submitting to that provider
    │   └── SubmitUnknown         a submit was sent but its outcome is unknown (timeout,
    │                             dropped connection, a 5xx, an unreadable answer, any
    │                             error not known to be a refusal): never retried blindly
    ├── DownloadError             an output could not be fetched or did not verify
    │   ├── VerificationError     bytes arrived but do not match what was promised
    │   └── DownloadTooLarge      the output passed the byte cap (final for that URL)
    └── ExportError               an export cannot be written as asked (exit 2): a state
                                  or column that does not exist, a folder not ours…

Foreign exceptions (httpx, sqlite3, yaml) are translated where they enter, with
``raise … from`` so the cause stays visible in debug output. Messages that can quote a
provider (provider, task and download errors) are scrubbed of keys when made
(``redact.scrub``), so no copy of them can carry a key anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from pipeline.redact import scrub

__all__ = [
    "AccountBusy",
    "AccountError",
    "DownloadError",
    "DownloadTooLarge",
    "ExportError",
    "FinalError",
    "ManifestDamaged",
    "ManifestError",
    "PipelineError",
    "PluginError",
    "PluginWarning",
    "ProviderError",
    "RateLimited",
    "ResponseTooLarge",
    "RunLocked",
    "SpecError",
    "SubmitRefused",
    "SubmitUnknown",
    "TransientError",
    "UsageError",
    "VerificationError",
    "only_pipeline_errors",
    "plugin_error",
]


class PipelineError(Exception):
    """Base of every error pipeline raises on purpose."""

    exit_code = 1


class SpecError(PipelineError):
    """The spec cannot be used. Rendered as ``file:line: path: message (hint)``."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        path: str | None = None,
        hint: str | None = None,
        more: Sequence[SpecError] = (),
        omitted: int = 0,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.path = path
        self.hint = hint
        self.more = tuple(more)  # the spec's other problems, each shown after this one
        self.omitted = omitted  # and how many more were found but not shown
        super().__init__(self.render())

    def render(self) -> str:
        where = self.file or "<spec>"
        if self.line is not None:
            where = f"{where}:{self.line}"
        text = f"{where}: "
        if self.path:
            text += f"{self.path}: "
        text += self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        for other in self.more:
            text += "\n" + other.render()
        if self.omitted:
            text += f"\n(and {self.omitted} more problem{'s' if self.omitted > 1 else ''})"
        return text


class UsageError(PipelineError):
    """A command's arguments ask for what the data cannot give (a report dimension no job
    has): exit 2, like a bad flag."""

    exit_code = 2


class PluginError(PipelineError):
    """An installed plugin that a command needs cannot be loaded (import error, a class
    the base refuses): exit 2, naming the plugin and the package to fix or uninstall.
    ``warning`` says the same in one line, for the commands that do not need it."""

    exit_code = 2

    def __init__(self, message: str, *, warning: str | None = None) -> None:
        super().__init__(message)
        self.warning = warning if warning is not None else message.splitlines()[0]


class PluginWarning(UserWarning):
    """An installed plugin cannot be loaded; this command does not need it."""


def plugin_error(
    kind: str, name: str, entry: str, package: str | None, problem: str
) -> PluginError:
    """The error for ``kind`` (provider, emulator) plugin ``name``, declared as ``entry``
    (``module:attribute``) by ``package``, that cannot be loaded because of ``problem``."""
    fix = f"pip uninstall {package}" if package else "uninstall its package"
    what = f"{kind} plugin {name!r} ({entry}) cannot be loaded"
    return PluginError(
        f"{what}: {problem}\n  fix the plugin, or remove it: {fix}",
        warning=f"{what} ({' '.join(problem.split())}); only what uses it fails. Fix it, or: {fix}",
    )


class ManifestError(PipelineError):
    """The manifest database is unusable (corrupt, locked for too long, newer schema)."""


class ManifestDamaged(ManifestError):
    """An existing manifest cannot be read (empty, not SQLite, corrupt pages, tables
    missing): never started over, since that would pay for every job again."""


class RunLocked(ManifestError):
    """Another process holds the output root's run lock."""


class ProviderError(PipelineError):
    """An API refused a request or could not be reached.

    ``status`` is the HTTP status when there was one; ``code`` the provider's own error
    code (``rate_limit_exceeded``, ``invalid_token``…) when its body gave one.
    """

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        self.message = scrub(message)
        self.status = status
        self.code = None if code is None else scrub(code)
        super().__init__(self.message)

    def reason(self) -> str:
        """A one-line reason fit for the manifest and the status report."""
        parts = [p for p in (str(self.status) if self.status else None, self.code) if p]
        prefix = " ".join(parts)
        return f"{prefix}: {self.message}" if prefix else self.message


class TransientError(ProviderError):
    """Retry later. ``retry_after`` is the server's hint in seconds, when it gave one."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code)
        self.retry_after = retry_after


class RateLimited(TransientError):
    """HTTP 429 or the provider's equivalent."""


class AccountBusy(RateLimited):
    """The account already runs as many tasks as it may (PixAI: 10): not now, later."""


class SubmitRefused(TransientError):
    """A submit that provably created nothing (the connection was refused, or an answer
    the API documents as "not processed"): safe to send again later."""


class ResponseTooLarge(TransientError):
    """An API answer's body passed the byte cap; reading stopped there."""


class FinalError(ProviderError):
    """The request itself is wrong for this API; the job fails with this reason."""


class AccountError(FinalError):
    """The account cannot be used (bad key, no balance): stop that provider's submits."""


class SubmitUnknown(ProviderError):
    """A submit left and no answer proved it created nothing: a task may exist."""


class DownloadError(PipelineError):
    """An output could not be downloaded. ``transient`` says whether a retry may help."""

    def __init__(
        self, message: str, *, transient: bool = True, retry_after: float | None = None
    ) -> None:
        self.transient = transient
        self.retry_after = retry_after
        super().__init__(scrub(message))


class VerificationError(DownloadError):
    """The bytes on disk do not match the promised length, checksum or content type."""

    def __init__(self, message: str) -> None:
        super().__init__(message, transient=True)


class DownloadTooLarge(DownloadError):
    """The output passed the download byte cap; its partial file is deleted."""

    def __init__(self, message: str) -> None:
        super().__init__(message, transient=False)


class ExportError(PipelineError):
    """``pipeline export`` cannot do what was asked; nothing was written in its place."""

    exit_code = 2


def only_pipeline_errors(group: BaseExceptionGroup[BaseException]) -> PipelineError | None:
    """The first of ``group``'s errors when all of them are ours (a user's or the
    machine's trouble, with a message), else None: a task group of a run raises them so."""
    matched, rest = group.split(PipelineError)
    if matched is None or rest is not None:
        return None
    first: BaseException = matched
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return cast(PipelineError, first)
