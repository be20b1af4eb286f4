"""Every exception pipeline raises, in one tree.

    PipelineError                 base; carries the process exit code
    ├── SpecError                 the spec is wrong (exit 2): file:line, field path, what to fix
    ├── ManifestError             the manifest database cannot be opened or is not ours
    ├── ProviderError             an API said no, or could not be reached
    │   ├── TransientError        worth retrying later: 429, 5xx, connection trouble
    │   │   ├── RateLimited       429, with the server's Retry-After when it gave one
    │   │   └── ResponseTooLarge  an answer's body passed the provider's byte cap
    │   ├── FinalError            retrying the same request cannot help (400, 403 policy…)
    │   │   └── AccountError      the whole account is blocked (bad key, no balance):
    │   │                         stop submitting to that provider
    │   └── SubmitUnknown         a submit was sent but its outcome is unknown (timeout or
    │                             dropped connection after sending): never retried blindly
    ├── RemoteTaskFailed          the remote task ran and failed; carries the provider's reason
    └── DownloadError             an output could not be fetched or did not verify
        ├── VerificationError     bytes arrived but do not match what was promised
        └── DownloadTooLarge      the output passed the byte cap (final for that URL)

Foreign exceptions (httpx, sqlite3, yaml) are translated where they enter, with
``raise … from`` so the cause stays visible in debug output.
"""

from __future__ import annotations

__all__ = [
    "AccountError",
    "DownloadError",
    "DownloadTooLarge",
    "FinalError",
    "ManifestError",
    "PipelineError",
    "ProviderError",
    "RateLimited",
    "RemoteTaskFailed",
    "ResponseTooLarge",
    "SpecError",
    "SubmitUnknown",
    "TransientError",
    "VerificationError",
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
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.path = path
        self.hint = hint
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
        return text


class ManifestError(PipelineError):
    """The manifest database is unusable (corrupt, locked for too long, newer schema)."""


class ProviderError(PipelineError):
    """An API refused a request or could not be reached.

    ``status`` is the HTTP status when there was one; ``code`` the provider's own error
    code (``rate_limit_exceeded``, ``invalid_token``…) when its body gave one.
    """

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        self.message = message
        self.status = status
        self.code = code
        super().__init__(message)

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


class ResponseTooLarge(TransientError):
    """An API answer's body passed the byte cap; reading stopped there."""


class FinalError(ProviderError):
    """The request itself is wrong for this API; the job fails with this reason."""


class AccountError(FinalError):
    """The account cannot be used (bad key, no balance): stop that provider's submits."""


class SubmitUnknown(ProviderError):
    """A submit left but no answer came back: it may or may not have created a task."""


class RemoteTaskFailed(PipelineError):
    """The provider ran the task and it failed (content policy, generation error…)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class DownloadError(PipelineError):
    """An output could not be downloaded. ``transient`` says whether a retry may help."""

    def __init__(
        self, message: str, *, transient: bool = True, retry_after: float | None = None
    ) -> None:
        self.transient = transient
        self.retry_after = retry_after
        super().__init__(message)


class VerificationError(DownloadError):
    """The bytes on disk do not match the promised length, checksum or content type."""

    def __init__(self, message: str) -> None:
        super().__init__(message, transient=True)


class DownloadTooLarge(DownloadError):
    """The output passed the download byte cap; its partial file is deleted."""

    def __init__(self, message: str) -> None:
        super().__init__(message, transient=False)
