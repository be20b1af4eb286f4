"""Scrubbing secrets out of text before it is stored or shown (contract 5 in
docs/architecture.md).

A ``Redactor`` replaces, in any text, the values of known secrets (in the forms an API
may echo them: as is, URL-encoded, JSON- or repr-escaped) and anything that looks like a
credential whatever its value (``Bearer …``, ``Authorization: …``, ``api_key=…``,
``"token": "…"``) by ``[redacted]``.

The process keeps one redactor: every key a run sends is registered with
``register_secrets`` before its first request (the session does it), and every place
that stores or prints provider text (manifest writes, exports, status, the summary,
progress notes, error messages) passes it through ``scrub``. Pure: no I/O.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

__all__ = ["MIN_SECRET_LENGTH", "REDACTED", "Redactor", "register_secrets", "scrub"]

REDACTED = "[redacted]"
MIN_SECRET_LENGTH = 4
"""Shorter values are not searched for: they would match ordinary words and numbers."""
_WHOLE_WORD_BELOW = 8
"""Values shorter than this are redacted only where they stand alone (not in a word)."""

_NAMES = (
    r"(?:api[_-]?key|apikey|x-api-key|access[_-]?token|auth[_-]?token|token|secret|password|key)"
)
_HEADER_NAMES = r"(?:api[_-]?key|apikey|x-api-key|access[_-]?token|auth[_-]?token|password)"
_GENERIC = re.compile(
    # `Bearer <token>` wherever it appears (headers, echoed messages)
    r"(?P<scheme>\bbearer\s+)(?!\[redacted\])[^\s\"',;)}\]]+"
    # `Authorization: <scheme> <value>` (header, or JSON member with its quotes)
    r"|(?P<auth>\bauthorization\\?[\"']?\s*[:=]\s*\\?[\"']?)(?!\[redacted\]|bearer\s)"
    r"(?:(?:basic|digest|token)\s+)?[^\s\"',;)}\]]+"
    # `"api_key": "value"` in JSON (escaped quotes inside the value included)
    rf"|(?P<json>\"{_NAMES}\"\s*:\s*\")(?!\[redacted\])(?:[^\"\\]|\\.)+"
    # `api_key=value` in a query string or form
    rf"|(?P<pair>(?<![\w-]){_NAMES}=)(?!\[redacted\])[^\s&\"',;)}}\]]+"
    # `X-Api-Key: value` as a header (not a spec's field path, `providers.x.api_key: …`)
    rf"|(?P<header>(?<![\w.-]){_HEADER_NAMES}:[ \t]*)(?!\[redacted\])[^\s\"',;)}}\]]+",
    re.IGNORECASE,
)


def _generic(match: re.Match[str]) -> str:
    prefix = next(group for group in match.groups() if group is not None)
    return prefix + REDACTED


def _forms(secret: str) -> set[str]:
    """The ways ``secret`` can appear in a response body or an error message."""
    forms = {
        secret,
        quote(secret, safe=""),
        quote_plus(secret, safe=""),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        json.dumps(secret)[1:-1].replace("/", "\\/"),
        repr(secret)[1:-1],
    }
    return {form for form in forms if form}


def _form_pattern(form: str, whole_word: bool) -> str:
    # percent-escapes may come back in either case (%2F or %2f)
    parts = re.split(r"(%[0-9A-Fa-f]{2})", form)
    body = "".join(
        f"%(?i:{part[1:]})" if part.startswith("%") and len(part) == 3 else re.escape(part)
        for part in parts
    )
    return rf"(?<![A-Za-z0-9]){body}(?![A-Za-z0-9])" if whole_word else body


class Redactor:
    """Replaces known secret values and credential-looking tokens by ``[redacted]``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = frozenset(s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH)
        patterns = sorted(
            (
                _form_pattern(form, len(secret) < _WHOLE_WORD_BELOW)
                for secret in self.secrets
                for form in _forms(secret)
            ),
            key=len,
            reverse=True,  # longest first: an encoded form before the bare key inside it
        )
        self._values = re.compile("|".join(patterns)) if patterns else None

    def with_secrets(self, secrets: Iterable[str]) -> Redactor:
        """A redactor that also knows ``secrets`` (``self`` when they add nothing)."""
        more = {s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH} - self.secrets
        return Redactor(self.secrets | more) if more else self

    def __call__(self, text: str) -> str:
        if self._values is not None:
            text = self._values.sub(REDACTED, text)
        return _GENERIC.sub(_generic, text)


class _Registry:
    """The process's redactor; replaced whole (never mutated) when secrets are added."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.redactor = Redactor()


_registry = _Registry()


def register_secrets(secrets: Iterable[str | None]) -> None:
    """Make ``scrub`` redact these values from now on (every key this process sends)."""
    with _registry.lock:
        _registry.redactor = _registry.redactor.with_secrets(s for s in secrets if s)


def scrub(text: str) -> str:
    """``text`` with every registered secret and credential-looking token redacted."""
    return _registry.redactor(text)
